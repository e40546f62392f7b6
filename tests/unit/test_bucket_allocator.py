"""The farm bucket allocator (pure): shares, minimal moves, determinism."""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from raft.bucket_allocator import (BUCKETS, AllocationError, allocate, allocate_with_homes,
                                   quotas, shares)

NAMES = st.sampled_from([f"n{i}" for i in range(12)])
POWERS = st.dictionaries(NAMES, st.integers(1, 1000), max_size=10)
NONEMPTY_POWERS = st.dictionaries(NAMES, st.integers(1, 1000), min_size=1, max_size=10)


def _balanced(powers: dict[str, int]) -> list[str | None]:
    return allocate(None, powers)


def _moves(old: list[str | None], new: list[str | None]) -> int:
    return sum(1 for a, b in zip(old, new) if a != b)


def _positive_differences(old: list[str | None], new: list[str | None]) -> int:
    before, after = shares(old), shares(new)
    unowned = sum(1 for o in old if o is None)
    return unowned + sum(max(0, c - after.get(n, 0)) for n, c in before.items())


def _assert_proportional(table: list[str | None], powers: dict[str, int]) -> None:
    total = sum(powers.values())
    counts = shares(table)
    assert set(counts) <= set(powers)
    assert sum(counts.values()) == BUCKETS
    for name, power in powers.items():
        exact = power * BUCKETS / total
        assert abs(counts.get(name, 0) - exact) < 1, (name, counts.get(name, 0), exact)


@st.composite
def tables(draw) -> list[str | None]:
    """Any table: owners that may or may not be members, or nobody."""
    return draw(st.lists(st.one_of(st.none(), NAMES), min_size=BUCKETS, max_size=BUCKETS))


@given(tables(), POWERS)
@settings(max_examples=100)
def test_every_bucket_has_exactly_one_live_owner(table, powers):
    new = allocate(table, powers)
    assert len(new) == BUCKETS
    if powers:
        assert all(owner in powers for owner in new)
    else:
        assert new == [None] * BUCKETS


@given(tables(), NONEMPTY_POWERS)
@settings(max_examples=100)
def test_shares_within_one_bucket_of_proportional(table, powers):
    _assert_proportional(allocate(table, powers), powers)


@given(tables(), NONEMPTY_POWERS)
@settings(max_examples=100)
def test_moves_only_what_it_must_from_any_table(table, powers):
    """Owners that stay keep what fits their quota: the changes are exactly the
    buckets of leavers, unowned buckets and each member's surplus."""
    new = allocate(table, powers)
    assert _moves(table, new) == _positive_differences(table, new)


@given(tables(), POWERS)
@settings(max_examples=100)
def test_idempotent_and_deterministic(table, powers):
    new = allocate(table, powers)
    assert allocate(new, powers) == new
    assert allocate(list(table), dict(reversed(list(powers.items())))) == new


@given(NONEMPTY_POWERS, NAMES, st.integers(1, 1000))
@example(powers={"n0": 1, "n1": 1, "n2": 44, "n3": 207, "n4": 261, "n6": 1, "n7": 45, "n8": 90},
         joiner="n5", power=118)      # a stayer took a rounded-up bucket the joiner could take
@example(powers={"n0": 1, "n1": 1, "n2": 44, "n3": 207, "n4": 261, "n6": 2, "n7": 45, "n8": 90},
         joiner="n5", power=117)      # the joiner's share is whole: a stayer must round up
@settings(max_examples=300)
def test_a_single_join_takes_buckets_only_from_the_members_that_stayed(powers, joiner, power):
    if joiner in powers:
        return
    old = _balanced(powers)
    new = allocate(old, {**powers, joiner: power})
    _assert_proportional(new, {**powers, joiner: power})
    assert _moves(old, new) == _positive_differences(old, new)
    # A bucket moves between two members that stayed only when rounding forces it: the
    # joiner already has its rounded-up share (or its share is whole), and the member
    # that gains ends one above its old count at its rounded-up share.
    total = sum(powers.values()) + power
    before, after = shares(old), shares(new)
    gainers = [n for n in powers if after.get(n, 0) > before.get(n, 0)]
    if gainers:
        assert after[joiner] == -(-power * BUCKETS // total), (gainers, after[joiner])
    for n in gainers:
        assert after[n] == before.get(n, 0) + 1 == -(-powers[n] * BUCKETS // total), n
    for a, b in zip(old, new):
        assert a == b or b == joiner or b in gainers, f"bucket moved between stayers: {a} -> {b}"


@given(NONEMPTY_POWERS, st.data())
@settings(max_examples=300)
def test_a_single_leave_gives_only_the_leavers_buckets_away(powers, data):
    leaver = data.draw(st.sampled_from(sorted(powers)))
    old = _balanced(powers)
    rest = {n: p for n, p in powers.items() if n != leaver}
    new = allocate(old, rest)
    assert _moves(old, new) == _positive_differences(old, new)
    for a, b in zip(old, new):
        assert a == b or a == leaver, f"bucket moved between two members that stayed: {a} -> {b}"


def test_leaver_buckets_spread_over_the_others_in_proportion():
    old = allocate(None, {"a": 1, "b": 1, "c": 2})
    assert shares(old) == {"a": 64, "b": 64, "c": 128}
    new = allocate(old, {"a": 1, "c": 2})
    assert shares(new) == {"a": 85, "c": 171} or shares(new) == {"a": 86, "c": 170}
    assert all(n == o for o, n in zip(old, new) if o != "b")


def test_rounding_is_largest_remainder_then_name():
    # 256/3 = 85.33 each: one of them gets 86, the first by name.
    assert quotas({"c": 1, "b": 1, "a": 1}) == {"a": 86, "b": 85, "c": 85}
    # remainders 1*256 % 7 = 4, 2*256 % 7 = 1, 4*256 % 7 = 2: floors 36+73+146 = 255
    assert quotas({"x": 1, "y": 2, "z": 4}) == {"x": 37, "y": 73, "z": 146}


def test_no_members_means_no_owners():
    assert allocate(["a"] * BUCKETS, {}) == [None] * BUCKETS
    assert shares([None] * BUCKETS) == {}


@pytest.mark.parametrize("table, powers, message", [
    (["a"] * 10, {"a": 1}, "list of 256 owners"),
    ([3] * BUCKETS, {"a": 1}, "bucket 0: owner must be"),
    (None, {"a": 0}, "power of 'a' must be a positive integer"),
    (None, {"a": True}, "power of 'a'"),
    (None, {"": 1}, "non-empty string"),
    (None, ["a"], "must be a dict"),
])
def test_bad_input_is_refused_with_a_clear_message(table, powers, message):
    with pytest.raises(AllocationError, match=message):
        allocate(table, powers)


# ---- homes: a returning member takes its own old buckets back first -----------------------------

@given(st.dictionaries(NAMES, st.integers(1, 1000), min_size=2, max_size=10), st.data())
@settings(max_examples=200)
def test_a_member_that_leaves_and_returns_gets_its_own_buckets_back(powers, data):
    leaver = data.draw(st.sampled_from(sorted(powers)))
    t0 = _balanced(powers)
    rest = {n: p for n, p in powers.items() if n != leaver}
    t1, h1 = allocate_with_homes(t0, rest, None)
    assert all(h1[i] == leaver for i in range(BUCKETS) if t0[i] == leaver)
    t2, h2 = allocate_with_homes(t1, powers, h1)
    own_before = {i for i in range(BUCKETS) if t0[i] == leaver}
    own_after = {i for i in range(BUCKETS) if t2[i] == leaver}
    assert len(own_after & own_before) == min(len(own_after), len(own_before))
    # the same (least) number of buckets moves as without homes, the shares as always
    assert _moves(t1, t2) == _moves(t1, allocate(t1, powers))
    _assert_proportional(t2, powers)
    # the buckets that went home are no longer homed
    assert all(h2[i] is None for i in own_after & own_before)


@given(tables(), NONEMPTY_POWERS, tables())
@settings(max_examples=100)
def test_homes_never_change_how_much_moves_or_the_shares(table, powers, homes):
    new, _ = allocate_with_homes(table, powers, homes)
    assert _moves(table, new) == _moves(table, allocate(table, powers))
    _assert_proportional(new, powers)
    assert allocate_with_homes(table, powers, homes)[0] == new      # deterministic
