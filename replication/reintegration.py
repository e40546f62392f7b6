"""Bring a receiver's copy of a replicated tree up to date from the primary's
tree, and compare the two (``verify``, SafeKit's rfsverify).

The driver talks to the receiver through ``Remote`` (a manifest, block digests,
and synchronous ``send(op)``), so it runs the same over the channel and in tests
over a second local directory.

Order of work:

1. delete what the primary no longer has (top-most paths only: DELETE removes a
   whole tree);
2. walk the primary's tree in path order (a directory before its contents):
   create what is missing (DELETE first if the type differs), bring regular
   files' content up to date, then set owner, mode and mtime; a directory's
   metadata is set after its contents (they change its mtime);
3. re-check, by digest, what changed under the walk: paths that namespace or
   metadata ops touched since the run began, paths still marked in the store,
   and every name of the hard-linked files among them. Each re-check round is a
   *pass* over what the previous one left pending, so under a steady write rate
   the pending set shrinks round by round;
4. the final pass, inside ``final_guard()`` (the sender's ordering lock, held
   for the whole pass): what is still pending, with no live op able to slip in;
   the owner declares the copies in sync before it releases the guard. It
   starts once the pending bytes are at most ``final_pass_bytes``, stopped
   shrinking, or after ``max_recheck_rounds``: reintegration ends in a bounded
   number of passes whatever the application does, at the price of one pause
   of the application as long as the final pass. Without ``final_guard``, the
   rounds go on until one finds nothing (at most ``max_recheck_rounds``).

A regular file's content is brought up to date by one of:

* *create*: missing (or another type, or hard-linked on the remote to files that
  are not its links here): CREATE, then its data regions in ``max_write`` WRITEs
  (zero chunks and holes are left to the final TRUNCATE, so sparse stays sparse);
* *bitmap*: the store is trusted, the path kept its identity (not in the
  journal), has a bitmap and one name only (here, and when ALONE began:
  bitmaps are kept by name): the dirty blocks, plus [low water, remote size);
* *skip*: trusted, no bitmap, not journaled, same size and mtime;
* *digest*: otherwise: per-block xxh3 digests of both copies (the local ones
  computed while the remote computes its own), only differing blocks sent.

Live writes. The sender forwards the application's ops to the receiver while
this runs. Every read of the local tree that feeds a send happens inside
``guard(path)`` together with that send; the sender takes the same guard around
"apply locally + forward", so a block is sent either before a live write to it
(and the live write follows) or after it (and carries its data). Bitmap blocks
are cleared inside the guard, after the remote acknowledged them. What the
sender must do meanwhile: ``store.record`` every namespace and metadata op
(not writes), and every op the receiver refuses (its copy is not in sync yet:
a path not created there, a rename that means something else there); such a
refusal is not a lost peer. The driver then re-checks those paths (a refusal
recorded after its path was synced in a pass is taken by the next one; the
owner's ``final_guard`` waits until every op sent was answered and recorded). A remote
refusal met by the driver itself on a regular file makes it copy that file
whole; other refusals and connection errors end the run (resume later).

Resume. With ``state_dir``, a cursor (last completed path, phase, the store's
generation) is saved at most every ``CURSOR_SAVE_INTERVAL_S`` and when a run
fails; the next run skips completed files unless they got marks since. The
cursor is void if the store was reset or found crashed since (new generation).
Without a store, resuming assumes the tree was not written meanwhile.
"""
from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import enum
import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from replication.block_diff import (DEFAULT_BLOCK_SIZE, block_count, blocks_to_ranges,
                                    diff_blocks, file_digests)
from replication.dirty_bitmap import METADATA_KINDS, BitmapStore, DirtyBitmap, changed_paths, under
from replication.durable_file import atomic_write, fsync_dir
from replication.ops import Op, OpKind

DEFAULT_MAX_WRITE = 1 << 20
CURSOR_SAVE_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 0.5
# The final pass runs under the sender's lock (the application waits): start it
# once what is pending reads at most this much (digests of both copies).
DEFAULT_FINAL_PASS_BYTES = 64 << 20
# Bursts of this many seconds of bandwidth are allowed under a cap.
BURST_S = 0.25


class FileType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    CHAR = "char"
    BLOCK = "block"
    SOCKET = "socket"


_TYPE_OF_FMT = {stat.S_IFREG: FileType.FILE, stat.S_IFDIR: FileType.DIR,
                stat.S_IFLNK: FileType.SYMLINK, stat.S_IFIFO: FileType.FIFO,
                stat.S_IFCHR: FileType.CHAR, stat.S_IFBLK: FileType.BLOCK,
                stat.S_IFSOCK: FileType.SOCKET}
_FMT_OF_TYPE = {t: fmt for fmt, t in _TYPE_OF_FMT.items()}
_SPECIAL = frozenset({FileType.FIFO, FileType.CHAR, FileType.BLOCK, FileType.SOCKET})


@dataclass(frozen=True)
class Entry:
    """One path of a tree, as ``lstat`` sees it on its own side."""
    type: FileType
    mode: int           # permission bits incl. suid/sgid/sticky (stat.S_IMODE)
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0       # regular files only
    target: str = ""    # symlinks only: the link text
    rdev: int = 0       # character/block devices only
    dev: int = 0        # (dev, ino): regular files with nlink > 1 only, to find
    ino: int = 0        # hard links; 0 = not linked (or unknown)


def entry_from_stat(st: os.stat_result, target: str = "") -> Entry:
    kind = _TYPE_OF_FMT[stat.S_IFMT(st.st_mode)]
    linked = kind == FileType.FILE and st.st_nlink > 1
    return Entry(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                 size=st.st_size if kind == FileType.FILE else 0, target=target,
                 rdev=st.st_rdev if kind in (FileType.CHAR, FileType.BLOCK) else 0,
                 dev=st.st_dev if linked else 0, ino=st.st_ino if linked else 0)


def _join(root: str, path: str) -> str:
    return os.path.join(root, path) if path else root


def _lstat_entry(root: str, path: str) -> tuple[os.stat_result, Entry] | None:
    """Fresh lstat of ``path`` as an Entry; None if it is gone."""
    full = _join(root, path)
    try:
        st = os.lstat(full)
        target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st, entry_from_stat(st, target)


def scan_tree(root: str, top: str = "") -> dict[str, Entry]:
    """Manifest of ``root`` (or of its subtree ``top``): relative path -> Entry,
    the root itself as ''. Never follows symlinks; entries that vanish during
    the walk are left out."""
    first = _lstat_entry(root, top)
    if first is None:
        return {}
    tree = {top: first[1]}
    pending = [top] if first[1].type == FileType.DIR else []
    while pending:
        directory = pending.pop()
        try:
            listing = os.scandir(_join(root, directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        with listing:
            for item in listing:
                path = f"{directory}/{item.name}" if directory else item.name
                try:
                    st = item.stat(follow_symlinks=False)
                    target = os.readlink(item.path) if stat.S_ISLNK(st.st_mode) else ""
                except FileNotFoundError:
                    continue
                tree[path] = entry_from_stat(st, target)
                if stat.S_ISDIR(st.st_mode):
                    pending.append(path)
    return tree


_TYPE_OF_LETTER = {"f": FileType.FILE, "d": FileType.DIR, "l": FileType.SYMLINK,
                   "p": FileType.FIFO, "c": FileType.CHAR, "b": FileType.BLOCK,
                   "s": FileType.SOCKET}


def tree_from_manifest(entries: Iterable[Any]) -> dict[str, Entry]:
    """The receiver's manifest (``applier.Entry``-shaped records: path, type
    letter, size, st_mode, uid, gid, mtime_ns, target, ino, nlink, rdev) as the
    tree ``Remote.query_tree`` returns."""
    tree = {}
    for e in entries:
        kind = _TYPE_OF_LETTER[e.type]
        linked = kind == FileType.FILE and e.nlink > 1
        tree[e.path] = Entry(kind, stat.S_IMODE(e.mode), e.uid, e.gid, e.mtime_ns,
                             size=e.size if kind == FileType.FILE else 0, target=e.target,
                             rdev=e.rdev if kind in (FileType.CHAR, FileType.BLOCK) else 0,
                             ino=e.ino if linked else 0)
    return tree


def path_key(path: str) -> tuple[str, ...]:
    """Sort key that puts a directory right before its contents."""
    return tuple(path.split("/"))


class Remote(Protocol):
    def query_tree(self) -> dict[str, Entry]:
        """The receiver's manifest now (as ``scan_tree`` of its root)."""
        ...

    def query_digests(self, path: str, block_size: int) -> list[int]:
        """Per-block digests of the receiver's regular file ``path`` now (as
        ``file_digests``)."""
        ...

    def send(self, op: Op) -> None:
        """Apply ``op`` on the receiver; returns once it was applied."""
        ...


class ReintegrationError(RuntimeError):
    pass


class TokenBucket:
    """Bandwidth cap, pure arithmetic: ``take`` says how long to wait before
    sending ``amount`` bytes so that what was sent by any instant t never
    exceeds ``burst + rate * (t - start)``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate and burst must be > 0, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, amount: int, now: float) -> float:
        """Seconds to wait before sending; the caller sends ``amount`` then."""
        now = max(now, self._last)
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(frozen=True)
class Difference:
    """One way the two copies differ. ``kind`` is one of missing (only here),
    extra (only on the remote), type, size, content, mode, owner, mtime, target,
    rdev, links; ``ranges`` are the local (offset, length) ranges whose blocks
    differ (content)."""
    path: str
    kind: str
    local: Any = None
    remote: Any = None
    ranges: tuple[tuple[int, int], ...] = ()

    def __str__(self) -> str:
        if self.kind == "content":
            return (f"{self.path or '/'}: content differs in {len(self.ranges)} range(s) "
                    f"{list(self.ranges)[:4]}")
        return (f"{self.path or '/'}: {self.kind} differs "
                f"(local {self.local!r}, remote {self.remote!r})")


def _local_digests(root: str, path: str, block_size: int) -> tuple[list[int], int] | None:
    fd = _open_regular(root, path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb", buffering=0) as f:
        return file_digests(f, block_size)


def _open_regular(root: str, path: str) -> int | None:
    """Open ``path`` for reading if it is (still) a regular file."""
    try:
        # O_NONBLOCK: a path that became a FIFO must not block the open.
        fd = os.open(_join(root, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):   # gone, or now a symlink
            return None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _under_any(path: str, tops: set[str]) -> bool:
    """``path`` is one of ``tops`` or inside one of them."""
    parts = path.split("/")
    return "" in tops or any("/".join(parts[:i]) in tops for i in range(1, len(parts) + 1))


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` in order, without those inside another one."""
    tops: list[str] = []
    for path in sorted(set(paths), key=path_key):
        if not tops or not under(path, tops[-1]):
            tops.append(path)
    return tops


class _Ordered:
    """A tree's paths in ``path_key`` order, to list a subtree without
    scanning the whole tree (a directory's contents follow it contiguously)."""

    def __init__(self, tree: dict[str, Entry]) -> None:
        self.paths = sorted(tree, key=path_key)
        self._keys = [path_key(path) for path in self.paths]

    def subtree(self, top: str) -> list[str]:
        start = bisect.bisect_left(self._keys, path_key(top))
        end = start
        while end < len(self.paths) and under(self.paths[end], top):
            end += 1
        return self.paths[start:end]


def _link_groups(tree: dict[str, Entry]) -> dict[tuple[int, int], list[str]]:
    groups: dict[tuple[int, int], list[str]] = {}
    for path, entry in tree.items():
        if entry.ino:
            groups.setdefault((entry.dev, entry.ino), []).append(path)
    for paths in groups.values():
        paths.sort(key=path_key)
    return groups


def _metadata_differences(entry: Entry, other: Entry) -> list[tuple[str, Any, Any]]:
    """Metadata fields that differ between two entries of the same type."""
    found = []
    if entry.type != FileType.SYMLINK and entry.mode != other.mode:
        found.append(("mode", oct(entry.mode), oct(other.mode)))
    if (entry.uid, entry.gid) != (other.uid, other.gid):
        found.append(("owner", (entry.uid, entry.gid), (other.uid, other.gid)))
    if entry.mtime_ns != other.mtime_ns:
        found.append(("mtime", entry.mtime_ns, other.mtime_ns))
    if entry.target != other.target:
        found.append(("target", entry.target, other.target))
    if entry.rdev != other.rdev:
        found.append(("rdev", entry.rdev, other.rdev))
    if entry.type == FileType.FILE and entry.size != other.size:
        found.append(("size", entry.size, other.size))
    return found


def verify(local_root: str, remote: Remote,
           block_size: int = DEFAULT_BLOCK_SIZE) -> list[Difference]:
    """Every difference between the local tree and the remote copy, by manifest
    and block digests; changes nothing. While writes flow, a difference may be
    one that a live op is about to remove."""
    local = scan_tree(local_root)
    remote_tree = remote.query_tree()
    differences = []
    for path in sorted(local.keys() | remote_tree.keys(), key=path_key):
        mine, theirs = local.get(path), remote_tree.get(path)
        if theirs is None:
            if path:            # a remote that does not report its root is fine
                differences.append(Difference(path, "missing", mine.type))
            continue
        if mine is None:
            differences.append(Difference(path, "extra", None, theirs.type))
            continue
        if mine.type != theirs.type:
            differences.append(Difference(path, "type", mine.type, theirs.type))
            continue
        for kind, here, there in _metadata_differences(mine, theirs):
            differences.append(Difference(path, kind, here, there))
        if mine.type == FileType.FILE:
            digested = _local_digests(local_root, path, block_size)
            if digested is None:
                continue
            remote_digests = remote.query_digests(path, block_size)
            remote_size = theirs.size
            if block_count(remote_size, block_size) != len(remote_digests):
                remote_size = len(remote_digests) * block_size
            diff = diff_blocks(digested[0], digested[1], remote_digests, remote_size,
                               block_size, max_chunk=1 << 62)
            if diff.ranges:
                differences.append(Difference(path, "content", ranges=diff.ranges))
    differences.extend(_link_differences(local, remote_tree))
    return differences


def _link_differences(local: dict[str, Entry], remote_tree: dict[str, Entry]) -> list[Difference]:
    remote_group = {path: frozenset(paths) for paths in _link_groups(remote_tree).values()
                    for path in paths}
    differences = []
    for paths in _link_groups(local).values():
        mine = frozenset(paths)
        theirs = remote_group.get(paths[0], frozenset([paths[0]]))
        if mine != theirs:
            differences.append(Difference(paths[0], "links", sorted(mine), sorted(theirs)))
    linked_here = {path for paths in _link_groups(local).values() for path in paths}
    for paths in _link_groups(remote_tree).values():
        if not linked_here.intersection(paths):
            differences.append(Difference(paths[0], "links", [], sorted(paths)))
    return differences


class Reintegration:
    """One reintegration of ``local_root`` into ``remote``; ``run()`` it (again
    after a failure, with the same ``state_dir``, to resume).

    ``store``: the primary's BitmapStore (None: compare digests everywhere).
    ``block_size``: digest block size. ``max_write``: largest WRITE payload.
    ``force_digests``: ignore bitmaps (a full check, e.g. ``prim fullsync``).
    ``bandwidth``: cap in bytes/s on WRITE payloads (None: no cap).
    ``on_progress``: called with ``progress()`` every ``PROGRESS_INTERVAL_S``
    and at phase changes. ``guard(path)``: the sender's per-path lock (see the
    module docstring). ``final_guard()``: held around the final pass (module
    docstring, step 4); what it yields, if callable, is called before each
    look at what is pending in it; ``final_pass_bytes``: when to start it. ``local_root`` is the real directory under the mount;
    in the process that holds it open, ``/proc/self/fd/N`` works.
    """

    def __init__(self, local_root: str, remote: Remote, *,
                 store: BitmapStore | None = None,
                 state_dir: str | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE,
                 max_write: int = DEFAULT_MAX_WRITE,
                 force_digests: bool = False,
                 bandwidth: float | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 guard: Callable[[str], AbstractContextManager[object]] | None = None,
                 final_guard: Callable[[], AbstractContextManager[object]] | None = None,
                 final_pass_bytes: int = DEFAULT_FINAL_PASS_BYTES,
                 max_recheck_rounds: int = 8,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if block_size <= 0 or max_write <= 0:
            raise ValueError("block_size and max_write must be > 0")
        self.local_root = local_root
        self.remote = remote
        self.store = store
        self.block_size = block_size
        self.max_write = max_write
        self.force_digests = force_digests
        self._cursor_path = os.path.join(state_dir, "reintegration.json") if state_dir else None
        self._bucket = (TokenBucket(bandwidth, max(max_write, bandwidth * BURST_S), clock())
                        if bandwidth is not None else None)
        self._on_progress = on_progress
        self._guard = guard or (lambda path: contextlib.nullcontext())
        self._final_guard = final_guard
        self.final_pass_bytes = final_pass_bytes
        self._max_recheck_rounds = max_recheck_rounds
        self._clock = clock
        self._sleep = sleep
        self._progress: dict[str, Any] = {
            "phase": "idle", "path": "", "files_done": 0, "files_total": 0,
            "bytes_done": 0, "bytes_total": 0, "bytes_sent": 0, "ops_sent": 0,
            "elapsed_s": 0.0, "rate_Bps": 0.0, "eta_s": None,
            # pass 1: the whole tree; then one per re-check round; final_pass:
            # the last one, under final_guard. pending_*: what the current pass
            # started with (re-check passes only).
            "pass": 0, "final_pass": False, "pending_paths": 0, "pending_bytes": 0}
        self._started = 0.0
        self._resumed_bytes = 0     # done in an earlier run: not part of the rate

    # ---- progress ------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        """Snapshot: phase, pass number, current path, files and bytes
        done/total (bytes = the data this run reads or sends; totals grow as
        passes start), bytes and ops sent, rate, ETA (s) of the known work."""
        snapshot = dict(self._progress)
        elapsed = self._clock() - self._started if snapshot["phase"] != "idle" else 0.0
        rate = (snapshot["bytes_done"] - self._resumed_bytes) / elapsed if elapsed > 0 else 0.0
        left = snapshot["bytes_total"] - snapshot["bytes_done"]
        snapshot.update(elapsed_s=elapsed, rate_Bps=rate,
                        eta_s=0.0 if left <= 0 else (left / rate if rate > 0 else None))
        return snapshot

    def _report(self, force: bool = False) -> None:
        now = self._clock()
        if self._on_progress and (force or now - self._last_report >= PROGRESS_INTERVAL_S):
            self._last_report = now
            self._on_progress(self.progress())

    def _phase(self, phase: str) -> None:
        self._progress["phase"] = phase
        self._report(force=True)

    def _work(self, amount: int) -> None:
        """``amount`` bytes of the current file were read or sent."""
        amount = min(amount, self._file_left)
        self._file_left -= amount
        self._progress["bytes_done"] += amount

    # ---- run -------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Reintegrate; returns the final progress. Raises what ``remote``
        raises (the cursor is saved first, so ``run()`` again resumes)."""
        self._started = self._clock()
        self._last_report = float("-inf")
        self._resumed_bytes = 0
        self._last_cursor_save = self._started
        self._linked: dict[tuple[int, int], tuple[str, bool]] = {}
        cursor = self._load_cursor()
        journal_now = self.store.journal_position() if self.store else 0
        self._cursor = cursor or {"generation": self._generation(), "block_size": self.block_size,
                                  "phase": "sync", "last_path": None,
                                  "recheck_from": journal_now}
        self._trusted = bool(self.store and self.store.trusted() and not self.force_digests)
        self._changed = (changed_paths(self.store.journal()[:journal_now])
                         if self.store else set())
        self._digester = concurrent.futures.ThreadPoolExecutor(1, "reintegration-digest")
        try:
            self._progress["pass"] = 1
            if self._cursor["phase"] == "sync":
                self._phase("sync")
                self._sync_round([""], resume_after=self._cursor["last_path"], force=False)
                self._cursor.update(phase="recheck", last_path=None)
                self._save_cursor()
            self._phase("recheck")
            self._recheck()
        except BaseException:
            self._save_cursor()
            raise
        finally:
            self._digester.shutdown()
        self._remove_cursor()
        self._phase("done")
        return self.progress()

    def _recheck(self) -> None:
        """Sync again, by digest, what changed under the walk (module
        docstring, step 3): a live rename may have moved a stale remote copy
        into place, a refused live op left a mark."""
        if self.store is None:
            return
        previous: int | None = None
        for _ in range(self._max_recheck_rounds):
            position, tops, pending = self._pending()
            if not tops and self._final_guard is None:
                return
            if self._final_guard is not None and (
                    pending <= self.final_pass_bytes
                    or (previous is not None and pending >= previous)):
                break       # small enough, or no longer shrinking: settle it under the lock
            self._pass(tops, pending, position)
            previous = pending
        else:
            if self._final_guard is None:
                raise ReintegrationError(
                    f"tree still changing after {self._max_recheck_rounds} re-check rounds; "
                    f"run again (it resumes) when it is quieter")
        with self._final_guard() as settle:
            # Nothing changes the tree now. ``settle()`` (if given) returns once
            # every op sent before was answered and its refusal recorded, the
            # final pass's own included: then what is pending is all there is.
            self._progress["final_pass"] = True
            self._phase("final")
            for _ in range(self._max_recheck_rounds):
                if callable(settle):
                    settle()
                position, tops, pending = self._pending()
                if not tops:
                    return
                self._pass(tops, pending, position)
            raise ReintegrationError(f"the final pass still found changes after "
                                     f"{self._max_recheck_rounds} rounds under the lock")

    def _pending(self) -> tuple[int, list[str], int]:
        """(journal position, subtrees to re-check, bytes a digest pass over
        them reads here): paths journaled since the last pass, metadata
        changes, and marks left (ops the receiver refused while this ran, or
        made through a name synced earlier)."""
        position = self.store.journal_position()
        entries = self.store.journal(self._cursor["recheck_from"])[
            :position - self._cursor["recheck_from"]]
        paths = (changed_paths(entries) | set(self.store.paths())
                 | {entry.path for entry in entries if entry.kind in METADATA_KINDS})
        tops = _outermost(list(paths))
        pending = sum(entry.size for top in tops for entry in scan_tree(self.local_root, top).values()
                      if entry.type == FileType.FILE)
        return position, tops, pending

    def _pass(self, tops: list[str], pending: int, position: int) -> None:
        """One re-check pass over ``tops``; the journal is then taken up to ``position``."""
        self._progress.update({"pass": self._progress["pass"] + 1, "pending_paths": len(tops),
                               "pending_bytes": pending})
        self._report(force=True)
        self._sync_round(tops, resume_after=None, force=True)
        self._cursor["recheck_from"] = position
        self._save_cursor()

    # ---- a round: the whole tree, or the re-checked subtrees -----------------

    def _sync_round(self, tops: list[str], resume_after: str | None, force: bool) -> None:
        """One remote manifest and one local scan for the round (a hard link
        may join a re-checked path to any other), then each subtree of
        ``tops`` (none inside another) in order."""
        self._remote_tree = self.remote.query_tree()
        self._remote_order = _Ordered(self._remote_tree)
        self._remote_groups = _link_groups(self._remote_tree)
        self._local_all = scan_tree(self.local_root)
        self._local_order = _Ordered(self._local_all)
        self._local_groups = _link_groups(self._local_all)
        if force:
            tops = _outermost(tops + self._other_links(tops))
        self._touched: set[str] = set()      # remote dirs whose entries we changed
        self._created: set[str] = set()
        self._round_tops = set(tops)
        self._done_in_round: set[str] = set()
        # The manifest is fresh: no first link counts as recreated since it.
        self._linked = {inode: (path, False) for inode, (path, _) in self._linked.items()}
        for top in tops:
            self._sync_scope(top, resume_after, force)

    def _other_links(self, tops: list[str]) -> list[str]:
        """Every name of the hard-linked files in ``tops``: a live op on one
        name may have hit another file on the remote (not in sync yet)."""
        names = []
        for paths in self._local_groups.values():
            if any(_under_any(path, set(tops)) for path in paths):
                names += paths
        return names

    def _sync_scope(self, top: str, resume_after: str | None, force: bool) -> None:
        self._force = force
        self._local = {path: self._local_all[path] for path in self._local_order.subtree(top)}
        self._delete_extras(top)
        items = list(self._local)
        plans = {path: self._plan(path, force) for path in items}
        self._progress["files_total"] += len(items)
        self._progress["bytes_total"] += sum(estimate for _, estimate in plans.values())
        resume_key = path_key(resume_after) if resume_after is not None else None
        open_dirs: list[str] = []
        for path in items:
            while open_dirs and not under(path, open_dirs[-1]):
                self._finish_dir(open_dirs.pop())
            entry = self._local[path]
            mode, estimate = plans[path]
            self._progress["path"] = path
            self._file_left = estimate
            if (resume_key is not None and entry.type != FileType.DIR
                    and path_key(path) <= resume_key and not self._has_marks(path)):
                self._resumed_bytes += estimate
                if entry.ino:           # its later links are linked to it
                    self._linked.setdefault((entry.dev, entry.ino), (path, False))
            else:
                self._sync_path(path, entry, mode)
            self._done_in_round.add(path)
            self._work(self._file_left)
            self._progress["files_done"] += 1
            if entry.type == FileType.DIR:
                open_dirs.append(path)
            elif not force:         # re-check rounds restart whole; no cursor inside them
                self._cursor["last_path"] = path
                self._maybe_save_cursor()
            self._report()
        while open_dirs:
            self._finish_dir(open_dirs.pop())
        if top:
            self._finish_dir(os.path.dirname(top))
        if self.store is not None:
            self._drop_stale_bitmaps(top)

    def _drop_stale_bitmaps(self, top: str) -> None:
        """Bitmaps of paths that are no regular file here any more describe
        nothing to send (and would be re-checked for ever)."""
        for path in self.store.paths():
            if under(path, top):
                with self._guard(path):
                    if not self._is_regular_file(path):
                        self.store.drop(path)

    def _delete_extras(self, top: str) -> None:
        """DELETE remote paths in scope that the primary does not have, and
        forget them (with everything below) from the manifest."""
        covered: str | None = None
        deleting = False
        for path in self._remote_order.subtree(top):
            if covered is not None and under(path, covered):
                if deleting:
                    self._remote_tree.pop(path, None)
                continue
            mine = self._local.get(path)
            if mine is None and path:
                with self._guard(path):
                    # Created since the scan: a live op already created it remotely.
                    if os.path.lexists(_join(self.local_root, path)):
                        continue
                    self._delete(path)
                self._touch_parent(path)
                del self._remote_tree[path]
                covered, deleting = path, True
            elif mine is not None and mine.type != FileType.DIR \
                    and self._remote_tree[path].type == FileType.DIR:
                covered, deleting = path, False     # replaced whole by _sync_path

    def _plan(self, path: str, force: bool) -> tuple[str, int]:
        """How to bring a regular file's content up to date, and how many bytes
        that reads or sends (an estimate, for progress)."""
        entry = self._local[path]
        if entry.type != FileType.FILE:
            return "", 0
        members = self._local_groups.get((entry.dev, entry.ino), [path])
        if members[0] != path:
            return "link", 0
        remote = self._remote_tree.get(path)
        if remote is None or remote.type != FileType.FILE or self._foreign_links(path):
            return "create", entry.size
        if force or not self._trusted:
            return "digest", entry.size
        if any(self._is_changed(member) for member in members):
            return "digest", entry.size
        bitmaps = [b for b in map(self.store.bitmap, members) if b is not None]
        # Bitmaps are kept by name: a file with other names, here or when the
        # primary went ALONE (the remote copy still shows those), may have
        # been written through a name whose marks went with it.
        if bitmaps and not entry.ino and not remote.ino:
            return "bitmap", sum(length for _, length in
                                 self._bitmap_ranges(bitmaps[0], entry.size, remote.size))
        if not bitmaps and entry.size == remote.size and entry.mtime_ns == remote.mtime_ns:
            return "skip", 0
        return "digest", entry.size

    def _is_changed(self, path: str) -> bool:
        return _under_any(path, self._changed)

    def _has_marks(self, path: str) -> bool:
        return self.store is not None and self.store.bitmap(path) is not None

    def _foreign_links(self, path: str) -> bool:
        """The remote file is hard-linked to paths that are not its links here:
        writing into it would change them too."""
        remote = self._remote_tree[path]
        if not remote.ino:
            return False
        mine = self._local_all[path]
        for other in self._remote_groups[(remote.dev, remote.ino)]:
            if other not in self._remote_tree:      # deleted in this run
                continue
            local_other = self._local_all.get(other)
            if other != path and (local_other is None or not mine.ino
                                  or (local_other.dev, local_other.ino) != (mine.dev, mine.ino)):
                return True
        return False

    # ---- one path ------------------------------------------------------

    def _sync_path(self, path: str, scanned: Entry, mode: str) -> None:
        remote = self._remote_tree.get(path)
        if scanned.type == FileType.FILE:
            self._sync_file(path, remote, mode)
            return
        with self._guard(path):
            fresh = _lstat_entry(self.local_root, path)
            if fresh is None or fresh[1].type != scanned.type:
                return          # changed meanwhile; the live op and the re-check cover it
            st, entry = fresh
            if remote is not None and remote.type == entry.type and remote.target == entry.target \
                    and remote.rdev == entry.rdev:
                created = False
            elif path == "":
                return          # the root is there on both sides by definition
            else:
                if remote is not None:
                    self._delete(path)
                owner = {"uid": entry.uid, "gid": entry.gid}
                if entry.type == FileType.DIR:
                    self._send_new(Op(OpKind.MKDIR, path, mode=entry.mode, **owner))
                elif entry.type == FileType.SYMLINK:
                    self._send_new(Op(OpKind.SYMLINK, path, entry.target, **owner))
                else:
                    self._send_new(Op(OpKind.MKNOD, path, rdev=entry.rdev,
                                      mode=_FMT_OF_TYPE[entry.type] | entry.mode, **owner))
                self._touch_parent(path)
                self._created.add(path)
                created = True
            if entry.type != FileType.DIR:  # a directory's metadata waits for its contents
                self._send_metadata(path, st, entry, remote, created, content_sent=False)

    def _finish_dir(self, path: str) -> None:
        created = path in self._created
        remote = self._remote_tree.get(path)
        if not created and (remote is None or remote.type != FileType.DIR):
            return          # not created here (changed meanwhile, or a root not reported)
        with self._guard(path):
            fresh = _lstat_entry(self.local_root, path)
            if fresh is None or fresh[1].type != FileType.DIR:
                return
            self._send_metadata(path, *fresh, remote, created, content_sent=path in self._touched)

    def _send_metadata(self, path: str, st: os.stat_result, entry: Entry, remote: Entry | None,
                       created: bool, content_sent: bool) -> None:
        """Owner, then mode (chown may clear set-id bits), then times (last:
        everything before changes the remote mtime). A path created in this
        run got its owner and exact mode with the creating op."""
        if not created and remote is not None:
            chown = (remote.uid, remote.gid) != (entry.uid, entry.gid)
            if chown:
                self._send(Op(OpKind.CHOWN, path, uid=entry.uid, gid=entry.gid))
            if entry.type != FileType.SYMLINK and (chown or remote.mode != entry.mode):
                self._send(Op(OpKind.CHMOD, path, mode=entry.mode))
        if created or remote is None or content_sent or remote.mtime_ns != entry.mtime_ns:
            self._send(Op(OpKind.UTIMENS, path, atime_ns=st.st_atime_ns, mtime_ns=entry.mtime_ns))

    def _touch_parent(self, path: str) -> None:
        self._touched.add(os.path.dirname(path))

    # ---- regular files -------------------------------------------------

    def _sync_file(self, path: str, remote: Entry | None, mode: str) -> None:
        fresh = _lstat_entry(self.local_root, path)
        if fresh is None or fresh[1].type != FileType.FILE:
            return
        st = fresh[0]
        inode = (st.st_dev, st.st_ino)
        linked = None
        for first, recreated in self._synced_links(path, inode) if st.st_nlink > 1 else []:
            outcome = self._link_to_first(path, remote, first, recreated)
            if outcome is not False:
                linked = (outcome, first, recreated)
                break
        if linked is not None:
            if linked[0] and (self._force or self._has_marks(path) or self._is_changed(path)):
                # A write through this name may be missing from the first one's copy.
                self._sync_content(path, None if linked[2] else self._remote_tree.get(linked[1]),
                                   "digest")
        else:
            if mode == "link":      # no first link of its inode was synced (or it is gone)
                mode = ("digest" if remote is not None and remote.type == FileType.FILE
                        and not self._foreign_links(path) else "create")
            try:
                try:
                    if mode == "create":
                        self._create_file(path, replace=remote is not None)
                    else:
                        self._sync_content(path, remote, mode)
                except OSError as e:
                    if (isinstance(e, (ConnectionError, TimeoutError))
                            or not self._is_regular_file(path)):
                        raise
                    # The receiver refused: a live op did something else to its
                    # copy than to ours (it was not in sync yet). Copy it whole.
                    mode = "create"
                    self._create_file(path, replace=True)
            except BaseException:
                if mode in ("create", "digest"):    # bitmap mode clears only acked blocks
                    self._note_broken_off(path)
                raise
            if st.st_nlink > 1:
                self._linked[inode] = (path, mode == "create")
        if self.store is not None:
            with self._guard(path):
                self.store.drop(path)

    def _note_broken_off(self, path: str) -> None:
        """This file's sync broke off (the remote refused, e.g. ENOSPC, or the link
        dropped): its remote copy may be re-created and half copied, and live writes
        past the hole may have given it our size and mtime. Journal the path, so the
        next run compares its digests instead of skipping it or sending old marks."""
        if self.store is not None:      # no store: the next run compares digests anyway
            self.store.note(path)

    def _synced_links(self, path: str, inode: tuple[int, int]) -> list[tuple[str, bool]]:
        """Other names of ``path``'s inode whose remote copy is up to date:
        the one synced in this run, then any synced earlier in this round or
        left out of it (a live LINK may have joined them after they were synced).
        Each with whether it was recreated since the manifest was read."""
        synced = [self._linked[inode]] if inode in self._linked else []
        synced += [(other, False) for other in self._local_groups.get(inode, ())
                   if other in self._done_in_round or not _under_any(other, self._round_tops)]
        return [(other, recreated) for other, recreated in synced if other != path]

    def _link_to_first(self, path: str, remote: Entry | None, first: str,
                       first_recreated: bool) -> bool | None:
        """Make ``path`` a remote hard link of ``first``, the name of its inode
        synced earlier: True once it is one. False if ``first`` no longer is
        that inode here (a live op moved it): ``path`` must then be synced as a
        file of its own. None if ``path`` itself is gone meanwhile (the live
        op and the re-check cover it)."""
        with self._guard(path):
            here, there = (_lstat_entry(self.local_root, p) for p in (path, first))
            if here is None or here[1].type != FileType.FILE:
                return None
            if there is None or not os.path.samestat(here[0], there[0]):
                return False
            first_remote = self._remote_tree.get(first)
            if (not first_recreated and remote is not None and first_remote is not None and remote.ino
                    and (remote.dev, remote.ino) == (first_remote.dev, first_remote.ino)):
                return True     # already the same file over there
            if remote is not None:
                self._delete(path)
            self._send_new(Op(OpKind.LINK, first, path))
        self._touch_parent(path)
        return True

    def _create_file(self, path: str, replace: bool) -> None:
        """CREATE and copy the data; ``replace``: DELETE what the remote has there first."""
        with self._guard(path):
            fresh = _lstat_entry(self.local_root, path)
            if fresh is None or fresh[1].type != FileType.FILE:
                return
            if replace:
                self._delete(path)
            self._send(Op(OpKind.CREATE, path, mode=fresh[1].mode,
                          uid=fresh[1].uid, gid=fresh[1].gid))
        self._touch_parent(path)
        self._created.add(path)
        remote_end: int | None = 0
        for offset, length in self._data_chunks(path):
            remote_end = self._send_range(path, offset, length, remote_end)
            if remote_end is None:
                return
        self._finish_file(path, None, remote_end)

    def _data_chunks(self, path: str) -> Iterator[tuple[int, int]]:
        """(offset, length) chunks of ``path``'s data regions, skipping holes,
        read afresh as the file may grow while it is copied."""
        offset = 0
        while True:
            fd = _open_regular(self.local_root, path)
            if fd is None:
                return
            try:
                offset = os.lseek(fd, offset, os.SEEK_DATA)
                hole = os.lseek(fd, offset, os.SEEK_HOLE)
            except OSError as e:
                if e.errno == errno.ENXIO:      # no data at or after offset
                    return
                raise
            finally:
                os.close(fd)
            while offset < hole:
                length = min(self.max_write, hole - offset)
                yield offset, length
                offset += length

    def _sync_content(self, path: str, remote: Entry | None, mode: str) -> None:
        """``remote``: the manifest entry of the remote copy (None: not known,
        e.g. a hard link just made; digest mode only)."""
        remote_size = remote.size if remote is not None else 0
        if mode == "skip":
            ranges: list[tuple[int, int]] = []
        elif mode == "bitmap":
            sizes = self._cut_to_local_size(path, remote_size, settle_low_water=True)
            if sizes is None:
                return
            local_size, remote_size = sizes
            bitmap = self.store.bitmap(path)
            ranges = self._bitmap_ranges(bitmap, local_size, remote_size) if bitmap else []
        else:
            if remote_size > 0:
                sizes = self._cut_to_local_size(path, remote_size, settle_low_water=False)
                if sizes is None:
                    return
                remote_size = sizes[1]
            local = self._digester.submit(_local_digests, self.local_root, path, self.block_size)
            try:
                remote_digests = self.remote.query_digests(path, self.block_size)
            except OSError:
                local.result()
                if self._is_regular_file(path):
                    raise
                return          # a live op removed it on both sides meanwhile
            digested = local.result()
            if digested is None:
                return
            self._work(digested[1])
            if block_count(remote_size, self.block_size) != len(remote_digests):
                remote_size = len(remote_digests) * self.block_size   # changed since the manifest
            ranges = list(diff_blocks(digested[0], digested[1], remote_digests, remote_size,
                                      self.block_size, self.max_write).ranges)
        bitmap_block = self.store.block_size if mode == "bitmap" else 0
        remote_end: int | None = remote_size
        for offset, length in ranges:
            remote_end = self._send_range(path, offset, length, remote_end, bitmap_block)
            if remote_end is None:
                return
        self._finish_file(path, remote, remote_end, content_sent=bool(ranges))

    def _is_regular_file(self, path: str) -> bool:
        fresh = _lstat_entry(self.local_root, path)
        return fresh is not None and fresh[1].type == FileType.FILE

    def _cut_to_local_size(self, path: str, remote_size: int,
                           settle_low_water: bool) -> tuple[int, int] | None:
        """Truncate a longer remote copy to the local size, first thing: a live
        write that extends the file later must find no stale bytes over there
        (and a digest of the last block then compares equal). With
        ``settle_low_water``, under the same guard, turn the bitmap's low water
        into marks up to that size. Returns (local size, remote size after),
        None if the local file is gone."""
        with self._guard(path):
            fresh = _lstat_entry(self.local_root, path)
            if fresh is None or fresh[1].type != FileType.FILE:
                return None
            local_size = fresh[1].size
            if local_size < remote_size:
                self._send(Op(OpKind.TRUNCATE, path, length=local_size))
                remote_size = local_size
            if settle_low_water:
                self.store.expand_low_water(path, remote_size)
        return local_size, remote_size

    def _bitmap_ranges(self, bitmap: DirtyBitmap, local_size: int,
                       remote_size: int) -> list[tuple[int, int]]:
        """Dirty blocks, plus [low water, remote size): the remote still has
        bytes there that the primary truncated away (and maybe re-extended)."""
        blocks = set(bitmap.blocks())
        stale_end = min(remote_size, local_size)
        if bitmap.low_water is not None and bitmap.low_water < stale_end:
            blocks.update(range(bitmap.low_water // bitmap.block_size,
                                block_count(stale_end, bitmap.block_size)))
        return blocks_to_ranges(sorted(blocks), bitmap.block_size, local_size, self.max_write)

    def _send_range(self, path: str, offset: int, length: int, remote_end: int,
                    bitmap_block: int = 0) -> int | None:
        """Re-read [offset, offset+length) and WRITE it, unless it is zeros past
        ``remote_end`` (the remote's end of file: past it, it reads zeros too).
        Returns the remote's end of file after this, or None if the local file
        is gone. With ``bitmap_block`` (the bitmap's block size), clears the
        blocks this range covers once the remote has them."""
        if self._bucket is not None:
            delay = self._bucket.take(length, self._clock())
            if delay > 0:
                self._sleep(delay)      # outside the guard: live writes go on
        with self._guard(path):
            fd = _open_regular(self.local_root, path)
            if fd is None:
                return None
            try:
                data = os.pread(fd, length, offset)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if data and (offset < remote_end or data.count(0) != len(data)):
                self._send(Op(OpKind.WRITE, path, offset=offset, data=data))
                remote_end = max(remote_end, offset + len(data))
            if bitmap_block:
                end = offset + len(data)
                first = -(-offset // bitmap_block)
                # The file's last block is whole once its end is read.
                stop = block_count(end, bitmap_block) if end >= size else end // bitmap_block
                self.store.clear(path, first, stop - first)
        self._work(length)
        return remote_end

    def _finish_file(self, path: str, remote: Entry | None, remote_size: int,
                     content_sent: bool = True) -> None:
        """Final size, then metadata, from a fresh lstat."""
        with self._guard(path):
            fresh = _lstat_entry(self.local_root, path)
            if fresh is None or fresh[1].type != FileType.FILE:
                return
            st, entry = fresh
            if entry.size != remote_size:
                self._send(Op(OpKind.TRUNCATE, path, length=entry.size))
                content_sent = True
            self._send_metadata(path, st, entry, remote, path in self._created, content_sent)

    # ---- sending, cursor -------------------------------------------------

    def _send_new(self, op: Op) -> None:
        """Send an op that creates a name (``path2`` for LINK). If the receiver
        has one there already, a live op made it after the manifest was read:
        replace it (the caller holds the guard and checked the local tree)."""
        try:
            self._send(op)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
            self._delete(op.path2 if op.kind == OpKind.LINK else op.path)
            self._send(op)

    def _delete(self, path: str) -> None:
        """DELETE ``path`` on the remote; nothing there (its parent gone too,
        by a live op) is what was asked."""
        try:
            self._send(Op(OpKind.DELETE, path))
        except OSError as e:
            if (isinstance(e, (ConnectionError, TimeoutError))
                    or e.errno not in (errno.ENOENT, errno.ENOTDIR)):
                raise

    def _send(self, op: Op) -> None:
        self.remote.send(op)
        self._progress["ops_sent"] += 1
        self._progress["bytes_sent"] += len(op.data)

    def _generation(self) -> int | None:
        return self.store.generation if self.store else None

    def _load_cursor(self) -> dict[str, Any] | None:
        if self._cursor_path is None:
            return None
        try:
            with open(self._cursor_path, encoding="ascii") as f:
                cursor = json.load(f)
        except FileNotFoundError:
            return None
        # state_dir belongs to one replicated root, and local_root may name it
        # differently after a restart (/proc/self/fd/N): not part of the check.
        if (cursor.get("generation") != self._generation()
                or cursor.get("block_size") != self.block_size):
            return None
        return cursor

    def _maybe_save_cursor(self) -> None:
        if self._clock() - self._last_cursor_save >= CURSOR_SAVE_INTERVAL_S:
            self._save_cursor()

    def _save_cursor(self) -> None:
        self._last_cursor_save = self._clock()
        if self._cursor_path is None:
            return
        os.makedirs(os.path.dirname(self._cursor_path), exist_ok=True)
        atomic_write(self._cursor_path, json.dumps(self._cursor).encode("ascii"), mode=0o644)

    def _remove_cursor(self) -> None:
        # Durably: a stale cursor would make the next reintegration skip files.
        if self._cursor_path is not None and os.path.exists(self._cursor_path):
            os.unlink(self._cursor_path)
            fsync_dir(os.path.dirname(self._cursor_path))
