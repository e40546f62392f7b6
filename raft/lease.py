"""Lease arithmetic (DESIGN.md rule 1), pure: times are local monotonic seconds
passed in by the caller; nothing here reads a clock.

Two views of one lease:

* the holder counts from the *start* of its last successful renewal and stops
  acting at ``start + lease - margin``;
* the Raft leader counts from when it *applied* that renewal (which is always
  after the holder started it), and never earlier than a full lease after its
  own election, because renewals committed under the previous leader may not
  have been applied here yet.

The holder's deadline is therefore strictly before the leader's, as long as the
two clocks drift apart by less than ``margin`` over one lease.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Container, Mapping

# A holder renews four times per lease, so one lost renewal is not a demotion and a
# Raft election after the leader's death (0.3-0.6 s timeout, a split vote sometimes)
# still fits between a holder's last renewal and its deadline.
RENEWALS_PER_LEASE = 4


class LeaseConfigError(ValueError):
    """Lease timing that cannot be safe or cannot work."""


@dataclass(frozen=True)
class LeaseTiming:
    lease_s: float
    margin_s: float

    def __post_init__(self) -> None:
        if not self.lease_s > 0:
            raise LeaseConfigError(f"lease must be > 0 s, got {self.lease_s}")
        if not 0 < self.margin_s < self.lease_s - self.renew_interval_s:
            raise LeaseConfigError(
                f"lease margin must be > 0 and < lease - lease/{RENEWALS_PER_LEASE} "
                f"(= {self.lease_s - self.renew_interval_s:.3f} s), got {self.margin_s}"
            )

    @property
    def renew_interval_s(self) -> float:
        return self.lease_s / RENEWALS_PER_LEASE

    @property
    def max_drift(self) -> float:
        """Largest relative clock-rate difference between holder and leader that
        still keeps the holder's deadline before the leader's."""
        return self.margin_s / self.lease_s


# A maintenance hold (``hold_s``, minutes to hours) is counted on two clocks like the
# lease, so the holder gives up this fraction of it besides the margin: far more than
# two monotonic clocks drift apart (ppm), so the holder still stops first.
HOLD_DRIFT = 0.01


def holder_deadline(renewal_started_at: float, timing: LeaseTiming, hold_s: float = 0.0) -> float:
    """Holder's local time at which it must have stopped acting; ``hold_s``: what the
    renewal was granted beyond the lease (maintenance, ClusterState.renew_many)."""
    return (renewal_started_at + timing.lease_s - timing.margin_s
            + hold_s * (1.0 - HOLD_DRIFT))


def leader_expiry(applied_at: float, leader_since: float, lease_s: float) -> float:
    """Leader's local time from which it may hand the lease to someone else."""
    return max(applied_at, leader_since) + lease_s


class HolderLease:
    """The holder's side of one lease: when it is valid and when to renew.

    ``epoch`` is the lease epoch Raft handed out; a renewal that comes back
    with another epoch means someone else got the lease in between.
    """

    def __init__(self, timing: LeaseTiming) -> None:
        self.timing = timing
        self.epoch: int | None = None
        self._valid_until: float | None = None
        self._last_started: float | None = None

    def renewal_succeeded(self, started_at: float, epoch: int, hold_s: float = 0.0) -> None:
        """``hold_s``: what this renewal was granted beyond the lease (maintenance)."""
        if self.epoch is not None and epoch != self.epoch:
            # A new epoch starts a new lease; nothing carries over.
            self._valid_until = None
            self._last_started = None
        self.epoch = epoch
        deadline = holder_deadline(started_at, self.timing, hold_s)
        if self._valid_until is None or deadline > self._valid_until:
            self._valid_until = deadline
        if self._last_started is None or started_at > self._last_started:
            self._last_started = started_at

    def extended(self) -> bool:
        """Held beyond what its last renewal gives without a maintenance hold."""
        return (self._valid_until is not None and self._last_started is not None
                and self._valid_until > holder_deadline(self._last_started, self.timing))

    def drop_extension(self) -> None:
        """Maintenance is over: act no longer than a plain renewal gives (its holder
        then lets its fences catch up before it renews without asking for a hold)."""
        if self._valid_until is not None and self._last_started is not None:
            self._valid_until = min(self._valid_until,
                                    holder_deadline(self._last_started, self.timing))

    def lost(self) -> None:
        """Raft said no (released, expired, or another holder): stop now."""
        self._valid_until = None
        self._last_started = None
        self.epoch = None

    def valid(self, now: float) -> bool:
        return self._valid_until is not None and now < self._valid_until

    def valid_until(self) -> float | None:
        return self._valid_until

    def renewal_due_at(self) -> float | None:
        if self._last_started is None:
            return None
        return self._last_started + self.timing.renew_interval_s

    def renew_due(self, now: float) -> bool:
        due = self.renewal_due_at()
        return due is None or now >= due


class LeaderLeaseClock:
    """The leader's side: when each lease was last renewed, by the local clock.

    Every node keeps one (every node applies every entry); only the leader acts
    on it. ``became_leader`` must be called when this node wins an election.
    """

    def __init__(self) -> None:
        self._applied_at: dict[str, float] = {}
        self._leader_since: float | None = None

    def renewal_applied(self, resource: str, now: float) -> None:
        self._applied_at[resource] = now

    def became_leader(self, now: float) -> None:
        self._leader_since = now

    def stepped_down(self) -> None:
        self._leader_since = None

    @property
    def leader_since(self) -> float | None:
        return self._leader_since

    def expires_at(self, resource: str, lease_s: float) -> float | None:
        """When the leader may take the lease away (None: not the leader)."""
        if self._leader_since is None:
            return None
        # A lease we never saw applied counts from our election.
        applied = self._applied_at.get(resource, self._leader_since)
        return leader_expiry(applied, self._leader_since, lease_s)

    def expired(self, resource: str, lease_s: float, now: float) -> bool:
        """True when the leader may take the lease away from its holder."""
        expiry = self.expires_at(resource, lease_s)
        return expiry is not None and now >= expiry


@dataclass(frozen=True)
class LeaseExpiry:
    """A lease the leader takes away: the arguments of the ``expire`` command, whose
    (epoch, seq) fence makes it a no-op if the lease changed since."""

    resource: str
    holder: str
    epoch: int
    seq: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.resource, self.epoch, self.seq)


@dataclass(frozen=True)
class ExpiryCheck:
    """What one look at the leases decided: what to expire now, and when to look again."""

    expire: tuple[LeaseExpiry, ...]
    next_check_at: float


def check_expiry(leases: Mapping[str, Mapping[str, Any]], clock: LeaderLeaseClock, now: float,
                 check_period_s: float, pending: Container[tuple[str, int, int]] = ()) -> ExpiryCheck:
    """The Raft leader's side of DESIGN.md rule 1, pure: which held leases it may take
    away at ``now`` (a full lease since their renewal was applied here, and since this
    node's election), and when to look again (the earliest expiry still to come, at the
    latest ``check_period_s`` from now, so a lease granted meanwhile is looked at too).

    ``leases`` is ClusterState's table (resource -> holder, epoch, seq, lease_s, and
    "hold_s" while its holder may act that much longer: maintenance); a
    lease whose (resource, epoch, seq) is in ``pending`` already has an ``expire`` on
    its way and is not proposed twice. A node that does not lead expires nothing."""
    next_check = now + check_period_s
    if clock.leader_since is None:
        return ExpiryCheck((), next_check)
    expire = []
    for resource, lease in leases.items():
        if lease["holder"] is None:
            continue
        expiry = clock.expires_at(resource, lease["lease_s"] + lease.get("hold_s", 0.0))
        assert expiry is not None  # None only when not the leader, returned above
        if now < expiry:
            next_check = min(next_check, expiry)
            continue
        one = LeaseExpiry(resource, lease["holder"], lease["epoch"], lease["seq"])
        if one.key not in pending:
            expire.append(one)
    return ExpiryCheck(tuple(expire), next_check)
