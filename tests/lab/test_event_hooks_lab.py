"""Cluster event hooks with real daemons: a member killed and restarted fires
member_lost and member_back once in the whole cluster (on the Raft leader), a member
cut off sees its quorum go and come back, and a broken hooks.json is said and does not
stop a daemon."""
from __future__ import annotations

import json
import sys
import time

import pytest

from chaos.lab import wait_until
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def _hook_script(cluster) -> str:
    """A hook that appends the event it got (stdin) to events.jsonl in the lab's workdir."""
    out = cluster.lab.workdir / "events.jsonl"
    prog = cluster.lab.workdir / "hook.py"
    prog.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"e = json.load(sys.stdin)\nopen({str(out)!r}, 'a').write(json.dumps(e) + '\\n')\n")
    prog.chmod(0o755)
    return str(prog)


def _fired(cluster, kind: str, **fields) -> list[dict]:
    path = cluster.lab.workdir / "events.jsonl"
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]


def test_member_lost_and_back_fire_once_and_quorum_is_seen_locally(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    prog = _hook_script(cluster)
    for m in cluster.members:
        (cluster.config_dir(m) / "hooks.json").write_text(json.dumps({"hooks": [
            {"on": ["member_lost", "member_back", "quorum_lost", "quorum_back"],
             "command": [prog]}]}))
    cluster.start_all()
    cluster.wait_leader()
    def all_live() -> bool:
        rows = (cluster.status("n1") or {}).get("members", [])
        return len(rows) == 3 and all(r["live"] for r in rows)   # (empty before the bootstrap)
    cluster.wait_for("all live", all_live)
    for m in cluster.members:
        assert cluster.events(m, "hooks_loaded"), f"{m} did not load its hooks"

    victim = next(m for m in ("n2", "n1") if m != cluster.leader())
    cluster.kill(victim)
    [lost] = wait_until(f"member_lost {victim} fired", lambda: _fired(
        cluster, "member_lost", member=victim), 20)
    assert lost["node"] == cluster.leader()
    cluster.start(victim)
    wait_until(f"member_back {victim} fired", lambda: _fired(cluster, "member_back",
                                                             member=victim), 20)
    time.sleep(1.0)       # a second firing (another member, a replay) would show by now
    assert len(_fired(cluster, "member_lost", member=victim)) == 1
    assert len(_fired(cluster, "member_back", member=victim)) == 1
    assert not _fired(cluster, "member_lost", member=cluster.leader())

    # the witness cut off: it sees its quorum go, then come back; the others keep theirs
    cluster.lab.cut("w")
    wait_until("quorum_lost on w", lambda: _fired(cluster, "quorum_lost", node="w"), 20)
    cluster.lab.heal("w")
    wait_until("quorum_back on w", lambda: _fired(cluster, "quorum_back", node="w"), 20)
    assert not [e for e in _fired(cluster, "quorum_lost") if e["node"] != "w"]


def test_a_broken_hooks_file_is_said_and_the_daemon_serves(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    (cluster.config_dir("n1") / "hooks.json").write_text('{"hooks": [{"on": ["membr_lost"], '
                                                         '"command": ["/bin/true"]}]}')
    cluster.start_all()
    cluster.wait_leader()
    [e] = wait_until("hooks_unusable logged", lambda: cluster.events("n1", "hooks_unusable"), 20)
    assert "hooks.json: hooks[0]: unknown event 'membr_lost'" in e["error"]
    cluster.wait_for("n1 live", lambda: any(
        r["name"] == "n1" and r["live"] for r in (cluster.status("n2") or {"members": []})["members"]))
