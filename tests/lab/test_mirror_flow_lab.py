"""Replication on a network of its own (heartbeat ident="flow"), and the nemesis that
cuts only that network: real daemons on a two-network lab, the kv app through the VIP."""
from __future__ import annotations

import random

import pytest

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_module import write_kv_module
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.lab_mirror import MirrorLab
from chaos.lab_module import start_cluster
from chaos.nemesis import NemesisContext, Roles
from chaos.nemesis_flow import CutReplicationNetwork
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

ROLES = Roles(primary="n1", secondary="n2", witness="w", client="c")


def _seed_cutting(side: str) -> int:
    """A seed with which the nemesis picks ``side``: the test drives it as the runner does."""
    return next(s for s in range(100)
                if CutReplicationNetwork().choose(random.Random(s), ROLES)["side"] == side)


def _replication_port(m) -> int:
    """The port of the module's first replicated directory, as committed at install."""
    (row,) = [r for r in m.call("n1", "module_list") if r["module"] == m.module]
    return row["replication_ports"][0]


def _sockets(m: MirrorLab, host: str, *filter_: str) -> list[tuple[str, str]]:
    """(local, peer) address:port pairs of the host's TCP sockets matching an ss filter."""
    out = m.lab.run(host, ["ss", "-Htn", *filter_]).stdout
    return [(f[-2], f[-1]) for f in (line.split() for line in out.splitlines()) if len(f) >= 4]


def test_a_bad_flow_network_is_refused(make_lab):
    lab = make_lab(["n1"], networks=("lan", "flow"))
    with pytest.raises(ValueError, match="flow_network 'repl' must be one of the lab's networks"):
        MirrorLab(lab, flow_network="repl")
    with pytest.raises(ValueError, match="other than its first"):
        MirrorLab(lab, flow_network="lan")
    # the nemesis needs the flow network, and its choice is the seed's
    ctx = NemesisContext(mirror=MirrorLab(lab), roles=ROLES, rng=random.Random(1))
    with pytest.raises(RuntimeError, match="needs a mirror lab with a replication network"):
        CutReplicationNetwork().start(ctx)
    picks = [CutReplicationNetwork().choose(random.Random(s), ROLES) for s in range(20)]
    assert picks == [CutReplicationNetwork().choose(random.Random(s), ROLES) for s in range(20)]
    assert {(p["host"], p["side"]) for p in picks} == {("n1", "primary"), ("n2", "secondary")}


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_cut_replication_network_primary_goes_alone_on_the_same_epoch_then_resyncs(make_lab, side):
    lab = make_lab(["n1", "n2", "w", "c"], networks=("lan", "flow"))
    m = MirrorLab(lab, flow_network="flow").start(prim="n1")
    port = _replication_port(m)
    flow_n2 = f"{m.flow_addr('n2')}:{port}"

    # the replication flow really is on the flow network: n2's receiver listens on its
    # flow address only, and n1's mount is connected to it from its own flow address
    assert [local for local, _ in _sockets(m, "n2", "state", "listening",
                                           f"sport = :{port}")] == [flow_n2]
    wait_until("n1's mount connected over the flow network", lambda: any(
        peer == flow_n2 and local.startswith(m.flow_addr("n1") + ":")
        for local, peer in _sockets(m, "n1", "state", "established", f"dport = :{port}")), 10)

    m.start_writer(timeout_s=5.0)       # a write held across the cut is waited for, not failed
    m.wait_acks(10)
    epoch = m.state("n1")["epoch"]
    nemesis = CutReplicationNetwork()
    ctx = NemesisContext(mirror=m, roles=ROLES, rng=random.Random(_seed_cutting(side)))
    nemesis.start(ctx)
    assert nemesis.targets == {"host": getattr(ROLES, side), "side": side}
    t_cut = nemesis.events[-1].t

    # Raft is untouched: the primary commits the secondary's removal and goes on alone,
    # under the same lease, with no failover; the secondary stays SECOND, not in sync
    st = m.wait_state("n1", "ALONE", timeout=20)
    assert (st["epoch"], st["in_sync"]) == (epoch, ["n1"])
    # (the hook logs the commit when it returns, a little after the view went ALONE)
    [removed] = wait_until("the peer_lost commit logged", lambda: [
        e for e in m.cluster.events("n1", "secondary_out_of_sync") if float(e["mono"]) > t_cut], 10)
    assert int(removed["epoch"]) == epoch
    sec = m.state("n2")
    assert (sec["state"], sec["ready"], sec["epoch"], sec["primary"]) == ("SECOND", "Transient",
                                                                         epoch, "n1")
    n = len(m.acks())
    m.wait_acks(n + 20, timeout=20)
    # DESIGN rule 3: a write sent after the cut cannot reach the secondary, so it was
    # acknowledged only after the removal was committed (logged before the mount goes on)
    committed = float(removed["mono"])
    early = [a for a in m.acks() if a["t_sent"] > t_cut and a["t_acked"] < committed]
    assert not early, f"acknowledged before the commit of the secondary's removal: {early[:3]}"
    # ... and the write in flight at the cut was held until then, not failed
    assert [a for a in m.acks() if a["t_sent"] < committed <= a["t_acked"]]

    nemesis.heal(ctx)
    m.wait_state("n2", "SECOND", timeout=60)        # Ready: back in the in-sync set
    st = m.wait_state("n1", "PRIM", timeout=30)
    assert (st["epoch"], st["in_sync"]) == (epoch, ["n1", "n2"])
    n = len(m.acks())
    m.wait_acks(n + 10, timeout=20)                 # synchronous again, over the flow network
    m.writer.stop()
    acks = m.acks()
    assert {(a["node"], a["epoch"]) for a in acks} == {("n1", epoch)}
    lost = lost_acked_writes([Ack(**a) for a in acks], m.log_records("n1"))
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    answers = [(a["t_acked"], a["node"], a["epoch"]) for a in acks]
    assert not epoch_violations(answers), epoch_violations(answers)
    # a write the stopped client left in flight may still be on its way
    wait_until("identical copies", lambda: m.log_records("n2") == m.log_records("n1"), 10)
    assert [e.action for e in nemesis.events] == ["cut", "heal"]


def test_flow_servers_in_the_wrong_order_are_refused_with_a_clear_error(make_lab):
    """Each node would listen on the other's address: the secondary says why it does not
    receive instead of failing on a bind, and the primary runs alone."""
    lab = make_lab(["n1", "n2", "w", "c"], networks=("lan", "flow"))
    m = MirrorLab(lab, flow_network="flow")
    start_cluster(m.cluster, m.root)
    for n in m.nodes:
        m.data_dir(n).mkdir(parents=True, exist_ok=True)
    m.install(write_kv_module(lab.workdir / "kv-module", m.vip, datadir=m.datadir,
                              servers=(lab.addr("n1"), lab.addr("n2")),
                              flow_servers=(m.flow_addr("n2"), m.flow_addr("n1"))))
    m.cli("n1", "-m", m.module, "prim", check=True)
    m.cli("n2", "-m", m.module, "second", check=True)
    m.wait_state("n1", "ALONE", timeout=30)
    want = (f"module {m.module}: the flow heartbeat 'flow' gives n2 the replication address "
            f"{m.flow_addr('n1')}, which is not configured on this host")
    wait_until("n2 refusing to receive", lambda: any(
        want in e.get("error", "") for e in m.cluster.events("n2", "plan_failed")), 20)
    assert not _sockets(m, "n2", "state", "listening", f"sport = :{_replication_port(m)}")
    m.wait_state("n2", "STOP", timeout=20)     # the failed start is not retried in a loop
