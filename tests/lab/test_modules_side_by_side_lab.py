"""Several modules on the same nodes (issue 5): farm+mirror, active/active (two
mirrors with opposite primaries), N-1 (two mirrors sharing one spare). Real
daemons, real kills; every acknowledged record is checked on the survivor."""
from __future__ import annotations

from collections import Counter

import pytest

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.lab_cluster import LabCluster
from chaos.lab_farm import PORT_ON_PORT, FarmLab
from chaos.lab_mirror import MirrorLab
from chaos.lab_module import start_cluster
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def _kv(lab, cluster, name: str, nodes: tuple[str, str], port: int, vip_host: int) -> MirrorLab:
    return MirrorLab(lab, nodes, module=name, port=port, datadir=f"/srv/{name}",
                     vip_host=vip_host, cluster=cluster)


def _no_loss(m: MirrorLab, node: str) -> int:
    m.writer.stop()
    acks = m.acks()
    lost = lost_acked_writes([Ack(**a) for a in acks], m.log_records(node))
    assert not lost, f"{m.module}: acknowledged writes lost: {lost[:5]}"
    answers = [(a["t_acked"], a["node"], a["epoch"]) for a in acks]
    assert not epoch_violations(answers), epoch_violations(answers)
    return len(acks)


def _kill(lab, node: str) -> None:
    lab.cut(node)
    lab.kill_host(node)


def test_farm_and_mirror_side_by_side(make_lab):
    lab = make_lab(["n1", "n2", "n3", "c"])
    cluster = LabCluster(lab, ["n1", "n2", "n3"], [])
    farm = FarmLab(lab, nodes=("n1", "n2", "n3"), cluster=cluster)
    start_cluster(cluster, farm.root)
    farm.start()
    kv = _kv(lab, cluster, "kv", ("n1", "n2"), 8090, 210).start(prim="n1")
    # the mirror runs on its two nodes only
    assert "not on this node" in kv.cli("n3", "-m", "kv", "state").stderr
    kv.start_writer()
    kv.wait_acks(10)
    assert set(Counter(a[0] for a in farm.ask_many(PORT_ON_PORT, 200))) == {"n1", "n2", "n3"}

    _kill(lab, "n1")
    kv.wait_state("n2", "ALONE", timeout=30)
    wait_until("farm on n2, n3", lambda: farm.complete_on(["n2", "n3"]), 30)
    wait_until("kv writes on n2", lambda: any(a["node"] == "n2" for a in kv.acks()), 30)
    assert set(Counter(a[0] for a in farm.ask_many(PORT_ON_PORT, 200))) == {"n2", "n3"}
    assert _no_loss(kv, "n2") > 10


def test_active_active_two_mirrors_with_opposite_primaries(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    a = MirrorLab(lab, module="kva", port=8091, datadir="/srv/kva", vip_host=211).start(prim="n1")
    b = _kv(lab, a.cluster, "kvb", ("n1", "n2"), 8092, 212).start(prim="n2")
    for m in (a, b):
        m.start_writer()
        m.wait_acks(10)
    assert {x["node"] for x in a.acks()} == {"n1"} and {x["node"] for x in b.acks()} == {"n2"}

    _kill(lab, "n1")
    a.wait_state("n2", "ALONE", timeout=30)
    b.wait_state("n2", "ALONE", timeout=30)        # its secondary is gone: alone, still serving
    wait_until("kva writes on n2", lambda: any(x["node"] == "n2" for x in a.acks()), 30)
    n_b = len(b.acks())
    wait_until("kvb keeps writing", lambda: len(b.acks()) > n_b + 10, 30)
    _no_loss(a, "n2")
    _no_loss(b, "n2")


def test_n_minus_1_two_mirrors_share_one_spare(make_lab):
    lab = make_lab(["n1", "n2", "n3", "c"])
    cluster = LabCluster(lab, ["n1", "n2", "n3"], [])
    a = _kv(lab, cluster, "kva", ("n1", "n3"), 8093, 213)
    start_cluster(cluster, a.root)
    a.start(prim="n1")
    b = _kv(lab, cluster, "kvb", ("n2", "n3"), 8094, 214).start(prim="n2")
    for m in (a, b):
        m.start_writer()
        m.wait_acks(10)
    assert a.state("n3")["state"] == "SECOND" and b.state("n3")["state"] == "SECOND"

    _kill(lab, "n1")
    a.wait_state("n3", "ALONE", timeout=30)
    wait_until("kva writes on the spare", lambda: any(x["node"] == "n3" for x in a.acks()), 30)
    assert b.state("n2")["state"] == "PRIM" and b.state("n3")["state"] == "SECOND"
    _no_loss(a, "n3")
    _no_loss(b, "n2")
