"""A member installed before the FHS layout (state under /etc/hacluster/data) moves it
by one rename at start, or is refused with the command to run (hacluster.node.
layout_upgrade): the decision on plain facts, then the move on real directories."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hacluster.node.layout_upgrade import DirView, UpgradeRefused, decide, upgrade
from hacluster.node.paths import NodePaths

OLD, NEW = Path("/etc/hacluster/data"), Path("/var/lib/hacluster")


def v(path: Path, *entries: str, device: int = 1) -> DirView:
    return DirView(path, frozenset(entries), device)


def test_nothing_to_do_without_an_old_layout_or_when_it_is_the_state_directory():
    assert decide(v(OLD), v(NEW, "raft")).action == "none"
    assert decide(v(OLD, "raft"), v(OLD, "raft")).action == "none"   # data_dir kept


def test_one_rename_when_the_new_directory_is_empty_on_the_same_file_system():
    assert decide(v(OLD, "raft", "modules"), v(NEW)).action == "move"


def test_two_states_are_refused_with_the_command_to_set_one_aside():
    d = decide(v(OLD, "raft"), v(NEW, "raft", "members.json"))
    assert d.action == "refuse"
    assert f"mv {OLD} {OLD}.old" in d.message and str(NEW) in d.message


@pytest.mark.parametrize("new", [v(NEW, device=2), v(NEW, "lost+found")])
def test_another_file_system_is_refused_with_the_copy_command(new):
    d = decide(v(OLD, "raft"), new)
    assert d.action == "refuse"
    assert d.message.endswith(f"run: cp -a {OLD}/. {NEW}/ && sync && rm -r {OLD}")


def _paths(tmp_path: Path) -> NodePaths:
    return NodePaths(tmp_path / "etc", tmp_path / "var/lib/hacluster", tmp_path / "run",
                     tmp_path / "log")


def _old_layout(paths: NodePaths) -> bytes:
    journal = paths.legacy_state_dir / "raft" / "journal"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"raft entries")
    (paths.legacy_state_dir / "module_state" / "db").mkdir(parents=True)
    return journal.read_bytes()


@pytest.mark.parametrize("made", [False, True], ids=["no-state-dir", "empty-state-dir"])
def test_the_old_state_is_moved_whole(tmp_path, made):
    paths = _paths(tmp_path)
    journal = _old_layout(paths)
    if made:                                   # hacluster setup's, or systemd's
        paths.state_dir.mkdir(parents=True)
    assert upgrade(paths) == f"moved {paths.legacy_state_dir} to {paths.state_dir}"
    assert not paths.legacy_state_dir.exists()
    assert (paths.raft_dir / "journal").read_bytes() == journal
    assert paths.module_state_dir("db").is_dir()
    assert upgrade(paths) is None              # done once


def test_a_refusal_touches_nothing(tmp_path):
    paths = _paths(tmp_path)
    _old_layout(paths)
    paths.raft_dir.mkdir(parents=True)
    (paths.raft_dir / "journal").write_bytes(b"another")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UpgradeRefused, match="both hold a member's state"):
        upgrade(paths)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (paths.raft_dir / "journal").read_bytes() == b"another"


def test_nothing_happens_on_a_new_install(tmp_path):
    paths = _paths(tmp_path)
    paths.config_dir.mkdir()
    assert upgrade(paths) is None
    assert os.listdir(tmp_path) == ["etc"]
