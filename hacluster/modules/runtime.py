"""What a mirror and a farm module have in common on a node: feeding their pure
state machine (``machine.py``: the events and actions every kind shares),
running its plans one at a time (an urgent plan cancels the one running), the
module log, state waiters, scripts, checkers and Raft commits with retry.

A runtime knows its node only as a ``ModuleHost``. It reads the committed state
as the slice its view needs (``leases_read`` and its own entry): the registry
hands it a new one when that part changed (``state_changed``).

A subclass (a kind's driver) supplies the machine, ``leases_read``, ``start()``,
``close()``, ``status()``, ``checker_action()``, ``view_from(slice)``, ``_do(action)``
for its own actions, ``command()`` and ``_state_fields()`` for its state log line.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from raft.commands import Answer, RaftCommand
from raft.durable_storage import private_dir

from hacluster.http.snapshot import ModuleSnapshot
from hacluster.node.control import ControlError

from .checks import ModuleChecks, module_state_source
from .host import ModuleHost, ModuleSlice
from .machine import Machine, PlanDone, ViewChanged
from .rotating_log import RotatingLog
from .scripts import KILL_GRACE_S, ScriptRunner
from .userconfig import ModuleConfig

LOG_DIR_MODE = 0o755

log = logging.getLogger("hacluster.module")
R = TypeVar("R", bound=Answer)

COMMIT_RETRY_S = 15.0


class PlanFailed(RuntimeError):
    """An action of a plan failed; the machine gets PlanDone(ok=False)."""


class PlanNotYet(PlanFailed):
    """The plan's first action found it cannot begin yet and did nothing (e.g. the
    peer it must ask first is still starting): the machine keeps its state and the
    view is fed again shortly, which retries."""


NOT_YET_RETRY_S = 1.0


def stop_scripts_time_s(scripts_timeout_s: float) -> float:
    """A stop script at its worst: it runs out its timeout and is killed (after the
    kill grace), then its forced call does the same."""
    return 2 * (scripts_timeout_s + KILL_GRACE_S)


@dataclass(frozen=True)
class Placement:
    """Where a module runtime runs: on which node (its host), from which installed
    package, among which nodes; ``neighbour(name)``: another module's runtime on this
    node, if it runs here (what a ``<module>`` checker watches)."""
    host: ModuleHost
    name: str
    module_dir: Path
    config: ModuleConfig
    nodes: tuple[str, ...]
    neighbour: Callable[[str], "ModuleRuntime | None"] = lambda name: None


class ModuleRuntime:
    mode = "?"
    # After a failed plan, feed the view again a little later even if Raft did
    # not change (a machine that retries failed commits on the next view needs it).
    retry_view_after_failure_s: float | None = None
    # The leases this module's view reads (besides its own entry in the state).
    leases_read: frozenset[str] = frozenset()

    def __init__(self, placement: Placement, machine: Machine, env: dict[str, str]) -> None:
        self.host = host = placement.host
        self.name = name = placement.name
        self.module_dir = placement.module_dir
        self.config = config = placement.config
        self.nodes = placement.nodes
        self.neighbour = placement.neighbour
        self.node = host.name
        self.machine = machine
        paths = host.config.paths
        self.state_dir = paths.module_state_dir(name)
        private_dir(self.state_dir)
        # The module's logs (its state changes, script output, its processes' and
        # checkers' output): under the log directory, not with its state.
        self.log_dir = paths.module_log_dir(name)
        os.makedirs(self.log_dir, mode=LOG_DIR_MODE, exist_ok=True)
        self.module_log = self.log_dir / "module.log"
        self.log_keep = host.config.log_keep
        self._module_log_file = RotatingLog(self.module_log, host.config.log_max_bytes, self.log_keep)
        self.prefix = host.config.path_prefix
        self.runner = ScriptRunner(self.module_dir, name, self.log_dir / "script.log",
                                   {**config.user_vars, **paths.environment(),
                                    "HACLUSTER_NODE": self.node,
                                    "HACLUSTER_MODULE": name,
                                    "HACLUSTER_ROOT_PREFIX": self.prefix or "", **env},
                                   config.scripts_timeout_s,
                                   log_max_bytes=host.config.log_max_bytes, log_keep=self.log_keep)
        self._plan_task: asyncio.Task | None = None
        self._slice = ModuleSlice(None, {})     # the last read of the committed state
        self._last_view: Any = None
        self._state_waiters: list[tuple[str, asyncio.Future]] = []
        self._last_display: tuple[Any, str] | None = None
        self.closed = False
        self.started = False
        self.checks: ModuleChecks | None = None

    # ---- for the subclass ------------------------------------------------------------
    async def start(self) -> None:
        """Begin following the committed state (the registry, once it made the runtime)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop at daemon shutdown or uninstall (``_stop_following`` first)."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """What ``module_state`` shows of this module on this node."""
        raise NotImplementedError

    def checker_action(self, action: str, cause: str) -> None:
        """A failover rule of the module's checkers fired (``checks.CheckerTarget``)."""
        raise NotImplementedError

    def view_from(self, part: ModuleSlice) -> Any:
        """The machine's view of the committed state (``part``) and of this node."""
        raise NotImplementedError

    async def _do(self, action: Any) -> None:
        raise NotImplementedError

    async def command(self, name: str, request: Mapping[str, Any]) -> str | dict[str, Any]:
        """A module command its driver serves (hacluster.node.commands, ``RUNTIME``):
        a message for the administrator, or a reply of its own."""
        raise NotImplementedError

    def http_module(self) -> ModuleSnapshot:
        """This module on this node for the HTTP endpoints (metrics, readiness): what every
        kind has; a kind adds its own fields (``dataclasses.replace``). No I/O, no copy of
        the committed state: it is read at every scrape and readiness poll."""
        state, ready = self.machine.display
        resources = ({r.name: r.value for r in self.checks.table}
                     if self.checks is not None else {})
        running = self.machine.running
        return ModuleSnapshot(name=self.name, mode=self.mode, state=state.value,
                              ready=ready == "Ready", resources=resources,
                              transition=running.reason if running else None,
                              heading_to=running.next_state.value if running else None)

    def stop_time_s(self) -> float:
        """The longest this module's stop at daemon shutdown may take (the rule behind
        the units' TimeoutStopSec, README). A kind adds what else it stops."""
        return stop_scripts_time_s(self.config.scripts_timeout_s)

    def _state_fields(self) -> tuple[str, str]:
        """(key=value text for the state log line, text for the module log)."""
        return "", ""

    def _on_output(self, out: Any) -> None:
        """Anything of the machine's output besides log lines and plans."""

    def _before_script(self) -> None:
        """Just before a script runs (e.g. to set the epoch in its environment)."""

    # ---- the committed view ----------------------------------------------------------
    def state_changed(self, part: ModuleSlice) -> None:
        """The part of the committed state this module reads changed (the registry)."""
        self._slice = part
        self._view_maybe_changed()

    def refresh(self) -> None:
        """Read this module's part of the committed state now: after its own commits,
        a lease of this node gained or lost, whatever else may change the view."""
        if self.closed or not self.started:
            return
        self._slice = self._read_slice()
        self._view_maybe_changed()

    def _read_slice(self) -> ModuleSlice:
        return ModuleSlice.of(self.host.cluster_state(), self.name, self.leases_read)

    def _view_maybe_changed(self) -> None:
        """Feed the machine the view of the last slice, if it differs from the last one fed."""
        if self.closed or not self.started:
            return
        view = self.view_from(self._slice)
        if view != self._last_view:
            self._last_view = view
            self.feed(ViewChanged(view))

    # ---- feeding the machine ---------------------------------------------------------
    def feed(self, event: Any) -> Any:
        out = self.machine.handle(event)
        for line in out.log:
            log.warning("event=module_note module=%s note=%r", self.name, line)
            self._module_log(line)
        self._on_output(out)
        for plan in out.plans:
            self._launch(plan)
        self._state_changed()
        return out

    def _state_changed(self) -> None:
        display = self.machine.display
        if display != self._last_display:
            self._last_display = display
            fields, text = self._state_fields()
            log.info("event=module_state module=%s state=%s ready=%s %s",
                     self.name, display[0].value, display[1], fields)
            self._module_log(f"state {display[0].value} ({display[1]}) {text}".rstrip())
            if self.checks is not None:
                self.checks.module_state(display[0].value, display[1] == "Ready",
                                         self.machine.running.reason if self.machine.running else None)
        for want, fut in list(self._state_waiters):
            if not fut.done() and display[1] == "Ready" and display[0].value == want:
                fut.set_result(True)

    def _module_log(self, text: str) -> None:
        # one line per entry: a note holding a newline must not make two
        self._module_log_file.write_text(" ".join(text.splitlines()))

    # ---- plans ---------------------------------------------------------------------------
    def _launch(self, plan: Any) -> None:
        if plan.urgent and self._plan_task is not None and not self._plan_task.done():
            self._plan_task.cancel()
        previous = self._plan_task if not plan.urgent else None
        self._plan_task = asyncio.create_task(self._run_plan(plan, previous))

    async def _run_plan(self, plan: Any, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.gather(previous, return_exceptions=True)
        log.info("event=plan_started module=%s reason=%r next=%s actions=%s", self.name, plan.reason,
                 plan.next_state.value, ",".join(type(a).__name__ for a in plan.actions))
        ok, error, not_yet = True, None, False
        try:
            for action in plan.actions:
                await self._do(action)
        except asyncio.CancelledError:
            log.warning("event=plan_interrupted module=%s reason=%r", self.name, plan.reason)
            raise
        except PlanNotYet as e:
            ok, error, not_yet = False, str(e), True
            log.warning("event=plan_not_yet module=%s reason=%r error=%r", self.name, plan.reason, error)
        except (PlanFailed, ControlError, OSError, RuntimeError, ValueError) as e:
            ok, error = False, str(e)
            log.error("event=plan_failed module=%s reason=%r error=%r", self.name, plan.reason, error)
        # The plan's own commits are applied by now: decide on the view they made.
        self._slice = self._read_slice()
        self._last_view = self.view_from(self._slice)
        self.feed(ViewChanged(self._last_view))
        self.feed(PlanDone(ok, error, not_yet=not_yet, at=time.monotonic()))
        if not_yet:
            asyncio.get_running_loop().call_later(NOT_YET_RETRY_S, self._refeed)
        elif not ok and self.retry_view_after_failure_s is not None:
            asyncio.get_running_loop().call_later(self.retry_view_after_failure_s, self._refeed)

    def _refeed(self) -> None:
        if not self.closed:
            self._slice = self._read_slice()
            self._last_view = self.view_from(self._slice)
            self.feed(ViewChanged(self._last_view))

    async def _run_script(self, a: Any) -> None:
        """A RunScript action: a stop script's failure is logged (it had its forced
        retry), any other script's failure fails the plan."""
        self._before_script()
        if a.stop:
            r = await self.runner.run_stop(a.script, a.state, a.next_state, a.action)
            if not r.ok:
                log.error("event=stop_script_failed module=%s script=%s rc=%s forced=%s",
                          self.name, a.script, r.returncode, r.forced)
        else:
            r = await self.runner.run(a.script, a.state, a.next_state, a.action)
            if not r.ok:
                raise PlanFailed(f"{a.script} {a.state} {a.next_state} {a.action}: "
                                 f"exit {r.returncode}{' (timeout)' if r.timed_out else ''}"
                                 + (f": {r.last_line}" if r.last_line else ""))

    async def _commit(self, command: RaftCommand[R], *args: Any, retry_s: float = COMMIT_RETRY_S) -> R:
        # Across a leader change an entry can fail to commit without being refused:
        # retry for a while (every op here is idempotent or fenced); a refusal is final.
        deadline = time.monotonic() + retry_s
        while True:
            try:
                result = await self.host.commit(command, *args)
                break
            except ControlError as e:
                if time.monotonic() > deadline:
                    raise PlanFailed(f"{command.name}: {e}") from None
                await asyncio.sleep(0.2)
        if not result.get("ok"):
            raise PlanFailed(f"{command.name}: {result.get('error')}")
        return result

    # ---- checkers ---------------------------------------------------------------------
    def _start_checks(self) -> None:
        """The module's checkers (userconfig <errd>, <check>), started once it runs."""
        self.checks = ModuleChecks(
            self.name, self.config, self, module_dir=self.module_dir, log_dir=self.log_dir,
            env=self.runner.env,
            module_log=self._module_log,
            module_source=functools.partial(module_state_source, self.host, self.neighbour),
            vip_interfaces={v.addr: v.interface for v in self.config.vips})
        self.checks.start()

    async def _stop_following(self) -> None:
        """At daemon shutdown, first: no more events, checkers stopped, the running
        plan cancelled; the driver then stops what its kind holds."""
        self.closed = True
        if self.checks is not None:
            await self.checks.stop()
        if self._plan_task is not None and not self._plan_task.done():
            self._plan_task.cancel()
            await asyncio.gather(self._plan_task, return_exceptions=True)

    # ---- a mirror's replication hooks (its mount process, on the control socket) -------------
    def _no_replication(self) -> ControlError:
        return ControlError(f"module {self.name} is a {self.mode} module: it has no replication")

    async def replication_peer_lost(self, epoch: int, reason: str) -> dict[str, Any]:
        raise self._no_replication()

    async def replication_in_sync(self, epoch: int) -> dict[str, Any]:
        raise self._no_replication()

    def replication_progress(self, progress: dict[str, Any]) -> dict[str, Any] | None:
        raise self._no_replication()

    # ---- waiting ------------------------------------------------------------------------
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
