"""hacluster.node.event_hooks: hooks.json, when events fire (pure), and running hooks
(real processes, a real HTTP server on loopback)."""
from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
from pathlib import Path

import pytest

from hacluster.node.event_hooks import (EVENTS, ClusterEvent, EventTracker, Hook,
                                        HookConfigError, HookRunner, environment, load_hooks,
                                        module_events, parse_hooks, quorum_event,
                                        refused_event)


def test_hooks_file_is_parsed_and_a_missing_one_means_none(tmp_path):
    assert load_hooks(tmp_path) == []
    (tmp_path / "hooks.json").write_text(json.dumps({"hooks": [
        {"on": ["member_lost", "quorum_lost"], "command": ["/bin/true", "x"]},
        {"on": ["*"], "url": "http://127.0.0.1:9/h", "timeout_s": 2}]}))
    first, second = load_hooks(tmp_path)
    assert first.command == ("/bin/true", "x") and first.wants("member_lost")
    assert not first.wants("member_back")
    assert second.url == "http://127.0.0.1:9/h" and second.timeout_s == 2.0
    assert all(second.wants(e) for e in EVENTS)


@pytest.mark.parametrize("text, error", [
    ("{", "hooks.json:1:2: invalid JSON"),
    ('{"hook": []}', 'expected {"hooks": [...]}'),
    ('{"hooks": [], "x": 1}', "unknown field(s) x"),
    ('{"hooks": [{"on": [], "command": ["/bin/true"]}]}', "hooks[0]: 'on' must be a non-empty list"),
    ('{"hooks": [{"on": ["member_lsot"], "command": ["/bin/true"]}]}', "unknown event 'member_lsot'"),
    ('{"hooks": [{"on": ["*"]}]}', "exactly one of 'command' and 'url'"),
    ('{"hooks": [{"on": ["*"], "command": ["/bin/true"], "url": "http://x"}]}', "exactly one"),
    ('{"hooks": [{"on": ["*"], "command": "notify.sh"}]}', "absolute program path"),
    ('{"hooks": [{"on": ["*"], "command": ["notify.sh"]}]}', "absolute program path"),
    ('{"hooks": [{"on": ["*"], "url": "ftp://x"}]}', "http:// or https://"),
    ('{"hooks": [{"on": ["*"], "url": "http://x", "timeout_s": 0}]}', "timeout_s"),
    ('{"hooks": [{"on": ["*"], "url": "http://x", "retries": 3}]}', "hooks[0]: unknown field(s) retries"),
])
def test_a_bad_hooks_file_is_one_line_naming_file_and_hook(text, error):
    with pytest.raises(HookConfigError) as e:
        parse_hooks(text, "/etc/hacluster/hooks.json")
    assert error in str(e.value) and str(e.value).startswith("/etc/hacluster/hooks.json")
    assert "\n" not in str(e.value)


def test_tracker_member_lost_then_back_and_expiries():
    t = EventTracker()
    ok = {"ok": True}
    assert t.applied("acquire", ("node/n2", "n2", 1.5), {**ok, "epoch": 1}) == []   # first start
    kinds = [e.kind for e in t.applied("expire", ("node/n2", 1, 5), {**ok, "holder": "n2",
                                                                       "epoch": 1})]
    assert kinds == ["lease_expired", "member_lost"]
    [back] = t.applied("acquire", ("node/n2", "n2", 1.5), {**ok, "epoch": 2})
    assert (back.kind, back.fields) == ("member_back", {"member": "n2"})
    assert t.applied("acquire", ("node/n2", "n2", 1.5), {**ok, "epoch": 3}) == []   # restart only
    assert t.applied("expire", ("node/n2", 3, 9), {"ok": False, "error": "x"}) == []


def test_tracker_primary_changed_only_when_another_node_gets_the_lease():
    t = EventTracker()
    ok = {"ok": True}
    assert t.applied("acquire", ("mirror/db", "n1", 1.5), {**ok, "epoch": 1}) == []
    assert t.applied("acquire", ("mirror/db", "n1", 1.5), {**ok, "epoch": 2}) == []  # same node
    [changed] = t.applied("acquire", ("mirror/db", "n2", 1.5, True),
                          {**ok, "epoch": 3, "forced": True})
    assert changed == ClusterEvent("primary_changed", {"module": "db", "previous": "n1",
                                                       "primary": "n2", "epoch": 3,
                                                       "forced": True})
    assert t.applied("renew", ("mirror/db", "n2", 3), ok) == []


def test_quorum_events_on_changes_only():
    assert quorum_event(None, False) is None
    assert quorum_event(True, True) is None
    assert quorum_event(True, False) == ClusterEvent("quorum_lost")
    assert quorum_event(False, True) == ClusterEvent("quorum_back")


def test_failover_done_when_a_mirror_module_serves_in_a_newer_epoch():
    sec = {"mode": "mirror", "state": "SECOND", "epoch": 4}
    assert module_events({}, {"db": {**sec, "state": "PRIM"}}, "n2") == []        # first look
    [done] = module_events({"db": sec}, {"db": {**sec, "state": "ALONE", "epoch": 5}}, "n2")
    assert done == ClusterEvent("failover_done", {"module": "db", "primary": "n2", "epoch": 5})
    prim = {"mode": "mirror", "state": "PRIM", "epoch": 5}
    assert module_events({"db": prim}, {"db": {**prim, "state": "ALONE"}}, "n2") == []
    farm = {"mode": "farm", "state": "UP", "epoch": None}
    assert module_events({"web": {**farm, "state": "STOP"}}, {"web": farm}, "n2") == []


def test_peer_refused_lines_become_events():
    e = refused_event('event=peer_refused peer=10.0.0.9:4242 direction=incoming reason="wrong '
                      'or missing cluster secret: connection closed"')
    assert e == ClusterEvent("peer_refused", {"peer": "10.0.0.9:4242", "direction": "incoming",
                                              "reason": "wrong or missing cluster secret: "
                                                        "connection closed"})
    assert refused_event("event=raft_role role=leader") is None


def test_environment_names_the_event_and_its_fields():
    env = environment(ClusterEvent("member_lost", {"member": "n2", "Bad-Key": "x", "none": None}),
                      "n1")
    assert env == {"HACLUSTER_EVENT": "member_lost", "HACLUSTER_NODE": "n1",
                   "HACLUSTER_MEMBER": "n2"}


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "hook.py"
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


def test_a_command_hook_gets_the_event_on_stdin_and_in_its_environment(tmp_path):
    out = tmp_path / "got.json"
    prog = _script(tmp_path, "import json,os,sys\n"
                   f"open({str(out)!r},'w').write(json.dumps([json.load(sys.stdin), "
                   "os.environ['HACLUSTER_EVENT'], os.environ['HACLUSTER_MEMBER']]))\n")
    runner = HookRunner([Hook(frozenset({"member_lost"}), command=(prog,))], "n1")
    ok = asyncio.run(runner.run_one(runner.hooks[0], ClusterEvent("member_lost", {"member": "n3"})))
    assert ok
    assert json.loads(out.read_text()) == [{"event": "member_lost", "node": "n1", "member": "n3"},
                                           "member_lost", "n3"]


def test_a_failing_or_hanging_hook_is_reported_and_killed(tmp_path, caplog):
    failing = _script(tmp_path, "import sys\nprint('no pager'); sys.exit(3)\n")
    runner = HookRunner([Hook(frozenset({"*"}), command=(failing,))], "n1")
    assert not asyncio.run(runner.run_one(runner.hooks[0], ClusterEvent("quorum_lost")))
    assert "exit status 3: no pager" in caplog.text
    hanging = Hook(frozenset({"*"}), command=("/bin/sleep", "30"), timeout_s=0.2)
    assert not asyncio.run(HookRunner([hanging], "n1").run_one(hanging, ClusterEvent("quorum_lost")))
    assert "killed after 0.2 s" in caplog.text


def test_a_webhook_gets_a_json_post(tmp_path):
    got: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.append((self.headers["Content-Type"],
                        json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/alert"
        hook = Hook(frozenset({"*"}), url=url, timeout_s=5)
        assert asyncio.run(HookRunner([hook], "n2").run_one(hook, ClusterEvent(
            "primary_changed", {"module": "db", "primary": "n2"})))
        bad = Hook(frozenset({"*"}), url=f"http://127.0.0.1:{server.server_address[1] + 1}/x",
                   timeout_s=2)
        assert not asyncio.run(HookRunner([bad], "n2").run_one(bad, ClusterEvent("quorum_lost")))
    finally:
        server.shutdown()
    assert got == [("application/json", {"event": "primary_changed", "node": "n2",
                                         "module": "db", "primary": "n2"})]


def test_the_queue_is_bounded_and_runs_in_order(tmp_path, monkeypatch):
    import hacluster.node.event_hooks as hooks_module
    monkeypatch.setattr(hooks_module, "QUEUE_MAX", 8)
    out = tmp_path / "order"
    prog = _script(tmp_path, "import json,sys\n"
                   f"open({str(out)!r},'a').write(json.load(sys.stdin)['member']+'\\n')\n")

    async def go():
        runner = HookRunner([Hook(frozenset({"member_lost"}), command=(prog,))], "n1")
        runner.start()
        for i in range(20):
            runner.fire(ClusterEvent("member_lost", {"member": f"m{i}"}))
        runner.fire(ClusterEvent("quorum_lost"))      # no hook wants it: not queued
        for _ in range(3000):
            if out.exists() and len(out.read_text().split()) == 8:
                break
            await asyncio.sleep(0.01)
        await runner.close()
        return runner.dropped
    dropped = asyncio.run(go())
    assert dropped == 20 - 8
    assert out.read_text().split() == [f"m{i}" for i in range(12, 20)]
