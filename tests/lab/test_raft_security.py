"""The Raft port with the cluster secret: a raw pickle payload is not executed,
a member with a wrong secret is refused with a log line, no secret no start."""
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_root

pytestmark = [needs_root, pytest.mark.lab]

PROCS = Path(__file__).parent / "procs"
SECRET = "security-test-secret-0123456789abcdef01"

# Sent from another lab host: a length-prefixed zlib(pickle) frame, pysyncobj's wire format,
# whose unpickling would create the marker file.
SENDER = r"""
import os, pickle, socket, struct, sys, time, zlib
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[3],))
data = zlib.compress(pickle.dumps(Evil()))
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
s.sendall(struct.pack("i", len(data)) + data)
time.sleep(0.5)
s.close()
"""


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_raw_pickle_payload_is_not_executed(make_lab, tmp_path):
    lab = make_lab(["guarded", "plain", "attacker"])
    guarded_addr = f"{lab.addr('guarded')}:7400"
    guarded = lab.spawn("guarded", [sys.executable, str(REPO / "chaos" / "raft_member_proc.py"),
                                    "--addr", guarded_addr, "--peers", guarded_addr,
                                    "--data", str(tmp_path / "raft"), "--secret", SECRET],
                        name="raft")
    plain = lab.spawn("plain", [sys.executable, str(PROCS / "plain_syncobj_proc.py"),
                                f"{lab.addr('plain')}:7400"], name="plain")

    # Positive control: without a secret, pysyncobj runs the payload.
    marker_plain = tmp_path / "pwned-plain"
    lab.run("attacker", [sys.executable, "-c", SENDER, lab.addr("plain"), "7400",
                         str(marker_plain)])
    assert _wait(marker_plain.exists, 5), "control failed: the payload should run on plain pysyncobj"

    marker = tmp_path / "pwned-guarded"
    lab.run("attacker", [sys.executable, "-c", SENDER, lab.addr("guarded"), "7400", str(marker)])
    assert _wait(lambda: "event=peer_refused" in guarded.log_path.read_text(), 5)
    time.sleep(0.5)
    assert not marker.exists()
    line = next(l for l in guarded.log_path.read_text().splitlines() if "event=peer_refused" in l)
    assert lab.addr("attacker") in line and "cluster secret" in line
    assert guarded.alive() and plain.alive()


def test_member_with_wrong_secret_is_refused(make_cluster):
    from hacluster.node.cluster_config import write_secret

    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    write_secret(cluster.config_dir("n2"), "a-different-secret-" + "x" * 40)
    cluster.start_all()
    leader = cluster.wait_leader(among=["n1", "w"])
    n2_ip = cluster.lab.addr("n2")
    assert _wait(lambda: any(n2_ip in e.get("peer", "") for m in ("n1", "w")
                             for e in cluster.events(m, "peer_refused")), 10)
    time.sleep(1.0)
    row = next(r for r in cluster.status(leader)["members"] if r["name"] == "n2")
    assert not row["live"] and not row["connected"]
    st = cluster.status("n2")
    assert st is None or st["leader"] is None


def test_daemon_refuses_to_start_without_secret(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    os.unlink(cluster.config_dir("n1") / "secret")
    proc = cluster.start("n1")
    assert proc.wait(20) == 1
    lines = [l for l in proc.log_path.read_text().splitlines() if l.startswith("hacluster:")]
    assert len(lines) == 1 and "cluster secret missing" in lines[0], lines
