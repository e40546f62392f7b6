"""The kernel-side expiry arithmetic (vip.lifetime), pure: what the kernel is given
never outlives the holder's lease deadline, and it is as long as the granularity allows."""
from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from raft.lease import HolderLease, LeaseTiming
from vip.lifetime import (INFINITE_LFT, address_lifetime_s, element_timeout_ms,
                          needs_refresh)

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


@given(installed=st.one_of(st.none(), times), now=times,
       interval=st.floats(min_value=0.01, max_value=100.0))
def test_refresh_skipped_only_while_two_renewal_intervals_are_covered(installed, now, interval):
    skip = not needs_refresh(installed, now, interval)
    if skip:
        assert installed is not None and installed - now >= 2 * interval
    elif installed is not None:
        assert installed - now < 2 * interval
