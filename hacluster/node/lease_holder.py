"""Hold a named Raft lease from the event loop: acquire, renew every lease/4,
and stop acting at the holder's deadline whether or not Raft answers
(DESIGN.md rule 1). The arithmetic is raft.lease.HolderLease; this is the I/O.

The leases one node holds (its liveness lease, each module's primary lease) are
renewed together: ``RenewalBatch`` sends one ``renew_many`` entry for all of them
instead of one ``renew`` entry each, so a node costs one Raft commit (appends,
fsyncs on every voter, acks) per renewal interval however many modules it runs.
A holder whose renewal is due within half an interval joins a batch that goes
anyway: renewing early is always safe (each lease counts from the start of its
own last renewal), and after one interval the node's leases renew in step.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Callable

from raft.commands import ACQUIRE, RELEASE, RENEW_MANY
from raft.lease import HolderLease, LeaseTiming
from raft.member import RaftCommandError, RaftMember

from hacluster.http.histogram import Histogram

log = logging.getLogger("hacluster.lease")

# After the first holder asks, wait this long for others before committing: a few
# holders due at the same moment (after a restart, after one early join) share it.
GATHER_S = 0.002
# A renewal that fails fast (refused unsent, the leader gone) is retried this many
# times per renewal interval at most, not at once: a member cut off from Raft
# would otherwise loop on failing commits as fast as they fail. Eight tries still
# fit several between a missed renewal and the holder's deadline (lease - margin).
RETRIES_PER_INTERVAL = 8


class RenewalBatch:
    """One ``renew_many`` commit for every lease of one node (see the module doc)."""

    _batches: "weakref.WeakKeyDictionary[RaftMember, dict[str, RenewalBatch]]" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, raft: RaftMember, node: str) -> "RenewalBatch":
        per_node = cls._batches.setdefault(raft, {})
        if node not in per_node:
            per_node[node] = cls(raft, node)
        return per_node[node]

    def __init__(self, raft: RaftMember, node: str) -> None:
        self.raft = raft
        self.node = node
        self.holders: set[LeaseHolder] = set()
        self._asked: dict[LeaseHolder, asyncio.Future] = {}
        self._timer: asyncio.TimerHandle | None = None
        # Has the cluster the feature level of renew_many's extensions? (the daemon's
        # committed state; before it, the form every version applies)
        self.extensions_allowed: Callable[[], bool] = lambda: False
        # For the metrics endpoint: how long committed batches took, how many did not.
        self.latency = Histogram()
        self.unconfirmed = 0

    async def renew(self, holder: "LeaseHolder") -> None:
        """Renew ``holder``'s lease with the next batch; returns once the holder
        has taken the answer in (or the renewal went unconfirmed)."""
        fut = self._asked.get(holder)
        if fut is None:
            fut = self._asked[holder] = asyncio.get_running_loop().create_future()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._send)
        await asyncio.shield(fut)

    def _send(self) -> None:
        self._timer = None
        asked, self._asked = self._asked, {}
        now = time.monotonic()
        members = [h for h in asked if h.lease.epoch is not None and not h.stopping]
        members += [h for h in self.holders
                    if h not in asked and not h.renewing and h.early_renewal_ok(now)]
        if not members:
            for fut in asked.values():
                if not fut.done():
                    fut.set_result(None)
            return
        asyncio.get_running_loop().create_task(self._commit(members, asked))

    async def _commit(self, members: list["LeaseHolder"], asked: dict) -> None:
        # Which leases ask for a maintenance hold: decided (and extensions dropped)
        # before ``started``, so a lease renewed without asking had its fences back
        # within a plain lease before its renewal started (raft.cluster_state.renew_many).
        extend = [h.resource for h in members if h.asks_hold()]
        # Taken before the entry is proposed: each lease counts from no later than this.
        started = time.monotonic()
        epochs = {h: (h.lease.epoch, h.generation) for h in members}
        for h in members:
            h.renewing += 1
        try:
            timeout = min(h.timing.renew_interval_s for h in members)
            leases = [[h.resource, epochs[h][0]] for h in members]
            # The form older versions apply, unless the cluster's feature level allows the other.
            args: tuple = (self.node, leases, extend) if self.extensions_allowed() else (self.node, leases)
            try:
                result = await asyncio.wait_for(asyncio.wrap_future(self.raft.submit(
                    RENEW_MANY.name, *args)), timeout)
            except (asyncio.TimeoutError, RaftCommandError) as e:
                log.debug("event=lease_renew_unconfirmed node=%s resources=%s reason=%r", self.node,
                          ",".join(h.resource for h in members), str(e))
                self.unconfirmed += 1
                for h in members:
                    h.retry_not_before = started + h.timing.renew_interval_s / RETRIES_PER_INTERVAL
                return
            self.latency.observe(time.monotonic() - started)
            for h in members:
                one = (result.get("results") or {}).get(h.resource) if result.get("ok") else result
                h.answered(epochs[h][1], started, one or {"ok": False, "error": "no answer"})
        finally:
            for h in members:
                h.renewing -= 1
            for fut in asked.values():
                fut.done() or fut.set_result(None)


class LeaseHolder:
    def __init__(self, raft: RaftMember, resource: str, node: str, timing: LeaseTiming,
                 on_acquired: Callable[[int], None] | None = None,
                 on_lost: Callable[[int, str], None] | None = None,
                 force: bool = False,
                 on_turn: Callable[[], None] | None = None,
                 resume_epoch: int | None = None) -> None:
        """``resume_epoch``: go on with a session of this lease that a daemon before this
        one left running (maintenance): renew at that epoch instead of acquiring (an
        acquire by the holder starts a new epoch); ``on_acquired`` once it is granted,
        ``on_lost`` if it is refused."""
        self.raft = raft
        self.resource = resource
        self.node = node
        self.timing = timing
        self.lease = HolderLease(timing)
        self.force = force
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        # Called at every turn of the loop, held or not: the loop turns at least every
        # two renewal intervals, which is what a watchdog fed from it relies on.
        self._on_turn = on_turn
        self._watchers: list[Callable[[bool], None]] = []
        self._renewal_watchers: list[Callable[[float], None]] = []
        self._wake = asyncio.Event()
        self._deadline_timer: asyncio.TimerHandle | None = None
        # Bumped on every loss, so a late answer to an older renewal is ignored.
        self.generation = 0
        self.stopping = False
        self._renew_asap = False   # renew_now() asked for a renewal before it is due
        self.renewing = 0  # batches with this lease in them that have not been answered
        self.last_refusal: str | None = None
        # After an unconfirmed renewal: the earliest time to try again (monotonic).
        self.retry_not_before = 0.0
        self.batch = RenewalBatch.of(raft, node)
        self._resuming = resume_epoch is not None
        if resume_epoch is not None:
            self.lease.epoch = resume_epoch     # not valid until its first renewal is granted
        # Maintenance (raft.cluster_state.set_maintenance): does the committed state cover
        # this lease now? And what acts on this lease's behalf (a VIP's lifetime, a farm's
        # bucket timeouts, a mount's permit to outlive the daemon): each returns until
        # when it acts (monotonic), None when it does not.
        self.wants_hold: Callable[[], bool] = lambda: False
        self._fences: list[Callable[[], float | None]] = []

    # ---- queries ---------------------------------------------------------
    def holding(self) -> bool:
        return self.lease.valid(time.monotonic())

    @property
    def epoch(self) -> int | None:
        return self.lease.epoch if self.holding() else None

    def watch(self, callback: Callable[[bool], None]) -> None:
        """``callback(True)`` when the lease is acquired, ``callback(False)`` when it
        is lost (deadline, refusal, stop): for components that act only while it is held."""
        self._watchers.append(callback)

    def watch_renewals(self, callback: Callable[[float], None]) -> None:
        """``callback(valid_until)`` after every successful acquire or renewal, with the
        holder's new deadline (monotonic): for what the kernel holds on this lease's
        behalf and must expire by itself at that deadline (DESIGN.md rule 7)."""
        self._renewal_watchers.append(callback)

    def add_fence(self, until: Callable[[], float | None]) -> None:
        """Something that acts for this lease until ``until()`` (see ``asks_hold``)."""
        self._fences.append(until)

    def asks_hold(self) -> bool:
        """Ask for a maintenance hold in the next renewal? While maintenance covers the
        lease, yes. Once it is over the lease drops its extension, its fences are told
        the shorter deadline, and it goes on asking (nothing is granted, but Raft keeps
        the old hold) until every fence acts no longer than the lease: only a renewal
        that does not ask lets the Raft leader count a plain lease again."""
        if self.wants_hold():
            return True
        if self.lease.extended():
            self.lease.drop_extension()
            self._arm_deadline()    # the holder itself stops at the nearer deadline too
            log.info("event=lease_hold_dropped resource=%s valid_until=%.3f reason=%r",
                     self.resource, self.lease.valid_until() or 0.0, "maintenance is over")
            valid_until = self.lease.valid_until()
            if valid_until is not None:
                for renewed in list(self._renewal_watchers):
                    renewed(valid_until)
        valid_until = self.lease.valid_until() or time.monotonic()
        return any((f() or 0.0) > valid_until for f in self._fences)

    def renew_now(self) -> None:
        """Renew as soon as possible instead of at the next due time: for a caller that
        needs the deadline further away than it is (the kernel counts a VIP's lifetime
        in whole seconds). Early renewals are always safe (see the module doc)."""
        if self.lease.epoch is not None and not self.stopping:
            self._renew_asap = True
            self._wake.set()

    def wake(self) -> None:
        """The lease changed in Raft (expired, released): try again now."""
        self._wake.set()

    def early_renewal_ok(self, now: float) -> bool:
        """Held, and due within half a renewal interval: worth joining a batch now."""
        due = self.lease.renewal_due_at()
        return (self.lease.epoch is not None and not self.stopping and due is not None
                and due - now < self.timing.renew_interval_s / 2)

    # ---- loop ----------------------------------------------------------------
    async def run(self) -> None:
        self.batch.holders.add(self)
        try:
            while not self.stopping:
                if self._on_turn is not None:
                    self._on_turn()
                if self.lease.epoch is None:
                    await self._attempt(ACQUIRE.name, self.resource, self.node, self.timing.lease_s,
                                        self.force)
                    if self.lease.epoch is None:
                        await self._sleep(self.timing.renew_interval_s)
                    continue
                now = time.monotonic()
                if (self.lease.renew_due(now) or self._renew_asap) and now >= self.retry_not_before:
                    self._renew_asap = False
                    await self.batch.renew(self)
                else:
                    due = max(self.lease.renewal_due_at() or now, self.retry_not_before)
                    await self._sleep(max(0.0, due - now))
        finally:
            self.batch.holders.discard(self)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _attempt(self, op: str, *args) -> None:
        generation = self.generation
        started = time.monotonic()
        # Waiting longer than the renewal interval is pointless: by then we retry.
        timeout = self.timing.renew_interval_s
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(self.raft.submit(op, *args)), timeout)
        except (asyncio.TimeoutError, RaftCommandError) as e:
            log.debug("event=lease_%s_unconfirmed resource=%s reason=%r", op, self.resource, str(e))
            return
        self.answered(generation, started, result)

    def answered(self, generation: int, started: float, result: dict) -> None:
        """A committed answer to an acquire or renewal that started at ``started``."""
        if generation != self.generation or self.stopping:
            return
        if result.get("ok"):
            was_holding = self.lease.epoch is not None and not self._resuming
            self._resuming = False
            self.lease.renewal_succeeded(started, result["epoch"], float(result.get("hold_s") or 0.0))
            self.last_refusal = None
            self._arm_deadline()
            if not was_holding:
                log.info("event=lease_acquired resource=%s epoch=%d mono=%.6f renewal_started=%.6f",
                         self.resource, result["epoch"], time.monotonic(), started)
                if self._on_acquired:
                    self._on_acquired(result["epoch"])
                for watcher in list(self._watchers):
                    watcher(True)
            valid_until = self.lease.valid_until()
            if valid_until is not None and self.lease.epoch is not None:
                for renewed in list(self._renewal_watchers):
                    renewed(valid_until)
        elif self.lease.epoch is not None:
            self._lose(f"refused: {result.get('error')}")
        else:
            if result.get("error") != self.last_refusal:
                log.info("event=lease_refused resource=%s reason=%r", self.resource, result.get("error"))
            self.last_refusal = result.get("error")

    def _arm_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        valid_until = self.lease.valid_until()
        if valid_until is None:
            return
        delay = max(0.0, valid_until - time.monotonic())
        self._deadline_timer = asyncio.get_running_loop().call_later(delay, self._check_deadline)

    def _check_deadline(self) -> None:
        if self.lease.epoch is None:
            return
        if self.lease.valid(time.monotonic()):
            self._arm_deadline()  # a renewal moved it meanwhile
            return
        self._lose("deadline: no successful renewal for lease - margin")

    def _lose(self, reason: str) -> None:
        epoch = self.lease.epoch
        self.lease.lost()
        self.generation += 1
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        log.warning("event=lease_lost resource=%s epoch=%s reason=%r mono=%.6f",
                    self.resource, epoch, reason, time.monotonic())
        if self._on_lost and epoch is not None:
            self._on_lost(epoch, reason)
        if epoch is not None:
            for watcher in list(self._watchers):
                watcher(False)
        self._wake.set()

    async def stop(self, release: bool = True) -> None:
        """Stop acting first, then hand the lease back so nobody waits a lease."""
        self.stopping = True
        epoch = self.lease.epoch
        if epoch is not None:
            self._lose("stopping")
            if release:
                # Worth waiting up to a lease: without the release, others wait that long.
                try:
                    await asyncio.wait_for(asyncio.wrap_future(
                        self.raft.submit(RELEASE.name, self.resource, self.node, epoch)),
                        self.timing.lease_s)
                except (asyncio.TimeoutError, RaftCommandError):
                    pass
        self._wake.set()

    async def hand_back(self) -> None:
        """Give the lease up on purpose: stop acting and release it in Raft, so that
        nobody waits a lease for it. Not a loss: ``on_lost`` is not called (whoever
        hands it back has already stopped what a fence would stop); watchers still
        hear False."""
        self._on_lost = None
        await self.stop(release=True)
