"""modules/registry.StateFeed: each module runtime is handed the slice of the
committed state it reads, only when an applied entry changed that slice."""
import copy

import pytest

from hacluster.modules.host import ModuleSlice
from hacluster.modules.registry import StateFeed
from raft.cluster_state import ClusterState, liveness_resource, mirror_resource

MEMBERS = {"n1": {"address": "10.0.0.1:7400", "role": "node"},
           "n2": {"address": "10.0.0.2:7400", "role": "node"},
           "w": {"address": "10.0.0.9:7400", "role": "witness"}}


class Reader:
    """What the feed needs of a runtime: a name, the leases its view reads, and a
    record of every slice it was handed."""

    def __init__(self, name: str, leases: frozenset[str]) -> None:
        self.name = name
        self.leases_read = leases
        self.handed: list[ModuleSlice] = []

    def state_changed(self, part: ModuleSlice) -> None:
        self.handed.append(part)


class Node:
    """A real ClusterState applying commands as Raft would, and a feed that reads it
    (counting the copies of the whole state it takes)."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.copies = 0
        self.feed = StateFeed(self.read)
        self.a = Reader("a", frozenset({mirror_resource("a"), liveness_resource("n2")}))
        self.b = Reader("b", frozenset({mirror_resource("b"), liveness_resource("n2")}))
        self.f = Reader("f", frozenset())

    def read(self) -> dict:
        self.copies += 1
        return self.state.to_dict()

    def apply(self, op: str, *args):
        result = getattr(self.state, op)(*args)
        self.feed.applied(op, args, result, [self.a, self.b, self.f])
        return result

    def handed(self) -> tuple[int, int, int]:
        return len(self.a.handed), len(self.b.handed), len(self.f.handed)


@pytest.fixture
def node() -> Node:
    n = Node()
    n.apply("bootstrap", copy.deepcopy(MEMBERS))
    for name, mode in (("a", "mirror"), ("b", "mirror"), ("f", "farm")):
        n.apply("install_module", name, name[0] * 64, mode, 10, "n1", 1.5)
    for name in ("a", "b"):     # the first start: n1's copies are the good ones
        assert n.apply("name_good_copy", mirror_resource(name), "n1")["ok"]
    return n


def test_a_lease_renewal_of_module_a_wakes_and_copies_for_nobody(node):
    epoch = node.apply("acquire", mirror_resource("a"), "n1", 1.5)["epoch"]
    before, copies = node.handed(), node.copies
    for _ in range(50):
        assert node.apply("renew_many", "n1", [[mirror_resource("a"), epoch]])["ok"]
        assert node.apply("renew", mirror_resource("a"), "n1", epoch)["ok"]
    assert node.handed() == before
    assert node.copies == copies


def test_module_a_s_lease_changes_reach_a_only(node):
    before = node.handed()
    epoch = node.apply("acquire", mirror_resource("a"), "n1", 1.5)["epoch"]
    assert node.handed() == (before[0] + 1, before[1], before[2])
    assert node.a.handed[-1].lease(mirror_resource("a"))["holder"] == "n1"
    assert "seq" not in node.a.handed[-1].lease(mirror_resource("a"))
    node.apply("set_in_sync", mirror_resource("a"), "n1", epoch, ["n1", "n2"], {})
    node.apply("release", mirror_resource("a"), "n1", epoch)
    assert node.handed() == (before[0] + 3, before[1], before[2])


def test_a_refused_command_changes_nothing_and_wakes_nobody(node):
    assert node.apply("acquire", mirror_resource("a"), "n1", 1.5)["ok"]
    before, copies = node.handed(), node.copies
    assert not node.apply("acquire", mirror_resource("a"), "n2", 1.5)["ok"]
    assert not node.apply("set_intent", "b", "nobody", "start")["ok"]
    assert (node.handed(), node.copies) == (before, copies)


def test_the_peer_s_liveness_reaches_both_mirrors_and_one_read_serves_them(node):
    before, copies = node.handed(), node.copies
    node.apply("acquire", liveness_resource("n2"), "n2", 1.5)
    assert node.handed() == (before[0] + 1, before[1] + 1, before[2])
    assert node.copies == copies + 1
    assert node.b.handed[-1].lease(liveness_resource("n2"))["holder"] == "n2"


def test_a_node_leaving_a_farm_reaches_the_farm(node):
    epoch = node.apply("acquire", liveness_resource("n1"), "n1", 1.5)["epoch"]
    node.apply("farm_join", "f", "n1", 1)
    before = node.handed()
    assert node.apply("release", liveness_resource("n1"), "n1", epoch)["farms_left"] == ["f"]
    assert node.handed() == (before[0], before[1], before[2] + 1)
    assert dict(node.f.handed[-1].entry()["farm"]["members"]) == {}


def test_commands_of_one_module_reach_that_module(node):
    before = node.handed()
    node.apply("set_intent", "b", "n1", "start")
    node.apply("set_failover", "b", False)
    assert node.handed() == (before[0], before[1] + 2, before[2])
    assert node.b.handed[-1].entry()["intent"]["n1"] == "start"


def test_a_slice_is_read_only():
    state = {"modules": {"a": {"intent": {"n1": "start"}}},
             "leases": {"mirror/a": {"holder": "n1", "epoch": 3, "seq": 9, "eligible": ["n1"]}}}
    part = ModuleSlice.of(state, "a", [mirror_resource("a"), "node/n2"])
    assert part.lease("mirror/a") == {"holder": "n1", "epoch": 3, "eligible": ("n1",)}
    assert part.lease("node/n2") == {}
    with pytest.raises(TypeError):
        part.entry()["intent"]["n1"] = "stop"
    state["modules"]["a"]["intent"]["n1"] = "stop"     # the snapshot is the caller's
    assert part.entry()["intent"]["n1"] == "start"
