"""Copy identities (DESIGN rule 6): the record and the rules (pure). The xattr at the edge
(trusted.* needs root) and mount points: tests/lab/test_copy_identity.py."""
from __future__ import annotations


import pytest
from hypothesis import given, settings, strategies as st

from replication.copy_identity import (
    FULL, INCREMENTAL, REFUSE, Committed, IdentityError, LocalDir, Record, generations_newer, matches, new_record, next_record, promotion_problem, read_local,
    read_record, resync_mode)

C, M = "prod", "db"


def local(*records: Record | None) -> list[LocalDir]:
    return [LocalDir(f"/d{i}", r) for i, r in enumerate(records)]


def rec(copy: str, gen: int, history: tuple[int, ...] = ()) -> Record:
    return Record(C, M, copy, gen, history)


A, B = "a" * 32, "b" * 32
COMMITTED = Committed(generation=7, history=(3, 5), copies={"n1": (A, 7), "n2": (B, 5)})


# ---- promotion ------------------------------------------------------------------------------
def test_the_committed_copy_may_be_promoted():
    assert promotion_problem(local(rec(A, 7, (3, 5))), COMMITTED, "n1", C, M) is None


@pytest.mark.parametrize("records, words", [
    ((None,), "no identity record"),
    ((rec(B, 7),), "another disk or a restored backup"),
    ((rec(A, 5, (3,)),), "older than the committed generation 7"),
    ((Record("other", M, A, 7),), "of cluster other"),
    ((Record(C, "web", A, 7),), "module web"),
    ((rec(A, 7), None), "no identity record"),
])
def test_unmatched_copies_are_not_promoted(records, words):
    problem = promotion_problem(local(*records), COMMITTED, "n1", C, M)
    assert problem is not None and words in problem


def test_a_node_without_a_committed_copy_is_not_promoted():
    problem = promotion_problem(local(rec(A, 7)), COMMITTED, "n3", C, M)
    assert problem and "no committed identity" in problem


def test_before_the_first_generation_the_in_sync_set_alone_decides():
    missing = [LocalDir("/d0", None, "does not exist", missing=True)]
    assert promotion_problem(missing, Committed(), "n1", C, M) is None
    assert promotion_problem(local(None), Committed(), "n1", C, M) is None
    # after it, a missing directory is never used silently
    assert "does not exist" in promotion_problem(missing, COMMITTED, "n1", C, M)


def test_a_stamp_ahead_of_a_commit_that_never_happened_still_matches():
    """Promotion stamps first, then commits: a crash between them leaves the disk
    one generation ahead of Raft, with no write under it."""
    ahead = rec(A, 9, (3, 5, 7))
    assert matches(ahead, COMMITTED, "n1")
    # ... but not a copy whose previous generation is not the committed one
    assert not matches(rec(A, 9, (3, 5)), COMMITTED, "n1")


# ---- resync direction ------------------------------------------------------------------------
def test_the_exact_last_copy_of_a_returning_node_resyncs_incrementally():
    assert resync_mode(local(rec(B, 5, (3,))), COMMITTED, "n2", C, M)[0] == INCREMENTAL


@pytest.mark.parametrize("records", [(None,), (rec(B, 3),), (rec(A, 5),), (Record(C, "web", B, 5),)])
def test_an_unknown_copy_receives_a_full_resync(records):
    mode, why = resync_mode(local(*records), COMMITTED, "n2", C, M)
    assert mode == FULL, why


def test_a_newer_copy_is_never_overwritten_without_the_administrator():
    mode, why = resync_mode(local(rec(B, 11)), COMMITTED, "n2", C, M)
    assert mode == REFUSE and "second fullsync" in why


def test_a_missing_directory_is_refused_once_the_module_has_data():
    missing = [LocalDir("/d0", None, "does not exist", missing=True)]
    assert resync_mode(missing, COMMITTED, "n2", C, M)[0] == REFUSE
    assert resync_mode(missing, Committed(), "n2", C, M)[0] == INCREMENTAL


# ---- properties --------------------------------------------------------------------------------
gens = st.integers(min_value=1, max_value=50)


@st.composite
def timelines(draw):
    """A committed identity and what one node's disk holds."""
    history = tuple(sorted(set(draw(st.lists(gens, max_size=5)))))
    current = draw(st.integers(min_value=(history[-1] + 1) if history else 1, max_value=60))
    node_gen = draw(st.sampled_from(history + (current,)))
    committed = Committed(current, history, {"n1": (A, node_gen)})
    disk_copy = draw(st.sampled_from([A, B]))
    disk = draw(st.one_of(st.none(), st.builds(
        lambda g, h: rec(disk_copy, g, h), st.integers(0, 70),
        st.lists(gens, max_size=4).map(lambda h: tuple(sorted(set(h)))))))
    return committed, disk


@settings(max_examples=400, deadline=None)
@given(timelines())
def test_promotion_never_picks_an_unmatched_copy(t):
    committed, disk = t
    ok = promotion_problem(local(disk), committed, "n1", C, M) is None
    if ok:
        entry = committed.copies["n1"]
        assert disk is not None and disk.copy == entry[0]
        assert disk.generation == entry[1] or (
            disk.generation > committed.generation and disk.history[-1] == entry[1])


@settings(max_examples=400, deadline=None)
@given(timelines())
def test_no_resync_trusts_a_sync_point_or_overwrites_a_newer_copy(t):
    committed, disk = t
    mode, _ = resync_mode(local(disk), committed, "n1", C, M)
    if mode == INCREMENTAL:
        assert disk is not None and matches(disk, committed, "n1")
    if disk is not None and disk.generation > committed.generation and mode != REFUSE:
        # only the stamp-ahead of this node's own last copy is newer and accepted
        assert matches(disk, committed, "n1")


@settings(max_examples=200, deadline=None)
@given(st.lists(gens, min_size=1, max_size=40))
def test_generations_only_grow_in_a_copy_history(steps):
    r = new_record(C, M)
    for g in sorted(steps):
        r2 = r.advanced(g)
        assert r2.generation >= r.generation and r2.copy == r.copy
        assert list(r2.history) == sorted(r2.history) and len(r2.history) <= 16
        assert all(h < r2.generation for h in r2.history)
        r = r2


def test_next_record_keeps_the_copy_id_and_starts_a_new_one_for_an_unknown_copy():
    kept = next_record(local(rec(A, 7, (5,))), C, M, 9)
    assert kept.copy == A and kept.generation == 9 and kept.history == (5, 7)
    fresh = next_record(local(None), C, M, 9)
    assert fresh.copy not in (A, B) and fresh.generation == 9 and fresh.history == ()


def test_generations_newer():
    assert generations_newer(COMMITTED, 3) == 2 and generations_newer(COMMITTED, 7) == 0


@given(st.binary(max_size=300))
def test_a_damaged_record_is_refused_with_a_value_error(raw):
    try:
        record = Record.from_bytes(raw)
    except (ValueError, UnicodeDecodeError):
        return                  # refused with the error the reader turns into one line
    # whatever is accepted is a whole record
    assert record.copy and record.module and record.cluster and record.generation >= 0
    assert Record.from_bytes(record.to_bytes()) == record


def test_a_missing_directory_is_an_error_that_says_so(tmp_path):
    with pytest.raises(IdentityError, match="does not exist"):
        read_record(str(tmp_path / "nope"))
    entry = read_local([str(tmp_path / "nope")])[0]
    assert entry.missing and "does not exist" in entry.problem
