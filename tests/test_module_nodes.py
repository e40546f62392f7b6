"""Which nodes run a module (pure)."""
from __future__ import annotations

import pytest

from hacluster.module_nodes import ModuleNodesError, module_nodes
from hacluster.userconfig import FarmNode, Heart, HeartbeatNet, ModuleConfig

MEMBERS = {"n1": {"address": "10.0.0.1:7400", "role": "node"},
           "n2": {"address": "10.0.0.2:7400", "role": "node"},
           "n3": {"address": "10.0.0.3:7400", "role": "node"},
           "w": {"address": "10.0.0.9:7400", "role": "witness"}}


def mirror(*servers: str) -> ModuleConfig:
    return ModuleConfig(name="m", mode="mirror",
                        heart=Heart(nets=(HeartbeatNet("default", servers),) if servers else ()))


def test_mirror_runs_on_its_heartbeat_servers_by_address_or_name():
    assert module_nodes(mirror("10.0.0.3", "10.0.0.1"), MEMBERS) == ["n1", "n3"]
    assert module_nodes(mirror("n2", "10.0.0.3"), MEMBERS) == ["n2", "n3"]


def test_mirror_without_servers_needs_exactly_two_data_nodes():
    two = {n: m for n, m in MEMBERS.items() if n != "n3"}
    assert module_nodes(mirror(), two) == ["n1", "n2"]
    with pytest.raises(ModuleNodesError, match="exactly two data nodes; this cluster has 3"):
        module_nodes(mirror(), MEMBERS)


def test_mirror_servers_that_are_not_two_data_nodes_are_refused():
    with pytest.raises(ModuleNodesError, match="'10.0.0.7' is not a member"):
        module_nodes(mirror("10.0.0.1", "10.0.0.7"), MEMBERS)
    with pytest.raises(ModuleNodesError, match="a witness"):
        module_nodes(mirror("10.0.0.1", "10.0.0.9"), MEMBERS)
    with pytest.raises(ModuleNodesError, match="servers name 3"):
        module_nodes(mirror("n1", "n2", "n3"), MEMBERS)


def test_farm_runs_on_its_lan_nodes_else_every_data_node():
    farm = ModuleConfig(name="f", mode="farm",
                        farm_nodes=(FarmNode("n3", "10.0.0.3"), FarmNode("x", "10.0.0.1")))
    assert module_nodes(farm, MEMBERS) == ["n1", "n3"]
    assert module_nodes(ModuleConfig(name="f", mode="farm"), MEMBERS) == ["n1", "n2", "n3"]
