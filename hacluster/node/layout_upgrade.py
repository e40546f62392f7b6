"""A member installed before the FHS layout kept its state (Raft journal, modules,
module state) in the configuration directory, under ``data/``. At start the daemon
moves it to the state directory, or refuses with the one command that would.

Why a move and not a copy: one ``rename`` of the whole directory is all or nothing, so
a crash leaves either the old layout (the next start moves it) or the new one, never
two journals nor half of one; a copy could leave a torn journal next to a good one.
Why the daemon does it: an upgraded member then starts by itself (``make install``,
``systemctl restart``). When one rename cannot do it (the state directory is on
another file system, or already holds something), the daemon refuses and names the
command: it never starts with an empty journal next to an old one, which would be a
member without its Raft memory (its votes and acknowledged entries forgotten).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from replication.durable_file import fsync_dir

from .paths import NodePaths

# What a file system's root holds that is not a member's state.
_NOT_STATE = frozenset({"lost+found"})


class UpgradeRefused(ValueError):
    """The old layout cannot be moved by one rename: the message says what to run."""


@dataclass(frozen=True)
class DirView:
    """What the decision looks at of one directory."""
    path: Path
    entries: frozenset[str]       # empty when it does not exist
    device: int                   # st_dev of it, or of its nearest existing parent


@dataclass(frozen=True)
class Decision:
    action: str                   # "none" | "move" | "refuse"
    message: str = ""


def decide(legacy: DirView, new: DirView) -> Decision:
    """The old layout's state directory ``legacy`` and the new one ``new``: nothing
    to do, one rename, or a refusal saying the exact command."""
    if legacy.path == new.path or not legacy.entries:
        return Decision("none")
    if new.entries - _NOT_STATE:
        return Decision("refuse", (
            f"{legacy.path} (the state of hacluster before the FHS layout: Raft journal, modules) "
            f"and {new.path} both hold a member's state; only you can tell which is this "
            f"member's Raft memory: move the other away (e.g. mv {legacy.path} "
            f"{legacy.path}.old) and start again"))
    if new.entries or legacy.device != new.device:
        return Decision("refuse", (
            f"{legacy.path} holds this member's state from before the FHS layout (Raft "
            f"journal, modules) and {new.path} is on another file system, where one rename "
            f"cannot move it: with hacluster stopped, run: cp -a {legacy.path}/. "
            f"{new.path}/ && sync && rm -r {legacy.path}"))
    return Decision("move", f"moved {legacy.path} to {new.path}")


def view(path: Path) -> DirView:
    """The directory as ``decide`` sees it (read from the file system)."""
    try:
        entries = frozenset(os.listdir(path))
    except FileNotFoundError:
        entries = frozenset()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return DirView(path, entries, os.stat(probe).st_dev)


def upgrade(paths: NodePaths) -> str | None:
    """Move the old layout's state into ``paths.state_dir`` if there is one; what was
    done (for the log), or None. Raises UpgradeRefused with the command to run."""
    legacy, new = paths.legacy_state_dir, paths.state_dir
    decision = decide(view(legacy), view(new))
    if decision.action == "none":
        return None
    if decision.action == "refuse":
        raise UpgradeRefused(decision.message)
    new.parent.mkdir(parents=True, exist_ok=True)
    try:
        new.rmdir()               # an empty one (hacluster setup's, systemd's)
    except FileNotFoundError:
        pass
    try:
        os.rename(legacy, new)
    except OSError as e:          # a mount point, a bind mount: not one rename after all
        raise UpgradeRefused(
            f"{legacy} holds this member's state from before the FHS layout and cannot be "
            f"renamed to {new} ({e.strerror}): with hacluster stopped, run: mkdir -p {new} "
            f"&& cp -a {legacy}/. {new}/ && sync && rm -r {legacy}") from None
    fsync_dir(new.parent)
    fsync_dir(legacy.parent)
    return decision.message
