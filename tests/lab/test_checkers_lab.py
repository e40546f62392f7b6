"""Checkers end to end: the kv demo mirror module on real daemons, with <errd> and
<check> sections, and real faults: the application killed, its service hung with
SIGSTOP, the VIP deleted by hand, an interface taken down, a custom checker program
flipping its resource, and a module dependency restarting."""
from __future__ import annotations

import itertools
import os
import signal

import pytest

from chaos.lab import wait_until
from chaos.lab_mirror import MirrorLab
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

_ids = itertools.count()


def _datadir() -> str:
    # unique per test and run: errd matches the app by its data directory, and other
    # labs on this machine run the same kv app (one PID namespace for all)
    return f"/srv/chk{os.getpid()}x{next(_ids)}"


def _errd(datadir: str) -> str:
    return (f'<errd polltimer="500ms"><proc nameregex="python.*" '
            f'argregex="-m chaos\\.kvapp --data \\S*{datadir} .*" atleast="1" action="restart" '
            f'class="prim"/></errd>')


def _mirror(make_lab, extra: str = "", hosts=("n1", "n2", "w", "c"), **kw) -> MirrorLab:
    lab = make_lab(list(hosts))
    datadir = kw.pop("datadir", None) or _datadir()
    m = MirrorLab(lab, datadir=datadir, **kw)
    m.extra_sections = extra.replace("{datadir}", datadir).replace("{vip}", m.vip)
    return m


def _pid(m: MirrorLab, node: str, module: str | None = None) -> int | None:
    path = m.root(node) / "run" / (module or m.module) / "kvapp.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _new_pid(m: MirrorLab, node: str, old: int | None, timeout: float = 20.0, module: str | None = None) -> int:
    return wait_until(f"a new kvapp on {node}", lambda: (lambda p: p if p and p != old else None)(
        _pid(m, node, module)), timeout)


# Polled in wait_until loops: through the control socket, not a CLI process each
# time (a Python start every 20 ms starves the daemons on 2 cores and Raft stalls).
# The CLI forms of the same commands are run explicitly below.
def _log(m: MirrorLab, node: str, module: str | None = None) -> str:
    res = m.call(node, "module_log", module=module or m.module, kind="module", lines=500)
    return "\n".join(res["lines"]) + "\n"


def _resources(m: MirrorLab, node: str) -> dict:
    res = m.call(node, "module_cmd", module=m.module, cmd_name="resources")
    res["values"] = {r["resource"]: r["value"] for r in res["resources"]}
    return res


def test_app_killed_is_restarted_then_after_maxloop_the_module_stops(make_lab):
    m = _mirror(make_lab, "{errd}")
    m.extra_sections = _errd(m.datadir)
    m.start()
    resource = wait_until("errd resource up", lambda: next(
        (n for n, v in _resources(m, "n1")["values"].items() if n.startswith("errd.") and v == "up"), None), 15)
    pid = _pid(m, "n1")
    for count in (1, 2, 3):                     # maxloop defaults to 3
        os.kill(pid, signal.SIGKILL)
        pid = _new_pid(m, "n1", pid)
        m.wait_state("n1", "PRIM", 20)
        assert f"action=restart count={count} maxloop=3" in _log(m, "n1")
    res = _resources(m, "n1")
    assert res["loop_count"] == 3 and res["values"][resource] in ("up", "init")
    text = m.cli("n1", "-m", m.module, "resources").stdout
    assert "RESOURCE" in text and resource in text and "loop 3/3" in text
    os.kill(pid, signal.SIGKILL)                # the fourth failure inside loop_interval
    m.wait_state("n1", "STOP", 30)
    assert "event=maxloop_reached" in _log(m, "n1") and "requested=restart action=stop" in _log(m, "n1")
    assert "event=maxloop_reached" in m.cli("n1", "-m", m.module, "log", "--lines", "500").stdout
    m.wait_state("n2", "ALONE", 30)             # the secondary took over
    # resetloop and start bring it back (as secondary now)
    assert m.cli("n1", "-m", m.module, "resetloop").returncode == 0
    assert _resources(m, "n1")["loop_count"] == 0
    m.cli("n1", "-m", m.module, "start", check=True)
    m.wait_state("n1", "SECOND", 60)


def test_errd_off_holds_the_action_and_errd_on_restores_it(make_lab):
    m = _mirror(make_lab)
    m.extra_sections = _errd(m.datadir)
    m.start()
    wait_until("errd up", lambda: "up" in _resources(m, "n1")["values"].values(), 15)
    assert m.cli("n1", "-m", m.module, "errd", "off").returncode == 0
    pid = _pid(m, "n1")
    os.kill(pid, signal.SIGKILL)
    wait_until("errd down", lambda: "down" in _resources(m, "n1")["values"].values(), 10)
    assert "reason=maintenance" in _log(m, "n1") and _pid(m, "n1") is None
    assert not _resources(m, "n1")["errd"]
    # -H: the flag is served by the peer daemon too
    res = m.cli("n1", "-H", "n2", "-m", m.module, "errd", "on")
    assert res.returncode == 0 and "n2" in res.stdout
    assert m.cli("n1", "-m", m.module, "errd", "on").returncode == 0
    _new_pid(m, "n1", pid)          # the process is still missing: errd on acts on it


def test_hung_tcp_service_is_restarted(make_lab):
    m = _mirror(make_lab, '<check><tcp ident="kv" action="restart"><to addr="127.0.0.1" port="8080" '
                          'interval="500ms" timeout="500ms"/></tcp></check>')
    m.start()
    wait_until("tcp up", lambda: _resources(m, "n1")["values"].get("tcp.kv") == "up", 15)
    pid = _pid(m, "n1")
    os.kill(pid, signal.SIGSTOP)    # hung: the kernel still completes handshakes until the backlog fills
    try:
        new = _new_pid(m, "n1", pid, timeout=40)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert new != pid and not _alive(pid), "the hung process was stopped (with force)"
    assert "cause=tcp_kv action=restart" in _log(m, "n1")
    m.wait_state("n1", "PRIM", 20)
    assert m.client_get("/keys") is not None


def test_vip_deleted_by_hand_stopstarts_and_the_vip_comes_back(make_lab):
    m = _mirror(make_lab, '<check><ip ident="vip"><to addr="{vip}" interval="500ms" timeout="300ms"/></ip></check>')
    m.start()
    wait_until("ip up", lambda: _resources(m, "n1")["values"].get("ip.vip") == "up", 15)
    out = m.lab.run("n1", ["ip", "-o", "-4", "addr", "show"], check=True).stdout
    line = next(ln for ln in out.splitlines() if f" {m.vip}/" in ln)
    dev, cidr = line.split()[1], line.split()[3]
    # The primary puts its VIP back at every lease renewal (its kernel-side lifetime is
    # refreshed with a replace), so one deletion heals by itself within a renewal: keep
    # deleting it, as a conflicting tool would, until the checker acts.
    deleter = m.lab.spawn("n1", ["sh", "-c", f"while :; do ip addr del {cidr} dev {dev} "
                                             "2>/dev/null; sleep 0.05; done"], name="vip-deleter")
    try:
        wait_until("stopstart in n1's log",
                   lambda: "cause=ip_vip action=stopstart" in _log(m, "n1"), 15)
    finally:
        deleter.stop()
    wait_until("a primary with the VIP", lambda: any(
        (st := m.state(n)) and st["state"] in ("PRIM", "ALONE") and st["ready"] == "Ready" and st["vip"]
        for n in m.nodes), 60)
    assert m.client_get("/keys") is not None, "the VIP answers again"


def test_interface_down_waits_then_recovers_when_it_comes_back(make_lab):
    m = _mirror(make_lab, '<check><intf ident="chk0"><to name="chk0" interval="500ms"/></intf></check>')
    for n in m.nodes:               # a veth pair inside each node: chk1 down takes chk0's carrier
        m.lab.run(n, ["ip", "link", "add", "chk0", "type", "veth", "peer", "name", "chk1"], check=True)
        for ifname in ("chk0", "chk1"):
            m.lab.run(n, ["ip", "link", "set", ifname, "up"], check=True)
    m.start()
    wait_until("intf up", lambda: _resources(m, "n1")["values"].get("intf.chk0") == "up", 15)
    m.lab.run("n1", ["ip", "link", "set", "chk1", "down"], check=True)
    m.wait_state("n1", "WAIT", 30)
    m.wait_state("n2", "ALONE", 30)
    assert _resources(m, "n1")["waiting"] == ["intf_chk0"]
    m.lab.run("n1", ["sleep", "2"])
    assert m.state("n1")["state"] == "WAIT", "held while the interface is down"
    m.lab.run("n1", ["ip", "link", "set", "chk1", "up"], check=True)
    m.wait_state("n1", "SECOND", 60)
    m.wait_state("n2", "PRIM", 30)
    assert "event=wait_over" in _log(m, "n1")


CUSTOM = r"""#!/bin/sh
# custom checker: report the flag file's value whenever it changes
last=""
while :; do
    v=$(cat "$HACLUSTER_ROOT_PREFIX/custom_flag" 2>/dev/null || echo up)
    if [ "$v" != "$last" ]; then "$PYTHON" -m hacluster set -r custom.flag -v "$v" && last="$v"; fi
    sleep 0.2
done
"""


def test_custom_checker_flipping(make_lab):
    lab_hosts = ("n1", "n2", "w", "c")
    m = _mirror(make_lab, "", hosts=lab_hosts)
    program = m.lab.workdir / "flag_checker.sh"
    program.write_text(CUSTOM)
    program.chmod(0o755)
    m.extra_sections = f'<check><custom ident="flag" exec="{program}" action="restart"/></check>'
    m.start()
    flag = m.root("n1") / "custom_flag"
    wait_until("custom up", lambda: _resources(m, "n1")["values"].get("custom.flag") == "up", 20)
    pid = _pid(m, "n1")
    for _ in range(2):
        flag.write_text("down\n")
        wait_until("custom down", lambda: _resources(m, "n1")["values"].get("custom.flag") == "down", 15)
        pid = _new_pid(m, "n1", pid)            # its rule restarted the application
        flag.write_text("up\n")
        wait_until("custom up again", lambda: _resources(m, "n1")["values"].get("custom.flag") == "up", 15)
    assert _log(m, "n1").count("cause=custom_flag action=restart") == 2
    assert _resources(m, "n2")["values"]["custom.flag"] == "init", "not run on the secondary"
    res = m.cli("n1", "-H", "n2", "-m", m.module, "set", "-r", "custom.flag", "-v", "down")
    assert res.returncode == 1 and "local" in res.stderr and res.stderr.count("\n") == 1
    res = m.cli("n1", "-m", m.module, "set", "-r", "tcp.nothing", "-v", "down")
    assert res.returncode == 1 and "only custom" in res.stderr


def test_module_dependency_restarting_restarts_the_dependant(make_lab):
    base = _mirror(make_lab)
    base.start()
    dep = MirrorLab(base.lab, module="kvdep", port=8081, datadir=_datadir(), vip_host=201,
                    cluster=base.cluster,
                    extra_sections=f'<check><module name="{base.module}" action="restart"/></check>')
    dep.start()
    wait_until("module up", lambda: _resources(dep, "n1")["values"].get(f"module.{base.module}") == "up", 20)
    dep_pid = _pid(dep, "n1")
    base.cli("n1", "-m", base.module, "restart", check=True)
    _new_pid(dep, "n1", dep_pid, timeout=30)
    # (a Raft hiccup may fence and re-promote the dependant first: wait for the action)
    wait_until("the dependant restarted by its module checker",
               lambda: f"cause=module_{base.module} action=restart" in _log(dep, "n1"), 30)
    dep.wait_state("n1", "PRIM", 30)
