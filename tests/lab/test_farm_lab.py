"""The farm module end to end: three real daemons sharing one VIP by buckets
committed in Raft, a real TCP service answering with its node name, a client
host, a real kill -9 of a whole node."""
from __future__ import annotations

import os
import socket
import sys
from collections import Counter

import pytest

from chaos.farm_client import in_netns
from chaos.lab import wait_until
from chaos.lab_farm import MODULE, PORT_ON_ADDR, PORT_ON_PORT, FarmLab
from hacluster.node import cluster_config
from tests.conftest import needs_root
from vip.farm_ruleset import bucket_of

pytestmark = [needs_root, pytest.mark.lab]

POWERS = {"f1": 2, "f2": 1, "f3": 1}


@pytest.fixture
def farm(make_lab):
    lab = make_lab(["f1", "f2", "f3", "c"])
    return FarmLab(lab, powers=POWERS).start()


def _shares(counts: Counter, nodes: list[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {n: counts[n] / total for n in nodes}


def _check_owner(farm: FarmLab, answers: list, filt: str, live: list[str]) -> None:
    """Every answer came from the node whose loaded ruleset holds the bucket."""
    from hacluster.farm.driver import hash_seed
    owner = {b: n for n in live for b in farm.ruleset_buckets(n)}
    wrong = [(name, src, sport) for name, src, sport in answers
             if name != owner[bucket_of(src, sport if filt == "on_port" else None, filt,
                                        hash_seed(MODULE))]]
    assert not wrong, f"answered by a node that does not own the bucket: {wrong[:5]}"


def test_connections_split_by_power_and_on_addr_keeps_a_client_on_one_node(farm):
    answers = farm.ask_many(PORT_ON_PORT, 2000)
    assert None not in {a[0] for a in answers}, Counter(a[0] for a in answers)
    assert len({sport for _n, _s, sport in answers}) > 1900      # varied source ports
    shares = _shares(Counter(a[0] for a in answers), farm.nodes)
    total_power = sum(POWERS.values())
    for n in farm.nodes:
        assert abs(shares[n] - POWERS[n] / total_power) <= 0.05, shares
    _check_owner(farm, answers, "on_port", farm.nodes)

    base = farm.vip.rsplit(".", 1)[0]
    sources = [f"{base}.{150 + i}" for i in range(12)]
    for src in sources:
        farm.lab.run("c", ["ip", "addr", "add", f"{src}/32", "dev", "eth0"])
    by_addr = farm.ask_many(PORT_ON_ADDR, 6, sources)
    seen: dict[str, set] = {}
    for name, src, _sport in by_addr:
        seen.setdefault(src, set()).add(name)
    assert all(len(names) == 1 and None not in names for names in seen.values()), seen
    assert len({next(iter(v)) for v in seen.values()}) >= 2      # and still shared
    _check_owner(farm, by_addr, "on_addr", farm.nodes)


def test_killed_node_share_moves_established_connections_survive_and_it_comes_back(farm):
    def open_conn_to(node: str):
        for _ in range(200):
            sock = socket.create_connection((farm.vip, PORT_ON_PORT), timeout=2)
            stream = sock.makefile("rw")
            if stream.readline().strip() == node:
                return sock, stream
            stream.close()
            sock.close()
        raise AssertionError(f"no connection landed on {node}")
    netns = farm.lab.hosts["c"].netns
    kept = {n: in_netns(netns, open_conn_to, n) for n in ("f1", "f2")}

    farm.kill_host("f3")
    wait_until("f3's buckets owned by f1 and f2", lambda: farm.complete_on(["f1", "f2"]), 20)
    for node, (sock, stream) in kept.items():
        stream.write(f"still {node}\n")
        stream.flush()
        assert stream.readline() == f"still {node}\n"            # not disturbed
    answers = farm.ask_many(PORT_ON_PORT, 300)
    counts = Counter(a[0] for a in answers)
    assert set(counts) == {"f1", "f2"} and None not in counts, counts
    st = farm.state("f1")
    assert sorted(st["members"]) == ["f1", "f2"]

    farm.restart_node("f3")
    farm.wait_farm(farm.nodes, timeout=60)
    shares = {n: len(farm.ruleset_buckets(n)) for n in farm.nodes}
    assert shares == {"f1": 128, "f2": 64, "f3": 64}
    counts = Counter(a[0] for a in farm.ask_many(PORT_ON_PORT, 300))
    assert set(counts) == {"f1", "f2", "f3"}, counts
    for node, (sock, stream) in kept.items():
        stream.close()
        sock.close()


def test_stopping_the_module_hands_its_share_over_and_start_takes_it_back(farm):
    farm.cli("f2", "-m", MODULE, "stop", check=True)
    farm.wait_state("f2", "STOP")
    wait_until("f2's buckets with f1 and f3", lambda: farm.complete_on(["f1", "f3"]), 20)
    assert farm.ruleset_buckets("f2") is None                     # nothing left on f2
    counts = Counter(a[0] for a in farm.ask_many(PORT_ON_PORT, 200))
    assert set(counts) == {"f1", "f3"}, counts
    res = farm.cli("f1", "-H", "all", "-m", MODULE, "state")
    assert res.returncode == 0 and "f2: names on f2: STOP" in res.stdout, res.stdout
    # a load balancer's readiness check: every node UP with buckets answers 200, f2 not
    assert _primary_status(farm, "f2") == 503
    assert _primary_status(farm, "f1") == 200 and _primary_status(farm, "f3") == 200
    farm.cli("f1", "-H", "f2", "-m", MODULE, "start", check=True)
    farm.wait_farm(farm.nodes)
    wait_until("f2 answers 200", lambda: _primary_status(farm, "f2") == 200, 10)


def _primary_status(farm: FarmLab, node: str) -> int:
    """GET /primary/<module> on the node's HTTP endpoint, from the client host."""
    host, port = cluster_config.load(farm.cluster.config_dir(node)).http_address
    res = farm.lab.run(farm.client, [sys.executable, "-m", "chaos.http_probe", "--once",
                                     f"http://{host}:{port}/primary/{MODULE}"], check=False)
    return int(res.stderr.split("status=")[1].split()[0])


def _app_pid(farm: FarmLab, node: str) -> int:
    """The name server's pid (start_both writes the pidfile anew each time)."""
    pid = int((farm.root(node) / "run" / MODULE / "names.pid").read_text())
    os.kill(pid, 0)         # and it runs
    return pid


def test_cut_off_node_stops_serving_keeps_its_application_and_rejoins_when_healed(farm):
    pid = _app_pid(farm, "f2")
    farm.lab.cut("f2")
    wait_until("f2's buckets with f1 and f3", lambda: farm.complete_on(["f1", "f3"]), 20)
    # f2 cannot prove it is in the majority: it dropped its VIP and ruleset itself
    wait_until("f2 dropped its farm VIP", lambda: farm.ruleset_buckets("f2") is None, 20)
    counts = Counter(a[0] for a in farm.ask_many(PORT_ON_PORT, 200))
    assert set(counts) == {"f1", "f3"}, counts
    st = farm.state("f2")
    assert (st["state"], st["ready"], st["connected"], st["vip"]) == ("UP", "Transient", False, [])
    assert _app_pid(farm, "f2") == pid, "a cut-off node keeps its application running"
    farm.lab.heal("f2")
    farm.wait_farm(farm.nodes, timeout=60)
    assert {n: len(farm.ruleset_buckets(n)) for n in farm.nodes} == {"f1": 128, "f2": 64, "f3": 64}
    assert _app_pid(farm, "f2") == pid, "it serves again without a restart"


def test_a_failing_checker_takes_the_node_out_of_the_farm_until_it_is_up(make_lab):
    lab = make_lab(["f1", "f2", "f3", "c"])
    gate = lab.workdir / "gate.sh"
    gate.write_text("#!/bin/sh\nexec sleep 3600\n")     # the value comes from hacluster set
    gate.chmod(0o755)
    farm = FarmLab(lab, powers=POWERS, extra_sections=(
        f'<check><custom ident="gate" exec="{gate}" action="wait"/></check>')).start()
    farm.cli("f2", "-m", MODULE, "set", "-r", "custom.gate", "-v", "down", check=True)
    farm.wait_state("f2", "WAIT")
    wait_until("f2's buckets with f1 and f3", lambda: farm.complete_on(["f1", "f3"]), 20)
    assert farm.ruleset_buckets("f2") is None
    assert set(Counter(a[0] for a in farm.ask_many(PORT_ON_PORT, 200))) == {"f1", "f3"}
    farm.cli("f2", "-m", MODULE, "set", "-r", "custom.gate", "-v", "up", check=True)
    farm.wait_farm(farm.nodes)
    assert len(farm.ruleset_buckets("f2")) == 64


def test_a_node_dying_and_coming_back_resets_no_connection_on_the_survivors(farm):
    """Issue 16: connections established on f1 and f2 — before f3 dies and while it is
    away, on buckets that were f3's — all keep working when f3 comes back and takes its
    buckets back: the new owner takes only new connections (was: it reset the old
    owner's, 22 resets seen with nginx)."""
    from hacluster.farm.driver import hash_seed
    netns = farm.lab.hosts["c"].netns

    def open_many(count: int) -> list:
        out = []
        for _ in range(count):
            sock = socket.create_connection((farm.vip, PORT_ON_PORT), timeout=3)
            stream = sock.makefile("rw")
            out.append((sock, stream, stream.readline().strip(), sock.getsockname()))
        return out

    def still_served(conns: list) -> list:
        broken = []
        for sock, stream, node, _src in conns:
            try:
                stream.write(f"still {node}\n")
                stream.flush()
                if stream.readline() != f"still {node}\n":
                    broken.append((node, "no echo"))
            except OSError as e:
                broken.append((node, repr(e)))
        return broken

    f3_buckets = set(farm.ruleset_buckets("f3"))
    before = in_netns(netns, open_many, 40)
    farm.kill_host("f3")
    wait_until("f3's buckets owned by f1 and f2", lambda: farm.complete_on(["f1", "f2"]), 20)
    during = in_netns(netns, open_many, 80)
    seed = hash_seed(MODULE)
    on_f3s_buckets = [c for c in during
                      if bucket_of(c[3][0], c[3][1], "on_port", seed) in f3_buckets]
    assert on_f3s_buckets and {c[2] for c in on_f3s_buckets} <= {"f1", "f2"}
    farm.restart_node("f3")
    farm.wait_farm(farm.nodes, timeout=60)
    assert set(farm.ruleset_buckets("f3")) == f3_buckets     # its own buckets back
    survivors = [c for c in before + during if c[2] in ("f1", "f2")]
    assert not still_served(survivors), still_served(survivors)[:5]
    counts = Counter(a[0] for a in farm.ask_many(PORT_ON_PORT, 200))
    assert set(counts) == {"f1", "f2", "f3"} and None not in counts, counts
    for sock, stream, _n, _s in before + during:
        stream.close()
        sock.close()
