"""Which nodes run a module (pure)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.modules.nodes import ModuleNodesError, module_nodes, replication_hosts
from hacluster.modules.userconfig import FarmNode, Heart, HeartbeatNet, ModuleConfig

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


# ---- replication addresses (the flow heartbeat) ------------------------------------------

def with_flow(first: tuple[str, ...], flow: tuple[str, ...], flow_first: bool = False) -> ModuleConfig:
    nets = ((HeartbeatNet("default", first, flow=True),) if flow_first
            else (HeartbeatNet("default", first), HeartbeatNet("repl", flow, flow=True)))
    return ModuleConfig(name="m", mode="mirror", heart=Heart(nets=nets))


def test_without_a_flow_heartbeat_replication_uses_the_raft_hosts():
    assert replication_hosts(mirror("10.0.0.3", "10.0.0.1"), MEMBERS, ["n1", "n3"]) == {
        "n1": "10.0.0.1", "n3": "10.0.0.3"}


def test_flow_servers_follow_the_order_of_the_first_heartbeat():
    config = with_flow(("10.0.0.3", "n1"), ("192.168.5.3", "192.168.5.1"))
    assert module_nodes(config, MEMBERS) == ["n1", "n3"]
    assert replication_hosts(config, MEMBERS, ["n1", "n3"]) == {
        "n1": "192.168.5.1", "n3": "192.168.5.3"}


def test_flow_servers_follow_node_names_when_the_first_heartbeat_lists_none():
    two = {n: m for n, m in MEMBERS.items() if n != "n3"}
    config = with_flow((), ("192.168.5.1", "192.168.5.2"))
    assert module_nodes(config, two) == ["n1", "n2"]
    assert replication_hosts(config, two, ["n2", "n1"]) == {"n2": "192.168.5.2", "n1": "192.168.5.1"}


def test_a_flow_first_heartbeat_replicates_on_the_addresses_naming_the_nodes():
    config = with_flow(("n2", "10.0.0.3"), (), flow_first=True)
    assert module_nodes(config, MEMBERS) == ["n2", "n3"]
    assert replication_hosts(config, MEMBERS, ["n2", "n3"]) == {"n2": "10.0.0.2", "n3": "10.0.0.3"}


def test_flow_heartbeats_that_do_not_fit_the_nodes_are_refused():
    # (the parser refuses these already; a config built otherwise gets the same answer)
    short = with_flow(("n1", "n2"), ("192.168.5.1",))
    with pytest.raises(ModuleNodesError, match="'repl' lists 1 servers for 2 nodes"):
        module_nodes(short, MEMBERS)
    with pytest.raises(ModuleNodesError, match="'repl' lists 1 servers for 2 nodes"):
        replication_hosts(short, MEMBERS, ["n1", "n2"])
    with pytest.raises(ModuleNodesError, match="n7 is not a member"):
        replication_hosts(mirror(), MEMBERS, ["n1", "n7"])
    # the module's nodes are named by the first heartbeat only: the flow addresses are
    # no members, and must not be taken for node names
    assert module_nodes(with_flow(("n1", "n2"), ("192.168.5.1", "192.168.5.2")), MEMBERS) == ["n1", "n2"]


@given(st.permutations(["n1", "n2", "n3"]), st.booleans(), st.integers(0, 2))
def test_every_node_gets_the_flow_address_listed_at_its_position(order, by_name, drop):
    """Whatever the order of the first heartbeat, and whether it names nodes or their
    addresses, each node replicates on the flow address at its own position."""
    pair = [n for i, n in enumerate(order) if i != drop]
    flow_of = {n: f"192.168.5.{n[1]}" for n in pair}
    first = tuple(n if by_name else MEMBERS[n]["address"].split(":")[0] for n in pair)
    config = with_flow(first, tuple(flow_of[n] for n in pair))
    nodes = module_nodes(config, MEMBERS)
    assert nodes == sorted(pair)
    assert replication_hosts(config, MEMBERS, nodes) == flow_of
