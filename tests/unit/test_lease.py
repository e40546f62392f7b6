"""raft/lease.py: the lease arithmetic of DESIGN.md rule 1 (pure, times passed in)."""
from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from raft.lease import (
    RENEWALS_PER_LEASE,
    ExpiryCheck,
    HolderLease,
    LeaderLeaseClock,
    LeaseConfigError,
    LeaseExpiry,
    LeaseTiming,
    check_expiry,
    holder_deadline,
    leader_expiry,
)

# Realistic ranges: monotonic readings up to ~11 days of uptime, leases from 10 ms to an
# hour, and a margin of at least 0.1 % of the largest allowed one. (With a margin below the
# float resolution of the clock reading, s + lease - margin rounds to s + lease; no real
# configuration comes near that.)
times = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
delays = st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def timings(draw) -> LeaseTiming:
    lease = draw(st.floats(min_value=0.01, max_value=3600.0))
    frac = draw(st.floats(min_value=0.001, max_value=0.999))
    margin = frac * (lease - lease / RENEWALS_PER_LEASE)
    return LeaseTiming(lease, margin)


# ---- LeaseTiming ------------------------------------------------------------------
def test_timing_defaults_shape():
    t = LeaseTiming(1.5, 0.3)
    assert t.renew_interval_s == pytest.approx(0.375)
    assert t.max_drift == pytest.approx(0.2)


@pytest.mark.parametrize("lease, margin, words", [
    (1.5, 0.0, "margin"),            # margin 0: no protection against drift at all
    (1.5, -0.1, "margin"),
    (1.5, 1.125, "margin"),          # = lease - lease/4: the holder would stop at its renewal time
    (1.5, 1.2, "margin"),            # beyond that
    (1.5, 1.5, "margin"),
    (0.0, 0.0, "lease must be > 0"),
    (-1.0, 0.1, "lease must be > 0"),
    (math.nan, 0.1, "lease must be > 0"),
    (1.5, math.nan, "margin"),
])
def test_timing_refused(lease, margin, words):
    with pytest.raises(LeaseConfigError, match=words):
        LeaseTiming(lease, margin)


def test_timing_error_is_a_value_error():
    assert issubclass(LeaseConfigError, ValueError)


@given(timings())
def test_renewal_comes_before_the_holder_deadline(timing):
    # The validation's purpose: a renewal is always due before the holder has to stop.
    s = 100.0
    assert s + timing.renew_interval_s < holder_deadline(s, timing)
    assert 0 < timing.max_drift < 1


# ---- (1) safety without drift -------------------------------------------------------
@settings(max_examples=300)
@given(timing=timings(), s=times, apply_delay=delays, leader_since=st.floats(0.0, 2e6))
def test_holder_stops_before_leader_may_expire(timing, s, apply_delay, leader_since):
    a = s + apply_delay  # the leader applies a renewal only after the holder started it
    assert a >= s
    assert holder_deadline(s, timing) < leader_expiry(a, leader_since, timing.lease_s)


@given(timing=timings(), s=times, a=times, leader_since=times)
def test_leader_expiry_is_a_full_lease_after_apply_and_election(timing, s, a, leader_since):
    e = leader_expiry(a, leader_since, timing.lease_s)
    assert e == max(a, leader_since) + timing.lease_s
    assert e >= a + timing.lease_s and e >= leader_since + timing.lease_s


# ---- (2) safety with clock-rate drift --------------------------------------------
# Model. Real time is measured by the leader's clock (rate 1). The holder's clock runs
# slower by a relative rate r: over a real interval d it advances by d * (1 - r).
#   * The holder reads h0 on its clock when it starts the renewal, at real time s_real.
#     It stops when its clock reads holder_deadline(h0) = h0 + lease - margin, i.e. after
#     (lease - margin) of its own time = (lease - margin) / (1 - r) of real time:
#         holder_stop_real = s_real + (holder_deadline(h0) - h0) / (1 - r)
#   * The leader applies the renewal at a_real >= s_real (an entry is applied only after it
#     was submitted) and may expire the lease from
#         leader_expiry(a_real, leader_since, lease) >= s_real + lease      (real time).
# Safe iff (lease - margin) / (1 - r) < lease  <=>  r < margin / lease = timing.max_drift.
# A holder clock that runs *faster* (r < 0) only makes the holder stop earlier.
def holder_stop_real(s_real: float, h0: float, timing: LeaseTiming, r: float) -> float:
    return s_real + (holder_deadline(h0, timing) - h0) / (1.0 - r)


@settings(max_examples=300)
@given(timing=timings(), s_real=times, h0=times, apply_delay=delays,
       leader_since=st.floats(0.0, 2e6), frac=st.floats(min_value=-1.0, max_value=0.99))
def test_drift_below_max_drift_is_safe(timing, s_real, h0, apply_delay, leader_since, frac):
    r = frac * timing.max_drift
    a_real = s_real + apply_delay
    assert holder_stop_real(s_real, h0, timing, r) < leader_expiry(a_real, leader_since, timing.lease_s)


@given(timing=timings(), s_real=times, frac=st.floats(min_value=1.01, max_value=2.0))
def test_max_drift_is_the_exact_limit(timing, s_real, frac):
    # Beyond max_drift the guarantee fails in the worst case (applied at once, no recent
    # election): max_drift is not merely a sufficient bound, it is the bound.
    r = frac * timing.max_drift
    assume(r < 0.999)
    expiry = leader_expiry(s_real, leader_since=0.0, lease_s=timing.lease_s)
    assert holder_stop_real(s_real, 0.0, timing, r) > expiry


# ---- (3) HolderLease ------------------------------------------------------------------
T = LeaseTiming(4.0, 1.6)  # renew every 1.0 s, holder deadline start + 2.4 s


def test_fresh_holder_lease_is_invalid_and_wants_to_renew():
    h = HolderLease(T)
    assert h.epoch is None
    assert not h.valid(0.0) and not h.valid(1e9)
    assert h.valid_until() is None
    assert h.renewal_due_at() is None
    assert h.renew_due(0.0)


def test_valid_only_before_deadline():
    h = HolderLease(T)
    h.renewal_succeeded(10.0, epoch=1)
    assert h.epoch == 1
    assert h.valid_until() == pytest.approx(12.4)
    assert h.valid(10.0)
    assert h.valid(12.39)
    assert not h.valid(12.4)     # deadline itself is already invalid
    assert not h.valid(13.0)


def test_later_renewal_extends():
    h = HolderLease(T)
    h.renewal_succeeded(10.0, 1)
    h.renewal_succeeded(11.0, 1)
    assert h.valid_until() == pytest.approx(13.4)
    assert h.valid(13.0)
    assert h.renewal_due_at() == pytest.approx(12.0)


def test_out_of_order_older_renewal_never_shortens():
    h = HolderLease(T)
    h.renewal_succeeded(11.0, 1)
    h.renewal_succeeded(10.0, 1)  # an older attempt whose answer came back last
    assert h.valid_until() == pytest.approx(13.4)
    assert h.renewal_due_at() == pytest.approx(12.0)
    assert h.epoch == 1


def test_renewal_with_another_epoch_resets():
    h = HolderLease(T)
    h.renewal_succeeded(11.0, 1)
    # Someone else held it meanwhile and we got it back under epoch 2, from an attempt
    # started earlier: nothing of epoch 1 carries over, even though it was later.
    h.renewal_succeeded(10.5, 2)
    assert h.epoch == 2
    assert h.valid_until() == pytest.approx(12.9)
    assert not h.valid(13.0)
    assert h.renewal_due_at() == pytest.approx(11.5)


def test_lost_invalidates():
    h = HolderLease(T)
    h.renewal_succeeded(10.0, 3)
    h.lost()
    assert h.epoch is None
    assert not h.valid(10.0)
    assert h.valid_until() is None
    assert h.renewal_due_at() is None
    assert h.renew_due(10.0)
    # and a fresh lease after the loss starts from nothing
    h.renewal_succeeded(20.0, 4)
    assert h.epoch == 4 and h.valid(21.0) and not h.valid(10.0 + 2.4 + 10)


def test_renew_due():
    h = HolderLease(T)
    h.renewal_succeeded(10.0, 1)
    assert h.renewal_due_at() == pytest.approx(11.0)
    assert not h.renew_due(10.5)
    assert h.renew_due(11.0)
    assert h.renew_due(11.5)


renewal_events = st.lists(
    st.one_of(
        st.tuples(st.just("ok"), st.floats(0.0, 100.0), st.integers(1, 3)),
        st.tuples(st.just("lost"), st.just(0.0), st.just(0)),
    ),
    max_size=30,
)


@given(timing=timings(), events=renewal_events, now=st.floats(0.0, 200.0))
def test_holder_lease_matches_model(timing, events, now):
    """valid_until = latest deadline among the renewals of the current epoch since the last
    loss; the renewal is due lease/4 after the start of that renewal."""
    h = HolderLease(timing)
    epoch = None
    best_start = None
    for kind, start, ep in events:
        before = h.valid_until()
        if kind == "lost":
            h.lost()
            epoch, best_start = None, None
            continue
        h.renewal_succeeded(start, ep)
        if ep != epoch:
            best_start = start
        elif best_start is None or start > best_start:
            best_start = start
        if ep == epoch and before is not None:
            assert h.valid_until() >= before  # same epoch: never shortened
        epoch = ep
    assert h.epoch == epoch
    if best_start is None:
        assert h.valid_until() is None and not h.valid(now) and h.renew_due(now)
    else:
        deadline = holder_deadline(best_start, timing)
        assert h.valid_until() == deadline
        assert h.valid(now) == (now < deadline)
        assert h.renewal_due_at() == best_start + timing.renew_interval_s
        assert h.renew_due(now) == (now >= best_start + timing.renew_interval_s)


# ---- (4) LeaderLeaseClock ------------------------------------------------------------
@given(now=st.floats(0.0, 1e9), applied=st.floats(0.0, 1e9))
def test_not_leader_never_expires(now, applied):
    c = LeaderLeaseClock()
    c.renewal_applied("r", applied)
    assert c.leader_since is None
    assert not c.expired("r", 1.0, now)
    assert not c.expired("never-seen", 1.0, now)


@given(applied=times, since=times, lease=st.floats(0.01, 100.0), now=st.floats(0.0, 2e6))
def test_expiry_is_max_of_applied_and_election_plus_lease(applied, since, lease, now):
    c = LeaderLeaseClock()
    c.renewal_applied("r", applied)
    c.became_leader(since)
    assert c.leader_since == since
    assert c.expired("r", lease, now) == (now >= max(applied, since) + lease)


def test_expiry_boundaries():
    c = LeaderLeaseClock()
    c.became_leader(100.0)
    c.renewal_applied("r", 105.0)
    assert not c.expired("r", 2.0, 106.999)
    assert c.expired("r", 2.0, 107.0)
    # renewal applied before the election: counts from the election
    c.renewal_applied("old", 50.0)
    assert not c.expired("old", 2.0, 101.9)
    assert c.expired("old", 2.0, 102.0)


def test_never_applied_counts_from_election():
    c = LeaderLeaseClock()
    c.became_leader(100.0)
    assert not c.expired("unseen", 2.0, 101.9)
    assert c.expired("unseen", 2.0, 102.0)


def test_stepped_down_resets():
    c = LeaderLeaseClock()
    c.became_leader(100.0)
    c.renewal_applied("r", 100.0)
    assert c.expired("r", 2.0, 150.0)
    c.stepped_down()
    assert c.leader_since is None
    assert not c.expired("r", 2.0, 150.0)
    assert not c.expired("r", 2.0, 1e12)
    # re-elected later: a full lease after the new election, not after the old apply
    c.became_leader(150.0)
    assert not c.expired("r", 2.0, 151.9)
    assert c.expired("r", 2.0, 152.0)


# ---- (5) check_expiry: the leader's decision ------------------------------------------
RESOURCES = ("node/a", "node/b", "mirror/db", "vip")


@st.composite
def lease_tables(draw) -> dict[str, dict]:
    """ClusterState's lease table: some resources held, some free."""
    table = {}
    for r in draw(st.lists(st.sampled_from(RESOURCES), unique=True)):
        table[r] = {"holder": draw(st.sampled_from([None, "a", "b"])),
                    "epoch": draw(st.integers(0, 5)), "seq": draw(st.integers(0, 50)),
                    "lease_s": draw(st.floats(0.01, 100.0)), "eligible": None}
    return table


@st.composite
def leader_histories(draw) -> tuple[LeaderLeaseClock, dict[str, float], float | None, float]:
    """A clock fed a time-ordered history of elections, step-downs and applied renewals.
    Returns the clock, the last apply time per resource, the current election time (None:
    not leading) and the time of the last event."""
    clock = LeaderLeaseClock()
    applied: dict[str, float] = {}
    since = None
    t = draw(st.floats(0.0, 1e5))
    for kind in draw(st.lists(st.sampled_from(["apply", "apply", "elect", "step_down"]), max_size=12)):
        t += draw(st.floats(0.0, 50.0))
        if kind == "apply":
            r = draw(st.sampled_from(RESOURCES))
            clock.renewal_applied(r, t)
            applied[r] = t
        elif kind == "elect":
            clock.became_leader(t)
            since = t
        else:
            clock.stepped_down()
            since = None
    return clock, applied, since, t


@st.composite
def expiry_scenarios(draw) -> tuple[dict[str, dict], LeaderLeaseClock, dict[str, float], float | None, float]:
    """A lease table, a leader's history, and a moment at or after its last event:
    (table, clock, last apply per resource, election time or None, now)."""
    clock, applied, since, last_event = draw(leader_histories())
    return draw(lease_tables()), clock, applied, since, last_event + draw(st.floats(0.0, 300.0))


check_periods = st.floats(0.001, 10.0)


def _expired(check: ExpiryCheck) -> set[str]:
    return {one.resource for one in check.expire}


@settings(max_examples=300)
@given(scenario=expiry_scenarios(), period=check_periods)
def test_expiry_never_before_a_full_lease_after_apply_nor_after_election(scenario, period):
    table, clock, applied, since, now = scenario
    check = check_expiry(table, clock, now, period)
    for one in check.expire:
        lease_s = table[one.resource]["lease_s"]
        assert since is not None                                  # only a leader expires
        assert now >= since + lease_s                             # a full lease after its election
        if one.resource in applied:
            assert now >= applied[one.resource] + lease_s         # a full lease after the apply
        assert table[one.resource]["holder"] is not None
        # the command's fence is the lease as it stands
        assert (one.holder, one.epoch, one.seq) == tuple(table[one.resource][k] for k in ("holder", "epoch", "seq"))


@settings(max_examples=300)
@given(scenario=expiry_scenarios(), period=check_periods)
def test_a_leader_expires_every_held_lease_it_has_not_heard_renewed_for_a_lease(scenario, period):
    table, clock, applied, since, now = scenario
    expected = set()
    if since is not None:
        for r, lease in table.items():
            heard = max(applied.get(r, since), since)
            if lease["holder"] is not None and now >= heard + lease["lease_s"]:
                expected.add(r)
    assert _expired(check_expiry(table, clock, now, period)) == expected


@given(scenario=expiry_scenarios(), more=st.floats(0.0, 300.0), period=check_periods)
def test_expiry_is_monotone_in_now(scenario, more, period):
    table, clock, _, _, now = scenario
    assert _expired(check_expiry(table, clock, now, period)) <= _expired(
        check_expiry(table, clock, now + more, period))


@given(scenario=expiry_scenarios(), period=check_periods, step=st.floats(0.0, 1.0))
def test_nothing_expires_before_the_next_check(scenario, period, step):
    """The tick thread sleeps until next_check_at: no lease may become due meanwhile,
    and it never sleeps longer than the period (a lease granted meanwhile is seen)."""
    table, clock, _, _, now = scenario
    check = check_expiry(table, clock, now, period)
    assert now < check.next_check_at <= now + period
    between = now + step * (check.next_check_at - now)
    if between < check.next_check_at:
        assert _expired(check_expiry(table, clock, between, period)) == _expired(check)


@given(scenario=expiry_scenarios())
def test_a_pending_expiry_is_not_proposed_again(scenario):
    table, clock, _, _, now = scenario
    first = check_expiry(table, clock, now, 1.0)
    pending = {one.key for one in first.expire}
    assert check_expiry(table, clock, now, 1.0, pending).expire == ()
    # once the lease changed (another seq), the old pending key does not hide it
    bumped = {r: dict(lease, seq=lease["seq"] + 1) for r, lease in table.items()}
    assert _expired(check_expiry(bumped, clock, now, 1.0, pending)) == _expired(first)


def test_check_expiry_examples():
    clock = LeaderLeaseClock()
    table = {"vip": {"holder": "a", "epoch": 3, "seq": 7, "lease_s": 2.0, "eligible": None},
             "free": {"holder": None, "epoch": 1, "seq": 2, "lease_s": 2.0, "eligible": None}}
    clock.renewal_applied("vip", 50.0)
    assert check_expiry(table, clock, 1e9, 0.05) == ExpiryCheck((), 1e9 + 0.05)   # not leading
    clock.became_leader(100.0)
    # renewal applied before the election: a full lease after the election
    assert check_expiry(table, clock, 101.0, 5.0) == ExpiryCheck((), 102.0)
    assert check_expiry(table, clock, 101.0, 0.05).next_check_at == pytest.approx(101.05)
    assert check_expiry(table, clock, 102.0, 0.05) == ExpiryCheck(
        (LeaseExpiry("vip", "a", 3, 7),), pytest.approx(102.05))
    assert LeaseExpiry("vip", "a", 3, 7).key == ("vip", 3, 7)
    clock.renewal_applied("vip", 103.0)                            # renewed: counts from then
    assert check_expiry(table, clock, 104.9, 5.0) == ExpiryCheck((), 105.0)
    assert check_expiry(table, clock, 105.0, 5.0).expire == (LeaseExpiry("vip", "a", 3, 7),)
