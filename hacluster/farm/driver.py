"""A farm module on this node: the driver around ``farm_machine``.

The machine decides; this carries its plans out: scripts (ScriptRunner), Raft
commits (intent, farm_join with this node's power, farm_leave), and the farm
VIP (vip.FarmVip: address, shared MAC, ARP responder, bucket ruleset). The
committed view comes from the Raft snapshot after every applied entry, plus
this node's liveness lease: ``connected`` turns false at the lease holder's
deadline, which comes before the leader can expire the lease and give this
node's buckets to the others (DESIGN rule 1), so two nodes never accept the
same bucket for longer than the ruleset swap takes.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import zlib
from typing import Any, Mapping

from raft.cluster_state import liveness_resource
from raft.commands import FARM_JOIN, FARM_LEAVE, SET_INTENT
from vip.address import VipError, interface_for
from vip.farm_vip import FarmVip, cleanup_leftovers
from vip.lifetime import needs_refresh

from hacluster.http.snapshot import ModuleSnapshot
from hacluster.modules.checks import RESUME
from hacluster.modules.host import ModuleSlice
from hacluster.modules.runtime import ModuleRuntime, Placement, PlanFailed
from hacluster.node.control import ControlError

from . import machine as fm

log = logging.getLogger("hacluster.farm")

RETRY_VIEW_S = 1.0


def hash_seed(module: str) -> int:
    """The same on every node (they must hash a client into the same bucket)."""
    return zlib.crc32(f"hacluster-farm/{module}".encode())


class FarmModule(ModuleRuntime):
    mode = "farm"
    machine: fm.FarmMachine
    # The machine retries a failed commit on the next view: give it one even if
    # nothing changed in Raft meanwhile.
    retry_view_after_failure_s = RETRY_VIEW_S

    def __init__(self, placement: Placement) -> None:
        # Its own liveness lease comes from its holder here (``_connected``), not from
        # Raft: the view reads only the module's entry.
        super().__init__(placement, fm.FarmMachine(placement.host.name), {})
        powers = {n.name: n.power for n in self.config.farm_nodes}
        self.power = powers.get(self.node, 1)
        self.farm_vip: FarmVip | None = None
        # One thread for every VIP operation: an urgent drop queues behind a
        # raise that is already in the kernel, never beside it.
        self._vip_thread = concurrent.futures.ThreadPoolExecutor(1, f"farm-vip-{self.name}")
        self.error: str | None = None
        self._refreshing: concurrent.futures.Future | None = None
        self.left_running = False       # close() in maintenance left this node serving

    # ---- set-up -----------------------------------------------------------------
    async def _make_vip(self) -> FarmVip | None:
        if not self.config.vips:
            return None
        v = self.config.vips[0]
        loop = asyncio.get_running_loop()
        interface = v.interface
        if not interface:
            interface = await loop.run_in_executor(self._vip_thread, interface_for, v.addr)
        rules = [(r.port, r.proto, r.filter) for r in self.config.lb_rules]
        # What this node holds for the farm is held on its liveness lease (see
        # _connected): the kernel lets the address and the buckets lapse at that
        # lease's deadline unless _lease_renewed extends them (DESIGN.md rule 7).
        return FarmVip(self.name, v.addr, interface, rules, hash_seed(self.name),
                       deadline=self._liveness_deadline)

    def _liveness_deadline(self) -> float | None:
        """(any thread) The liveness lease's deadline, None while it is not held."""
        holder = self.host.holder(liveness_resource(self.node))
        return holder.lease.valid_until() if holder is not None else None

    def _lease_renewed(self, valid_until: float) -> None:
        """The liveness lease was renewed: extend what the kernel holds, on the VIP
        thread (behind any raise or drop already queued there), when it is due."""
        vip = self.farm_vip
        if vip is None or not vip.raised or self.closed:
            return
        if self._refreshing is not None and not self._refreshing.done():
            return                  # one at a time; the next renewal brings the next one
        holder = self.host.holder(liveness_resource(self.node))
        interval = holder.timing.renew_interval_s if holder is not None else 0.0
        if not needs_refresh(vip.installed_until, valid_until, interval):
            return
        self._refreshing = self._vip_thread.submit(vip.refresh)
        self._refreshing.add_done_callback(self._refreshed)

    def _refreshed(self, fut: concurrent.futures.Future) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("event=farm_vip_not_refreshed module=%s error=%r", self.name, str(exc))

    async def start(self) -> None:
        """A daemon stopped in maintenance left this node serving (``close``): take it
        over (``_adopt``). Otherwise clean what a previous life may have left."""
        loop = asyncio.get_running_loop()
        adopted = await self._adopt()
        if adopted is None:
            removed = await loop.run_in_executor(self._vip_thread, cleanup_leftovers, self.name)
            if removed:
                log.warning("event=leftovers_cleaned module=%s removed=%r", self.name, removed)
            try:
                self.farm_vip = await self._make_vip()
            except (VipError, ValueError) as e:
                self.error = f"farm VIP: {e}"
                log.error("event=farm_vip_unusable module=%s error=%r", self.name, str(e))
        liveness = self.host.holder(liveness_resource(self.node))
        if liveness is not None:
            liveness.watch(lambda held: self.refresh())
            liveness.watch_renewals(self._lease_renewed)
            # what the kernel accepts for this node reaches as far as the buckets' timeouts:
            # a maintenance hold is given back only once they are within a plain lease
            liveness.add_fence(lambda: self.farm_vip.installed_until
                               if self.farm_vip is not None and self.farm_vip.raised else None)
        self.started = True
        self._start_checks()
        self.feed(fm.Adopted(adopted) if adopted is not None else fm.Restarted())
        self.refresh()

    # ---- the committed view --------------------------------------------------------
    def _connected(self) -> bool:
        holder = self.host.holder(liveness_resource(self.node))
        return holder is not None and holder.holding()

    def view_from(self, part: ModuleSlice) -> fm.View:
        module = part.entry()
        farm = module.get("farm") or {}
        table = farm.get("table") or []
        return fm.View(version=farm.get("version", 0),
                       buckets=frozenset(i for i, owner in enumerate(table) if owner == self.node),
                       joined=self.node in (farm.get("members") or {}),
                       connected=self._connected(),
                       intent=(module.get("intent") or {}).get(self.node))

    def _state_fields(self) -> tuple[str, str]:
        view = self._last_view or fm.View()
        return (f"version={view.version} buckets={len(view.buckets)}",
                f"table version {view.version}")

    # ---- actions -------------------------------------------------------------------------
    async def _do(self, a: fm.Action) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(a, fm.RunScript):
            await self._run_script(a)
        elif isinstance(a, fm.CommitIntent):
            try:
                await self._commit(SET_INTENT, self.name, self.node, a.intent)
            except PlanFailed as e:     # best effort: the local command holds meanwhile
                log.warning("event=intent_not_committed module=%s error=%r", self.name, str(e))
        elif isinstance(a, fm.CommitFarmJoin):
            await self._commit(FARM_JOIN, self.name, self.node, self.power, retry_s=10.0)
        elif isinstance(a, fm.CommitFarmLeave):
            try:
                await self._commit(FARM_LEAVE, self.name, self.node, retry_s=2.0)
            except PlanFailed as e:     # the liveness expiry takes this node out anyway
                log.warning("event=farm_leave_not_committed module=%s error=%r", self.name, str(e))
        elif isinstance(a, (fm.RaiseVip, fm.SetBuckets)):
            if self.farm_vip is None:
                raise PlanFailed(self.error or "this farm module has no <vip>")
            fn = self.farm_vip.raise_ if isinstance(a, fm.RaiseVip) else self.farm_vip.set_buckets
            await loop.run_in_executor(self._vip_thread, fn, set(a.buckets))
            if self.farm_vip.address_pending:
                # Under a second of lease was left: the address (whole-second lifetimes)
                # was not added; an early renewal's refresh adds it in milliseconds.
                holder = self.host.holder(liveness_resource(self.node))
                if holder is not None:
                    holder.renew_now()
            log.info("event=farm_buckets module=%s version=%d buckets=%d", self.name, a.version,
                     len(a.buckets))
        elif isinstance(a, fm.DropVip):
            if self.farm_vip is not None:
                await loop.run_in_executor(self._vip_thread, self.farm_vip.drop)
        else:
            raise PlanFailed(f"unknown action {a!r}")

    # ---- commands ---------------------------------------------------------------------------
    async def command(self, name: str, request: Mapping[str, Any]) -> str | dict[str, Any]:
        out = self.feed(fm.Command(name))
        if out.refused:
            raise ControlError(f"module {self.name}: {out.refused}")
        return f"{name}: accepted"

    def checker_action(self, action: str, cause: str) -> None:
        """What a fired failover rule asks (after the action loop): restart, stopstart,
        stop, wait, or resume (the wait of ``cause`` is over); a farm has no swap."""
        if action == "swap":
            self._module_log(f"checker {cause}: swap ignored (a farm module has no primary)")
            return
        if action != RESUME and self._read_slice().maintenance:
            log.warning("event=checker_action_ignored module=%s action=%s cause=%s reason=%r",
                        self.name, action, cause, "maintenance")
            self._module_log(f"checker {cause}: {action} ignored: the module is in maintenance")
            return
        out = self.feed(fm.CheckerUp(cause) if action == RESUME else fm.CheckerDown(cause, action))
        if out.refused:
            log.warning("event=checker_action_refused module=%s action=%s cause=%s reason=%r",
                        self.name, action, cause, out.refused)
            self._module_log(f"checker {cause}: {action} refused: {out.refused}")

    def status(self) -> dict:
        state, ready = self.machine.display
        view = self._last_view or fm.View()
        farm = self._read_slice().entry().get("farm") or {}
        return {
            "module": self.name, "mode": "farm", "node": self.node,
            "state": state.value, "ready": ready, "exit_code": state.exit_code,
            "version": view.version, "buckets": len(view.buckets), "power": self.power,
            "members": dict(farm.get("members") or {}), "connected": view.connected,
            "intent": self.machine.intent,
            "vip": ([self.farm_vip.vip] if self.farm_vip is not None and self.farm_vip.raised else []),
            "transition": self.machine.running.reason if self.machine.running else None,
            "error": self.error,
        }

    def http_module(self) -> ModuleSnapshot:
        view = self._last_view or fm.View()
        return dataclasses.replace(super().http_module(), nodes=tuple(self.nodes),
                                   buckets=len(view.buckets), table_version=view.version or 0)

    # ---- maintenance: a daemon restarted while this node serves ---------------------------
    async def _adopt(self) -> frozenset[int] | None:
        """In maintenance, with this node still a farm member holding buckets and its
        ruleset left in the kernel: once this daemon holds its liveness lease, swap the
        ruleset to the committed buckets with this lease's deadline and serve on (the
        buckets the node accepted never lapse in between). None: nothing to adopt."""
        part = self._read_slice()
        farm = part.entry().get("farm") or {}
        if not part.maintenance or self.node not in (farm.get("members") or {}):
            return None
        liveness = self.host.holder(liveness_resource(self.node))
        if liveness is None:
            return None
        give_up = asyncio.get_running_loop().time() + 4 * self.host.config.raft.lease_s
        while not liveness.holding():
            if asyncio.get_running_loop().time() >= give_up:
                return None
            await asyncio.sleep(0.05)
        buckets = frozenset(i for i, owner in enumerate(farm.get("table") or []) if owner == self.node)
        loop = asyncio.get_running_loop()
        try:
            vip = await self._make_vip()
            if vip is None:
                return None
            await loop.run_in_executor(self._vip_thread, vip.adopt, buckets)
        except (VipError, ValueError) as e:
            log.warning("event=farm_not_adopted module=%s reason=%r", self.name, str(e))
            return None
        self.farm_vip = vip
        log.info("event=farm_adopted module=%s node=%s buckets=%d", self.name, self.node, len(buckets))
        self._module_log(f"daemon restarted in maintenance: serving on with {len(buckets)} buckets")
        return buckets

    def leaves_running(self) -> bool:
        """Daemon shutdown in cluster maintenance: may this node go on serving without
        its daemon? Only under a hold Raft granted the liveness lease (the leader takes
        no bucket from it for that long) and with the VIP up."""
        liveness = self.host.holder(liveness_resource(self.node))
        return (self._read_slice().maintenance and self.machine.state is fm.State.UP
                and self.machine.running is None and self.farm_vip is not None
                and self.farm_vip.raised and liveness is not None and liveness.holding()
                and liveness.lease.extended())

    async def close(self) -> None:
        """Daemon shutdown: stop serving (the liveness release takes this node out of
        the farm in Raft), stop the application, keep the intent. In cluster
        maintenance, under a granted hold: serve on (``leaves_running``; the daemon then
        keeps the liveness lease) for the next daemon to adopt."""
        if self.leaves_running():
            assert self.farm_vip is not None
            await self._stop_following()
            await asyncio.get_running_loop().run_in_executor(self._vip_thread, self.farm_vip.detach)
            self.left_running = True
            log.warning("event=left_running module=%s node=%s reason=%r", self.name, self.node,
                        "maintenance: the daemon stops, the farm application goes on serving")
            self._module_log("daemon stopping in maintenance: this node goes on serving")
            self._vip_thread.shutdown(wait=False)
            return
        await self._stop_following()
        loop = asyncio.get_running_loop()
        if self.farm_vip is not None:
            try:
                await loop.run_in_executor(self._vip_thread, self.farm_vip.drop)
            except VipError as e:
                log.error("event=farm_vip_drop_failed module=%s error=%r", self.name, str(e))
        cur = self.machine.display[0].value
        if cur != "STOP":
            await self.runner.run_stop("stop_both", cur, "STOP", "stop")
        await self.runner.kill_leftovers()
        self._vip_thread.shutdown(wait=False)
