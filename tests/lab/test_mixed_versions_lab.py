"""Members one version apart work together (issue 21 item 7): a mirror pair whose
second node still runs the previous release (the code of PREVIOUS_RELEASE, taken from
this repository's history) replicates and fails over both ways with nothing lost; the
commands the older member cannot apply (maintenance) are refused with a clear message
while it is there (the cluster's feature level stays 0); once it is upgraded the leader
raises the level by itself and they are accepted."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.history_check import lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.lab_cluster import LabCluster
from chaos.lab_mirror import MODULE, MirrorLab
from hacluster.node.daemon import FEATURE_LEVEL_CHECK_S
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
# The last release before feature levels (stop 15, landed on CI): what a member one
# version behind runs.
PREVIOUS_RELEASE = "7584cfb32801e1b447c8ae35905d6cae7713b8b3"


def _has_commit(commit: str) -> bool:
    return subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True).returncode == 0


@pytest.fixture
def previous_release(tmp_path) -> Path:
    if not _has_commit(PREVIOUS_RELEASE):
        pytest.skip(f"the previous release {PREVIOUS_RELEASE[:12]} is not in this clone's "
                    "history (a shallow clone): it is what the older member runs")
    out = tmp_path / "previous"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def _status(m: MirrorLab, node: str) -> dict:
    res = m.cli(node, "cluster", "status", "--json")
    assert res.returncode in (0, 75), res.stderr
    return json.loads(res.stdout)


def _spawn_previous(cluster: LabCluster, member: str, release: Path):
    """``member``'s daemon on the previous release's code (its directory first on sys.path)."""
    proc = cluster.lab.spawn(member, [sys.executable, "-m", "hacluster", "-c",
                                      str(cluster.config_dir(member)), *cluster.path_flags(member),
                                      cluster.role(member), "run"],
                             name="hacluster-previous", cwd=release)
    cluster.procs[member] = proc
    return proc


def test_a_mirror_pair_one_version_apart(make_lab, previous_release):
    """n1 runs this version, n2 (and its module's secondary, then primary) the previous
    release: they replicate, fail over both ways and resync; then n2 is upgraded."""
    lab = make_lab(["n1", "n2", "w", "c"])
    cluster = LabCluster(lab, ["n1", "n2"], ["w"])
    m = MirrorLab(lab, cluster=cluster)
    cluster.init()
    for n in ("n1", "n2"):              # what start_cluster does for a module's own cluster
        path = cluster.config_dir(n) / "cluster.json"
        cfg = json.loads(path.read_text())
        cfg["path_prefix"] = str(m.root(n))
        path.write_text(json.dumps(cfg, indent=2))
        m.root(n).mkdir(parents=True, exist_ok=True)
    cluster.start("n1")
    cluster.start("w")
    old = _spawn_previous(cluster, "n2", previous_release)
    cluster.wait_leader()
    # it is the previous release: its status knows no versions
    n2 = wait_until("the old n2 answers", lambda: cluster.status("n2"), 20)
    assert "feature_level" not in n2 and "version" not in n2
    m.start(prim="n1")

    # the older member says nothing of feature levels: the level stays 0 (a leader of
    # this version looks every FEATURE_LEVEL_CHECK_S and says who lags; the older
    # member, if it leads, knows no levels at all)
    time.sleep(3 * FEATURE_LEVEL_CHECK_S)
    st = _status(m, "n1")
    assert st["maintenance"]["feature_level"] == 0
    if st["leader"] in ("n1", "w"):
        log = cluster.lab.host_dir(st["leader"]).joinpath("hacluster.log").read_text(errors="replace")
        assert "event=feature_level_waits" in log and "members=n2" in log
    refused = m.cli("n1", "maintenance", "on", "-m", MODULE)
    assert refused.returncode != 0
    assert "feature level 1" in refused.stderr and "upgrade every member" in refused.stderr

    # the pair fails over to the older node and back, nothing lost
    m.start_writer()
    m.wait_acks(20)
    m.kill_host("n1")
    m.wait_state("n2", "ALONE", timeout=30)
    wait_until("writes through the VIP on n2", lambda: any(a["node"] == "n2" for a in m.acks()), 20)
    m.restart_node("n1")
    m.wait_state("n1", "SECOND", timeout=60)          # resynced from the older primary
    # n2 is upgraded: its daemon stops (n1 takes over), the new one comes back secondary
    assert old.stop() == 0
    m.wait_state("n1", "ALONE", timeout=30)
    cluster.start("n2")
    m.wait_state("n2", "SECOND", timeout=60)
    m.wait_acks(len(m.acks()) + 10, timeout=20)
    m.writer.stop()
    lost = lost_acked_writes([Ack(**a) for a in m.acks()], m.log_records("n1"))
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    assert {a["node"] for a in m.acks()} == {"n1", "n2"}

    # every member at this version: the leader raises the level; maintenance is accepted
    wait_until("feature level 1", lambda: _status(m, "n1")["maintenance"]["feature_level"] == 1, 30)
    assert cluster.status("n2")["feature_level"] == 1
    accepted = m.cli("n1", "maintenance", "on", "-m", MODULE, "--hold", "30")
    assert accepted.returncode == 0, accepted.stderr
    assert m.cli("n1", "maintenance", "off", "-m", MODULE).returncode == 0
