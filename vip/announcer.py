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
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from vip.address import VipError, add_vip, remove_vip
from vip.garp import GarpSocket

log = logging.getLogger("hacluster.vip.announcer")

BURST_INTERVAL_S = 0.05
# One worker: netlink changes are applied strictly in submission order.
_NETLINK_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vip-netlink")


class VipAnnouncer:
    """One virtual IP held by this node while it is primary."""

    def __init__(self, addr: str, prefixlen: int | None, interface: str | None,
                 refresh_s: float = 10.0, burst: int = 3) -> None:
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
        self._lock = asyncio.Lock()  # raise_ and drop never interleave

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
            held_on = await self._netlink(add_vip, self.addr, self.prefixlen, self.interface)
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
        log.info("event=vip_removed addr=%s interface=%s was_present=%s",
                 self.addr, where, removed)
