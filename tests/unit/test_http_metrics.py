"""/metrics (hacluster/http/metrics.py, exposition.py): the text format, parsed back
with prometheus_client's own parser."""
from __future__ import annotations

import math
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hacluster.farm.machine import State as FarmState
from hacluster.http import metrics
from hacluster.http.exposition import Exposition, format_value
from hacluster.mirror.machine import State as MirrorState
from tests.unit.http_snapshots import farm, mirror, node, raft


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, every sample of every family."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_a_node_with_a_mirror_primary_and_a_farm_member():
    text = metrics.render(node([mirror(), farm()]))
    samples = parse(text)
    assert value(samples, "hacluster_build_info", version="0.1.0", cluster="prod", member="n1",
                 kind="node") == 1
    assert value(samples, "hacluster_raft_term") == 7
    assert value(samples, "hacluster_raft_commit_index") == 1234
    assert value(samples, "hacluster_raft_role", role="leader") == 1
    assert value(samples, "hacluster_raft_role", role="follower") == 0
    assert value(samples, "hacluster_raft_leader", leader="n1") == 1
    assert value(samples, "hacluster_raft_live") == 1
    assert value(samples, "hacluster_raft_member_live", member="w", role="witness") == 0
    assert value(samples, "hacluster_raft_lease_renewal_seconds_count") == 4
    assert value(samples, "hacluster_raft_lease_renewal_seconds_bucket", le="0.001") == 1
    assert value(samples, "hacluster_raft_lease_renewal_seconds_bucket", le="0.005") == 3
    assert value(samples, "hacluster_raft_lease_renewal_seconds_bucket", le="+Inf") == 4
    assert value(samples, "hacluster_raft_lease_renewal_seconds_sum") == pytest.approx(0.205)
    assert value(samples, "hacluster_raft_lease_renewals_unconfirmed_total") == 2
    # the mirror module, one-hot state and role
    assert value(samples, "hacluster_module_state", module="db", state="PRIM") == 1
    assert sum(value(samples, "hacluster_module_state", module="db", state=s)
               for s in metrics.STATES["mirror"]) == 1
    assert value(samples, "hacluster_module_role", module="db", role="primary") == 1
    assert value(samples, "hacluster_module_role", module="db", role="secondary") == 0
    assert value(samples, "hacluster_module_serving", module="db") == 1
    assert value(samples, "hacluster_module_epoch", module="db") == 5
    assert value(samples, "hacluster_module_in_sync", module="db", node="n1") == 1
    assert value(samples, "hacluster_module_in_sync", module="db", node="n2") == 0
    assert value(samples, "hacluster_module_failovers_total", module="db") == 1
    peer = "10.0.0.2:7610"
    assert value(samples, "hacluster_replication_in_flight_ops", module="db", peer=peer) == 3
    assert value(samples, "hacluster_replication_sent_bytes_total", module="db", peer=peer) == 4096
    assert value(samples, "hacluster_replication_connected", module="db", peer=peer) == 1
    assert value(samples, "hacluster_reintegration_active", module="db") == 1
    assert value(samples, "hacluster_reintegration_bytes_total", module="db") == 400
    assert value(samples, "hacluster_checker_resource", module="db", resource="tcp.db",
                 value="up") == 1
    assert value(samples, "hacluster_checker_resource", module="db", resource="custom.x",
                 value="up") == 0
    # the farm module
    assert value(samples, "hacluster_module_state", module="web", state="UP") == 1
    assert value(samples, "hacluster_module_role", module="web", role="farm_member") == 1
    assert value(samples, "hacluster_farm_buckets", module="web") == 128
    assert ("hacluster_module_epoch", (("module", "web"),)) not in samples


def test_types_and_help_come_from_the_family_table():
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(node([mirror()])))}
    declared = {name: kind for name, kind, _ in metrics.FAMILIES}
    for name, family in families.items():
        # the parser names a counter's family without its _total
        full = name + "_total" if family.type == "counter" else name
        assert declared[full] == family.type
        assert family.documentation


def test_a_secondary_exports_no_reintegration_and_a_node_without_raft_only_itself():
    secondary = parse(metrics.render(node([mirror("SECOND", False, links=(),
                                                  reintegration=None)])))
    assert value(secondary, "hacluster_module_role", module="db", role="secondary") == 1
    assert value(secondary, "hacluster_module_serving", module="db") == 0
    assert not any(name.startswith("hacluster_reintegration") for name, _ in secondary)
    starting = parse(metrics.render(node(raft=None)))
    assert {name for name, _ in starting} == {"hacluster_build_info",
                                              "hacluster_daemon_start_time_seconds",
                                              "hacluster_daemon_uptime_seconds"}
    leaderless = parse(metrics.render(node(raft=raft(leader=None))))
    assert value(leaderless, "hacluster_raft_has_leader") == 0
    assert not any(name == "hacluster_raft_leader" for name, _ in leaderless)


def test_the_states_are_those_of_the_machines():
    assert metrics.STATES["mirror"] == tuple(s.value for s in MirrorState)
    assert metrics.STATES["farm"] == tuple(s.value for s in FarmState)


@pytest.mark.parametrize("raw", ['a "quoted" name', "back\\slash", "new\nline", "ünï"])
def test_label_values_are_escaped(raw):
    out = Exposition()
    out.family("x", "gauge", "help with \\ and\nnewline")
    out.sample("x", 1.5, {"v": raw})
    (family,) = text_string_to_metric_families(out.render())
    assert family.samples[0].labels == {"v": raw}
    assert family.documentation == "help with \\ and\nnewline"


def test_values():
    assert format_value(True) == "1" and format_value(3) == "3"
    assert format_value(math.inf) == "+Inf" and format_value(math.nan) == "NaN"
    assert float(format_value(0.1)) == 0.1


def test_an_undeclared_or_doubled_family_is_refused():
    out = Exposition()
    out.family("x", "gauge", "h")
    with pytest.raises(ValueError):
        out.family("x", "gauge", "h")
    with pytest.raises(ValueError):
        out.family("y", "nonsense", "h")
    with pytest.raises(KeyError):
        out.sample("z", 1)
    assert Exposition().render() == ""


def test_rendering_a_busy_node_is_cheap_enough_to_do_on_the_loop():
    # Not an assertion on speed: prints the cost (see the commit / README), and checks the
    # output of 20 modules parses.
    snap = node([mirror(name=f"db{i}") for i in range(10)] + [farm(name=f"web{i}")
                                                               for i in range(10)])
    started = time.perf_counter()
    for _ in range(50):
        text = metrics.render(snap)
    per_render_ms = (time.perf_counter() - started) / 50 * 1000
    print(f"render of 20 modules: {per_render_ms:.3f} ms, {len(text)} bytes")
    assert len(list(text_string_to_metric_families(text))) == len(metrics.FAMILIES)
