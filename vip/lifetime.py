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
# How long a backstop address (``backstop_lifetime_s``) outlives its fence, beyond the
# rounding up to a whole second.
BACKSTOP_S = 1
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


def backstop_lifetime_s(deadline: float, now: float) -> int:
    """The lifetime (whole seconds) of an address that is NOT the fence but its backstop:
    a farm VIP, whose node accepts only the buckets in its nft set, each with an exact
    timeout at ``deadline`` (``element_timeout_ms``); once they lapse nothing reaches the
    application whatever the address does. 0 when the lease is over.

    Rounded UP and ``BACKSTOP_S`` added, so the address outlives the buckets: with the
    floor of ``address_lifetime_s`` (1 s out of the 1.19 s a default renewal leaves) it
    lapsed up to ~0.45 s before them whenever renewals paused for a Raft election, and
    for that moment the node dropped connections in buckets it still owned (seen in the
    farm chaos: a survivor's clients unanswered +1.02 s after the Raft leader's host was
    killed). Still bounded: a node whose ruleset was removed behind the daemon's back
    loses the address within ``BACKSTOP_S`` + 1 s + ``ADDRESS_EXPIRY_LAG_S`` of the lease."""
    left = deadline - now
    if not left > 0.0:      # also NaN
        return 0
    return min(int(math.ceil(left)) + BACKSTOP_S, INFINITE_LFT - 1)


def needs_refresh(installed_until: float | None, valid_until: float,
                  renew_interval_s: float) -> bool:
    """After a lease renewal up to ``valid_until``: is the kernel's copy worth refreshing?

    Yes unless it already ends within an eighth of a renewal interval of the new
    deadline. Every renewal moves the deadline a whole interval, so in practice that is
    every renewal: what the kernel holds must end as close to the lease as it can,
    and never after it (a deadline that moved nearer is refreshed too),
    because when renewals pause (a Raft leader's death, an election) it is the kernel's
    copy, not the lease, that runs out first. (Skipping every other refresh, as an
    earlier rule did, left the buckets 0.44 s instead of 0.82 s at worst.)"""
    if installed_until is None:
        return True
    # A deadline brought nearer (a maintenance hold dropped, raft.lease.drop_extension):
    # the kernel's copy must come back within it.
    return valid_until - installed_until > renew_interval_s / 8.0 or installed_until > valid_until
