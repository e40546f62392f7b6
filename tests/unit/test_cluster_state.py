"""raft/cluster_state.py: the replicated state machine (members, leases, epochs)."""
from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from raft.cluster_state import LIVENESS_PREFIX, ClusterState, liveness_resource
from raft.plain_data import check_plain

MEMBERS = {
    "a": {"address": "10.0.0.1:7400", "role": "node"},
    "b": {"address": "10.0.0.2:7400", "role": "node"},
    "c": {"address": "10.0.0.3:7400", "role": "node"},
    "w": {"address": "10.0.0.9:7400", "role": "witness"},
}
SPARE = {"d": {"address": "10.0.0.4:7400", "role": "node"}}
NAMES = sorted(MEMBERS) + ["d", "zz"]  # d: may be added later; zz: never a member
RESOURCES = ["vip", "db", "node/a", "node/b", "node/d", "node/zz"]


def fresh() -> ClusterState:
    s = ClusterState()
    assert s.bootstrap(copy.deepcopy(MEMBERS))["ok"]
    return s


# ---- bootstrap ----------------------------------------------------------------------
def test_bootstrap_once():
    s = ClusterState()
    r = s.bootstrap(copy.deepcopy(MEMBERS))
    assert r == {"ok": True, "members": ["a", "b", "c", "w"]}
    assert s.members == MEMBERS
    before = s.to_dict()
    r2 = s.bootstrap({"x": {"address": "10.0.1.1:7400", "role": "node"}})
    assert not r2["ok"] and "already bootstrapped" in r2["error"]
    assert s.to_dict() == before


def test_bootstrap_two_nodes_without_witness_refused():
    s = ClusterState()
    r = s.bootstrap({"a": MEMBERS["a"], "b": MEMBERS["b"]})
    assert not r["ok"]
    assert "witness" in r["error"]
    assert s.members == {}
    # and a correct bootstrap still works afterwards
    assert s.bootstrap({"a": MEMBERS["a"], "b": MEMBERS["b"], "w": MEMBERS["w"]})["ok"]


@pytest.mark.parametrize("members", [
    {},
    [1, 2],
    "a",
    {"a": "10.0.0.1:7400"},
    {"a": {"address": "10.0.0.1:7400"}},
    {"a": {"address": "10.0.0.1:7400", "role": "boss"}},
    {"A!": {"address": "10.0.0.1:7400", "role": "node"}},
    {"a": {"address": 7400, "role": "node"}},
    {"a": {"address": "10.0.0.1:7400", "role": "node"}, "b": {"address": "10.0.0.1:7400", "role": "node"},
     "w": {"address": "10.0.0.9:7400", "role": "witness"}},
])
def test_bootstrap_invalid_refused_without_raising(members):
    s = ClusterState()
    r = s.bootstrap(members)
    assert r["ok"] is False and r["error"].startswith("invalid initial members")
    assert s.to_dict() == {"members": {}, "leases": {}, "modules": {}}


# ---- single rules -------------------------------------------------------------------
def test_grant_renew_release_cycle():
    s = fresh()
    r = s.acquire("vip", "a", 1.5)
    assert r == {"ok": True, "epoch": 1, "forced": False}
    assert s.holder("vip") == "a"
    r = s.acquire("vip", "b", 1.5)
    assert not r["ok"] and r["holder"] == "a" and r["epoch"] == 1
    assert s.renew("vip", "a", 1) == {"ok": True, "epoch": 1}
    assert s.release("vip", "a", 1) == {"ok": True, "epoch": 1}
    assert s.holder("vip") is None
    assert s.acquire("vip", "b", 1.5)["epoch"] == 2
    assert s.leases["vip"]["seq"] == 4


def test_reacquire_by_the_holder_starts_a_new_epoch():
    """A restarted holder (its daemon died and came back before the lease ran
    out) asks with acquire, not renew: it must get a new epoch, else two
    sessions of one holder share an epoch (was: renewed at the same epoch)."""
    s = fresh()
    assert s.acquire("vip", "a", 1.5)["epoch"] == 1
    assert s.acquire("vip", "a", 1.5) == {"ok": True, "epoch": 2, "reacquired": True}
    assert s.holder("vip") == "a"
    r = s.renew("vip", "a", 1)
    assert not r["ok"], "the old session's epoch must be dead"
    assert s.renew("vip", "a", 2)["ok"]


def test_expire_fenced_by_epoch_and_seq():
    s = fresh()
    s.acquire("vip", "a", 1.5)
    lease = dict(s.leases["vip"])
    s.renew("vip", "a", 1)  # a renewal lands after the leader looked
    before = s.to_dict()
    r = s.expire("vip", lease["epoch"], lease["seq"])
    assert not r["ok"] and "stale" in r["error"]
    assert s.to_dict() == before
    cur = s.leases["vip"]
    r = s.expire("vip", cur["epoch"], cur["seq"])
    assert r == {"ok": True, "epoch": 1, "holder": "a"}
    assert s.holder("vip") is None
    r = s.expire("vip", cur["epoch"], cur["seq"] + 1)
    assert not r["ok"] and "no holder" in r["error"]


def test_eligibility_and_force():
    s = fresh()
    assert s.set_eligible("db", ["b", "a", "a"], 1.5) == {"ok": True, "eligible": ["a", "b"]}
    before = s.to_dict()
    r = s.acquire("db", "c", 1.5)
    assert not r["ok"] and "not eligible" in r["error"] and "a, b" in r["error"]
    assert s.to_dict() == before
    r = s.acquire("db", "c", 1.5, force=True)
    assert r == {"ok": True, "epoch": 1, "forced": True}
    assert s.holder("db") == "c"
    s.release("db", "c", 1)
    assert s.acquire("db", "a", 1.5, force=True) == {"ok": True, "epoch": 2, "forced": False}


def test_set_eligible_refusals():
    s = fresh()
    before = s.to_dict()
    for nodes, words in [(["a", "nobody"], "unknown member"), (["Bad!"], "invalid member name"),
                         ("abc", "list"), ([["a"]], "invalid member name")]:
        r = s.set_eligible("db", nodes, 1.5)
        assert not r["ok"] and words in r["error"], (nodes, r)
        assert s.to_dict() == before
    assert s.set_eligible("db", None, 1.5) == {"ok": True, "eligible": None}


def test_liveness_lease_is_its_owner_only():
    s = fresh()
    for force in (False, True):
        r = s.acquire("node/a", "b", 1.5, force=force)
        assert not r["ok"] and "liveness lease of another member" in r["error"]
    assert s.leases == {}
    assert s.acquire("node/a", "a", 1.5)["ok"]
    assert s.leases["node/a"]["eligible"] == ["a"]
    assert s.live_members() == {"a"}


def test_acquire_refusals_change_nothing():
    s = fresh()
    before = s.to_dict()
    for args, words in [(("vip", "zz", 1.5), "unknown member"),
                        (("", "a", 1.5), "invalid resource"),
                        ((None, "a", 1.5), "invalid resource"),
                        (("vip", "a", 0), "invalid lease duration"),
                        (("vip", "a", -1.0), "invalid lease duration"),
                        (("vip", "a", "1.5"), "invalid lease duration"),
                        (("vip", "a", float("inf")), "invalid lease duration"),
                        (("vip", "a", float("nan")), "invalid lease duration"),
                        (("vip", "a", True), "invalid lease duration")]:
        r = s.acquire(*args)
        assert r["ok"] is False and words in r["error"], (args, r)
        assert s.to_dict() == before


def test_remove_member_rules():
    s = fresh()
    for n in ("a", "b", "c", "w"):
        assert s.acquire(liveness_resource(n), n, 1.5)["ok"]
    s.set_eligible("db", ["a", "c"], 1.5)
    assert s.acquire("vip", "c", 1.5)["ok"]
    before = s.to_dict()
    r = s.remove_member("c", "node")
    assert not r["ok"] and "holds lease(s) vip" in r["error"]
    assert s.to_dict() == before
    s.release("vip", "c", 1)
    r = s.remove_member("c", "node")
    assert r == {"ok": True, "name": "c", "address": "10.0.0.3:7400"}
    assert "c" not in s.members
    assert "node/c" not in s.leases          # its liveness lease goes with it
    assert s.leases["db"]["eligible"] == ["a"]
    assert s.acquire("vip", "c", 1.5)["ok"] is False


def test_remove_member_refused_without_quorum_among_the_live():
    s = fresh()
    s.acquire("node/a", "a", 1.5)  # only a is alive
    before = s.to_dict()
    r = s.remove_member("c", "node")
    assert not r["ok"] and "no quorum" in r["error"]
    assert s.to_dict() == before


def test_add_member():
    s = fresh()
    r = s.add_member("d", "10.0.0.4:7400", "node")
    assert r == {"ok": True, "name": "d", "address": "10.0.0.4:7400"}
    assert s.members["d"] == {"address": "10.0.0.4:7400", "role": "node"}
    before = s.to_dict()
    r = s.add_member("e", "10.0.0.4:7400", "node")
    assert not r["ok"] and "duplicate address" in r["error"]
    assert s.to_dict() == before


# Malformed arguments must come back as refusals: a replicated method that raises is
# retried by pysyncobj on every tick on every member and wedges the whole cluster.
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.sampled_from(NAMES + RESOURCES + [""]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6,
)

OPS = {
    "bootstrap": 1, "add_member": 3, "remove_member": 2, "acquire": 4, "renew": 3,
    "release": 3, "expire": 3, "set_eligible": 3, "renew_many": 2,
}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(sorted(OPS)), data=st.data())
def test_malformed_arguments_are_refused_never_raised(op, data):
    if op == "bootstrap":
        s = ClusterState()
    else:
        s = fresh()
        s.acquire("vip", "a", 1.5)
        s.acquire("node/b", "b", 1.5)
    args = data.draw(st.lists(plain, min_size=OPS[op], max_size=OPS[op]))
    before = s.to_dict()
    r = getattr(s, op)(*args)
    assert isinstance(r, dict) and isinstance(r.get("ok"), bool)
    if not r["ok"]:
        assert isinstance(r["error"], str) and r["error"]
        assert s.to_dict() == before
    check_plain(s.to_dict(), "state")
    check_plain(r, "result")


# ---- stateful: random operation sequences --------------------------------------------
names = st.sampled_from(NAMES)
resources = st.sampled_from(RESOURCES)
epoch_delta = st.sampled_from([0, 0, -1, 1])
HOLDER = "<holder>"  # stands for the resource's current holder: renewals by the holder are common
who = st.sampled_from([HOLDER, HOLDER] + NAMES)


class ClusterStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = fresh()
        self.ops: list[tuple[str, tuple]] = [("bootstrap", (copy.deepcopy(MEMBERS),))]
        self.max_epoch: dict[str, int] = {}
        self.max_seq: dict[str, int] = {}

    def apply(self, op: str, *args):
        before = self.state.to_dict()
        self.ops.append((op, copy.deepcopy(args)))
        r = getattr(self.state, op)(*args)
        assert isinstance(r["ok"], bool)
        if not r["ok"]:
            assert r["error"]
            assert self.state.to_dict() == before, f"refused {op}{args} changed the state"
        return before, r

    @staticmethod
    def lease_of(d: dict, resource: str) -> dict | None:
        return d["leases"].get(resource)

    # -- rules --
    @rule(resource=resources, node=names, force=st.booleans())
    def acquire(self, resource, node, force):
        before, r = self.apply("acquire", resource, node, 1.5, force)
        old = self.lease_of(before, resource)
        new = self.state.leases.get(resource)
        if node not in before["members"]:
            assert not r["ok"] and "unknown member" in r["error"]
            return
        if resource.startswith(LIVENESS_PREFIX) and resource != liveness_resource(node):
            assert not r["ok"], "took another member's liveness lease"
            return
        holder = old["holder"] if old else None
        epoch = old["epoch"] if old else 0
        eligible = old["eligible"] if old else None
        if holder == node:
            assert r == {"ok": True, "epoch": epoch + 1, "reacquired": True}
            assert new["epoch"] == epoch + 1 and new["seq"] == old["seq"] + 1
        elif holder is not None:
            assert not r["ok"] and r["holder"] == holder
        elif eligible is not None and node not in eligible and not force:
            assert not r["ok"] and "not eligible" in r["error"]
        else:
            # a grant: epoch + 1 exactly
            assert r["ok"] and r["epoch"] == epoch + 1
            assert new["holder"] == node and new["epoch"] == epoch + 1
            assert r["forced"] == (eligible is not None and node not in eligible)

    def resolve(self, resource: str, node: str) -> str:
        return (self.state.holder(resource) or "a") if node == HOLDER else node

    @rule(resource=resources, node=who, delta=epoch_delta)
    def renew(self, resource, node, delta):
        node = self.resolve(resource, node)
        lease = self.state.leases.get(resource)
        epoch = (lease["epoch"] if lease else 0) + delta
        before, r = self.apply("renew", resource, node, epoch)
        old = self.lease_of(before, resource)
        rightful = old is not None and old["holder"] == node and old["epoch"] == epoch
        assert r["ok"] == rightful
        if rightful:
            assert self.state.leases[resource]["seq"] == old["seq"] + 1
            assert self.state.holder(resource) == node

    @rule(resource=resources, node=who, delta=epoch_delta)
    def release(self, resource, node, delta):
        node = self.resolve(resource, node)
        lease = self.state.leases.get(resource)
        epoch = (lease["epoch"] if lease else 0) + delta
        before, r = self.apply("release", resource, node, epoch)
        old = self.lease_of(before, resource)
        rightful = old is not None and old["holder"] == node and old["epoch"] == epoch
        assert r["ok"] == rightful
        if rightful:
            assert self.state.holder(resource) is None
            assert self.state.leases[resource]["epoch"] == epoch

    @rule(resource=resources, de=epoch_delta, ds=epoch_delta)
    def expire(self, resource, de, ds):
        lease = self.state.leases.get(resource)
        epoch = (lease["epoch"] if lease else 0) + de
        seq = (lease["seq"] if lease else 0) + ds
        before, r = self.apply("expire", resource, epoch, seq)
        old = self.lease_of(before, resource)
        fresh_view = (old is not None and old["holder"] is not None
                      and old["epoch"] == epoch and old["seq"] == seq)
        assert r["ok"] == fresh_view
        if fresh_view:
            assert r["holder"] == old["holder"]
            assert self.state.holder(resource) is None

    @rule(resource=st.sampled_from(["vip", "db"]),
          nodes=st.none() | st.lists(st.sampled_from(sorted(MEMBERS)), max_size=3))
    def set_eligible(self, resource, nodes):
        _, r = self.apply("set_eligible", resource, nodes, 1.5)
        assert r["ok"] == (nodes is None or set(nodes) <= set(self.state.members))

    @rule(name=st.sampled_from(["c", "d"]))
    def remove_member(self, name):
        before, r = self.apply("remove_member", name, "node")
        held = [res for res, l in before["leases"].items()
                if l["holder"] == name and res != liveness_resource(name)]
        if held:
            assert not r["ok"]
        if r["ok"]:
            assert name not in self.state.members
            assert liveness_resource(name) not in self.state.leases
            for l in self.state.leases.values():
                assert l["eligible"] is None or name not in l["eligible"]

    @rule(name=st.sampled_from(["c", "d"]))
    def add_member(self, name):
        address = {**MEMBERS, **SPARE}[name]["address"]
        before, r = self.apply("add_member", name, address, "node")
        assert r["ok"] == (name not in before["members"])

    # -- invariants --
    @invariant()
    def epochs_and_seqs_never_decrease(self):
        for res, lease in self.state.leases.items():
            assert lease["epoch"] >= self.max_epoch.get(res, 0)
            assert lease["seq"] >= self.max_seq.get(res, 0)
            assert lease["seq"] >= lease["epoch"]
            self.max_epoch[res] = lease["epoch"]
            self.max_seq[res] = lease["seq"]

    @invariant()
    def holders_are_members_and_liveness_is_own(self):
        for res, lease in self.state.leases.items():
            h = lease["holder"]
            assert h is None or h in self.state.members
            if res.startswith(LIVENESS_PREFIX):
                assert h in (None, res[len(LIVENESS_PREFIX):])

    @invariant()
    def plain_and_round_trips(self):
        d = self.state.to_dict()
        check_plain(d, "state")
        assert ClusterState.from_dict(d).to_dict() == d
        d["members"].clear()  # to_dict is a copy, not a view
        assert self.state.members

    def teardown(self) -> None:
        # determinism: the same log applied to two fresh states gives the same state
        replicas = [ClusterState(), ClusterState()]
        for rep in replicas:
            for op, args in self.ops:
                getattr(rep, op)(*copy.deepcopy(args))
        assert replicas[0].to_dict() == replicas[1].to_dict() == self.state.to_dict()


ClusterStateMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                                 deadline=None)
TestClusterState = ClusterStateMachine.TestCase
