"""Kernel-side expiry of what a node holds (DESIGN.md rule 7), the arithmetic, pure.

A VIP or a farm bucket is installed in the kernel with a lifetime that ends no later
than the holder's own lease deadline (``raft.lease.HolderLease.valid_until()``, local
monotonic seconds). The daemon refreshes it after each successful lease renewal; if the
daemon dies or freezes, the refreshes stop and the kernel drops the VIP / stops
accepting the buckets by itself at the last deadline it was given, which comes before
the Raft leader may hand the lease to another node (holder deadline = start of the
renewal + lease - margin; leader expiry >= start + lease).

Nothing here reads a clock: ``now`` is passed in, on the same clock as the deadline.
"""
from __future__ import annotations

import math

# The kernel's "forever" for an IPv4 address lifetime (INFINITY_LIFE_TIME).
INFINITE_LFT = 0xFFFFFFFF
# How late the kernel may remove an address after its lifetime ends (net/ipv4/devinet.c
# check_lifetime: its work rounds up to a whole second when within 250 ms, and runs at
# most once a second); measured 5-250 ms. nft set element timeouts have no such lag:
# they are checked on every lookup.
ADDRESS_EXPIRY_LAG_S = 1.25
# How a refresh's own time is allowed for: a lifetime is computed from ``now`` taken just
# before the netlink / nft call, and the kernel starts counting when the call arrives,
# a little later; that only shortens what the kernel holds.


def address_lifetime_s(deadline: float, now: float) -> int:
    """The ``valid_lft``/``preferred_lft`` (whole seconds) to give an IPv4 address held
    until ``deadline``: 0 when less than a second is left (the kernel refuses a 0
    lifetime: the caller must then not add or refresh the address).

    Rounded DOWN: the kernel counts address lifetimes in whole seconds from the moment
    it got them; rounding up would let the address outlive the lease by up to a second,
    i.e. answer after the Raft leader may already have given it to another node.
    (The kernel's own expiry work then runs a little late, measured 5-250 ms; that is
    why the lease margin must cover it, see README "Fences the kernel keeps".)"""
    left = deadline - now
    if not left >= 1.0:     # also NaN
        return 0
    return min(int(math.floor(left)), INFINITE_LFT - 1)


def element_timeout_ms(deadline: float, now: float) -> int:
    """The nft set element timeout (whole milliseconds) for a bucket held until
    ``deadline``; 0 when less than a millisecond is left (then the bucket must not be
    installed at all: an element without a timeout would never expire).

    Rounded DOWN for the same reason as ``address_lifetime_s``; nft timeouts are
    checked on every lookup, to the jiffy, so no late expiry work is involved."""
    left = deadline - now
    if not left >= 0.001:
        return 0
    return int(math.floor(left * 1000.0))


def needs_refresh(installed_until: float | None, now: float, renew_interval_s: float) -> bool:
    """After a lease renewal: is the kernel's copy worth refreshing now?

    Not while what is installed still covers two more renewal intervals: a renewal
    that comes late by one interval still refreshes it in time. With the default
    timing (lease 1.5 s, renewals every 0.375 s, 1 s address granularity) that is
    every renewal; with long leases it saves most of them."""
    if installed_until is None:
        return True
    return installed_until - now < 2.0 * renew_interval_s
