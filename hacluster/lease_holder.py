"""Hold a named Raft lease from the event loop: acquire, renew every lease/3,
and stop acting at the holder's deadline whether or not Raft answers
(DESIGN.md rule 1). The arithmetic is raft.lease.HolderLease; this is the I/O.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from raft.lease import HolderLease, LeaseTiming
from raft.member import RaftCommandError, RaftMember

log = logging.getLogger("hacluster.lease")


class LeaseHolder:
    def __init__(self, raft: RaftMember, resource: str, node: str, timing: LeaseTiming,
                 on_acquired: Callable[[int], None] | None = None,
                 on_lost: Callable[[int, str], None] | None = None,
                 force: bool = False) -> None:
        self.raft = raft
        self.resource = resource
        self.node = node
        self.timing = timing
        self.lease = HolderLease(timing)
        self.force = force
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._watchers: list[Callable[[bool], None]] = []
        self._wake = asyncio.Event()
        self._deadline_timer: asyncio.TimerHandle | None = None
        # Bumped on every loss, so a late answer to an older renewal is ignored.
        self._generation = 0
        self._stopping = False
        self.last_refusal: str | None = None

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

    def wake(self) -> None:
        """The lease changed in Raft (expired, released): try again now."""
        self._wake.set()

    # ---- loop ----------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            if self.lease.epoch is None:
                await self._attempt("acquire", self.resource, self.node, self.timing.lease_s, self.force)
                if self.lease.epoch is None:
                    await self._sleep(self.timing.renew_interval_s)
                continue
            now = time.monotonic()
            if self.lease.renew_due(now):
                await self._attempt("renew", self.resource, self.node, self.lease.epoch)
            else:
                await self._sleep(max(0.0, (self.lease.renewal_due_at() or now) - now))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _attempt(self, op: str, *args) -> None:
        generation = self._generation
        started = time.monotonic()
        # Waiting longer than the renewal interval is pointless: by then we retry.
        timeout = self.timing.renew_interval_s
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(self.raft.submit(op, *args)), timeout)
        except (asyncio.TimeoutError, RaftCommandError) as e:
            log.debug("event=lease_%s_unconfirmed resource=%s reason=%r", op, self.resource, str(e))
            return
        if generation != self._generation or self._stopping:
            return
        if result.get("ok"):
            was_holding = self.lease.epoch is not None
            self.lease.renewal_succeeded(started, result["epoch"])
            self.last_refusal = None
            self._arm_deadline()
            if not was_holding:
                log.info("event=lease_acquired resource=%s epoch=%d mono=%.6f renewal_started=%.6f",
                         self.resource, result["epoch"], time.monotonic(), started)
                if self._on_acquired:
                    self._on_acquired(result["epoch"])
                for watcher in list(self._watchers):
                    watcher(True)
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
        self._generation += 1
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
        self._stopping = True
        epoch = self.lease.epoch
        if epoch is not None:
            self._lose("stopping")
            if release:
                # Worth waiting up to a lease: without the release, others wait that long.
                try:
                    await asyncio.wait_for(asyncio.wrap_future(
                        self.raft.submit("release", self.resource, self.node, epoch)),
                        self.timing.lease_s)
                except (asyncio.TimeoutError, RaftCommandError):
                    pass
        self._wake.set()
