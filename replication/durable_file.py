"""Durable file writes for every package (DESIGN.md rule 5): after a crash a file
written here is either its old or its new complete self, and its name survives.

The one copy of these helpers in the product: raft/ (pysyncobj's term, vote and
dumps), replication/ (bitmaps, activity log, cursors), hacluster/ (configuration,
packages, a module's last epoch) and chaos/ use it. It lives here, in the one lower
package whose ``__init__`` imports nothing: raft/ and hacluster/ may import it
without pulling anything else in, whereas a helper in raft/ would load pysyncobj
into every replication process (raft/'s ``__init__`` imports its member). This
module imports only the standard library, and is the only module of one lower
package that another may import (tests/unit/test_import_graph.py).
"""
from __future__ import annotations

import os


def fsync_dir(directory: "str | os.PathLike[str]") -> None:
    """Make ``directory``'s entries (files created, renamed, unlinked in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_parent(path: "str | os.PathLike[str]") -> None:
    """Make the entry of ``path`` in its directory durable (``fsync_dir`` of its directory)."""
    fsync_dir(os.path.dirname(os.path.abspath(path)) or ".")


def durable_replace(tmp_path: "str | os.PathLike[str]", path: "str | os.PathLike[str]") -> None:
    """rename(tmp, path) such that after a crash either the old or the new complete
    file is there: the new one is on disk before the rename, the rename after it."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp_path, path)
    fsync_parent(path)


def atomic_write(path: "str | os.PathLike[str]", data: bytes | str, *, mode: int = 0o600,
                 sync_dir: bool = True) -> None:
    """Replace ``path`` as a whole with ``data``: ``path.tmp`` written and fsynced,
    renamed over ``path``, the directory fsynced. ``sync_dir=False``: the caller
    fsyncs the directory itself, once for a batch of files."""
    tmp = os.fspath(path) + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        rest = memoryview(data.encode() if isinstance(data, str) else data)
        while rest:
            rest = rest[os.write(fd, rest):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_parent(path)
