"""The kernel-side expiry arithmetic (vip.lifetime), pure: what the kernel is given
never outlives the holder's lease deadline, and it is as long as the granularity allows."""
from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from raft.lease import HolderLease, LeaseTiming
from vip.lifetime import (BACKSTOP_S, INFINITE_LFT, address_lifetime_s, backstop_lifetime_s,
                          element_timeout_ms, needs_refresh)

times = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)
spans = st.floats(min_value=-100.0, max_value=1e5, allow_nan=False)


@given(now=times, left=spans)
def test_address_lifetime_never_outlives_the_deadline(now, left):
    deadline = now + left
    lft = address_lifetime_s(deadline, now)
    assert isinstance(lft, int) and 0 <= lft < INFINITE_LFT
    assert now + lft <= deadline or lft == 0          # the kernel's end is at or before it
    if lft == 0:
        assert deadline - now < 1.0                   # 0 only when under a second is left
    else:
        assert deadline - now - lft < 1.0             # and never a whole second short


@given(now=times, left=spans)
def test_element_timeout_never_outlives_the_deadline(now, left):
    deadline = now + left
    ms = element_timeout_ms(deadline, now)
    assert isinstance(ms, int) and ms >= 0
    assert now + ms / 1000.0 <= deadline or ms == 0
    if ms == 0:
        assert deadline - now < 0.001
    else:
        assert deadline - now - ms / 1000.0 < 0.001


@given(started=times, answered_after=st.floats(min_value=0.0, max_value=5.0),
       lease_s=st.floats(min_value=0.5, max_value=60.0), margin_frac=st.floats(0.01, 0.7))
def test_lifetime_from_a_renewal_ends_before_the_leader_may_expire_the_lease(
        started, answered_after, lease_s, margin_frac):
    """Through the real lease arithmetic: a renewal started at ``started`` and answered
    later gives kernel lifetimes ending before the holder's deadline, hence a margin
    before the leader's own expiry (which counts from after ``started``)."""
    margin = margin_frac * (lease_s - lease_s / 4)
    timing = LeaseTiming(lease_s, margin)
    lease = HolderLease(timing)
    lease.renewal_succeeded(started, epoch=1)
    now = started + answered_after
    deadline = lease.valid_until()
    lft = address_lifetime_s(deadline, now)
    ms = element_timeout_ms(deadline, now)
    leader_earliest = started + lease_s
    if lft:
        assert now + lft <= leader_earliest - margin
    if ms:
        assert now + ms / 1000.0 <= leader_earliest - margin


def test_examples_at_the_default_timing():
    # lease 1.5 s, margin 0.3: a renewal answered 10 ms after it started leaves 1.19 s
    assert address_lifetime_s(1.2, 0.01) == 1
    assert element_timeout_ms(1.2, 0.01) == 1190
    # answered 250 ms late: under a second left, no address refresh possible
    assert address_lifetime_s(1.2, 0.25) == 0
    assert address_lifetime_s(math.nan, 0.0) == 0 and element_timeout_ms(math.nan, 0.0) == 0
    assert element_timeout_ms(5.0, 5.0) == 0


@given(installed=st.one_of(st.none(), times), until=times,
       interval=st.floats(min_value=0.01, max_value=100.0))
def test_refresh_skipped_only_when_the_kernel_copy_already_reaches_the_deadline(installed, until,
                                                                               interval):
    skip = not needs_refresh(installed, until, interval)
    if skip:
        assert installed is not None and 0 <= until - installed <= interval / 8
    elif installed is not None:
        # behind the new deadline by more than the slack, or beyond it (a deadline
        # brought nearer: a maintenance hold dropped)
        assert until - installed > interval / 8 or installed > until


def test_every_renewal_refreshes_at_the_default_timing():
    # renewals every 0.375 s move the deadline 0.375 s: the kernel's copy (bucket timeout
    # at the old deadline, or a 1 s address floor) is always that far behind
    assert needs_refresh(1.19, 1.19 + 0.375, 0.375)
    assert needs_refresh(1.0, 1.19, 0.375)
    assert not needs_refresh(1.19, 1.19, 0.375)
    # a deadline brought nearer (maintenance over: the hold dropped) shortens the kernel's copy
    assert needs_refresh(600.0, 1.19, 0.375)


@given(now=times, left=spans)
def test_a_backstop_address_outlives_its_deadline_but_boundedly(now, left):
    deadline = now + left
    lft = backstop_lifetime_s(deadline, now)
    assert isinstance(lft, int) and 0 <= lft < INFINITE_LFT
    if deadline - now > 0:
        assert now + lft >= deadline + BACKSTOP_S        # never before the buckets lapse
        assert now + lft <= deadline + BACKSTOP_S + 1   # at most a whole second more
    else:
        assert lft == 0


def test_backstop_examples_at_the_default_timing():
    # a renewal answered 10 ms after it started leaves 1.19 s: buckets 1190 ms, address 3 s
    assert backstop_lifetime_s(1.2, 0.01) == 2 + BACKSTOP_S
    assert backstop_lifetime_s(1.2, 1.2) == 0
    assert backstop_lifetime_s(math.nan, 0.0) == 0
