"""The checks of a module runtime: the pure policy (rules, maintenance, action loop,
wait holds) and ModuleChecks driving real probes (a real process for errd, a real
TCP listener, a real custom program) against a recording runtime."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from checkers.failover_rules import parse_rules
from hacluster.node.control import ControlError
from hacluster.modules.checks import (RESUME, CheckPolicy, ModuleChecks, ModuleIncarnation,
                                     checks_command)
from hacluster.modules.userconfig import parse_userconfig

RULES = parse_rules("""
errd_app: if (errd.app == down) then restart();
tcp_db: if (tcp.db == down) then stopstart();
intf_lan: if (intf.lan == down) then wait();
""")


def test_a_rule_fires_once_when_its_condition_becomes_true():
    p = CheckPolicy(RULES, maxloop=3, loop_interval_s=60, module="m")
    [d] = p.update({"errd.app": "down"}, now=0)
    assert (d.action, d.cause) == ("restart", "errd_app") and "event=action" in d.log_line
    assert p.update({"errd.app": "down", "tcp.db": "up"}, now=1) == []


def test_maxloop_then_stop_with_its_log_line_and_resetloop():
    p = CheckPolicy(RULES, maxloop=2, loop_interval_s=60, module="m")
    actions = []
    for t in range(3):
        actions += [d.action for d in p.update({"errd.app": "down"}, now=t)]
        p.update({"errd.app": "up"}, now=t + 0.5)
    assert actions == ["restart", "restart", "stop"]
    p.loop.resetloop()
    assert [d.action for d in p.update({"errd.app": "down"}, now=4)] == ["restart"]


def test_strongest_action_wins_when_rules_fire_together():
    p = CheckPolicy(RULES, maxloop=3, loop_interval_s=60)
    [d] = p.update({"errd.app": "down", "tcp.db": "down"}, now=0)
    assert d.action == "stopstart" and d.cause == "tcp_db"


def test_maintenance_holds_actions_and_turning_it_on_acts_on_what_is_still_down():
    p = CheckPolicy(RULES, maxloop=3, loop_interval_s=60)
    p.set_flag("errd", False, {}, now=0)
    [held] = p.update({"errd.app": "down"}, now=1)
    assert held.action == "none" and "reason=maintenance" in held.log_line
    [d] = p.update({"errd.app": "down", "tcp.db": "down"}, now=2)   # checker still on
    assert d.action == "stopstart"
    [again] = p.set_flag("errd", True, {"errd.app": "down", "tcp.db": "down"}, now=3)
    assert again.action == "restart"
    p.set_flag("errd", False, {}, now=4)
    p.update({"errd.app": "up"}, now=5)
    p.update({"errd.app": "down"}, now=6)
    assert p.set_flag("errd", True, {"errd.app": "up"}, now=7) == []    # back up meanwhile: nothing


def test_wait_holds_until_its_resource_is_reported_up_not_merely_init():
    p = CheckPolicy(RULES, maxloop=3, loop_interval_s=60)
    [d] = p.update({"intf.lan": "down"}, now=0)
    assert d.action == "wait" and p.held_resources({"intf.lan": "down"}) == {"intf.lan"}
    assert p.update({"intf.lan": "init"}, now=1) == []      # checker paused: proves nothing
    [r] = p.update({"intf.lan": "up"}, now=2)
    assert (r.action, r.cause) == (RESUME, "intf_lan") and not p.held


VALUES = st.sampled_from(["init", "up", "down"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["errd.app", "tcp.db", "intf.lan"]), VALUES,
                          st.floats(0, 5)), max_size=60),
       st.integers(0, 4), st.floats(1, 30))
def test_never_more_than_maxloop_looping_actions_within_loop_interval(changes, maxloop, interval):
    p = CheckPolicy(RULES, maxloop=maxloop, loop_interval_s=interval)
    values = {"errd.app": "init", "tcp.db": "init", "intf.lan": "init"}
    now, counted = 0.0, []
    for name, value, dt in changes:
        now += dt
        values[name] = value
        for d in p.update(values, now):
            if d.action in ("restart", "stopstart"):
                counted.append(now)
            if d.action == RESUME:
                assert values["intf.lan"] == "up"
        assert all(sum(1 for t in counted if t_end - interval < t <= t_end) <= maxloop
                   for t_end in counted)


def test_incarnation_counts_starts_and_restarts_not_resyncs():
    inc = ModuleIncarnation()
    for state, ready, why in [("STOP", True, None), ("WAIT", False, "starting"), ("ALONE", True, None),
                              ("ALONE", False, "in-sync set changed"), ("PRIM", True, None),
                              ("PRIM", False, "checker errd_app: restart"), ("PRIM", True, None)]:
        inc.observe(state, ready, why)
    assert inc.count == 2


# ---- ModuleChecks with real probes ---------------------------------------------------------
USERCONFIG = """<safe><service mode="mirror" maxloop="2" loop_interval="1h"><rfs><replicated dir="/srv/x"/></rfs>
<errd polltimer="200ms"><proc name="{proc}" atleast="1" action="restart" class="prim"/></errd>
<check>
  <tcp ident="svc" when="prim"><to addr="127.0.0.1" port="{port}" interval="200ms" timeout="300ms"/></tcp>
  <custom ident="flip" when="prim" exec="{program}" action="stopstart"/>
</check>
</service></safe>"""


class Recorder:
    name, node = "m", "a"

    def __init__(self) -> None:
        self.actions: list[tuple[str, str]] = []
        self.checks = None

    def checker_action(self, action: str, cause: str) -> None:
        self.actions.append((action, cause))


async def _until(what, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_module_checks_drive_real_probes_and_a_custom_program(tmp_path: Path):
    proc_name = f"hcchk{os.getpid() % 100000}"
    sleeper = tmp_path / proc_name       # a real binary under its own name
    sleeper.write_bytes(Path("/bin/sleep").read_bytes())
    sleeper.chmod(0o755)
    program = tmp_path / "flip.sh"
    pidfile = tmp_path / "flip.pid"
    program.write_text(f"#!/bin/sh\necho $$ > {pidfile}\necho module=$HACLUSTER_MODULE\nexec sleep 60\n")
    program.chmod(0o755)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    config = parse_userconfig(USERCONFIG.format(proc=proc_name, port=port, program=program).encode(),
                              "uc.xml", "m")
    app = subprocess.Popen([str(sleeper), "60"])
    rt = Recorder()
    log_lines: list[str] = []

    async def scenario() -> None:
        checks = ModuleChecks("m", config, rt, module_dir=tmp_path, log_dir=tmp_path, env={},
                              module_log=log_lines.append)
        rt.checks = checks
        checks.start()
        try:
            await asyncio.sleep(0.3)
            assert checks.table.values() == {"errd." + proc_name: "init", "tcp.svc": "init",
                                             "custom.flip": "init"}, "nothing runs in STOP"
            assert not pidfile.exists()
            checks.module_state("PRIM", True)
            await _until("errd and tcp up", lambda: checks.table.value("errd." + proc_name) == "up"
                         and checks.table.value("tcp.svc") == "up")
            await _until("custom program started", pidfile.exists)
            assert "module=m" in (tmp_path / "custom.flip.log").read_text()
            app.kill()
            app.wait()
            await _until("restart action", lambda: ("restart", f"errd_{proc_name}") in rt.actions)
            checks.set_resource("custom.flip", "down")
            assert ("stopstart", "custom_flip") in rt.actions
            with pytest.raises(ControlError, match="only custom"):
                checks.set_resource("tcp.svc", "down")
            with pytest.raises(ControlError, match="up or down"):
                checks.set_resource("custom.flip", "maybe")
            res = checks_command(rt, {"cmd_name": "resources"})
            assert {r["resource"] for r in res["resources"]} == {"errd." + proc_name, "tcp.svc", "custom.flip"}
            assert res["loop_count"] == 2 and res["maxloop"] == 2
            checks_command(rt, {"cmd_name": "checker_off"})
            listener.close()
            await _until("tcp down", lambda: checks.table.value("tcp.svc") == "down")
            assert not any(c == "tcp_svc" for _, c in rt.actions), "checker off holds tcp's action"
            assert any("reason=maintenance" in line for line in log_lines)
            pid = int(pidfile.read_text())
            checks.module_state("SECOND", True)     # when=prim: everything pauses, program stopped
            await _until("program stopped", lambda: not _alive(pid))
            assert set(checks.table.values().values()) == {"init"}
        finally:
            await checks.stop()
    try:
        asyncio.run(scenario())
    finally:
        app.kill()
        listener.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_checks_command_refuses_unknown_commands():
    rt = Recorder()
    with pytest.raises(ControlError, match="not running"):
        checks_command(rt, {"cmd_name": "resources"})
