"""The mirror module's VIP on an asyncio daemon: raise it (address + gratuitous ARP
burst + periodic refresh) on promotion, drop it before demotion completes.

Netlink calls go through ``run_in_executor``: pyroute2 0.9's synchronous IPRoute raises
"event loop is already running" on the loop's thread, and its AsyncIPRoute cannot open
its socket on uvloop (the daemon's loop). They take a few milliseconds in one dedicated
thread, so they run in the order they were asked for: a drop() that follows a cancelled
raise_() always removes after the add, never before.
Gratuitous ARP frames are sent directly on the loop from a non-blocking raw socket
(microseconds, never blocks); so a cancelled refresh task has no frame in flight and
nothing announces the VIP after drop() returns.

Kernel-side expiry (DESIGN.md rule 7): given ``lease`` (the lease holder the VIP is held
on), the address is added with a finite lifetime ending no later than that lease's
deadline, and ``lease_renewed`` (hooked to the holder's renewals) extends it. The kernel
counts lifetimes in whole seconds: raise_ asks the holder for an early renewal when less
than a second is left, rather than add an address that would outlive the lease. If the daemon dies or freezes, the kernel removes the
address by itself: nothing needs the daemon to act for the VIP to go.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from vip.address import (HeldAddress, VipError, add_vip, find_vip, has_vip, hold_vip,
                         remove_vip)
from vip.garp import GarpSocket
from vip.lifetime import address_lifetime_s, needs_refresh

log = logging.getLogger("hacluster.vip.announcer")

BURST_INTERVAL_S = 0.05
# What a deadline must leave beyond a whole second when read on the loop, for the
# netlink thread (which reads the clock again) to still get a lifetime of 1 s.
_THREAD_HOP_S = 0.05
# One worker: netlink changes are applied strictly in submission order.
_NETLINK_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vip-netlink")


class VipAnnouncer:
    """One virtual IP held by this node while it is primary."""

    def __init__(self, addr: str, prefixlen: int | None, interface: str | None,
                 refresh_s: float = 10.0, burst: int = 3,
                 lease: Callable[[], Any] | None = None,
                 renew_interval_s: float = 0.0, marker: Path | None = None) -> None:
        """``lease``: returns the lease holder the VIP is held on, or None; a holder has
        ``lease.valid_until()`` (its monotonic deadline, None while not held) and
        ``renew_now()`` (an early renewal; see hacluster.lease_holder.LeaseHolder).
        With it the address expires in the kernel at the deadline unless
        ``lease_renewed`` extends it; without it the address is held until dropped.
        ``renew_interval_s``: the lease's renewal interval (see lifetime.needs_refresh).
        ``marker``: a file that exists from before the address is added until after it
        is removed: a daemon that dies holding the VIP leaves it behind even once the
        kernel has expired the address (see ``left_behind``)."""
        if refresh_s < 0:
            raise VipError(f"bad refresh period {refresh_s!r} s for virtual IP {addr}: "
                           f"need >= 0 (0 = off)")
        if burst < 1:
            raise VipError(f"bad gratuitous ARP burst {burst!r} for virtual IP {addr}: "
                           f"need at least 1")
        self.addr = addr
        self.prefixlen = prefixlen
        self.interface = interface  # the requested one; None = the one whose subnet fits
        self.refresh_s = refresh_s
        self.burst = burst
        self._held_on: str | None = None
        self._garp: GarpSocket | None = None
        self._refresh_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # raise_, drop and lifetime refreshes never interleave
        self._lease = lease
        self.marker = marker
        self._renewed = asyncio.Event()
        self.renew_interval_s = renew_interval_s
        self._installed_until: float | None = None  # monotonic end of the kernel's lifetime
        self._held: HeldAddress | None = None         # as the kernel holds it, for hold_vip
        self._lifetime_task: asyncio.Task | None = None

    def left_behind(self) -> bool:
        """(blocking: call through an executor) Did a daemon leave this VIP held, or die
        holding it? The address is here, or the marker is (the address may have expired)."""
        return has_vip(self.addr) is not None or (self.marker is not None and self.marker.exists())

    def _mark(self) -> None:
        assert self.marker is not None
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.touch()

    def _unmark(self) -> None:
        assert self.marker is not None
        self.marker.unlink(missing_ok=True)

    @property
    def raised(self) -> bool:
        return self._held_on is not None

    @property
    def held_on(self) -> str | None:
        """The interface holding the VIP while raised."""
        return self._held_on

    async def _netlink(self, fn, *args):
        loop = asyncio.get_running_loop()
        # shield: if our caller is cancelled, the change still completes in its thread
        # and we never leave without knowing the address state.
        return await asyncio.shield(
            loop.run_in_executor(_NETLINK_THREAD, functools.partial(fn, *args)))

    def _send_round(self, rounds_done: int, why: str) -> int:
        assert self._garp is not None
        sent = self._garp.send_round()
        log.info("event=garp_sent addr=%s interface=%s count=%d why=%s round=%d",
                 self.addr, self._held_on, sent, why, rounds_done + 1)
        return sent

    async def raise_(self) -> None:
        """Add the address, send a gratuitous ARP burst, start the refresh task.
        Idempotent: raising a raised VIP sends a new burst."""
        async with self._lock:
            if self.marker is not None:
                await self._netlink(self._mark)
            if self._lease is None:
                held_on = await self._netlink(add_vip, self.addr, self.prefixlen, self.interface)
            else:
                deadline = await self._deadline_a_second_away()
                self._held, self._installed_until = await self._netlink(
                    self._add_until, self.interface, deadline)
                held_on = self._held.interface
            self._held_on = held_on
            log.info("event=vip_added addr=%s interface=%s", self.addr, held_on)
            if self._garp is None:
                try:
                    self._garp = GarpSocket(held_on, self.addr)
                except VipError:
                    await self._remove_locked()  # nothing half-applied
                    raise
            try:
                for i in range(self.burst):
                    if i:
                        await asyncio.sleep(BURST_INTERVAL_S)
                    self._send_round(i, "burst")
            except VipError:
                await self._remove_locked()  # not announced: do not hold it half-raised
                raise
            if self.refresh_s > 0 and self._refresh_task is None:
                self._refresh_task = asyncio.create_task(
                    self._refresh_loop(), name=f"vip-refresh-{self.addr}")

    def _current_deadline(self) -> float | None:
        holder = self._lease() if self._lease is not None else None
        return holder.lease.valid_until() if holder is not None else None

    async def _deadline_a_second_away(self) -> float:
        """The lease deadline, once it is at least the kernel's one-second granularity
        away (plus a little for the hop to the netlink thread): if it is not, ask the
        holder for an early renewal and wait for it (a Raft commit, milliseconds; longer
        during a Raft election). VipError if the lease is not held, ends meanwhile (its
        loss stops the promotion anyway), or is not renewed far enough within four
        renewal intervals (one lease): Raft commits slower than lease - margin - 1 s."""
        wait_s = max(4 * self.renew_interval_s, 1.0)
        give_up = time.monotonic() + wait_s
        while True:
            deadline = self._current_deadline()
            now = time.monotonic()
            if deadline is None or deadline <= now:
                raise VipError(f"virtual IP {self.addr}: its lease is not held")
            if deadline - now >= 1.0 + _THREAD_HOP_S:
                return deadline
            if now >= give_up:
                raise VipError(f"virtual IP {self.addr}: its lease was not renewed to a "
                               f"second ahead within {wait_s:.2f} s (the kernel counts "
                               f"address lifetimes in whole seconds)")
            self._renewed.clear()
            holder = self._lease() if self._lease is not None else None
            if holder is not None:
                holder.renew_now()
            try:
                await asyncio.wait_for(self._renewed.wait(), min(give_up, deadline) - now)
            except asyncio.TimeoutError:
                pass

    def _add_until(self, interface: str | None, deadline: float) -> tuple[HeldAddress, float]:
        """(netlink thread) Add the address, or set its lifetime, to end by ``deadline``."""
        now = time.monotonic()  # read here, just before the call: never a stale "now"
        lifetime = address_lifetime_s(deadline, now)
        if lifetime == 0:
            raise VipError(f"virtual IP {self.addr}: its lease ends in less than a second "
                           f"(the kernel's lifetime granularity)")
        held_on = add_vip(self.addr, self.prefixlen, interface, lifetime)
        held = find_vip(self.addr, held_on)
        if held is None:
            raise VipError(f"virtual IP {self.addr} vanished from {held_on} as it was added")
        return held, now + lifetime

    def _refresh_until(self, held: HeldAddress, deadline: float) -> float | None:
        """(netlink thread) Extend the address's lifetime to end by ``deadline`` (putting
        it back if the kernel expired it while its lease held: a renewal came just late;
        the clients' ARP entries still name this node). The new end, None if under a
        second of lease is left (then it is left to lapse)."""
        now = time.monotonic()
        lifetime = address_lifetime_s(deadline, now)
        if lifetime == 0:
            return None
        hold_vip(held, lifetime)
        return now + lifetime

    def fence_until(self) -> float | None:
        """Until when the kernel holds this address (monotonic; None: not raised), for
        the lease holder's fences (hacluster.node.lease_holder.LeaseHolder.add_fence)."""
        return self._installed_until if self.raised else None

    async def detach(self) -> None:
        """The daemon stops in maintenance and leaves the address to its kernel lifetime:
        stop refreshing and announcing it, keep it (and its marker)."""
        async with self._lock:
            for task in (self._refresh_task, self._lifetime_task):
                if task is not None:
                    task.cancel()
            self._refresh_task = self._lifetime_task = None

    def lease_renewed(self, valid_until: float) -> None:
        """The holder's lease was renewed up to ``valid_until``: extend the address's
        kernel lifetime (in the background, when lifetime.needs_refresh says so)."""
        self._renewed.set()
        if self._lease is None or not self.raised:
            return
        if self._lifetime_task is not None and not self._lifetime_task.done():
            return  # one refresh at a time; the next renewal brings the next one
        if not needs_refresh(self._installed_until, valid_until, self.renew_interval_s):
            return
        self._lifetime_task = asyncio.get_running_loop().create_task(
            self._refresh_lifetime(valid_until), name=f"vip-lifetime-{self.addr}")

    async def _refresh_lifetime(self, valid_until: float) -> None:
        async with self._lock:
            held = self._held
            if self._held_on is None or held is None:
                return  # dropped meanwhile: never bring it back
            try:
                until = await self._netlink(self._refresh_until, held, valid_until)
            except (VipError, OSError) as exc:
                log.warning("event=vip_lifetime_not_refreshed addr=%s error=%r", self.addr, str(exc))
                return
            if until is None:
                log.warning("event=vip_lifetime_not_refreshed addr=%s error=%r", self.addr,
                            "the lease ends in less than a second")
            else:
                self._installed_until = until

    async def _refresh_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                self._send_round(rounds, "refresh")
            except VipError as exc:
                # e.g. link down for a moment: keep refreshing, the checkers decide
                log.warning("event=garp_failed addr=%s error=%r", self.addr, str(exc))
            rounds += 1

    async def drop(self) -> None:
        """Stop refreshing and remove the address; it is gone when this returns.
        Safe to call when not raised (it then removes a leftover address, if any)."""
        async with self._lock:
            await self._remove_locked()

    async def _remove_locked(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike `await task`, keeps our own cancellation
        if self._garp is not None:
            self._garp.close()
            self._garp = None
        where = self._held_on or self.interface
        removed = await self._netlink(remove_vip, self.addr, where)
        self._held_on = None
        self._installed_until = None
        self._held = None
        if self.marker is not None:
            await self._netlink(self._unmark)
        log.info("event=vip_removed addr=%s interface=%s was_present=%s",
                 self.addr, where, removed)
