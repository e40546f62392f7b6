"""Modules and in-sync sets in the replicated cluster state (pure)."""
from raft.cluster_state import ClusterState, mirror_resource

DIGEST = "ab" * 32
RES = mirror_resource("app")


def _state() -> ClusterState:
    s = ClusterState()
    assert s.bootstrap({"a": {"address": "10.0.0.1:7400", "role": "node"},
                        "b": {"address": "10.0.0.2:7400", "role": "node"},
                        "w": {"address": "10.0.0.3:7400", "role": "witness"}})["ok"]
    assert s.install_module("app", DIGEST, "mirror", 100, "a", 1.5)["ok"]
    return s


def test_new_mirror_module_has_nobody_in_sync():
    s = _state()
    assert s.leases[RES]["eligible"] == []
    assert not s.acquire(RES, "a", 1.5)["ok"]


def test_prim_names_the_good_copy_then_only_that_node_can_acquire():
    s = _state()
    assert s.name_good_copy(RES, "a")["ok"]
    assert not s.acquire(RES, "b", 1.5)["ok"]
    assert s.acquire(RES, "a", 1.5)["epoch"] == 1


def test_prim_refuses_a_stale_copy_and_primforce_overrides():
    s = _state()
    s.name_good_copy(RES, "a")
    r = s.name_good_copy(RES, "b")
    assert not r["ok"] and "not current" in r["error"] and "primforce" in r["error"]
    r = s.name_good_copy(RES, "b", True)
    assert r["ok"] and r["forced"] and s.leases[RES]["eligible"] == ["b"]


def test_in_sync_changes_are_fenced_by_holder_and_epoch():
    s = _state()
    s.name_good_copy(RES, "a")
    epoch = s.acquire(RES, "a", 1.5)["epoch"]
    assert s.set_in_sync(RES, "a", epoch, ["a", "b"])["ok"]
    # a deposed primary (old epoch) cannot shrink the set
    assert s.expire(RES, epoch, s.leases[RES]["seq"])["ok"]
    assert s.acquire(RES, "b", 1.5)["ok"]
    r = s.set_in_sync(RES, "a", epoch, ["a"])
    assert not r["ok"] and "not the primary" in r["error"]
    assert s.leases[RES]["eligible"] == ["a", "b"]
    assert not s.set_in_sync(RES, "b", epoch + 1, ["a"])["ok"], "the primary must stay in its set"


def test_uninstall_refused_while_started_or_primary():
    s = _state()
    s.set_intent("app", "a", "start")
    assert "started on a" in s.uninstall_module("app")["error"]
    s.set_intent("app", "a", "stop")
    s.name_good_copy(RES, "a")
    s.acquire(RES, "a", 1.5)
    assert "primary on a" in s.uninstall_module("app")["error"]
    s.release(RES, "a", 1)
    assert s.uninstall_module("app")["ok"] and RES not in s.leases


def test_intent_only_for_data_nodes_and_upgrade_refused_while_started():
    s = _state()
    assert not s.set_intent("app", "w", "start")["ok"]
    assert not s.set_intent("app", "zz", "start")["ok"]
    s.set_intent("app", "b", "start")
    r = s.install_module("app", "cd" * 32, "mirror", 100, "a", 1.5)
    assert not r["ok"] and "stop it everywhere" in r["error"]
    assert s.install_module("app", DIGEST, "mirror", 100, "b", 1.5)["ok"], "same version again is fine"


def test_bad_arguments_are_refused():
    s = _state()
    assert not s.install_module("../x", DIGEST, "mirror", 1, "a", 1.5)["ok"]
    assert not s.install_module("x", "nothex", "mirror", 1, "a", 1.5)["ok"]
    assert not s.install_module("x", DIGEST, "cluster", 1, "a", 1.5)["ok"]
    assert not s.set_failover("app", "yes")["ok"]
    assert s.set_failover("app", False)["ok"] and not s.modules["app"]["failover"]
    assert not s.leave_in_sync("nope", "a")["ok"]


def test_round_trip_keeps_modules():
    s = _state()
    assert ClusterState.from_dict(s.to_dict()).to_dict() == s.to_dict()
