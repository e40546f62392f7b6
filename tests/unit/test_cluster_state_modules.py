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


# ---- copy identities (DESIGN rule 6) ------------------------------------------------------
CA, CB, CC = "a1" * 16, "b2" * 16, "c3" * 16


def _primary(s: ClusterState, node: str, copy_id: str) -> int:
    epoch = s.acquire(RES, node, 1.5)["epoch"]
    assert s.begin_generation(RES, node, epoch, copy_id)["ok"]
    return epoch


def test_every_primary_session_starts_a_generation_and_keeps_history():
    s = _state()
    s.name_good_copy(RES, "a")
    e1 = _primary(s, "a", CA)
    ident = s.modules["app"]["identity"]
    assert ident == {"generation": e1, "history": [], "copies": {"a": {"copy": CA, "generation": e1}}}
    assert s.set_in_sync(RES, "a", e1, ["a", "b"], {"b": CB})["ok"]
    assert ident["copies"]["b"] == {"copy": CB, "generation": e1}
    # the holder restarts: a new epoch and a new generation, never the same one
    e2 = _primary(s, "a", CA)
    assert e2 == e1 + 1 and ident["generation"] == e2 and ident["history"] == [e1]
    assert s.leases[RES]["eligible"] == ["a"]
    # b left the in-sync set but keeps its last entry: what its copy was
    assert ident["copies"]["b"] == {"copy": CB, "generation": e1}


def test_begin_generation_is_fenced_and_idempotent():
    s = _state()
    s.name_good_copy(RES, "a")
    e1 = _primary(s, "a", CA)
    assert not s.begin_generation(RES, "b", e1, CB)["ok"], "not the holder"
    assert not s.begin_generation(RES, "a", e1 + 1, CA)["ok"], "not its epoch"
    assert not s.begin_generation(RES, "a", e1, "not-a-copy-id")["ok"]
    assert s.begin_generation(RES, "a", e1, CA)["ok"], "a retry of the same session"
    assert s.modules["app"]["identity"]["history"] == []


def test_empty_in_sync_set_means_anyone_only_before_the_first_generation():
    """Was: ``second`` on the only in-sync node emptied the set, and ``prim`` then
    took any node's copy without primforce."""
    s = _state()
    s.name_good_copy(RES, "a")
    e1 = _primary(s, "a", CA)
    s.release(RES, "a", e1)
    r = s.leave_in_sync(RES, "a")
    assert not r["ok"] and "only current copy" in r["error"] and "--force" in r["error"]
    assert s.leases[RES]["eligible"] == ["a"]
    assert s.leave_in_sync(RES, "a", True)["ok"] and s.leases[RES]["eligible"] == []
    r = s.name_good_copy(RES, "b")
    assert not r["ok"] and "primforce" in r["error"]
    r = s.name_good_copy(RES, "b", True)
    assert r["ok"] and r["forced"]


def test_second_on_one_of_two_in_sync_nodes_is_allowed():
    s = _state()
    s.name_good_copy(RES, "a")
    e1 = _primary(s, "a", CA)
    s.set_in_sync(RES, "a", e1, ["a", "b"], {"b": CB})
    assert s.leave_in_sync(RES, "b")["ok"] and s.leases[RES]["eligible"] == ["a"]


def test_copies_only_for_nodes_of_the_new_set_and_removed_members_forgotten():
    s = _state()
    s.name_good_copy(RES, "a")
    e1 = _primary(s, "a", CA)
    assert not s.set_in_sync(RES, "a", e1, ["a"], {"b": CB})["ok"]
    assert not s.set_in_sync(RES, "a", e1, ["a", "b"], {"b": "x"})["ok"]
    assert s.set_in_sync(RES, "a", e1, ["a", "b"], {"b": CB})["ok"]
    assert s.set_in_sync(RES, "a", e1, ["a"])["ok"]
    s.add_member("c", "10.0.0.4:7400", "node")
    for n in ("a", "b", "w"):       # a live majority remains after the removal
        s.acquire(f"node/{n}", n, 1.5)
    s.set_in_sync(RES, "a", e1, ["a", "c"], {"c": CC})
    s.set_in_sync(RES, "a", e1, ["a"])
    assert s.remove_member("c", "node")["ok"]
    assert "c" not in s.modules["app"]["identity"]["copies"]


def test_identity_survives_a_snapshot_round_trip():
    s = _state()
    s.name_good_copy(RES, "a")
    _primary(s, "a", CA)
    again = ClusterState.from_dict(s.to_dict())
    assert again.modules["app"]["identity"] == s.modules["app"]["identity"]
