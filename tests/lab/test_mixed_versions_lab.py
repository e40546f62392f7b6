"""Members one version apart work together (issue 21 item 7): a cluster whose witness
still runs the previous release (the code of PREVIOUS_RELEASE, taken from this
repository's history) runs a mirror module and fails it over with nothing lost; the
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


def test_a_witness_one_version_behind(make_lab, previous_release):
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
        cluster.start(n)
    # the witness runs the previous release's code (its directory first on sys.path)
    old = lab.spawn("w", [sys.executable, "-m", "hacluster", "-c", str(cluster.config_dir("w")),
                          *cluster.path_flags("w"), "witness", "run"],
                    name="hacluster-previous", cwd=previous_release)
    cluster.procs["w"] = old
    cluster.wait_leader()
    # it is the previous release: its status knows no versions
    witness = wait_until("the old witness answers", lambda: cluster.status("w"), 20)
    assert "feature_level" not in witness and "version" not in witness
    m.start(prim="n1")

    # the older member says nothing of feature levels: the level stays 0 (a leader of
    # this version looks every FEATURE_LEVEL_CHECK_S and says who lags; the older
    # witness, if it leads, knows no levels at all)
    time.sleep(3 * FEATURE_LEVEL_CHECK_S)
    st = _status(m, "n1")
    assert st["maintenance"]["feature_level"] == 0
    if st["leader"] in ("n1", "n2"):
        log = cluster.lab.host_dir(st["leader"]).joinpath("hacluster.log").read_text(errors="replace")
        assert "event=feature_level_waits" in log and "members=w" in log
    refused = m.cli("n1", "maintenance", "on", "-m", MODULE)
    assert refused.returncode != 0
    assert "feature level 1" in refused.stderr and "upgrade every member" in refused.stderr

    # a mixed cluster fails over like any other
    m.start_writer()
    m.wait_acks(20)
    m.kill_host("n1")
    m.wait_state("n2", "ALONE", timeout=30)
    wait_until("writes through the VIP on n2", lambda: any(a["node"] == "n2" for a in m.acks()), 20)
    m.writer.stop()
    lost = lost_acked_writes([Ack(**a) for a in m.acks()], m.log_records("n2"))
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    m.restart_node("n1")
    m.wait_state("n1", "SECOND", timeout=60)

    # the witness is upgraded: the leader raises the level; maintenance is accepted
    assert old.stop() == 0
    cluster.start("w")
    wait_until("feature level 1", lambda: _status(m, "n2")["maintenance"]["feature_level"] == 1, 30)
    assert cluster.status("w")["feature_level"] == 1
    accepted = m.cli("n2", "maintenance", "on", "-m", MODULE, "--hold", "30")
    assert accepted.returncode == 0, accepted.stderr
    assert m.cli("n2", "maintenance", "off", "-m", MODULE).returncode == 0
