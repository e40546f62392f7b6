"""Peer control (Raft port + 3) under silent connections from a host without the
secret: ``hacluster -H`` keeps working (issue 17, item 3)."""
import sys

import pytest

from chaos.lab_cluster import RAFT_PORT
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

# Opens N connections, says nothing, prints "held" and keeps them until killed.
SILENT = r"""
import socket, sys, time
socks = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
         for _ in range(int(sys.argv[3]))]
print("held", len(socks), flush=True)
time.sleep(600)
"""


def test_twenty_silent_connections_do_not_lock_out_dash_h(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], extra_hosts=["attacker"])
    lab = cluster.lab
    silent = lab.spawn("attacker", [sys.executable, "-c", SILENT, lab.addr("n1"),
                                    str(RAFT_PORT + 3), "20"], name="silent")
    cluster.wait_for("20 silent connections", lambda: "held 20" in silent.log_path.read_text())
    for _ in range(3):
        res = cluster.hacluster("n2", "-H", "n1", "module", "list")
        assert res.returncode == 0, res.stderr
    assert silent.alive()  # still holding them while -H was served
    silent.kill()
    log = (lab.workdir / "n1" / "hacluster.log").read_text()
    refused = [line for line in log.splitlines() if "event=peer_control_refused" in line
               and lab.addr("attacker") in line]
    # 16 over the per-address cap, one line for them.
    assert len(refused) == 1 and "(limit 4)" in refused[0], refused
