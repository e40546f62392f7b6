"""The command line for people: argument order, exit statuses, JSON errors,
confirmations of destructive commands, `module check` / `module package` warnings,
`log -f`. The daemon side is a real control socket (ControlServer) answering with
scripted replies and recording what it was asked; no daemon at all for
"unreachable"; a real pseudo-terminal for the interactive confirmations."""
from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from hacluster import cli
from hacluster.modules.rotating_log import RotatingLog
from hacluster.node import exit_status
from hacluster.node.control import NO_QUORUM, ControlError, ControlServer

# ---- argument order ----------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["-m", "web", "state"], ["state", "-m", "web"], ["state", "--module", "web"],
    ["--config", "/x", "state", "-m", "web"], ["state", "-c", "/x", "-m", "web"]])
def test_safekit_argument_order_is_accepted(argv):
    args = cli.build_parser().parse_args(argv)
    assert args.module == "web" and args.func is cli.cmd_state


def test_options_after_the_command_win_and_absent_ones_keep_the_earlier():
    p = cli.build_parser()
    args = p.parse_args(["-H", "all", "-m", "a", "start", "-m", "b"])
    assert (args.module, args.hosts) == ("b", "all")
    args = p.parse_args(["-c", "/etc/x", "primforce", "-H", "n2", "-m", "web", "--force"])
    assert (args.config, args.hosts, args.module, args.force) == ("/etc/x", "n2", "web", True)


# ---- exit statuses -----------------------------------------------------------------------

def test_exit_codes_of_errors():
    assert cli.exit_code(ControlError("x", "unreachable")) == exit_status.UNREACHABLE == 69
    assert cli.exit_code(ControlError("x", NO_QUORUM)) == exit_status.NO_QUORUM == 75
    assert cli.exit_code(ControlError("refused")) == exit_status.FAILED == 1
    assert cli.exit_code(cli.StateFailed("x")) == exit_status.STATE_FAILED == 5
    assert cli.exit_code(cli.Refused("x")) == exit_status.FAILED
    codes = [c for c, _ in exit_status.CLI_TABLE]
    assert len(codes) == len(set(codes))


def test_help_prints_the_table_of_exit_statuses(capsys):
    assert cli.main(["help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for code, what in exit_status.CLI_TABLE:
        assert f"{code} {' '.join(what.split())}" in out


@pytest.fixture
def config(tmp_path, monkeypatch):
    # the member's run directory (its control socket) and state beside its config
    monkeypatch.setenv("HACLUSTER_RUN_DIR", str(tmp_path / "n1"))
    monkeypatch.setenv("HACLUSTER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HACLUSTER_LOG_DIR", str(tmp_path / "log"))
    assert cli.main(["cluster", "init", "--name", "t", "--node", "n1=10.0.0.1", "--node", "n2=10.0.0.2",
                     "--witness", "w=10.0.0.9", "--out", str(tmp_path)]) == 0
    return tmp_path / "n1"


def test_no_daemon_is_its_own_status_also_for_state(config, capsys):
    capsys.readouterr()
    assert cli.main(["--config", str(config), "cluster", "status"]) == exit_status.UNREACHABLE
    assert "no hacluster daemon listening" in capsys.readouterr().err
    # not 1, which is WAIT
    assert cli.main(["--config", str(config), "state", "-m", "web"]) == exit_status.UNREACHABLE


def test_errors_are_json_on_stdout_with_json(config, capsys):
    capsys.readouterr()
    assert cli.main(["--config", str(config), "-m", "web", "state", "--json"]) == 69
    out, err = capsys.readouterr()
    assert err == ""
    reply = json.loads(out)
    assert reply["exit"] == 69 and "no hacluster daemon listening" in reply["error"]


def test_usage_errors_are_json_too_with_json(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["state", "--json", "--bogus"])
    assert e.value.code == exit_status.USAGE
    out, err = capsys.readouterr()
    assert json.loads(out) == {"error": "unrecognized arguments: --bogus", "exit": 2} and err == ""


class FakeDaemon:
    """A real control socket at the member's path, answering from ``replies``
    (cmd -> result, or an exception to raise) and recording every request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict] = []
        self.replies: dict[str, object] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, request: dict):
        self.requests.append(request)
        key = request["cmd"] if request["cmd"] != "module_cmd" else f"module_cmd:{request['cmd_name']}"
        reply = self.replies.get(key, self.replies.get(request["cmd"]))
        if isinstance(reply, Exception):
            raise reply
        return reply(request) if callable(reply) else reply

    def start(self) -> "FakeDaemon":
        self.thread.start()
        cmds = ["status", "module_state", "module_cmd", "remove_member", "forward", "module_log"]
        self.server = ControlServer(self.path, {c: self._handle for c in cmds})
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def sent(self, cmd: str) -> list[dict]:
        return [r for r in self.requests if r["cmd"] == cmd]


@pytest.fixture
def daemon(config):
    d = FakeDaemon(config / "control.sock").start()
    yield d
    d.stop()


def status(quorum: bool, leases=()) -> dict:
    return {"cluster": "t", "node": "n1", "role": "node", "leader": "n1" if quorum else None, "term": 3,
            "commit_index": 10, "last_applied": 10, "has_quorum": quorum,
            "members": [{"name": "n1", "role": "node", "address": "10.0.0.1:7400", "live": True,
                         "connected": True, "leader": quorum}],
            "leases": list(leases)}


def test_cluster_status_without_quorum_prints_it_and_exits_75(config, daemon, capsys):
    daemon.replies["status"] = status(False)
    capsys.readouterr()
    assert cli.main(["--config", str(config), "cluster", "status"]) == exit_status.NO_QUORUM
    assert "quorum NO" in capsys.readouterr().out
    daemon.replies["status"] = status(True)
    assert cli.main(["--config", str(config), "cluster", "status"]) == 0


def test_a_command_not_committed_for_lack_of_quorum_exits_75(config, daemon, capsys):
    daemon.replies["module_cmd"] = ControlError("set_intent: not committed within 5 s (no quorum?)", NO_QUORUM)
    assert cli.main(["--config", str(config), "-m", "web", "start"]) == exit_status.NO_QUORUM
    assert "no quorum" in capsys.readouterr().err


def test_state_failures_are_not_wait(config, daemon, capsys):
    daemon.replies["module_state"] = ControlError("unknown module 'web' on n1 (running: none)")
    assert cli.main(["--config", str(config), "state", "-m", "web"]) == exit_status.STATE_FAILED
    daemon.replies["module_state"] = {"module": "web", "node": "n1", "mode": "mirror", "state": "WAIT",
                                      "ready": "Ready", "epoch": 1, "primary": None, "in_sync": [],
                                      "exit_code": 1}
    assert cli.main(["--config", str(config), "state", "-m", "web"]) == 1
    assert "WAIT (Ready)" in capsys.readouterr().out


# ---- confirmations --------------------------------------------------------------------

@pytest.fixture
def no_tty(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))      # a script's stdin: not a terminal


def _refusal(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "--force" in err[0]
    return err[0]


def test_primforce_needs_force_without_a_terminal(config, daemon, no_tty, capsys):
    daemon.replies["module_cmd"] = lambda r: {"module": "web", "node": "n1", "message": "primforce: accepted"}
    assert cli.main(["--config", str(config), "-m", "web", "primforce"]) == 1
    _refusal(capsys)
    assert daemon.sent("module_cmd") == []          # nothing asked of the daemon
    assert cli.main(["--config", str(config), "-m", "web", "primforce", "--force"]) == 0
    assert [r["cmd_name"] for r in daemon.sent("module_cmd")] == ["primforce_force"]


@pytest.mark.parametrize("hosts", ["all", "n1,n2"])
def test_primforce_on_several_nodes_is_refused_even_with_force(config, daemon, no_tty, capsys, hosts):
    assert cli.main(["--config", str(config), "-H", hosts, "-m", "web", "primforce", "--force"]) == 1
    assert "never several" in capsys.readouterr().err
    assert daemon.requests == []


def mirror_state(node: str, primary, in_sync) -> dict:
    return {"module": "web", "node": node, "mode": "mirror", "state": "STOP", "ready": "Ready",
            "epoch": 4, "primary": primary, "in_sync": in_sync, "exit_code": 0}


def test_second_on_the_only_current_copy_needs_force(config, daemon, no_tty, capsys):
    daemon.replies["module_state"] = mirror_state("n1", None, ["n1"])
    daemon.replies["module_cmd"] = lambda r: {"module": "web", "node": "n1", "message": f"{r['cmd_name']}: accepted"}
    assert cli.main(["--config", str(config), "-m", "web", "second"]) == 1
    assert "only current copy" in _refusal(capsys)
    assert daemon.sent("module_cmd") == []
    assert cli.main(["--config", str(config), "-m", "web", "second", "--force"]) == 0
    assert [r["cmd_name"] for r in daemon.sent("module_cmd")] == ["second_force"]


def test_second_when_another_copy_is_current_goes_on(config, daemon, no_tty):
    daemon.replies["module_state"] = mirror_state("n1", "n2", ["n2"])
    daemon.replies["module_cmd"] = lambda r: {"module": "web", "node": "n1", "message": "second: accepted"}
    assert cli.main(["--config", str(config), "-m", "web", "second"]) == 0
    assert [r["cmd_name"] for r in daemon.sent("module_cmd")] == ["second"]


def test_second_with_H_all_asks_for_the_nodes_holding_the_only_copy(config, daemon, no_tty, capsys):
    daemon.replies["forward"] = lambda r: [
        {"node": "n1", "ok": True, "result": mirror_state("n1", None, ["n1"])},
        {"node": "n2", "ok": True, "result": mirror_state("n2", None, ["n1"])}]
    assert cli.main(["--config", str(config), "-H", "all", "-m", "web", "second"]) == 1
    assert "second on n1" in _refusal(capsys)
    assert [r["request"]["cmd"] for r in daemon.sent("forward")] == ["module_state"]


def test_removing_an_in_sync_secondary_needs_force(config, daemon, no_tty, capsys):
    daemon.replies["status"] = status(True, [{"resource": "mirror/web", "holder": "n1", "epoch": 3,
                                              "eligible": ["n1", "n2"]}])
    daemon.replies["remove_member"] = {"members": {"n1": {"role": "node"}, "w": {"role": "witness"}}}
    assert cli.main(["--config", str(config), "cluster", "remove-node", "n2"]) == 1
    assert "in-sync copy of web" in _refusal(capsys)
    assert daemon.sent("remove_member") == []
    assert cli.main(["--config", str(config), "cluster", "remove-node", "n2", "--force"]) == 0
    assert len(daemon.sent("remove_member")) == 1


def test_removing_a_node_that_holds_no_current_copy_asks_nothing(config, daemon, no_tty):
    daemon.replies["status"] = status(True, [{"resource": "mirror/web", "holder": "n1", "epoch": 3,
                                              "eligible": ["n1"]}])
    daemon.replies["remove_member"] = {"members": {"n1": {"role": "node"}, "w": {"role": "witness"}}}
    assert cli.main(["--config", str(config), "cluster", "remove-node", "n2"]) == 0


def test_in_sync_secondary_of():
    st = status(True, [{"resource": "mirror/a", "holder": "n1", "eligible": ["n1", "n2"]},
                       {"resource": "mirror/b", "holder": "n2", "eligible": ["n2"]},
                       {"resource": "node/n2", "holder": "n2", "eligible": ["n2"]}])
    assert cli.in_sync_secondary_of(st, "n2") == ["a"]
    assert cli.in_sync_secondary_of(st, "n1") == []


def _on_a_terminal(monkeypatch, answer: str) -> None:
    """stdin becomes a real pseudo-terminal with ``answer`` typed into it."""
    master, slave = os.openpty()
    os.write(master, answer.encode())
    tty = os.fdopen(slave, "r")
    assert tty.isatty()
    monkeypatch.setattr(sys, "stdin", tty)


@pytest.mark.parametrize("answer,done", [("y\n", True), ("yes\n", True), ("n\n", False), ("\n", False)])
def test_a_terminal_is_asked(config, daemon, monkeypatch, capsys, answer, done):
    _on_a_terminal(monkeypatch, answer)
    daemon.replies["module_cmd"] = lambda r: {"module": "web", "node": "n1", "message": "primforce: accepted"}
    assert cli.main(["--config", str(config), "-m", "web", "primforce"]) == (0 if done else 1)
    err = capsys.readouterr().err
    assert "Do it? [y/N]" in err
    assert [r["cmd_name"] for r in daemon.sent("module_cmd")] == (["primforce_force"] if done else [])
    if not done:
        assert "not confirmed; nothing done" in err


# ---- module check / package ----------------------------------------------------------------

USERCONFIG = """<!DOCTYPE safe>
<safe>
<service mode="mirror">
  <rfs><replicated dir="/srv/data"/></rfs>
  <checks><tcp ident="x"><to addr="10.0.0.1" port="80"/></tcp></checks>
  <check>
    <tcp ident="web"><to addr="10.0.0.1" port="80" intervall="10"/></tcp>
  </check>
</service>
</safe>
"""


def module_dir(tmp_path: Path, userconfig: str = USERCONFIG) -> Path:
    d = tmp_path / "web"
    (d / "conf").mkdir(parents=True)
    (d / "bin").mkdir()
    (d / "conf" / "userconfig.xml").write_text(userconfig)
    for s in ("start_prim", "stop_prim"):
        (d / "bin" / s).write_text("#!/bin/sh\nexit 0\n")
        (d / "bin" / s).chmod(0o755)
    return d


def test_module_check_warns_typos_with_file_and_line(tmp_path, capsys):
    d = module_dir(tmp_path)
    assert cli.main(["module", "check", str(d)]) == 0
    out = capsys.readouterr().out
    where = d / "conf" / "userconfig.xml"
    assert f"warning: {where}:5: checks: unknown section, ignored (did you mean 'check'?)" in out
    assert f"warning: {where}:7: to@intervall: unknown attribute, ignored (did you mean 'interval'?)" in out
    assert "0 error(s), 2 warning(s)" in out
    # the userconfig.xml on its own, and as JSON
    assert cli.main(["module", "check", str(where), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["mode"] == "mirror" and len(report["warnings"]) == 2


def test_module_check_prints_every_error_and_exits_1(tmp_path, capsys):
    bad = USERCONFIG.replace('<service mode="mirror">', '<service mode="mirror" failover="maybe">') \
                    .replace('port="80" intervall="10"', 'port="eighty"')
    d = module_dir(tmp_path, bad)
    (d / "bin" / "stop_prim").chmod(0o644)
    assert cli.main(["module", "check", str(d)]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, out
    assert ":3: service@failover: 'maybe' must be 'on' or 'off'" in errors[0]
    assert ":7: to@port:" in errors[1]
    assert "bin/stop_prim: script is not executable" in errors[2]
    assert "warning: " in out       # the <checks> typo is still reported


def test_module_check_of_a_safe_and_of_a_missing_path(tmp_path, capsys):
    d = module_dir(tmp_path)
    assert cli.main(["module", "package", str(d), "-o", str(tmp_path / "web.safe")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'web.safe'}")
    assert "warning: " in out and "did you mean 'check'?" in out
    assert cli.main(["module", "check", str(tmp_path / "web.safe")]) == 0
    assert "web.safe:conf/userconfig.xml:5: checks" in capsys.readouterr().out
    assert cli.main(["module", "check", str(tmp_path / "nothing.xml")]) == 1
    assert "cannot read" in capsys.readouterr().out


def test_module_package_with_an_error_writes_nothing_and_shows_everything(tmp_path, capsys):
    d = module_dir(tmp_path, USERCONFIG.replace('port="80" intervall="10"', 'port="eighty"'))
    out_file = tmp_path / "web.safe"
    assert cli.main(["module", "package", str(d), "-o", str(out_file)]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "warning: " in err and "nothing written" in err
    assert not out_file.exists()


# ---- log -f ------------------------------------------------------------------------

def test_log_follow_prints_the_tail_then_new_lines_once(config, daemon, tmp_path, capsys, monkeypatch):
    """The daemon's side is the real reading code (rotating_log) over a real file that
    rotates between the polls."""
    from hacluster.modules import rotating_log
    path = tmp_path / "script.log"
    out = RotatingLog(path, 4096, keep=50)
    for i in range(10):
        out.write_line(b"old %d" % i)

    def answer(r: dict) -> dict:
        if r.get("cursor") is None:
            chunk = rotating_log.read_tail(path, r["lines"])
        else:
            chunk = rotating_log.read_since(path, rotating_log.Cursor.from_dict(r["cursor"]), 50)
        # between two polls, a writer writes enough to rotate the file twice
        for i in range(200):
            out.write_line(b"new %d %d " % (len(daemon.requests), i) + b"x" * 40)
        return {"module": "web", "kind": "script", "path": str(path), "lines": chunk.lines,
                "cursor": chunk.cursor.to_dict() if chunk.cursor else None, "skipped": chunk.skipped}
    daemon.replies["module_log"] = answer
    monkeypatch.setattr(cli, "FOLLOW_POLL_S", 0.0)
    args = cli.build_parser().parse_args(["--config", str(config), "-m", "web", "log", "--kind", "script",
                                          "--lines", "3", "-f"])
    capsys.readouterr()
    assert cli.follow_log(args, {"module": "web", "kind": "script", "lines": 3}, polls=3) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == ["old 7", "old 8", "old 9"]
    assert out.rotations >= 4
    written_before_last_poll = [f"new {n} {i} " + "x" * 40 for n in (1, 2, 3) for i in range(200)]
    assert printed[3:] == written_before_last_poll


def test_log_follow_is_local(config, capsys):
    assert cli.main(["--config", str(config), "-H", "n2", "-m", "web", "log", "-f"]) == 1
    assert "no -H" in capsys.readouterr().err
