"""The HTTP endpoints on real daemons (hacluster/http/): /metrics scraped across a
mirror failover shows it, and /primary/<module>, polled as a load balancer would,
follows a swap within one lease and never answers 200 on both nodes at once."""
from __future__ import annotations

import json
import statistics
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.lab import wait_until
from chaos.lab_mirror import MirrorLab
from hacluster.node import cluster_config
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

MODULE = "kvdemo"


@pytest.fixture
def mirror(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    return MirrorLab(lab).start(prim="n1")


def base_url(m: MirrorLab, node: str) -> str:
    host, port = cluster_config.load(m.cluster.config_dir(node)).http_address
    return f"http://{host}:{port}"


def scrape(m: MirrorLab, node: str) -> dict[tuple[str, tuple], float]:
    """One scrape of the node's /metrics from the client host, parsed."""
    res = m.lab.run(m.client, [sys.executable, "-m", "chaos.http_probe", "--once",
                               base_url(m, node) + "/metrics"], check=True)
    print(f"scrape {node}: {res.stderr.strip()}")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(res.stdout) for s in f.samples}


def metric(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_show_a_failover(mirror):
    m = mirror
    m.wait_pair("n1")
    before = {n: scrape(m, n) for n in ("n1", "n2")}
    assert metric(before["n1"], "hacluster_module_role", module=MODULE, role="primary") == 1
    assert metric(before["n2"], "hacluster_module_role", module=MODULE, role="secondary") == 1
    assert metric(before["n2"], "hacluster_module_in_sync", module=MODULE, node="n2") == 1
    assert metric(before["n1"], "hacluster_raft_live") == 1
    assert metric(before["n1"], "hacluster_raft_has_leader") == 1
    assert metric(before["n1"], "hacluster_raft_lease_renewal_seconds_count") > 0
    # the primary's mount reports its link every second
    wait_until("the link reported", lambda: any(
        name == "hacluster_replication_connected" and v == 1 for (name, _), v in scrape(m, "n1").items()),
        timeout=10)
    epoch = metric(before["n2"], "hacluster_module_epoch", module=MODULE)
    failovers = metric(before["n2"], "hacluster_module_failovers_total", module=MODULE)
    m.cluster.kill("n1")                     # SIGKILL of n1's daemon: n2 takes over
    m.wait_state("n2", "ALONE", timeout=20)
    after = wait_until("n2's metrics show it primary", lambda: (lambda s: s if metric(
        s, "hacluster_module_serving", module=MODULE) == 1 else None)(scrape(m, "n2")), 10)
    assert metric(after, "hacluster_module_state", module=MODULE, state="ALONE") == 1
    assert metric(after, "hacluster_module_state", module=MODULE, state="SECOND") == 0
    assert metric(after, "hacluster_module_role", module=MODULE, role="primary") == 1
    assert metric(after, "hacluster_module_epoch", module=MODULE) > epoch
    assert metric(after, "hacluster_module_failovers_total", module=MODULE) == failovers + 1
    assert metric(after, "hacluster_module_promotions_total", module=MODULE) == 1
    assert metric(after, "hacluster_module_in_sync", module=MODULE, node="n1") == 0
    assert metric(after, "hacluster_raft_member_live", member="n1", role="node") == 0


def test_primary_readiness_follows_a_swap_within_one_lease(mirror):
    m = mirror
    m.wait_pair("n1")
    urls = {n: base_url(m, n) + f"/primary/{MODULE}" for n in ("n1", "n2")}
    poller = m.lab.spawn(m.client, [sys.executable, "-m", "chaos.http_probe", "--interval", "0.02",
                                    "--duration", "120", urls["n1"], urls["n2"]], name="lb-probe")
    node_of = {u: n for n, u in urls.items()}

    round_trips: list[float] = []

    def answers() -> list[tuple[float, str, int]]:
        round_trips.clear()
        out = []
        for line in poller.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    a = json.loads(line)
                except ValueError:
                    continue    # a line being written
                out.append((a["t"], node_of[a["url"]], a["status"]))
                round_trips.append(a["ms"])
        return out

    wait_until("n1 answers 200", lambda: any(n == "n1" and s == 200 for _, n, s in answers()), 10)
    assert all(s == 503 for _, n, s in answers() if n == "n2")
    unknown = m.lab.run(m.client, [sys.executable, "-m", "chaos.http_probe", "--once",
                                   base_url(m, "n1") + "/primary/nope"], check=False)
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["error"] == "unknown module"
    ready = m.lab.run(m.client, [sys.executable, "-m", "chaos.http_probe", "--once",
                                 base_url(m, "n2") + "/ready"], check=True)
    assert json.loads(ready.stdout)["ready"] is True

    m.cli("n1", "-m", MODULE, "swap", check=True)
    m.wait_pair("n2", timeout=60)
    wait_until("n2 answers 200", lambda: any(n == "n2" and s == 200 for _, n, s in answers()), 10)
    poller.stop()
    seen = answers()
    # never both at once: n1's last 200 comes before n2's first
    last_n1 = max(t for t, n, s in seen if n == "n1" and s == 200)
    first_n2 = min(t for t, n, s in seen if n == "n2" and s == 200)
    assert last_n1 < first_n2
    assert all(s == 503 for t, n, s in seen if n == "n1" and t > last_n1)
    # within one lease of the daemon's own view: n2 became primary (its state line) ...
    lease_s = cluster_config.load(m.cluster.config_dir("n2")).raft.lease_s
    promoted = min(float(e["mono"]) for e in m.cluster.events("n2", "module_state")
                   if e.get("module") == MODULE and e.get("state") in ("PRIM", "ALONE"))
    assert first_n2 - promoted <= lease_s, (first_n2, promoted)
    # ... and n1 stopped answering 200 once it began to hand over (it released the lease)
    released = [float(e["mono"]) for e in m.cluster.events("n1", "plan_started")
                if e.get("module") == MODULE and "swap" in e.get("reason", "").lower()]
    assert released, "n1 logged the swap's plan"
    assert last_n1 - released[0] <= lease_s, (last_n1, released[0])
    print(f"n2 200 {first_n2 - promoted:.3f} s after its PRIM/ALONE line; n1 503 "
          f"{last_n1 - released[0]:.3f} s after its swap began; n1's last 200 "
          f"{first_n2 - last_n1:.3f} s before n2's first; {len(round_trips)} polls, round trip "
          f"median {statistics.median(round_trips):.2f} ms, max {max(round_trips):.2f} ms")
