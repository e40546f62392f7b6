"""``hacluster snapshot`` on real daemons (issue 21 item 4): from n1 with -H all the
archive holds both nodes' parts (configuration, states, Raft, logs, versions) and a
manifest of every file, no byte of the cluster secret or the Raft credential anywhere;
with --anonymize no lab address and no member name is left; a node cut off is listed
as unreachable, with a warning, and the snapshot is still written (exit 0)."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from chaos.lab_mirror import MirrorLab
from hacluster.node import cluster_config, support_snapshot as plan
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

MODULE = "kvdemo"
# Every file a node's part must hold when its daemon answers and runs the module.
EXPECTED = ["config/cluster.json", "status/cluster_status.json", "status/raft.json",
            "status/cluster_state.json", "status/metrics.txt", "versions.json", "paths.json",
            "disk_usage.json", "daemon.log", "state/members.json",
            f"modules/{MODULE}/state.json", f"modules/{MODULE}/userconfig.xml",
            f"modules/{MODULE}/package_files.txt", f"modules/{MODULE}/logs/module.log",
            f"modules/{MODULE}/logs/script.log", f"modules/{MODULE}/logs/listing.txt"]
# the lab's addresses (chaos.lab: 10.213.x.x .. 10.220.x.x)
LAB_ADDRESS = re.compile(r"(?<![0-9.])10\.2(?:1[3-9]|20)\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9])")


@pytest.fixture
def mirror(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    return MirrorLab(lab).start(prim="n1")


def extract(archive: Path, into: Path) -> dict[str, bytes]:
    into.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
        names = [m.name for m in tar.getmembers() if m.isfile()]
    return {name: (into / name).read_bytes() for name in names}


def snapshot(m: MirrorLab, *args: str):
    res = m.cli("n1", "-H", "all", "snapshot", *args, timeout=120)
    print(res.stdout[-2000:], res.stderr[-2000:])
    return res


def test_a_snapshot_of_every_node_holds_what_support_needs_and_no_secret(mirror):
    m = mirror
    m.wait_pair("n1")
    work = m.lab.workdir
    # n2's part over two chunks of peer control: two custom checkers' output files (not
    # rotated by hacluster) of random text, which gzip cannot shrink much
    logs = m.cluster.log_dir("n2") / MODULE
    for name in ("custom.a.log", "custom.b.log"):
        (logs / name).write_text("".join(base64.b64encode(os.urandom(60)).decode() + "\n"
                                         for _ in range(8000)))
    expired_before = len(m.cluster.events("n1", "lease_expired"))
    out = work / "snap.tar.gz"
    res = snapshot(m, "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    files = extract(out, work / "snap")
    for name in ("custom.a.log", "custom.b.log"):
        tail = files[f"nodes/n2/modules/{MODULE}/logs/{name}"]
        assert 500 << 10 < len(tail) <= 512 << 10 and (logs / name).read_bytes().endswith(tail)
    assert manifest["nodes"]["n2"]["bytes"] > 1 << 20
    built = [int(e["bytes"]) for e in m.cluster.events("n2", "snapshot_part_built")]
    assert built and built[-1] > plan.CHUNK_BYTES       # it came in several chunks
    # built beside the loop that renews the leases: no lease lost, nobody moved
    assert len(m.cluster.events("n1", "lease_expired")) == expired_before
    assert m.states() == {"n1": "PRIM/Ready", "n2": "SECOND/Ready"}

    # the manifest lists every file of the archive with its size, and nothing else
    assert "MANIFEST.json" in files and json.loads(files["MANIFEST.json"]) == manifest
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(files) - {"MANIFEST.json"}
    assert all(listed[p]["size"] == len(files[p]) and listed[p]["what"] for p in listed)
    assert manifest["unreachable"] == [] and manifest["anonymized"] is False
    assert {n: v["included"] for n, v in manifest["nodes"].items()} == {"n1": True, "n2": True}

    for node, state in (("n1", "PRIM"), ("n2", "SECOND")):
        part = {p.removeprefix(f"nodes/{node}/"): data for p, data in files.items()
                if p.startswith(f"nodes/{node}/")}
        assert set(EXPECTED) <= set(part), sorted(set(EXPECTED) - set(part))
        assert json.loads(part[f"modules/{MODULE}/state.json"])["state"] == state
        assert json.loads(part["status/cluster_status.json"])["node"] == node
        assert json.loads(part["status/raft.json"])["has_quorum"] is True
        assert json.loads(part["config/cluster.json"])["self"] == node
        assert json.loads(part["versions.json"])["libraries"]["pysyncobj"]
        assert f"state {state}" in part[f"modules/{MODULE}/logs/module.log"].decode()
        assert b"hacluster_module_state" in part["status/metrics.txt"]
        assert b"event=daemon_started" in part["daemon.log"]      # its standard error, a file here
        assert b"<safe>" in part[f"modules/{MODULE}/userconfig.xml"]
        assert b"start_prim" in part[f"modules/{MODULE}/package_files.txt"]
        skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
        assert "named like a secret" in skipped[f"nodes/{node}/config/secret"]

    # No byte of the secret nor of the Raft credential, anywhere: grep says so too.
    secret = (m.cluster.config_dir("n1") / "secret").read_text().strip()
    credential = cluster_config.raft_credential(secret)
    assert secret and credential
    for name, data in files.items():
        assert secret.encode() not in data and credential.encode() not in data, name
    for value in (secret, credential):
        grep = subprocess.run(["grep", "-rlF", value, str(work / "snap")], capture_output=True, text=True)
        assert grep.returncode == 1, grep.stdout      # 1: no line matched anywhere

    # --anonymize: no lab address, no member name; the same address, the same token
    anon = work / "anon.tar.gz"
    res = snapshot(m, "-o", str(anon), "--anonymize", "--json")
    assert res.returncode == 0, res.stderr
    anon_files = extract(anon, work / "anon")
    assert json.loads(anon_files["MANIFEST.json"])["anonymized"]["replaced"]["IP"] >= 3
    assert not any(p.startswith(("nodes/n1/", "nodes/n2/")) for p in anon_files)
    for name, data in anon_files.items():
        text = data.decode()
        assert not LAB_ADDRESS.search(text), (name, LAB_ADDRESS.search(text))
        assert not re.search(r"(?<![A-Za-z0-9_])(?:n1|n2)(?![A-Za-z0-9_])", text), name
    # n1's address in n1's cluster.json and in n2's: one token
    configs = [json.loads(d) for p, d in anon_files.items() if p.endswith("/config/cluster.json")]
    assert len(configs) == 2
    assert {json.dumps(c["members"], sort_keys=True) for c in configs} == {
        json.dumps(configs[0]["members"], sort_keys=True)}
    tokens = json.loads(Path(str(anon) + ".tokens.json").read_text())
    assert m.lab.addr("n1") in tokens.values() and "n2" in tokens.values()


def test_a_node_cut_off_is_listed_unreachable_and_the_snapshot_is_still_written(mirror):
    m = mirror
    m.wait_pair("n1")
    m.lab.cut("n2")
    out = m.lab.workdir / "cut.tar.gz"
    res = snapshot(m, "-o", str(out), "--timeout", "3")
    assert res.returncode == 0, res.stderr
    assert re.search(r"warning: n2 unreachable", res.stderr)
    assert "unreachable n2" in res.stdout and str(out) in res.stdout
    files = extract(out, m.lab.workdir / "cut")
    manifest = json.loads(files["MANIFEST.json"])
    assert manifest["unreachable"] == ["n2"]
    assert manifest["nodes"]["n2"]["included"] is False and manifest["nodes"]["n2"]["reason"]
    assert manifest["nodes"]["n1"]["included"] is True
    assert "nodes/n1/status/cluster_status.json" in files
    assert not any(p.startswith("nodes/n2/") for p in files)
    # n2 cut off still gives its own snapshot, from its own daemon (no -H: no peer control)
    res = m.cli("n2", "snapshot", "-o", str(m.lab.workdir / "n2.tar.gz"), "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    own = json.loads(res.stdout)
    assert own["nodes"]["n2"]["included"] and own["unreachable"] == []
    assert "nodes/n2/status/raft.json" in {f["path"] for f in own["files"]}
    assert "note" not in own["nodes"]["n2"]         # built by its daemon, not by the command
