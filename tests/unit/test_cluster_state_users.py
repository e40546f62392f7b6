"""raft/cluster_state.py's user table (set_user, remove_user) and raft/user_table.py:
validated, deterministic, hashes only, absent from a dump while empty."""
import copy

from raft.cluster_state import ClusterState

HASH = "scrypt$15$8$1$" + "A" * 22 + "$" + "B" * 43
HASH2 = "scrypt$15$8$1$" + "C" * 22 + "$" + "D" * 43


def test_users_are_added_changed_and_removed():
    s = ClusterState()
    assert "users" not in s.to_dict()
    assert s.set_user("ann", "admin", HASH) == {"ok": True, "name": "ann", "role": "admin",
                                                "created": True}
    assert s.set_user("ann", "monitor", None)["created"] is False
    assert s.users == {"ann": {"role": "monitor", "hash": HASH}}     # the hash kept
    s.set_user("ann", "monitor", HASH2)
    assert s.users["ann"]["hash"] == HASH2
    restored = ClusterState.from_dict(copy.deepcopy(s.to_dict()))
    assert restored.users == s.users
    assert s.remove_user("ann") == {"ok": True, "name": "ann"}
    assert "users" not in s.to_dict()


def test_bad_users_are_refused_and_change_nothing():
    s = ClusterState()
    s.set_user("ann", "admin", HASH)
    before = copy.deepcopy(s.to_dict())
    for args, why in [(("9ann", "admin", HASH), "user name"), (("bob", "root", HASH), "role"),
                      (("bob", "admin", "hunter2"), "password hash"),
                      (("bob", "admin", None), "needs a password"),
                      ((["x"], "admin", HASH), "user name")]:
        result = s.set_user(*args)
        assert result["ok"] is False and why in result["error"], (args, result)
    assert s.remove_user("nobody")["ok"] is False
    assert s.to_dict() == before
