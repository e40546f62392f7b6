"""hacluster/node/api_backend.py: the daemon's answers to the API, with its forward and
commit replaced by recorders (the real ones run in the lab): one module's state per
node out of every node's module list, the requests it forwards, a refused commit."""
import asyncio
from pathlib import Path

import pytest

from hacluster.http.api_backend import BackendError
from hacluster.http.sessions import session_key
from hacluster.node.api_backend import DaemonApi
from hacluster.node.control import NO_QUORUM, ControlError
from raft import commands as raft_commands
from tests.unit.http_snapshots import node

STATE = {"members": {}, "leases": {}, "modules": {
    "db": {"mode": "mirror", "failover": True}, "web": {"mode": "farm", "failover": False}},
    "users": {"ann": {"role": "admin", "hash": "h"}}}


def make(forwarded, committed, commit_answer=None):
    async def forward(request):
        forwarded.append(request)
        if request["request"]["cmd"] == "module_state":
            return [{"node": "n1", "ok": True, "result": [{"module": "db", "state": "PRIM"}]},
                    {"node": "n2", "ok": False, "error": "n2: unreachable"}]
        return [{"node": "n1", "ok": True, "result": {"lines": ["a", "b"]}}]

    async def commit(command, *args):
        committed.append((command.name, args))
        if isinstance(commit_answer, Exception):
            raise commit_answer
        return commit_answer or {"ok": True, "name": args[0], "created": True}
    return DaemonApi(lambda: node([]), "s3cret", lambda: STATE, lambda: {"cluster": "c"},
                     forward, commit)


def test_modules_gather_every_nodes_state():
    forwarded, committed = [], []
    api = make(forwarded, committed)
    modules = asyncio.run(api.api_modules())
    assert [m["name"] for m in modules] == ["db", "web"]
    assert modules[0]["nodes"] == [
        {"node": "n1", "ok": True, "result": {"module": "db", "state": "PRIM"}},
        {"node": "n2", "ok": False, "error": "n2: unreachable"}]
    assert modules[1]["nodes"][0]["result"]["state"] == "NOT RUNNING"
    # a node that does not answer in 5 s is shown as not answering, not waited for
    assert forwarded == [{"hosts": "all", "request": {"cmd": "module_state"}, "timeout_s": 5.0}]
    assert api.api_session_key() == session_key("s3cret") and api.api_users() == STATE["users"]


def test_commands_and_logs_are_forwarded_as_the_cli_sends_them():
    forwarded, committed = [], []
    api = make(forwarded, committed)
    asyncio.run(api.api_module_command("db", "second_force", ["n2"]))
    assert asyncio.run(api.api_module_log("db", "n1", "script", 5))["lines"] == ["a", "b"]
    assert forwarded == [
        {"hosts": ["n2"], "request": {"cmd": "module_cmd", "module": "db", "cmd_name": "second_force"}},
        {"hosts": ["n1"], "request": {"cmd": "module_log", "module": "db", "kind": "script",
                                      "lines": 5}}]
    with pytest.raises(BackendError) as e:
        asyncio.run(api.api_module_command("nope", "start", None))
    assert e.value.status == 404
    with pytest.raises(BackendError):
        asyncio.run(api.api_module_command("db", "rm_rf", None))


def test_users_are_committed_and_a_refusal_or_no_quorum_is_an_error():
    committed = []
    asyncio.run(make([], committed).api_set_user("bob", "monitor", "hash"))
    assert committed == [(raft_commands.SET_USER.name, ("bob", "monitor", "hash"))]
    with pytest.raises(BackendError, match="no user") as e:
        asyncio.run(make([], [], {"ok": False, "error": "no user 'x'"}).api_remove_user("x"))
    assert e.value.status == 409
    with pytest.raises(BackendError) as e:
        asyncio.run(make([], [], ControlError("not committed", NO_QUORUM)).api_remove_user("x"))
    assert e.value.status == 503


def test_an_upload_is_installed_through_the_clis_control_request_and_then_removed(tmp_path):
    sent = []

    async def local(request):
        sent.append(dict(request))
        if "package" in request:
            assert Path(request["package"]).read_bytes() == b"PK-bytes"
            assert Path(request["package"]).stat().st_mode & 0o077 == 0     # private
        if request.get("name") == "refused":
            return {"ok": False, "error": "module refused is started; stop it"}
        return {"ok": True, "result": {"module": request.get("name"), "ok": True,
                                       "userconfig": "<safe/>"}}

    api = DaemonApi(lambda: node([]), "s3cret", lambda: STATE, lambda: {"members": [
        {"name": "n1", "role": "node", "address": "10.0.0.1:7400"}]},
        None, None, local=local, upload_dir=tmp_path / "uploads",
        api_url=lambda m: "https://" + m["address"].split(":")[0] + ":7405")
    assert asyncio.run(api.api_install("web", b"PK-bytes", None, True))["ok"]
    assert sent[0]["cmd"] == "module_install" and sent[0]["check_only"] is True
    assert sent[0]["source"] == "web.safe"
    with pytest.raises(BackendError) as e:
        asyncio.run(api.api_install("refused", b"PK-bytes", None, False))
    assert e.value.status == 400 and "stop it" in str(e.value)
    assert list((tmp_path / "uploads").iterdir()) == []            # nothing left behind
    asyncio.run(api.api_install("db", None, "<safe/>", False))
    assert sent[-1] == {"cmd": "module_install", "name": "db", "check_only": False,
                        "userconfig": "<safe/>"}
    asyncio.run(api.api_userconfig("db"))
    assert sent[-1] == {"cmd": "module_userconfig", "module": "db"}
    with pytest.raises(BackendError):
        asyncio.run(api.api_uninstall("nope"))
    members = asyncio.run(api.api_cluster())["members"]
    assert members[0]["api"] == "https://10.0.0.1:7405"
