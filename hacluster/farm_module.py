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
import logging
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raft.cluster_state import liveness_resource
from vip.address import VipError, interface_for
from vip.farm_vip import FarmVip, cleanup_leftovers

from . import farm_machine as fm
from .control import ControlError
from .module_checks import RESUME, ModuleChecks
from .module_scripts import ScriptRunner
from .userconfig import ModuleConfig

if TYPE_CHECKING:
    from .daemon import NodeDaemon

log = logging.getLogger("hacluster.farm")

COMMIT_RETRY_S = 10.0
RETRY_VIEW_S = 1.0


class PlanFailed(Exception):
    pass


def hash_seed(module: str) -> int:
    """The same on every node (they must hash a client into the same bucket)."""
    return zlib.crc32(f"hacluster-farm/{module}".encode())


class FarmModule:
    mode = "farm"

    def __init__(self, daemon: "NodeDaemon", name: str, module_dir: Path,
                 config: ModuleConfig) -> None:
        self.daemon = daemon
        self.name = name
        self.module_dir = module_dir
        self.config = config
        self.node = daemon.name
        self.machine = fm.FarmMachine(self.node)
        self.state_dir = daemon.config.data_path / "module_state" / name
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.module_log = self.state_dir / "module.log"
        self.prefix = daemon.config.path_prefix
        env = {**config.user_vars, "HACLUSTER_NODE": self.node,
               "HACLUSTER_ROOT_PREFIX": self.prefix or "", "HACLUSTER_MODULE": name}
        self.runner = ScriptRunner(module_dir, name, self.state_dir / "script.log", env,
                                   config.scripts_timeout_s)
        powers = {n.name: n.power for n in config.farm_nodes}
        self.power = powers.get(self.node, 1)
        self.farm_vip: FarmVip | None = None
        # One thread for every VIP operation: an urgent drop queues behind a
        # raise that is already in the kernel, never beside it.
        self._vip_thread = concurrent.futures.ThreadPoolExecutor(1, f"farm-vip-{name}")
        self._plan_task: asyncio.Task | None = None
        self._last_view: fm.View | None = None
        self._state_waiters: list[tuple[str, asyncio.Future]] = []
        self._last_display: tuple[fm.State, str] | None = None
        self.closed = False
        self.started = False
        self.error: str | None = None
        self.checks: ModuleChecks | None = None

    # ---- set-up -----------------------------------------------------------------
    async def _make_vip(self) -> FarmVip | None:
        if not self.config.vips:
            return None
        v = self.config.vips[0]
        loop = asyncio.get_running_loop()
        interface = v.interface or await loop.run_in_executor(self._vip_thread, interface_for, v.addr)
        rules = [(r.port, r.proto, r.filter) for r in self.config.lb_rules]
        return FarmVip(self.name, v.addr, interface, rules, hash_seed(self.name))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(self._vip_thread, cleanup_leftovers, self.name)
        if removed:
            log.warning("event=leftovers_cleaned module=%s removed=%r", self.name, removed)
        try:
            self.farm_vip = await self._make_vip()
        except (VipError, ValueError) as e:
            self.error = f"farm VIP: {e}"
            log.error("event=farm_vip_unusable module=%s error=%r", self.name, str(e))
        liveness = self.daemon.holders.get(liveness_resource(self.node))
        if liveness is not None:
            liveness.watch(lambda held: self.refresh())
        self.started = True
        self.checks = ModuleChecks.for_runtime(self)
        self.checks.start()
        self.feed(fm.Restarted())
        self.refresh()

    # ---- the committed view --------------------------------------------------------
    def _connected(self) -> bool:
        holder = self.daemon.holders.get(liveness_resource(self.node))
        return holder is not None and holder.holding()

    def view_from(self, snap: dict) -> fm.View:
        module = snap["modules"].get(self.name) or {}
        farm = module.get("farm") or {}
        table = farm.get("table") or []
        return fm.View(version=farm.get("version", 0),
                       buckets=frozenset(i for i, owner in enumerate(table) if owner == self.node),
                       joined=self.node in (farm.get("members") or {}),
                       connected=self._connected(),
                       intent=(module.get("intent") or {}).get(self.node))

    def refresh(self) -> None:
        """After every applied Raft entry and every change of the liveness lease."""
        if self.closed or not self.started:
            return
        view = self.view_from(self.daemon.raft.snapshot())
        if view != self._last_view:
            self._last_view = view
            self.feed(fm.ViewChanged(view))

    # ---- feeding the machine -----------------------------------------------------------
    def feed(self, event: fm.Event) -> fm.Output:
        out = self.machine.handle(event)
        for line in out.log:
            log.warning("event=module_note module=%s note=%r", self.name, line)
            self._module_log(line)
        for plan in out.plans:
            self._launch(plan)
        self._state_changed()
        return out

    def _state_changed(self) -> None:
        display = self.machine.display
        if display != self._last_display:
            self._last_display = display
            view = self._last_view or fm.View()
            log.info("event=module_state module=%s state=%s ready=%s version=%d buckets=%d",
                     self.name, display[0].value, display[1], view.version, len(view.buckets))
            self._module_log(f"state {display[0].value} ({display[1]}) table version {view.version}")
            if self.checks is not None:
                self.checks.module_state(display[0].value, display[1] == "Ready",
                                         self.machine.running.reason if self.machine.running else None)
        for want, fut in list(self._state_waiters):
            if not fut.done() and display[1] == "Ready" and display[0].value == want:
                fut.set_result(True)

    def _module_log(self, text: str) -> None:
        with open(self.module_log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def _launch(self, plan: fm.Plan) -> None:
        if plan.urgent and self._plan_task is not None and not self._plan_task.done():
            self._plan_task.cancel()
        previous = self._plan_task if not plan.urgent else None
        self._plan_task = asyncio.create_task(self._run_plan(plan, previous))

    async def _run_plan(self, plan: fm.Plan, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.gather(previous, return_exceptions=True)
        log.info("event=plan_started module=%s reason=%r next=%s actions=%s", self.name, plan.reason,
                 plan.next_state.value, ",".join(type(a).__name__ for a in plan.actions))
        ok, error = True, None
        try:
            for action in plan.actions:
                await self._do(action)
        except asyncio.CancelledError:
            log.warning("event=plan_interrupted module=%s reason=%r", self.name, plan.reason)
            raise
        except (PlanFailed, ControlError, VipError, OSError, RuntimeError, ValueError) as e:
            ok, error = False, str(e)
            log.error("event=plan_failed module=%s reason=%r error=%r", self.name, plan.reason, error)
        self._last_view = self.view_from(self.daemon.raft.snapshot())
        self.feed(fm.ViewChanged(self._last_view))
        self.feed(fm.PlanDone(ok, error))
        if not ok:
            # The machine retries a failed commit on the next view: give it one
            # even if nothing changed in Raft meanwhile.
            asyncio.get_running_loop().call_later(RETRY_VIEW_S, self._refeed)

    def _refeed(self) -> None:
        if not self.closed:
            self._last_view = self.view_from(self.daemon.raft.snapshot())
            self.feed(fm.ViewChanged(self._last_view))

    # ---- actions -------------------------------------------------------------------------
    async def _do(self, a: fm.Action) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(a, fm.RunScript):
            if a.stop:
                r = await self.runner.run_stop(a.script, a.state, a.next_state, a.action)
                if not r.ok:
                    log.error("event=stop_script_failed module=%s script=%s rc=%s forced=%s",
                              self.name, a.script, r.returncode, r.forced)
            else:
                r = await self.runner.run(a.script, a.state, a.next_state, a.action)
                if not r.ok:
                    raise PlanFailed(f"{a.script} {a.state} {a.next_state} {a.action}: "
                                     f"exit {r.returncode}{' (timeout)' if r.timed_out else ''}")
        elif isinstance(a, fm.CommitIntent):
            try:
                await self._commit("set_intent", self.name, self.node, a.intent)
            except PlanFailed as e:     # best effort: the local command holds meanwhile
                log.warning("event=intent_not_committed module=%s error=%r", self.name, str(e))
        elif isinstance(a, fm.CommitFarmJoin):
            await self._commit("farm_join", self.name, self.node, self.power)
        elif isinstance(a, fm.CommitFarmLeave):
            try:
                await self._commit("farm_leave", self.name, self.node, retry_s=2.0)
            except PlanFailed as e:     # the liveness expiry takes this node out anyway
                log.warning("event=farm_leave_not_committed module=%s error=%r", self.name, str(e))
        elif isinstance(a, (fm.RaiseVip, fm.SetBuckets)):
            if self.farm_vip is None:
                raise PlanFailed(self.error or "this farm module has no <vip>")
            fn = self.farm_vip.raise_ if isinstance(a, fm.RaiseVip) else self.farm_vip.set_buckets
            await loop.run_in_executor(self._vip_thread, fn, set(a.buckets))
            log.info("event=farm_buckets module=%s version=%d buckets=%d", self.name, a.version,
                     len(a.buckets))
        elif isinstance(a, fm.DropVip):
            if self.farm_vip is not None:
                await loop.run_in_executor(self._vip_thread, self.farm_vip.drop)
        else:
            raise PlanFailed(f"unknown action {a!r}")

    async def _commit(self, op: str, *args: Any, retry_s: float = COMMIT_RETRY_S) -> dict:
        deadline = time.monotonic() + retry_s
        while True:
            try:
                result = await self.daemon.commit(op, *args)
                break
            except ControlError as e:
                if time.monotonic() > deadline:
                    raise PlanFailed(f"{op}: {e}") from None
                await asyncio.sleep(0.2)
        if not result.get("ok"):
            raise PlanFailed(f"{op}: {result.get('error')}")
        return result

    # ---- commands ---------------------------------------------------------------------------
    async def command(self, name: str) -> str:
        out = self.feed(fm.Command(name))
        if out.refused:
            raise ControlError(f"module {self.name}: {out.refused}")
        return f"{name}: accepted"

    def checker(self, resource: str, up: bool, action: str = "wait") -> None:
        """A checker's report (issue 6 wiring): down with its action, or up again."""
        self.feed(fm.CheckerUp(resource) if up else fm.CheckerDown(resource, action))

    def checker_action(self, action: str, cause: str) -> None:
        """What a fired failover rule asks (after the action loop): restart, stopstart,
        stop, wait, or resume (the wait of ``cause`` is over); a farm has no swap."""
        if action == "swap":
            self._module_log(f"checker {cause}: swap ignored (a farm module has no primary)")
            return
        out = self.feed(fm.CheckerUp(cause) if action == RESUME else fm.CheckerDown(cause, action))
        if out.refused:
            log.warning("event=checker_action_refused module=%s action=%s cause=%s reason=%r",
                        self.name, action, cause, out.refused)
            self._module_log(f"checker {cause}: {action} refused: {out.refused}")

    async def wait_state(self, state: str, timeout: float) -> bool:
        fut = asyncio.get_running_loop().create_future()
        self._state_waiters.append((state, fut))
        self._state_changed()
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._state_waiters.remove((state, fut))

    def status(self) -> dict:
        state, ready = self.machine.display
        view = self._last_view or fm.View()
        snap = self.daemon.raft.snapshot()
        farm = (snap["modules"].get(self.name) or {}).get("farm") or {}
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

    async def close(self) -> None:
        """Daemon shutdown: stop serving (the liveness release takes this node out of
        the farm in Raft), stop the application, keep the intent."""
        self.closed = True
        if self.checks is not None:
            await self.checks.stop()
        if self._plan_task is not None and not self._plan_task.done():
            self._plan_task.cancel()
            await asyncio.gather(self._plan_task, return_exceptions=True)
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
