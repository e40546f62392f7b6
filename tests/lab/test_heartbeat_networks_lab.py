"""Several heartbeat networks (raft.links, members' "links"): Raft and leases reach a
peer over any of its networks. Real daemons on a two-network lab (lan, hb), the kv app
through the VIP from a client on lan: cutting either network between the members
causes no failover and loses no acknowledged write; cutting both around the primary
fails over, as with one network."""
from __future__ import annotations

import json
import sys
import time

import pytest

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.lab_cluster import LabCluster
from chaos.lab_mirror import MirrorLab
from raft.links import Heartbeat, encode_heartbeat, heartbeat_key
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

MEMBERS = ["n1", "n2", "w"]
HOLD_S = 5.0          # more than three leases (1.5 s): a lapse would show


def _events(m: MirrorLab, node: str, event: str, after: float) -> list[dict]:
    return [e for e in m.cluster.events(node, event) if float(e["mono"]) > after]


def _cut_between_members(m: MirrorLab, net: str) -> None:
    """The members no longer reach each other on ``net``; the client keeps reaching them."""
    m.lab.partition([[n] for n in MEMBERS], net=net)


def test_links_must_be_a_lab_network_other_than_the_first(make_lab):
    lab = make_lab(["n1"], networks=("lan", "hb"))
    with pytest.raises(ValueError, match="links_network 'lan' must be one of the lab's networks"):
        LabCluster(lab, ["n1"], links_network="lan")


def test_losing_either_heartbeat_network_causes_no_failover_and_loses_no_write(make_lab):
    lab = make_lab([*MEMBERS, "c"], networks=("lan", "hb"))
    m = MirrorLab(lab, links_network="hb").start(prim="n1")
    cfg = json.loads((m.cluster.config_dir("n1") / "cluster.json").read_text())
    assert cfg["members"]["n2"]["links"] == [lab.addr("n2", "hb")]

    # every member hears every other on both networks
    def both_up(node: str) -> bool:
        st = m.cluster.status(node) or {}
        paths = [p for row in st.get("members", []) for p in row.get("paths", [])]
        return len(paths) == 2 * (len(MEMBERS) - 1) and all(p["alive"] for p in paths)
    for n in MEMBERS:
        wait_until(f"{n} hearing every peer on both networks", lambda n=n: both_up(n), 20)

    # garbage and a heartbeat signed with another secret, from the client: refused with a
    # log line naming the sender, and nothing else changes
    t_junk = time.monotonic()
    forged = encode_heartbeat(heartbeat_key("x" * 40), Heartbeat(f"{lab.addr('n2')}:7400", 0, 1 << 62))
    script = ("import socket,sys\n"
              "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
              f"for d in (b'junk'*3, bytes.fromhex('{forged.hex()}')):\n"
              f"    s.sendto(d, ('{lab.addr('n1')}', 7400))\n")
    lab.run("c", [sys.executable, "-c", script])
    refused = wait_until("n1 refusing the forged heartbeat", lambda: _events(
        m, "n1", "link_heartbeat_refused", t_junk), 10)
    assert refused[0]["peer"] == lab.addr("c")
    assert both_up("n1")

    m.start_writer(timeout_s=5.0)
    m.wait_acks(10)
    epoch = m.state("n1")["epoch"]
    term = (m.cluster.status("n1") or {})["term"]

    for net in ("lan", "hb"):
        t_cut = time.monotonic()
        _cut_between_members(m, net)
        n_before = len(m.acks())
        # Raft moves its connections to the other network and the leases keep renewing
        wait_until(f"a Raft connection moved off {net}", lambda: any(
            _events(m, n, "raft_link_switch", t_cut) for n in MEMBERS), 10)
        time.sleep(HOLD_S)
        for n in MEMBERS:
            assert _events(m, n, "link_down", t_cut), f"{n} did not log {net} going down"
            assert not _events(m, n, "lease_lost", t_cut), f"{n} lost a lease with {net} cut"
        st = m.state("n1")
        assert st["state"] in ("PRIM", "ALONE") and st["epoch"] == epoch, st
        # peer control (-H) reaches the other member over the network that is left
        res = m.cli("n1", "-H", "n2", "-m", m.module, "state", "--json")
        [row] = json.loads(res.stdout)      # (the exit status is the state's: SECOND Transient)
        assert row["node"] == "n2" and "error" not in row, row
        assert m.state("n2")["primary"] == "n1"
        m.wait_acks(n_before + 20, timeout=20)     # the application kept being served
        # (replication rides on lan here: with lan cut the primary may go ALONE, never away)
        m.lab.heal()
        for n in MEMBERS:
            wait_until(f"{n} hearing every peer on both networks again", lambda n=n: both_up(n), 20)
        m.wait_state("n2", "SECOND", timeout=60)
        m.wait_state("n1", "PRIM", timeout=30)
    assert (m.cluster.status("n1") or {})["term"] == term, "an election ran: the leader was missed"

    # both networks gone around the primary: the cluster fails over, as with one network
    t_cut = time.monotonic()
    m.lab.cut("n1")
    st = m.wait_state("n2", "ALONE", timeout=30)
    assert st["epoch"] > epoch
    assert _events(m, "n2", "link_down", t_cut)
    m.lab.heal()
    m.wait_state("n1", "SECOND", timeout=90)

    m.writer.stop()
    acks = m.acks()
    lost = lost_acked_writes([Ack(**a) for a in acks], m.log_records("n2"))
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    answers = [(a["t_acked"], a["node"], a["epoch"]) for a in acks]
    assert not epoch_violations(answers), epoch_violations(answers)
