"""Farm membership and bucket tables in the replicated cluster state: the pure
ops, and one real three-member pysyncobj cluster agreeing on the table."""
from __future__ import annotations

import logging
import threading

import pytest

from chaos.lab import wait_until
from raft.bucket_allocator import BUCKETS, allocate, shares
from raft.cluster_state import ClusterState, liveness_resource
from raft.member import RaftCommandError
from tests.conftest import free_ports

log = logging.getLogger("hacluster.tests.farm")

DIGEST = "ab" * 32
LEASE_S = 1.5


def _state(live=("a", "b", "c")) -> ClusterState:
    s = ClusterState()
    assert s.bootstrap({"a": {"address": "10.0.0.1:7400", "role": "node"},
                        "b": {"address": "10.0.0.2:7400", "role": "node"},
                        "c": {"address": "10.0.0.3:7400", "role": "node"},
                        "w": {"address": "10.0.0.4:7400", "role": "witness"}})["ok"]
    assert s.install_module("web", DIGEST, "farm", 100, "a", LEASE_S)["ok"]
    assert s.install_module("db", DIGEST, "mirror", 100, "a", LEASE_S)["ok"]
    for n in live:
        assert s.acquire(liveness_resource(n), n, LEASE_S)["ok"]
    return s


def _expire_liveness(s: ClusterState, node: str) -> dict:
    lease = s.leases[liveness_resource(node)]
    return s.expire(liveness_resource(node), lease["epoch"], lease["seq"])


def test_a_new_farm_module_is_empty_and_a_mirror_has_no_farm():
    s = _state()
    assert s.farm_table("web") == (0, [None] * BUCKETS, {})
    with pytest.raises(KeyError, match="no farm module 'db'"):
        s.farm_table("db")


def test_joins_share_the_buckets_by_power_and_bump_the_version():
    s = _state()
    r = s.farm_join("web", "a", 1)
    assert r["ok"] and r["changed"] and r["version"] == 1
    assert s.farm_table("web")[1] == ["a"] * BUCKETS
    r = s.farm_join("web", "b", 3)
    version, table, members = s.farm_table("web")
    assert r["version"] == version == 2 and members == {"a": 1, "b": 3}
    assert shares(table) == {"a": 64, "b": 192}
    assert table == allocate(allocate(None, {"a": 1}), {"a": 1, "b": 3})


def test_rejoin_with_the_same_power_is_a_no_op_and_a_new_power_rebalances():
    s = _state()
    s.farm_join("web", "a", 1)
    s.farm_join("web", "b", 1)
    r = s.farm_join("web", "b", 1)
    assert r["ok"] and not r["changed"] and r["version"] == 2
    r = s.farm_join("web", "b", 3)
    assert r["ok"] and r["changed"] and r["version"] == 3
    assert shares(s.farm_table("web")[1]) == {"a": 64, "b": 192}


def test_leave_moves_only_the_leavers_buckets_and_is_idempotent():
    s = _state()
    for n in ("a", "b", "c"):
        s.farm_join("web", n, 1)
    _, before, _ = s.farm_table("web")
    r = s.farm_leave("web", "b")
    assert r["ok"] and r["changed"] and r["version"] == 4
    version, after, members = s.farm_table("web")
    assert members == {"a": 1, "c": 1} and set(after) == {"a", "c"}
    assert all(x == y for x, y in zip(before, after) if x != "b")
    r = s.farm_leave("web", "b")
    assert r["ok"] and not r["changed"] and s.farm_table("web")[0] == version


def test_an_expired_liveness_lease_takes_its_node_out_of_every_farm_in_the_same_op():
    s = _state()
    assert s.install_module("api", DIGEST, "farm", 100, "a", LEASE_S)["ok"]
    for farm in ("web", "api"):
        s.farm_join(farm, "a", 1)
        s.farm_join(farm, "b", 1)
    r = _expire_liveness(s, "b")
    assert r["ok"] and r["holder"] == "b" and r["farms_left"] == ["api", "web"]
    for farm in ("web", "api"):
        version, table, members = s.farm_table(farm)
        assert members == {"a": 1} and table == ["a"] * BUCKETS and version == 3


def test_releasing_the_liveness_lease_leaves_the_farms_but_other_leases_do_not():
    s = _state()
    s.farm_join("web", "a", 1)
    s.farm_join("web", "b", 1)
    assert s.acquire("other", "b", LEASE_S)["ok"]
    assert "farms_left" not in s.release("other", "b", 1)
    assert "b" in s.farm_table("web")[2]
    epoch = s.leases[liveness_resource("b")]["epoch"]
    assert s.release(liveness_resource("b"), "b", epoch)["farms_left"] == ["web"]
    assert s.farm_table("web")[2] == {"a": 1}


def test_a_removed_member_leaves_every_farm():
    s = _state()
    s.farm_join("web", "a", 1)
    s.farm_join("web", "c", 2)
    r = s.remove_member("c", "node")
    assert r["ok"], r
    assert r["farms_left"] == ["web"]
    assert s.farm_table("web")[1] == ["a"] * BUCKETS


def test_uninstalling_a_farm_drops_its_members():
    s = _state()
    s.farm_join("web", "a", 1)
    s.farm_join("web", "b", 1)
    r = s.uninstall_module("web")
    assert r["ok"] and r["farm_members_left"] == ["a", "b"]
    assert s.install_module("web", DIGEST, "farm", 100, "a", LEASE_S)["ok"]
    assert s.farm_table("web") == (0, [None] * BUCKETS, {})


def test_upgrading_a_farm_package_keeps_its_members_and_table():
    s = _state()
    s.farm_join("web", "a", 1)
    before = s.farm_table("web")
    assert s.install_module("web", "cd" * 32, "farm", 100, "b", LEASE_S)["upgraded"]
    assert s.farm_table("web") == before


@pytest.mark.parametrize("args, message", [
    (("nope", "a", 1), "unknown module 'nope'"),
    (("db", "a", 1), "module db is a mirror module, not a farm"),
    (("web", "zz", 1), "unknown member 'zz'"),
    (("web", "w", 1), "w is a witness; only data nodes join farm web"),
    (("web", "a", 0), "invalid farm power 0 for a in farm web (an integer 1..1000)"),
    (("web", "a", 1001), "invalid farm power 1001"),
    (("web", "a", "2"), "invalid farm power '2'"),
    (("web", "a", True), "invalid farm power True"),
    (("web", "c", 1), "c is not live (it does not hold node/c); it cannot join farm web"),
])
def test_bad_joins_are_refused_with_a_clear_message_and_change_nothing(args, message):
    s = _state(live=("a", "b"))
    s.farm_join("web", "b", 1)
    before = s.to_dict()
    r = s.farm_join(*args)
    assert not r["ok"] and message in r["error"], r
    assert s.to_dict() == before


def test_leave_refusals():
    s = _state()
    assert s.farm_leave("nope", "a")["error"] == "unknown module 'nope'"
    assert "not a farm" in s.farm_leave("db", "a")["error"]


def test_round_trip_and_an_old_snapshot_without_a_farm_section():
    s = _state()
    s.farm_join("web", "a", 1)
    assert ClusterState.from_dict(s.to_dict()).to_dict() == s.to_dict()
    old = _state().to_dict()
    del old["modules"]["web"]["farm"]
    restored = ClusterState.from_dict(old)
    assert restored.farm_table("web") == (0, [None] * BUCKETS, {})
    assert restored.farm_join("web", "a", 1)["version"] == 1


# ---- a real cluster ------------------------------------------------------------------


def _call(member, op, *args):
    def attempt():
        try:
            return member.call(op, *args, timeout=2.0)
        except RaftCommandError:
            return None     # no leader yet / leader changed: try again
    return wait_until(f"{op} committed", attempt, timeout=15)


def test_three_real_members_agree_on_the_table_after_two_joins_and_an_expiry(tmp_path):
    from raft.member import RaftMember
    from raft.settings import RaftSettings

    names = ["a", "b", "c"]
    addrs = {n: f"127.0.0.1:{p}" for n, p in zip(names, free_ports(3))}
    settings = RaftSettings()
    members = {n: RaftMember(addrs[n], list(addrs.values()), tmp_path / n, "farm-test-secret-0123456789",
                             settings) for n in names}
    stop = threading.Event()
    try:
        m = members["a"]
        assert _call(m, "bootstrap", {n: {"address": addrs[n], "role": "node"} for n in names})["ok"]
        assert _call(m, "install_module", "web", DIGEST, "farm", 100, "a", LEASE_S)["ok"]
        epochs = {n: _call(members[n], "acquire", liveness_resource(n), n, 0.6)["epoch"] for n in names}

        renewing = set(names)

        def keep_alive(n):
            while not stop.wait(0.1) and n in renewing:
                try:
                    members[n].call("renew", liveness_resource(n), n, epochs[n], timeout=1.0)
                except RaftCommandError:
                    log.info("event=renewal_missed node=%s", n)   # what the lease is for
        threads = [threading.Thread(target=keep_alive, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()

        assert _call(members["a"], "farm_join", "web", "a", 1)["version"] == 1
        joined = _call(members["b"], "farm_join", "web", "b", 3)
        assert joined["ok"] and joined["version"] == 2, joined
        renewing.discard("b")   # b goes silent after joining

        def agreed_without_b():
            tables = [ClusterState.from_dict(mem.snapshot()).farm_table("web")
                      for mem in members.values()]
            same = all(t == tables[0] for t in tables) and tables[0][2] == {"a": 1}
            return tables[0] if same else None

        # The leader sees b's liveness lease run out and commits the expiry: b leaves.
        version, table, _ = wait_until("b's expiry applied on every member", agreed_without_b,
                                       timeout=15)
        assert version == 3 and table == ["a"] * BUCKETS
        assert all(ClusterState.from_dict(mem.snapshot()).holder(liveness_resource("b")) is None
                   for mem in members.values())
    finally:
        stop.set()
        for mem in members.values():
            mem.destroy()


def test_a_node_back_after_its_liveness_expired_gets_its_own_buckets_back():
    s = _state()
    for n in "abc":
        assert s.farm_join("web", n, 1)["ok"]
    before = s.farm_table("web")[1]
    mine = {i for i in range(BUCKETS) if before[i] == "b"}
    assert _expire_liveness(s, "b")["ok"]                  # b's daemon died: it left the farm
    during = s.farm_table("web")[1]
    assert "b" not in during and s.modules["web"]["farm"]["home"].count("b") == len(mine)
    assert s.acquire(liveness_resource("b"), "b", LEASE_S)["ok"]
    assert s.farm_join("web", "b", 1)["ok"]
    after = s.farm_table("web")[1]
    assert {i for i in range(BUCKETS) if after[i] == "b"} == mine
    assert after == before and "home" not in s.modules["web"]["farm"]
    assert ClusterState.from_dict(s.to_dict()).farm_table("web") == s.farm_table("web")
