"""The readiness decisions (hacluster/http/readiness.py): who answers 200."""
from __future__ import annotations

import dataclasses

import pytest

from hacluster.http import readiness
from tests.unit.http_snapshots import farm, mirror, node, raft


@pytest.mark.parametrize("state, lease, status", [
    ("PRIM", True, 200), ("ALONE", True, 200),
    # a primary whose lease is gone is demoting: never 200 there
    ("PRIM", False, 503), ("ALONE", False, 503),
    ("SECOND", False, 503), ("WAIT", False, 503), ("STOP", False, 503),
    # held a moment while the machine still says SECOND (promotion running): not yet
    ("SECOND", True, 503),
])
def test_a_mirror_module_is_served_by_its_primary_holding_the_lease(state, lease, status):
    answer = readiness.primary(node([mirror(state, lease)]), "db")
    assert answer.status == status
    assert answer.body["serving"] is (status == 200)
    assert answer.body["state"] == state and answer.body["module"] == "db"
    assert answer.body["reason"]


@pytest.mark.parametrize("state, buckets, status", [
    ("UP", 128, 200), ("UP", 1, 200), ("UP", 0, 503), ("WAIT", 0, 503), ("STOP", 0, 503)])
def test_a_farm_module_is_served_by_every_node_up_with_buckets(state, buckets, status):
    assert readiness.primary(node([farm(state, buckets)]), "web").status == status


@pytest.mark.parametrize("module, heading_to, status", [
    (mirror("PRIM"), "SECOND", 503), (mirror("PRIM"), "STOP", 503), (mirror("ALONE"), "PRIM", 200),
    (mirror("PRIM"), "PRIM", 200), (farm("UP"), "STOP", 503), (farm("UP"), "UP", 200)])
def test_a_node_leaving_the_role_stops_answering_200_when_the_transition_begins(
        module, heading_to, status):
    leaving = dataclasses.replace(module, heading_to=heading_to, transition="swap")
    answer = readiness.primary(node([leaving]), module.name)
    assert answer.status == status
    if status == 503:
        assert f"leaving for {heading_to}" in answer.body["reason"]


def test_an_unknown_module_is_404_and_one_that_runs_elsewhere_503():
    snap = node([mirror()], known={"db", "other"})
    assert readiness.primary(snap, "nope").status == 404
    assert readiness.primary(snap, "nope").body == {"node": "n1", "module": "nope",
                                                    "error": "unknown module"}
    elsewhere = readiness.primary(snap, "other")
    assert elsewhere.status == 503 and elsewhere.body["serving"] is False


def test_ready_needs_a_leader_and_this_node_live():
    assert readiness.ready(node()).status == 200
    assert readiness.ready(node()).body["ready"] is True
    no_leader = readiness.ready(node(raft=raft(leader=None)))
    assert no_leader.status == 503 and "leader" in no_leader.body["reason"]
    not_live = readiness.ready(node(raft=raft(live=False)))
    assert not_live.status == 503 and "liveness" in not_live.body["reason"]
    assert readiness.ready(node(raft=None)).status == 503


def test_health_answers_while_the_daemon_runs_even_without_raft():
    answer = readiness.health(node(raft=None))
    assert answer.status == 200 and answer.body["version"] == "0.1.0"


@pytest.mark.parametrize("module, role", [
    (mirror("PRIM"), "primary"), (mirror("ALONE"), "primary"), (mirror("SECOND", False), "secondary"),
    (mirror("WAIT", False), "none"), (mirror("STOP", False), "none"),
    (farm("UP"), "farm_member"), (farm("WAIT", 0), "none")])
def test_role_of(module, role):
    assert readiness.role_of(module) == role


def test_serving_agrees_with_primary_status():
    for module in (mirror("PRIM"), mirror("PRIM", False), farm("UP", 0), farm("UP"),
                   dataclasses.replace(mirror("ALONE"), epoch=9)):
        ok, _ = readiness.serves(module)
        assert (readiness.primary(node([module]), module.name).status == 200) is ok
