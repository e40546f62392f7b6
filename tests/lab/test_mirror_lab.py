"""The mirror module end to end: real daemons, the demo key/value app packaged
as a .safe, a real VIP reached from a client host, real kills and cuts."""
from __future__ import annotations

import time

import psutil
import pytest

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.lab_mirror import MirrorLab
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


@pytest.fixture
def mirror(make_lab):
    def make(prim="n1"):
        lab = make_lab(["n1", "n2", "w", "c"])
        return MirrorLab(lab).start(prim=prim)
    return make


def _check_history(m: MirrorLab, node: str, acks: list[dict]) -> None:
    """Every acknowledged record is in the node's real copy with its value;
    the client never saw an epoch go back or two nodes in one epoch."""
    records = m.log_records(node)
    lost = lost_acked_writes([Ack(**a) for a in acks], records)
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    answers = [(a["t_acked"], a["node"], a["epoch"]) for a in acks]
    assert not epoch_violations(answers), epoch_violations(answers)


def _rejoin_and_check(m: MirrorLab, returning: str, primary: str) -> dict:
    """The node that was away comes back as SECOND in sync; nothing acknowledged
    was lost; both real copies end identical. Returns the primary's state."""
    m.wait_state(returning, "SECOND", timeout=60)
    st = m.wait_state(primary, "PRIM", timeout=30)
    m.writer.stop()
    _check_history(m, primary, m.acks())
    # a write the stopped client left in flight may still be on its way
    wait_until("identical copies", lambda: m.log_records(returning) == m.log_records(primary), 10)
    return st


def test_primary_host_killed_fails_over_and_returns_as_secondary(mirror):
    m = mirror()
    m.start_writer()
    before = m.wait_acks(20)
    assert {a["node"] for a in before} == {"n1"}
    m.kill_host("n1")            # how long it takes is measured by python -m bench failover
    m.wait_state("n2", "ALONE", timeout=20)
    wait_until("writes through the VIP on n2", lambda: any(
        a["node"] == "n2" for a in m.acks()), 20)
    acked = {a["key"] for a in m.acks()}         # before asking: later acks may come in
    assert m.keys_via_vip() >= acked
    # the old primary comes back: reintegration, then in sync
    m.restart_node("n1")
    st = _rejoin_and_check(m, "n1", "n2")
    assert st["in_sync"] == ["n1", "n2"] and st["epoch"] == 2


def test_secondary_cut_off_primary_goes_alone_and_keeps_serving(mirror):
    m = mirror()
    m.start_writer()
    m.wait_acks(10)
    m.lab.cut("n2")
    m.wait_state("n1", "ALONE", timeout=20)
    n = len(m.acks())
    m.wait_acks(n + 20, timeout=20)
    # Either the mount's peer_lost hook committed the removal (the log line follows
    # the applied entry), or -- when the cut-off secondary was the Raft leader and the
    # election outlasted n1's lease -- n1 was fenced and acquired the lease again (at a
    # new epoch, or at the same one when Raft had not expired it yet), committing "in
    # sync = n1" before it mounted. Every path commits before writing.
    log = m.lab.workdir / "n1" / "hacluster.log"

    def committed() -> bool:
        text = log.read_text(errors="replace")
        return ("event=secondary_out_of_sync" in text or m.state("n1")["epoch"] > 1
                or text.count("event=lease_acquired resource=mirror/kvdemo") > 1)
    wait_until("the primary committed the secondary's removal", committed, 15)
    m.lab.heal("n2")
    _rejoin_and_check(m, "n2", "n1")


def test_swap_and_stop_start(mirror):
    m = mirror()
    m.start_writer()
    m.wait_acks(10)
    m.cli("n1", "-m", "kvdemo", "swap", check=True)
    m.wait_pair("n2", timeout=60)
    n = len(m.acks())
    m.wait_acks(n + 10, timeout=20)
    m.cli("n2", "-m", "kvdemo", "stop", check=True)
    m.wait_state("n2", "STOP", timeout=30)
    m.wait_state("n1", "ALONE", timeout=30)
    m.cli("n2", "-m", "kvdemo", "start", check=True)
    m.wait_pair("n1", timeout=60)
    # n1 primary again, under a third epoch: its answers say so
    wait_until("writes at epoch 3", lambda: any(a["epoch"] >= 3 for a in m.acks()), 20)
    m.writer.stop()
    acks = m.acks()
    _check_history(m, "n1", acks)
    epochs = [a["epoch"] for a in acks]
    assert epochs == sorted(epochs)
    res = m.cli("n1", "-m", "kvdemo", "state")
    assert res.returncode == 3, res.stdout


def test_stale_node_refused_as_primary_and_primforce_overrides(mirror):
    m = mirror()
    m.start_writer()
    m.wait_acks(10)
    m.cli("n2", "-m", "kvdemo", "stop", check=True)
    m.wait_state("n1", "ALONE", timeout=30)
    m.wait_acks(len(m.acks()) + 10)
    m.writer.stop()
    m.kill_host("n1")                      # the only current copy goes away
    m.lab.heal("n1")
    m.cli("n2", "-m", "kvdemo", "start", check=True)
    time.sleep(4)
    st = m.state("n2")
    assert st["state"] == "WAIT", st       # not in sync: never primary by itself
    res = m.cli("n2", "-m", "kvdemo", "prim")
    assert res.returncode == 0             # accepted, but the commit is refused:
    time.sleep(2)
    assert m.state("n2")["state"] == "WAIT"
    log = m.cli("n2", "-m", "kvdemo", "log").stdout
    assert "not current" in log and "primforce" in log
    m.cli("n2", "-m", "kvdemo", "primforce", "--force", check=True)
    st = m.wait_state("n2", "ALONE", timeout=30)
    assert st["in_sync"] == ["n2"]


def test_primary_host_cut_off_stops_acting_and_the_secondary_takes_over(mirror):
    m = mirror()
    m.start_writer()
    m.wait_acks(10)
    m.lab.cut("n1")              # n1 keeps running, but sees no majority
    m.wait_state("n2", "ALONE", timeout=20)
    wait_until("n1 gave up", lambda: (m.state("n1") or {}).get("state") in ("WAIT", "SECOND"), 20)
    st = m.state("n1")
    assert st["vip"] == [], "a cut-off primary must drop its VIP"
    lost = [e for e in m.cluster.events("n1", "lease_lost") if e.get("resource") == "mirror/kvdemo"]
    granted = [e for e in m.cluster.events("n2", "lease_granted")
               if e.get("resource") == "mirror/kvdemo" and e.get("holder") == "n2"]
    assert lost and granted and float(lost[0]["mono"]) < float(granted[-1]["mono"]), \
        "the old primary must stop acting before the new one is granted the lease"
    wait_until("writes on n2", lambda: any(a["node"] == "n2" for a in m.acks()), 20)
    m.lab.heal("n1")
    _rejoin_and_check(m, "n1", "n2")


def test_primary_daemon_killed_its_mount_dies_with_it_and_the_secondary_takes_over(mirror):
    m = mirror()

    def mounts_of_n1() -> list[psutil.Process]:
        root = str(m.data_dir("n1"))
        return [p for p in psutil.process_iter(["cmdline"])
                if "mount" in (p.info["cmdline"] or []) and root in (p.info["cmdline"] or [])]

    m.start_writer()
    m.wait_acks(10)
    assert mounts_of_n1(), "the primary's replication mount runs"
    m.cluster.kill("n1")         # SIGKILL of the daemon alone: its children stay on the host
    m.wait_state("n2", "ALONE", timeout=20)
    wait_until("writes on n2", lambda: any(a["node"] == "n2" for a in m.acks()), 20)
    # the replication mount died with its daemon (PDEATHSIG): no writes accepted there
    assert mounts_of_n1() == []
    m.wait_acks(len(m.acks()) + 20, timeout=20)
    # its daemon restarts: the VIP left on n1 is removed, n1 returns as SECOND
    m.cluster.start("n1")
    _rejoin_and_check(m, "n1", "n2")
    assert m.cluster.events("n1", "leftovers_cleaned")
    assert m.vip not in m.lab.run("n1", ["ip", "-4", "addr", "show"]).stdout
