"""Maintenance without downtime (issue 21 item 7): the primary's daemon stopped and
started again in maintenance under write load — the application, its mounts and its
VIP go on, the new daemon adopts the same primary session (same epoch), no write fails
or is lost; and a daemon that does not come back within the hold stops acting by itself
while nobody else takes over until maintenance ends."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from chaos.history_check import lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.lab_mirror import MODULE, MirrorLab
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def _status(m: MirrorLab, node: str) -> dict:
    res = m.cli(node, "cluster", "status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _lease(m: MirrorLab, node: str) -> dict:
    return next(r for r in _status(m, node)["leases"] if r["resource"] == f"mirror/{MODULE}")


def _mount_pids(m: MirrorLab, node: str) -> list[int]:
    """The replication mounts running for the module on ``node``'s daemon."""
    root = str(m.data_dir(node))
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "mount" in (p.info["cmdline"] or []) and root in (p.info["cmdline"] or [])
            and "replication" in " ".join(p.info["cmdline"] or [])]


def _writer_failures(m: MirrorLab) -> list[str]:
    """The writes that failed (and were retried), as the stopped writer listed them."""
    assert m.writer is not None
    return [line for line in m.writer.log_path.read_text(errors="replace").splitlines()
            if line.startswith("failed ")]


@pytest.fixture
def pair(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    m = MirrorLab(lab).start(prim="n1")
    # every member runs this version: the leader commits its feature level
    wait_until("feature level 1", lambda: _status(m, "n1")["maintenance"]["feature_level"] == 1, 20)
    yield m
    m.cli("n1", "maintenance", "off", "-m", MODULE)


def test_the_primary_daemon_restarts_in_maintenance_with_no_write_failed_or_lost(pair):
    m = pair
    m.start_writer()
    m.wait_acks(20)
    epoch = _lease(m, "n1")["epoch"]
    res = m.cli("n1", "maintenance", "on", "-m", MODULE, "--hold", "60")
    assert res.returncode == 0, res.stderr
    assert "maintenance on for module" in res.stdout
    wait_until("a renewal granted the hold", lambda: _lease(m, "n1").get("hold_s") == 60.0, 10)
    wait_until("the mount holds it", lambda: (m.state("n1")["maintenance"]["mounts_held_s"] or 0) > 30, 10)
    assert "maintenance kvdemo (hold 60 s)" in m.cli("n1", "cluster", "status").stdout
    mounts = _mount_pids(m, "n1")
    assert mounts, "no replication mount on n1"

    # the daemon stops: the application goes on, its mount and VIP with it
    assert m.cluster.stop("n1") == 0
    down_at = len(m.acks())
    assert all(psutil.pid_exists(p) for p in mounts), "the mount died with its daemon"
    m.wait_acks(down_at + 20, timeout=20)            # written while n1 has no daemon
    assert m.state("n2")["state"] == "SECOND"        # nothing failed over

    # a new daemon adopts the running session: same epoch, no script run again
    m.cluster.start("n1")
    st = m.wait_state("n1", "PRIM", timeout=30)
    assert st["epoch"] == epoch
    assert _mount_pids(m, "n1") == mounts
    module_log = m.cli("n1", "-m", MODULE, "log").stdout
    assert "goes on without it" in module_log and "adopting the running primary session" in module_log
    back_at = len(m.acks())
    m.wait_acks(back_at + 20, timeout=20)

    # maintenance ends: the lease drops its hold once its fences are back within a lease
    assert m.cli("n1", "maintenance", "off", "-m", MODULE).returncode == 0
    wait_until("the hold given back", lambda: "hold_s" not in _lease(m, "n1"), 15)
    m.wait_acks(len(m.acks()) + 10, timeout=20)
    m.writer.stop()
    acks = m.acks()
    assert not _writer_failures(m), _writer_failures(m)[:3]
    assert {(a["node"], a["epoch"]) for a in acks} == {("n1", epoch)}
    lost = lost_acked_writes([Ack(**a) for a in acks], m.log_records("n1"))
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    assert m.copies_identical("n1", "n2")
    gaps = [b["t_acked"] - a["t_acked"] for a, b in zip(acks, acks[1:], strict=False)]
    print(f"maintenance restart: {len(acks)} writes acknowledged, largest gap "
          f"{max(gaps):.3f} s, epoch {epoch} throughout")


def test_a_daemon_away_beyond_the_hold_stops_its_mount_and_nothing_fails_over(pair):
    m = pair
    m.start_writer()
    m.wait_acks(10)
    assert m.cli("n1", "maintenance", "on", "-m", MODULE, "--hold", "3").returncode == 0
    wait_until("a renewal granted the hold", lambda: _lease(m, "n1").get("hold_s") == 3.0, 10)
    wait_until("the mount holds it", lambda: (m.state("n1")["maintenance"]["mounts_held_s"] or 0) > 2, 10)
    mounts = _mount_pids(m, "n1")
    pid = m.cluster.procs["n1"].pid
    os.kill(pid, signal.SIGKILL)         # a daemon that dies, not one that stops
    m.cluster.procs["n1"].popen.wait()
    stopped_at = time.monotonic()
    wait_until("the mount stopped itself", lambda: not any(psutil.pid_exists(p) for p in mounts), 15)
    assert time.monotonic() - stopped_at >= 1.0     # not at once: it held (a report is 1 s old at most)
    # in maintenance nothing fails over, even once the hold is over
    time.sleep(2.0)
    assert m.state("n2")["state"] == "SECOND"
    # maintenance off: the secondary takes over
    assert m.cli("n2", "maintenance", "off", "-m", MODULE).returncode == 0
    m.wait_state("n2", "ALONE", timeout=30)
    m.writer.stop()
    lost = lost_acked_writes([Ack(**a) for a in m.acks()], m.log_records("n2"))
    assert not lost, f"acknowledged writes lost: {lost[:5]}"


def _module_row(m: MirrorLab, node: str) -> dict:
    return next(r for r in m.call(node, "module_list") if r["module"] == MODULE)


def test_a_new_version_of_the_scripts_rolls_node_by_node_with_the_application_served(pair):
    """Installed while the module runs, a new version is staged; each node changes to it
    at its own stop: the secondary first, then a swap, then the old primary. The
    application is served throughout (but for the swap's switchover) and nothing is lost."""
    m = pair
    m.start_writer()
    m.wait_acks(10)
    v2 = m.lab.workdir / "kvdemo-module-v2"
    shutil.copytree(m.lab.workdir / f"{MODULE}-module", v2)
    (v2 / "bin" / "VERSION").write_text("2\n")
    safe = m.lab.workdir / "kvdemo-v2.safe"
    m.cli("n1", "module", "package", str(v2), "-o", str(safe), check=True)
    res = m.cli("n1", "module", "install", str(safe), "--name", MODULE)
    assert res.returncode == 0, res.stderr
    assert "staged" in res.stdout and "next stop" in res.stdout
    old_digest = _module_row(m, "n1")["digest"]
    new_digest = _module_row(m, "n1")["staged"]
    assert new_digest and new_digest != old_digest

    def runs(node: str) -> str | None:
        """The version the node runs, once installed there (Raft says it first)."""
        row = _module_row(m, node)
        return row["runs_here"] if row["installed_here"] else None

    def version_file(node: str) -> Path:
        return m.cluster.state_dir(node) / "modules" / MODULE / "bin" / "VERSION"

    # the secondary first: stopped, it changes version; started, it resyncs
    m.cli("n2", "-m", MODULE, "stop", check=True)
    wait_until("n2 runs the new version", lambda: runs("n2") == new_digest, 30)
    assert version_file("n2").exists() and not version_file("n1").exists()
    assert runs("n1") == old_digest
    m.cli("n2", "-m", MODULE, "start", check=True)
    m.wait_state("n2", "SECOND", timeout=60)
    # the primary role moves to the new version, then the old primary changes
    m.cli("n1", "-m", MODULE, "swap", check=True)
    m.wait_state("n2", "PRIM", timeout=60)
    m.wait_state("n1", "SECOND", timeout=60)
    m.cli("n1", "-m", MODULE, "stop", check=True)
    wait_until("the new version is the module's, installed on n1", lambda: (
        _module_row(m, "n1")["digest"] == new_digest and runs("n1") == new_digest), 30)
    assert _module_row(m, "n1")["staged"] is None and version_file("n1").exists()
    m.cli("n1", "-m", MODULE, "start", check=True)
    m.wait_state("n1", "SECOND", timeout=60)
    m.wait_acks(len(m.acks()) + 10, timeout=20)
    m.writer.stop()
    acks = m.acks()
    lost = lost_acked_writes([Ack(**a) for a in acks], m.log_records("n2"))
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    assert {a["node"] for a in acks} == {"n1", "n2"}
    failed = _writer_failures(m)
    gaps = [b["t_acked"] - a["t_acked"] for a, b in zip(acks, acks[1:], strict=False)]
    print(f"rolling upgrade: {len(acks)} writes acknowledged, {len(failed)} failed and retried "
          f"(the swap), largest gap {max(gaps):.3f} s")


def test_a_farm_node_daemon_restarts_in_cluster_maintenance_and_its_share_is_served_throughout(make_lab):
    """Cluster maintenance on a three-node farm: f1's daemon stops, its application and
    kernel ruleset go on serving its buckets (every connection answered, each by the
    bucket's owner), the new daemon adopts them; after maintenance the holds go."""
    from chaos.lab_farm import MODULE as FARM, PORT_ON_PORT, FarmLab

    lab = make_lab(["f1", "f2", "f3", "c"])
    farm = FarmLab(lab).start()
    wait_until("feature level 1", lambda: json.loads(farm.cli("f1", "cluster", "status", "--json").stdout)
               ["maintenance"]["feature_level"] == 1, 20)
    owned = farm.ruleset_buckets("f1")
    assert owned
    assert farm.cli("f1", "maintenance", "on", "--hold", "60").returncode == 0

    def f1_liveness() -> dict:
        rows = json.loads(farm.cli("f2", "cluster", "status", "--json").stdout)["leases"]
        return next(r for r in rows if r["resource"] == "node/f1")
    wait_until("f1's liveness holds", lambda: f1_liveness().get("hold_s") == 60.0, 10)
    epoch = f1_liveness()["epoch"]
    assert farm.cluster.stop("f1") == 0
    answers = farm.ask_many(PORT_ON_PORT, 600)
    assert None not in {a[0] for a in answers}, "a connection went unanswered"
    assert "f1" in {a[0] for a in answers}          # f1's share served without its daemon
    assert f1_liveness()["holder"] == "f1"          # kept, not released: f1 still in the farm
    farm.cluster.start("f1")
    st = farm.wait_state("f1", "UP", timeout=30)
    assert st["buckets"] == len(owned)
    assert farm.ruleset_buckets("f1") == owned
    assert f1_liveness()["epoch"] >= epoch
    module_log = farm.cli("f1", "-m", FARM, "log").stdout
    assert "goes on serving" in module_log and "serving on with" in module_log
    answers = farm.ask_many(PORT_ON_PORT, 300)
    assert None not in {a[0] for a in answers}
    assert farm.cli("f1", "maintenance", "off").returncode == 0
    wait_until("the holds given back", lambda: "hold_s" not in f1_liveness(), 15)
    assert farm.complete_on(farm.nodes)
