"""A module runtime's checkers: resources polled, rules evaluated, actions handed on.

:class:`CheckPolicy` is the pure part (time passed in): on every change of the
resource table it runs the module's failover rules (edge-triggered RuleEngine),
holds back actions that maintenance turned off (``errd off`` / ``checker off``),
passes the strongest fired action through the ActionLoop (``maxloop`` within
``loop_interval``, then ``stop``) and remembers the ``wait`` rules that hold the
module in WAIT until their resources are reported up again.

:class:`ModuleChecks` is the I/O around it, one per module runtime: it builds the
CheckRunner from the ModuleConfig (errd procs, tcp, ping, intf, ip, module,
splitbrain), starts and stops the ``custom`` programs (which report with
``hacluster -m MOD set -r custom.NAME -v up|down``), follows the module's state
(which checks run: their ``when``/``class``; no polled check while the module is
Transient, so that a restart in progress is not taken for a second failure; custom
programs keep running through transitions) and calls
``runtime.checker_action(action, cause)``; ``action`` is one of restart,
stopstart, stop, wait, swap, or ``resume`` (the wait of ``cause`` is over).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, Protocol

from checkers import custom as custom_checker
from checkers import errd, intf, ip, ping, tcp, witness
from checkers.action_loop import ActionLoop, MaintenanceFlags, strongest
from checkers.failover_rules import WILDCARD, Rule, RuleEngine, evaluate, fired, resources_of
from checkers.module import READY_STATES, ModuleWatch
from checkers.resource import INIT, Resource, ResourceTable, is_active
from checkers.runner import Check, CheckRunner

from hacluster.node.commands import MODULE_CMD
from hacluster.node.control import ControlError
from hacluster.node.peer_control import PeerControlError, call_peer, peer_control_address

from .host import ModuleHost
from .userconfig import CheckConfig, ErrdProc, ModuleConfig

log = logging.getLogger("hacluster.module_checks")

RESUME = "resume"
CUSTOM_RESTART_S = 1.0      # a custom program that exited on its own is started again
CUSTOM_STOP_S = 3.0
TRANSIENT = "TRANSIENT"


class CheckerTarget(Protocol):
    def checker_action(self, action: str, cause: str) -> None: ...


# ---- the pure part ---------------------------------------------------------------------
@dataclass(frozen=True)
class Directive:
    action: str      # restart | stopstart | stop | wait | swap | resume
    cause: str       # the rule's label
    log_line: str    # "event=... key=value ..."


def _named(rule: Rule, values: Mapping[str, str]) -> set[str]:
    """The resources a rule reads; a wildcard stands for every resource of its class."""
    names = set()
    for name in resources_of(rule.condition):
        klass, _, ident = name.partition(".")
        if ident == WILDCARD:
            names |= {n for n in values if n.partition(".")[0] == klass}
        else:
            names.add(name)
    return names


class CheckPolicy:
    """Rules + maintenance flags + action loop + wait holds, for one module."""

    def __init__(self, rules: Iterable[Rule], maxloop: int, loop_interval_s: float,
                 module: str = "") -> None:
        self.rules = {r.label: r for r in rules}
        self.engine = RuleEngine(self.rules.values())
        self.loop = ActionLoop(maxloop, loop_interval_s, module)
        self.flags = MaintenanceFlags()
        self.module = module
        self.held: dict[str, Rule] = {}      # wait rules holding the module in WAIT
        self._suppressed: set[str] = set()   # rules that fired while maintenance held them

    def allowed(self, rule: Rule) -> bool:
        return all(self.flags.allows(name) for name in resources_of(rule.condition))

    def held_resources(self, values: Mapping[str, str]) -> set[str]:
        return set().union(*(_named(r, values) for r in self.held.values())) if self.held else set()

    def update(self, values: Mapping[str, str], now: float) -> list[Directive]:
        """Directives for the table ``values`` after a change at ``now``."""
        out = self._waits_over(values)
        rising = self.engine.update(values)
        self._suppressed &= {label for label, _ in fired(self.rules.values(), values)}
        candidates = []
        for label, action in rising:
            if self.allowed(self.rules[label]):
                candidates.append((label, action))
            else:
                self._suppressed.add(label)
                out.append(Directive("none", label, f"event=action_held module={self.module} cause={label} "
                                                    f"action={action} reason=maintenance"))
        return out + self._act(candidates, now)

    def set_flag(self, which: str, on: bool, values: Mapping[str, str], now: float) -> list[Directive]:
        """``errd|checker on|off``; turning a flag on acts on the rules it held that are still true."""
        self.flags.set(which, on)
        if not on:
            return []
        still = [(label, self.rules[label].action) for label, _ in fired(self.rules.values(), values)
                 if label in self._suppressed and self.allowed(self.rules[label])]
        self._suppressed -= {label for label, _ in still}
        return self._act(still, now)

    def _act(self, candidates: list[tuple[str, str]], now: float) -> list[Directive]:
        action = strongest(a for _, a in candidates)
        if action is None:
            return []
        cause = next(label for label, a in candidates if a == action)
        decision = self.loop.decide(action, cause, now)
        if decision.action == "wait":
            self.held[cause] = self.rules[cause]
        return [Directive(decision.action, cause, decision.log_line)]

    def _waits_over(self, values: Mapping[str, str]) -> list[Directive]:
        # over when the condition is false on real reports: a resource back to init
        # (its checker paused while the module moves) proves nothing
        out = []
        for label, rule in list(self.held.items()):
            names = _named(rule, values)
            if not evaluate(rule.condition, values) and all(values.get(n, INIT) != INIT for n in names):
                del self.held[label]
                out.append(Directive(RESUME, label, f"event=wait_over module={self.module} cause={label}"))
        return out

    def release_all(self) -> list[Directive]:
        """The module stopped: nothing to hold any more."""
        out = [Directive(RESUME, label, f"event=wait_over module={self.module} cause={label} reason=stopped")
               for label in self.held]
        self.held.clear()
        return out


class ModuleIncarnation:
    """Counts the starts of a module as its dependants see them: a new incarnation
    each time it is Ready in a running state after having been stopped, waiting, or
    restarted (a Transient restart plan)."""

    def __init__(self) -> None:
        self.count = 0
        self._fresh = True

    def observe(self, state: str, ready: bool, transition: str | None) -> None:
        if state not in READY_STATES or (not ready and transition and "restart" in transition):
            self._fresh = True
        elif ready and self._fresh:
            self.count += 1
            self._fresh = False


# ---- probes and decisions ---------------------------------------------------------------
class _ProcessScan:
    """One /proc scan shared by every errd proc of a module within ``max_age_s``."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._samples: list[errd.ProcessSample] = []

    def __call__(self) -> list[errd.ProcessSample]:
        with self._lock:
            if time.monotonic() - self._at > self.max_age_s:
                self._samples = errd.scan_processes()
                self._at = time.monotonic()
            return self._samples


def _errd_check(proc: ErrdProc, interval_s: float, scan: _ProcessScan) -> Check:
    spec = errd.ProcSpec(proc.name, proc.name_is_regex, proc.regex_args, proc.atleast, proc.atmax)
    watch = errd.ErrdWatch(spec)

    def decide(samples: Any) -> str:
        return watch.observe(samples).value

    def reset() -> None:
        watch.known = frozenset()
    return Check(proc.resource, interval_s, scan, decide, when=proc.klass, reset=reset)


def _ping_any(addrs: tuple[str, ...], timeout_s: float) -> bool:
    return any(ping.ping_once(a, timeout_s) for a in addrs)


def build_check(c: CheckConfig, module_source: Callable[[CheckConfig], Callable[[], Any]] | None = None,
                vip_interfaces: Mapping[str, str | None] | None = None) -> Check | None:
    """The polled Check of one ``<check>`` entry (None for custom: its program sets it)."""
    probe_timeout = c.timeout_s + 1.0
    if c.kind == "tcp":
        if c.port is None:      # the userconfig parser gives every tcp check a port
            raise ValueError(f"check {c.resource}: a tcp check needs a port")
        tcp_d = tcp.TcpDecision()
        send, expect = c.send, c.expect
        probe = functools.partial(tcp.probe_tcp, c.addrs[0], c.port, c.timeout_s,
                                  send.encode() if isinstance(send, str) else send,
                                  expect.encode() if isinstance(expect, str) else expect)
        return Check(c.resource, c.interval_s, probe, lambda ok: tcp_d.observe(bool(ok)),
                     timeout_s=probe_timeout, when=c.when, reset=tcp_d.reset, blocking=False)
    if c.kind == "ping":
        ping_d = ping.PingDecision()
        return Check(c.resource, c.interval_s, functools.partial(_ping_any, c.addrs, c.timeout_s),
                     lambda ok: ping_d.observe(bool(ok)), timeout_s=c.timeout_s * len(c.addrs) + 1.0,
                     when=c.when, reset=ping_d.reset)
    if c.kind == "intf":
        if c.interface is None:  # the userconfig parser gives every intf check an interface
            raise ValueError(f"check {c.resource}: an intf check needs an interface")
        intf_d = intf.IntfDecision()
        return Check(c.resource, c.interval_s, functools.partial(intf.read_interface, c.interface),
                     intf_d.observe_sample, when=c.when, reset=intf_d.reset)
    if c.kind == "ip":
        ip_d = ip.IpDecision()
        interface = (vip_interfaces or {}).get(c.addrs[0])
        return Check(c.resource, c.interval_s,
                     functools.partial(ip.probe_ip, c.addrs[0], interface, min(c.timeout_s, 1.0)),
                     ip_d.observe_sample, timeout_s=probe_timeout, when=c.when, reset=ip_d.reset)
    if c.kind == "splitbrain":
        witness_d = witness.WitnessDecision()

        def reachable() -> dict[str, bool]:
            return {a: ping.ping_once(a, c.timeout_s) for a in c.addrs}
        return Check(c.resource, c.interval_s, reachable, witness_d.observe_reachable,
                     timeout_s=c.timeout_s * len(c.addrs) + 1.0, when="pre", reset=witness_d.reset)
    if c.kind == "module":
        if module_source is None:
            raise ValueError(f"check {c.resource}: no way to read other modules' states here")
        w = ModuleWatch()

        def reset_module() -> None:
            w.value = INIT
        return Check(c.resource, c.interval_s, module_source(c), w.observe,
                     timeout_s=probe_timeout, when=c.when, reset=reset_module, blocking=False)
    if c.kind == "custom":
        return None
    raise ValueError(f"check {c.resource}: unknown checker kind {c.kind!r}")


def _die_with_parent() -> None:
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ---- the runtime side --------------------------------------------------------------------
class ModuleChecks:
    """The checkers of one module runtime (use from the daemon's loop)."""

    def __init__(self, module: str, config: ModuleConfig, target: CheckerTarget, *,
                 module_dir: Path, log_dir: Path, env: Mapping[str, str],
                 module_log: Callable[[str], None] = lambda line: None,
                 module_source: Callable[[CheckConfig], Callable[[], Any]] | None = None,
                 vip_interfaces: Mapping[str, str | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.module = module
        self.config = config
        self.target = target
        self.module_dir = module_dir
        self.log_dir = log_dir
        self.env = dict(env)
        self.module_log = module_log
        self.clock = clock
        self.table = ResourceTable()
        self.policy = CheckPolicy(config.failover_rules, config.maxloop, config.loop_interval_s, module)
        self.runner = CheckRunner(self.table, self._changed, clock=clock)
        self.incarnation = ModuleIncarnation()
        self.state, self.ready = "STOP", True
        self.transition: str | None = None
        self._when: dict[str, str] = {}
        scan = _ProcessScan(max_age_s=min(0.5, config.errd_poll_s / 2))
        for proc in config.errd:
            check = _errd_check(proc, config.errd_poll_s, scan)
            self.runner.add(check)
            self._when[check.resource] = check.when
        self.custom: dict[str, CheckConfig] = {}
        for c in config.checks:
            built = build_check(c, module_source, vip_interfaces)
            if built is None:
                self.custom[c.resource] = c
                self.table.declare(c.resource, clock())
            else:
                self.runner.add(built)
            self._when[c.resource] = c.when
        self._programs: dict[str, asyncio.subprocess.Process] = {}
        self._program_tasks: dict[str, asyncio.Task] = {}
        self._stopping_tasks: set[asyncio.Task] = set()   # referenced until done (see below)
        self._started = False
        self._closed = False
        self._refreshing = self._refresh_again = False

    # ---- life -------------------------------------------------------------------
    def start(self) -> None:
        """Start polling (on the loop); nothing runs until the module is in a state
        its checkers run in."""
        self._started = True
        self._refresh_active()
        self.runner.start()

    async def stop(self) -> None:
        self._closed = True
        await self.runner.stop()
        await asyncio.gather(*(self._stop_program(name) for name in list(self._programs)),
                             return_exceptions=True)
        for task in self._program_tasks.values():
            task.cancel()

    def module_state(self, state: str, ready: bool, transition: str | None = None) -> None:
        """The runtime's displayed state changed."""
        self.incarnation.observe(state, ready, transition)
        if (state, ready, transition) == (self.state, self.ready, self.transition):
            return
        self.state, self.ready, self.transition = state, ready, transition
        if state == "STOP" and ready and self.policy.held:
            self._carry_out(self.policy.release_all())
        self._refresh_active()

    def observation(self) -> tuple[str, Hashable]:
        """(state, incarnation) for a ``<module>`` checker of another module."""
        return (self.state if self.ready else TRANSIENT), self.incarnation.count

    def _active(self, check: Check | str) -> bool:
        name = check if isinstance(check, str) else check.resource
        if name in self.policy.held_resources(self.table.values()):
            return self.state != "STOP"     # a wait holds: keep watching for the way back
        if name in self.custom:
            # its program reports only changes: keep it (and its last value) across a
            # transition rather than lose a down it will not repeat
            return is_active(self._when[name], self.state)
        return self.ready and is_active(self._when[name], self.state)

    # ---- resource changes -------------------------------------------------------------
    def _changed(self, resource: Resource) -> None:
        if self._closed:
            return
        self._carry_out(self.policy.update(self.table.values(), self.clock()))

    def _carry_out(self, directives: list[Directive]) -> None:
        for d in directives:
            log.info(d.log_line)
            self.module_log(d.log_line)
            if d.action == "none":
                continue
            try:
                self.target.checker_action(d.action, d.cause)
            except Exception:   # a bug in one action must not stop the checkers
                log.exception("event=checker_action_failed module=%s action=%s cause=%s",
                              self.module, d.action, d.cause)
        if directives:
            self._refresh_active()

    def _refresh_active(self) -> None:
        # set_active resets deactivated checks to init, which re-enters here through
        # _changed: run it once at a time, again until nothing more changes
        if not self._started or self._closed:
            return
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        try:
            self._refresh_again = True
            while self._refresh_again:
                self._refresh_again = False
                self.runner.set_active(self._active)
                self._sync_programs()
        finally:
            self._refreshing = False

    # ---- control --------------------------------------------------------------------
    def set_resource(self, resource: str, value: str) -> Resource | None:
        """``hacluster set -r custom.NAME -v up|down``; raises ControlError (one line)."""
        try:
            changed = custom_checker.apply_set_request(self.table, resource, value, self.clock())
        except custom_checker.CustomSetError as e:
            raise ControlError(f"module {self.module}: {e}") from None
        if changed is not None:
            log.info("event=resource_changed module=%s resource=%s value=%s source=set",
                     self.module, resource, value)
            self._changed(changed)
        return changed

    def set_flag(self, which: str, on: bool) -> None:
        self.module_log(f"event=maintenance module={self.module} {which}={'on' if on else 'off'}")
        log.info("event=maintenance module=%s %s=%s", self.module, which, "on" if on else "off")
        self._carry_out(self.policy.set_flag(which, on, self.table.values(), self.clock()))

    def resetloop(self) -> None:
        self.policy.loop.resetloop()
        self.module_log(f"event=resetloop module={self.module}")
        log.info("event=resetloop module=%s", self.module)

    def resources(self) -> dict[str, Any]:
        now_mono, now_wall = self.clock(), time.time()
        rows = [{"resource": r.name, "value": r.value, "since": now_wall - (now_mono - r.since),
                 "age_s": round(now_mono - r.since, 3)} for r in self.table]
        return {"module": self.module, "state": self.state, "ready": self.ready,
                "errd": self.policy.flags.errd, "checker": self.policy.flags.checker,
                "loop_count": self.policy.loop.count(now_mono), "maxloop": self.config.maxloop,
                "waiting": sorted(self.policy.held), "incarnation": self.incarnation.count,
                "resources": rows}

    # ---- custom programs ----------------------------------------------------------------
    def _sync_programs(self) -> None:
        for name in self.custom:
            active = self._active(name) and not self._closed
            if active and name not in self._program_tasks:
                self._program_tasks[name] = asyncio.create_task(self._keep_program(name))
            elif not active and name in self._program_tasks:
                self._program_tasks.pop(name).cancel()
                # The loop keeps only a weak reference to a task: keep this one until it is done.
                stopping = asyncio.create_task(self._stop_program(name))
                self._stopping_tasks.add(stopping)
                stopping.add_done_callback(self._stopping_tasks.discard)
                changed = self.table.set(name, INIT, self.clock())
                if changed is not None:
                    self._changed(changed)

    async def _keep_program(self, name: str) -> None:
        c = self.custom[name]
        argv = custom_checker.custom_argv(self.module_dir / "bin", c.exec or "", c.arg)
        env = {**os.environ, **self.env, "HACLUSTER_MODULE": self.module, "SAFEMODULE": self.module,
               "HACLUSTER_RESOURCE": name}
        out_path = self.log_dir / f"{name}.log"
        try:
            while True:
                with open(out_path, "ab") as out:
                    try:
                        proc = await asyncio.create_subprocess_exec(
                            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                            cwd=str(self.module_dir), start_new_session=True, preexec_fn=_die_with_parent)
                    except OSError as e:
                        log.error("event=custom_not_started module=%s resource=%s argv=%r error=%r",
                                  self.module, name, argv, str(e))
                        self.module_log(f"custom checker {name}: cannot run {argv[0]}: {e}")
                        return
                self._programs[name] = proc
                log.info("event=custom_started module=%s resource=%s pid=%d", self.module, name, proc.pid)
                rc = await proc.wait()
                self._programs.pop(name, None)
                log.warning("event=custom_exited module=%s resource=%s rc=%s", self.module, name, rc)
                await asyncio.sleep(CUSTOM_RESTART_S)
        except asyncio.CancelledError:
            pass

    async def _stop_program(self, name: str) -> None:
        proc = self._programs.pop(name, None)
        if proc is None or proc.returncode is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, CUSTOM_STOP_S), (signal.SIGKILL, CUSTOM_STOP_S)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                await asyncio.wait_for(proc.wait(), wait_s)
                return
            except asyncio.TimeoutError:
                continue


def module_state_source(host: ModuleHost, local: Callable[[str], Any],
                        c: CheckConfig) -> Callable[[], Any]:
    """The probe of a ``<module name=X>`` checker: X's (state, incarnation) on this node
    (``local(X)``: X's runtime here, if any), or (with ``<to addr port>``) on the peer
    at addr, asked over peer control."""
    name = c.ident
    if not c.addrs:
        def local_state() -> tuple[str, Hashable] | None:
            checks = getattr(local(name), "checks", None)
            return checks.observation() if checks is not None else None
        return local_state

    addr = c.addrs[0]

    async def remote() -> tuple[str, Hashable] | None:
        port = c.port
        if port is None:
            members = host.members()
            raft_address = next((m["address"] for m in members.values()
                                 if m["address"].rsplit(":", 1)[0] == addr), None)
            if raft_address is None:
                return None
            port = peer_control_address(raft_address)[1]
        try:
            reply = await call_peer(addr, port, host.config.read_secret(),
                                    {"cmd": MODULE_CMD.name, "module": name, "cmd_name": "resources"},
                                    timeout=c.timeout_s)
        except PeerControlError:
            return None
        res = reply.get("result") if reply.get("ok") else None
        if not isinstance(res, dict):
            return None
        return (res["state"] if res.get("ready") else TRANSIENT), res.get("incarnation")
    return remote


# ---- control requests (through module_cmd) -------------------------------------------------
def checks_command(runtime: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    """Serve a checks command of ``module_cmd`` for ``runtime``; ControlError on bad input."""
    checks: ModuleChecks | None = getattr(runtime, "checks", None)
    if checks is None:
        raise ControlError(f"module {runtime.name}: its checkers are not running yet")
    cmd = request.get("cmd_name")
    base = {"module": runtime.name, "node": runtime.node}
    if cmd == "resources":
        return {**base, **checks.resources()}
    if cmd == "set_resource":
        resource, value = request.get("resource"), request.get("value")
        if not isinstance(resource, str) or not isinstance(value, str):
            raise ControlError("set needs -r RESOURCE and -v up|down")
        changed = checks.set_resource(resource, value)
        return {**base, "resource": resource, "value": value, "changed": changed is not None,
                "message": f"{resource} = {value}" + ("" if changed else " (unchanged)")}
    if cmd in ("errd_on", "errd_off", "checker_on", "checker_off"):
        which, _, onoff = cmd.partition("_")
        checks.set_flag(which, onoff == "on")
        return {**base, "message": f"{which} {onoff}", which: onoff == "on"}
    if cmd == "resetloop":
        checks.resetloop()
        return {**base, "message": "action loop counter reset"}
    raise ControlError(f"unknown checks command {cmd!r}")
