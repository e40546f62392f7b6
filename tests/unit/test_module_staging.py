"""raft.cluster_state: a new version of a running module is staged, each node changes to
it at its own next stop, and once every node with an intent runs it, it is the module's
version (issue 21 item 7, rolling upgrades)."""
import copy

from raft.cluster_state import ClusterState

MEMBERS = {"a": {"address": "10.0.0.1:7400", "role": "node"},
           "b": {"address": "10.0.0.2:7400", "role": "node"},
           "w": {"address": "10.0.0.9:7400", "role": "witness"}}
V1, V2, V3 = "1" * 64, "2" * 64, "3" * 64


def _running(level: int = 1) -> ClusterState:
    s = ClusterState()
    s.bootstrap(copy.deepcopy(MEMBERS))
    if level:
        s.raise_feature_level(level)
    assert s.install_module("m", V1, "mirror", 10, "a", 1.2, 1)["ok"]
    for n in ("a", "b"):
        s.set_intent("m", n, "start")
    return s


def test_another_version_of_a_running_module_is_staged_not_installed():
    s = _running()
    assert not s.install_module("m", V2, "mirror", 20, "a", 1.2, 1)["ok"]
    assert s.stage_module("m", V2, "mirror", 20, "a") == {"ok": True, "name": "m", "staged": V2}
    assert s.modules["m"]["digest"] == V1
    assert s.modules["m"]["staged"] == {"digest": V2, "size": 20, "source": "a"}


def test_the_version_changes_once_every_node_runs_it():
    s = _running()
    s.stage_module("m", V2, "mirror", 20, "b")
    first = s.apply_staged("m", "b", V2)
    assert first["ok"] and not first["promoted"]
    assert s.modules["m"]["digest"] == V1 and s.modules["m"]["running"] == {"b": V2}
    assert s.apply_staged("m", "a", V2)["promoted"]
    entry = s.modules["m"]
    assert entry["digest"] == V2 and entry["size"] == 20 and entry["source"] == "b"
    assert "staged" not in entry and "running" not in entry


def test_restaging_the_running_version_withdraws_and_wrong_input_changes_nothing():
    s = _running()
    s.stage_module("m", V2, "mirror", 20, "a")
    for op, args in (("stage_module", ("m", V3, "farm", 20, "a")),
                     ("stage_module", ("m", V3, "mirror", 0, "a")),
                     ("stage_module", ("m", V3, "mirror", 20, "w")),
                     ("stage_module", ("nope", V3, "mirror", 20, "a")),
                     ("apply_staged", ("m", "a", V3)),
                     ("apply_staged", ("m", "w", V2))):
        before = s.to_dict()
        assert not getattr(s, op)(*args)["ok"], (op, args)
        assert s.to_dict() == before
    assert s.stage_module("m", V1, "mirror", 10, "a")["staged"] is None
    assert "staged" not in s.modules["m"]


def test_staging_needs_the_feature_level():
    s = _running(level=0)
    assert "feature level 1" in s.stage_module("m", V2, "mirror", 20, "a")["error"]
