"""Mirror modules' replication ports, allocated by the cluster state at install
(raft.replication_ports): never two modules on one port, never a member's own port,
the same on every member, kept across an upgrade."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from raft import replication_ports as rp
from raft.cluster_state import ClusterState

DIGEST, OTHER = "ab" * 32, "cd" * 32
MEMBERS = {"a": {"address": "10.0.0.1:7400", "role": "node"},
           "b": {"address": "10.0.0.2:7400", "role": "node"},
           "w": {"address": "10.0.0.3:7400", "role": "witness"}}


def _state(members=MEMBERS) -> ClusterState:
    s = ClusterState()
    assert s.bootstrap(members)["ok"]
    return s


def _install(s: ClusterState, name: str, dirs: int, digest: str = DIGEST) -> dict:
    return s.install_module(name, digest, "mirror", 100, "a", 1.5, dirs)


def _all_ports(s: ClusterState) -> list[int]:
    return [p for m in s.modules.values() for p in m.get("replication_ports", ())]


def test_the_hash_clashed_where_the_allocation_does_not():
    names = [f"app{i}" for i in range(200)]
    first = {}
    clash = None
    for name in names:
        slot = rp.legacy_ports(name).start
        if slot in first:
            clash = (first[slot], name)
            break
        first[slot] = name
    assert clash is not None, "200 names into 200 slots: the old hash clashes"
    s = _state()
    ports = [_install(s, name, 1)["replication_ports"] for name in clash]
    assert ports == [[7610], [7611]]


def test_many_modules_never_share_a_port():
    s = _state()
    for i in range(300):
        assert _install(s, f"m{i}", 1 + i % 3)["ok"], i
    ports = _all_ports(s)
    assert len(ports) == len(set(ports)) == sum(1 + i % 3 for i in range(300))
    assert all(p in rp.REPLICATION_PORTS for p in ports)
    for name, module in s.modules.items():      # a block of consecutive ports each
        mine = module["replication_ports"]
        assert mine == list(range(mine[0], mine[0] + len(mine))), name


def test_full_is_refused_in_words_and_an_uninstall_frees_the_ports():
    s = _state()
    n = 0
    while _install(s, f"m{n}", rp.MAX_PER_MODULE)["ok"]:
        n += 1
    refused = _install(s, "late", rp.MAX_PER_MODULE)
    assert not refused["ok"] and refused["error"] == (
        f"no {rp.MAX_PER_MODULE} consecutive free replication ports left in 7610-8409 for "
        "module late: uninstall a mirror module first")
    assert "late" not in s.modules
    freed = s.modules["m0"]["replication_ports"]
    assert s.uninstall_module("m0")["ok"]
    assert _install(s, "late", rp.MAX_PER_MODULE)["replication_ports"] == freed


def test_a_member_s_own_ports_are_never_handed_out():
    members = dict(MEMBERS, b={"address": "10.0.0.2:7612", "role": "node"})
    s = _state(members)
    ports = [p for i in range(5) for p in _install(s, f"m{i}", 1)["replication_ports"]]
    assert ports == [7610, 7611, 7616, 7617, 7618]      # 7612-7615: b's Raft, fetch, control


def test_an_upgrade_keeps_the_ports_unless_it_needs_another_number():
    s = _state()
    assert _install(s, "db", 2)["replication_ports"] == [7610, 7611]
    assert _install(s, "web", 1)["replication_ports"] == [7612]
    assert _install(s, "db", 2, OTHER)["replication_ports"] == [7610, 7611]
    assert s.modules["db"]["replication_ports"] == [7610, 7611]
    # Three directories now: a block of three (the module is stopped everywhere).
    assert _install(s, "db", 3, DIGEST)["replication_ports"] == [7613, 7614, 7615]
    # A farm module has none.
    assert s.install_module("f", DIGEST, "farm", 100, "a", 1.5, 0)["ok"]
    assert "replication_ports" not in s.modules["f"]


def test_a_module_from_before_keeps_its_hashed_slot_and_the_allocation_avoids_it():
    s = _state()
    # An entry of the previous version: no ports argument.
    assert s.install_module("old", DIGEST, "mirror", 100, "a", 1.5)["ok"]
    assert "replication_ports" not in s.modules["old"]
    assert rp.ports_of("old", s.modules["old"]) == list(rp.legacy_ports("old"))
    # The same package installed again by this version: it keeps its slot (it may run).
    assert "replication_ports" not in _install(s, "old", 1)
    legacy = set(rp.legacy_ports("old"))
    for i in range(200):
        assert not legacy & set(_install(s, f"m{i}", 1)["replication_ports"])


def test_bad_numbers_of_ports_are_refused():
    s = _state()
    for mode, ports in (("mirror", 0), ("mirror", rp.MAX_PER_MODULE + 1), ("mirror", True),
                        ("mirror", "2"), ("farm", 1)):
        res = s.install_module("x", DIGEST, mode, 100, "a", 1.5, ports)
        assert not res["ok"] and "invalid number of replication ports" in res["error"], (mode, ports)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["install", "uninstall"]),
                          st.integers(0, 40), st.integers(1, 6), st.booleans()),
                max_size=120))
def test_any_sequence_leaves_ports_distinct_and_every_member_agrees(ops):
    one, two = _state(), _state()
    for op, i, dirs, new_version in ops:
        name, digest = f"m{i}", OTHER if new_version else DIGEST
        for s in (one, two):
            if op == "install":
                _install(s, name, dirs, digest)
            else:
                s.uninstall_module(name)
        ports = _all_ports(one)
        assert len(ports) == len(set(ports))
        assert not set(ports) & {p for m in MEMBERS.values() for p in rp.member_ports(m["address"])}
    assert one.to_dict() == two.to_dict()
    assert ClusterState.from_dict(one.to_dict()).to_dict() == one.to_dict()


def test_a_member_whose_ports_are_a_module_s_is_refused():
    s = _state()
    assert _install(s, "db", 2)["replication_ports"] == [7610, 7611]
    refused = s.add_member("n3", "10.0.0.4:7608", "node")      # 7608-7611
    assert not refused["ok"] and refused["error"] == (
        "n3's ports 7608-7611 (Raft port to Raft port + 3) are replication ports of module(s) "
        "db: give it another Raft port")
    assert s.add_member("n3", "10.0.0.4:7400", "node")["ok"]
