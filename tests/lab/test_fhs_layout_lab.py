"""The FHS layout with real daemons in the lab, every directory a lab folder of its own
(the lab passes --state-dir, --run-dir, --log-dir as a server's defaults would be
/var/lib/hacluster, /run/hacluster, /var/log/hacluster): the configuration directory
is never written, not even by membership changes (the committed membership goes to
members.json in the state directory, which a restart starts from); a removed member
refuses its old state; a member with the old layout (state under its configuration
directory) is moved by one rename at start, or refused with the command when two
states exist."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hacluster.node import exit_status
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def _snapshot(directory: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every entry under ``directory`` (itself included): its bytes (files), mode and
    mtime in ns: a file written, replaced, created or removed changes it."""
    out = {}
    for path in [directory, *sorted(directory.rglob("*"))]:
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(directory))] = (data, st.st_mode, st.st_mtime_ns)
    return out


def _members_json(cluster, member: str) -> dict:
    return json.loads((cluster.state_dir(member) / "members.json").read_text())


def _last_line(proc) -> str:
    return proc.log_path.read_text(errors="replace").splitlines()[-1]


def test_membership_changes_never_write_the_configuration_directory(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], extra_hosts=["n3"])
    cluster.wait_for("all ready", lambda: all(cluster.events(m, "daemon_ready") for m in cluster.members))
    before = {m: _snapshot(cluster.config_dir(m)) for m in cluster.members}
    for m in cluster.members:
        # Everything in its place: the journal and members.json in the state directory,
        # the socket and the pid file in the runtime directory.
        assert (cluster.state_dir(m) / "raft").is_dir()
        assert _members_json(cluster, m) == {"cluster": "lab", "members": json.loads(
            (cluster.config_dir(m) / "cluster.json").read_text())["members"], "removed": False}
        assert cluster.socket_path(m).is_socket()
        pid_file = cluster.run_dir(m) / f"hacluster-{cluster.role(m)}.pid"
        assert int(pid_file.read_text()) == cluster.procs[m].pid

    out = cluster.lab.workdir / "added"
    res = cluster.hacluster("n1", "cluster", "add-node", "n3", cluster.lab.addr("n3"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    cluster.nodes.append("n3")
    cluster.start("n3", config_dir=out / "n3")
    cluster.wait_for("n3 live", lambda: any(
        r["name"] == "n3" and r["live"] for r in cluster.status("n1")["members"]), timeout=20)
    for m in ("n1", "n2", "w"):
        cluster.wait_for(f"n3 in {m}'s members.json", lambda m=m: "n3" in _members_json(cluster, m)["members"])

    # A restart starts from the committed membership, not from cluster.json's.
    assert cluster.stop("n2") == 0
    assert not (cluster.run_dir("n2") / "hacluster-node.pid").exists()    # removed at stop
    cluster.start("n2")
    cluster.wait_for("n2 ready again", lambda: len(cluster.events("n2", "daemon_ready")) == 2, timeout=30)
    (seen,) = cluster.events("n2", "members_from_state")
    assert (seen["members"], seen["configured"]) == ("n1,n2,n3,w", "n1,n2,w")

    res = cluster.hacluster("w", "cluster", "remove-node", "n3")
    assert res.returncode == 0, res.stderr
    assert cluster.procs["n3"].wait(timeout=20) == exit_status.REMOVED
    for m in ("n1", "n2", "w"):
        cluster.wait_for(f"n3 gone from {m}'s members.json",
                         lambda m=m: "n3" not in _members_json(cluster, m)["members"])
    assert _members_json(cluster, "n3")["removed"] is True

    # Byte for byte, mode and mtime: nothing under any configuration directory changed.
    assert {m: _snapshot(cluster.config_dir(m)) for m in before} == before

    # The removed member, started again on its old state, refuses in one line.
    proc = cluster.start("n3")
    assert proc.wait(timeout=30) == 1
    state = cluster.state_dir("n3")
    assert _last_line(proc) == (
        f"hacluster: {state}/members.json: member 'n3' was removed from cluster 'lab' and this "
        f"is its old state; a member added again starts from an empty state directory: mv "
        f"{state} {state}.removed, then start it again")


def test_the_old_layout_is_moved_by_one_rename_and_two_states_are_refused(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    old = cluster.config_dir("n1") / "data"
    # n1 as installed before: its state under its configuration directory.
    cluster.start("n1", state_dir=old)
    cluster.start("n2")
    cluster.start("w")
    cluster.wait_for("n1 ready", lambda: cluster.events("n1", "daemon_ready"), timeout=30)
    assert cluster.stop("n1") == 0
    journal = sorted(p for p in (old / "raft").iterdir() if p.is_file())
    inodes = {p.name: p.stat().st_ino for p in journal}
    assert inodes

    # Upgraded: the new state directory is empty (made by hacluster setup / systemd).
    new = cluster.lab.host_dir("n1") / "state"
    new.mkdir(mode=0o700)
    cluster.start("n1", state_dir=new)
    cluster.wait_for("n1 ready again", lambda: len(cluster.events("n1", "daemon_ready")) == 2, timeout=30)
    (moved,) = cluster.events("n1", "state_moved")
    assert (moved["from"], moved["to"]) == (str(old), str(new))
    assert not old.exists()
    # Moved, not copied: the same files (inodes), so the same Raft memory. Not the
    # journal's .meta: the restarted daemon replaces it (a new inode) as soon as its
    # commit index moves, which it may have done by now.
    kept = {n: i for n, i in inodes.items() if not n.endswith(".meta")}
    assert kept and {n: (new / "raft" / n).stat().st_ino for n in kept} == kept
    assert cluster.wait_leader() in cluster.members

    # An old layout next to a state in use: refused, naming what to run; nothing moved.
    assert cluster.stop("n1") == 0
    (old / "raft").mkdir(parents=True)
    (old / "raft" / "journal").write_bytes(b"an older journal")
    proc = cluster.start("n1")
    assert proc.wait(timeout=30) == 1
    line = _last_line(proc)
    assert line.startswith(f"hacluster: {old} (the state of hacluster before the FHS layout")
    assert line.endswith(f"move the other away (e.g. mv {old} {old}.old) and start again")
    assert (old / "raft" / "journal").read_bytes() == b"an older journal"
    os.rename(old, f"{old}.old")
    cluster.start("n1")
    cluster.wait_for("n1 ready a third time", lambda: len(cluster.events("n1", "daemon_ready")) == 3,
                     timeout=30)
