"""The primary's interception layer: a FUSE pass-through file system that is
mounted OVER a replicated directory and reports every change to a replicator.

The real directory is opened (``O_PATH``) before the mount; every operation is
then done relative to that descriptor (``*at()`` calls), so the application
keeps its path while the mount path itself now leads to this file system.

Each mutating operation runs "apply locally, then ``submit`` the ``Op``" under
the ordering lock, and ``wait``s outside it, so several operations can be in
flight while the channel sees them in local order. What ``wait`` waits for is
the replicator's durability (replication/sender.py): with barriers (the
default) only an FSYNC waits, for everything before it; per write, every op
waits for its acknowledgement. A local failure submits nothing and returns its
errno; a failed ``wait`` (or ``submit``) returns EIO to the application. A write
on an O_SYNC / O_DSYNC handle is followed by an FSYNC: a barrier on both copies.

What the ops carry, so that both trees end identical (the receiver applies
them literally, never following a symlink at the final component):

* CREATE / MKDIR / MKNOD / SYMLINK: ``mode`` = the permission bits actually in
  force (umask and set-gid inheritance applied, read back; MKNOD keeps the file
  type bits), ``uid``/``gid`` = the owner actually in force (the caller's, or
  the parent's group under a set-gid directory).
* UTIMENS: explicit ``atime_ns``/``mtime_ns`` read back after the change
  (UTIME_NOW / UTIME_OMIT resolved). The layer also sends UTIMENS for times
  that changed as a side effect: the parent directories of namespace changes
  and new directories / nodes / symlinks at once; files created, truncated or
  fallocated through a handle on flush (close), fsync and release.
* WRITE carries the bytes actually written (a short write sends what landed)
  and the file's times just after it (WRITE_SETS_TIMES): they supersede any
  earlier side effect on that inode, so no UTIMENS follows a write.
* FSYNC is sent before the local fsync runs, and the caller is answered when
  both are done: the two syncs overlap instead of adding up.
* CHOWN / CHMOD: the resulting owner / permission bits.

Changes to the replicated root's own attributes (chmod/chown/utimens on the
mount point) are applied locally but not replicated: ops never name the root.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import stat
import sys
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Protocol

from . import native_fuse
from .ordering_lock import OrderingLock
from .ops import FSYNC_DATASYNC, UTIME_NOW, UTIME_OMIT, WRITE_SETS_TIMES, Op, OpKind

log = logging.getLogger("replication.fuse")

# libfuse 3's capability bits (fuse_common.h), named in the init log line.
FUSE_CAPS = {
    "async_read": 1 << 0, "posix_locks": 1 << 1, "atomic_o_trunc": 1 << 3,
    "export_support": 1 << 4, "dont_mask": 1 << 6, "splice_write": 1 << 7,
    "splice_move": 1 << 8, "splice_read": 1 << 9, "flock_locks": 1 << 10,
    "ioctl_dir": 1 << 11, "auto_inval_data": 1 << 12, "readdirplus": 1 << 13,
    "readdirplus_auto": 1 << 14, "async_dio": 1 << 15, "writeback_cache": 1 << 16,
    "no_open_support": 1 << 17, "parallel_dirops": 1 << 18, "posix_acl": 1 << 19,
    "handle_killpriv": 1 << 20, "cache_symlinks": 1 << 23, "no_opendir_support": 1 << 24,
    "explicit_inval_data": 1 << 25, "expire_only": 1 << 26, "setxattr_ext": 1 << 27,
}
# Not asked for: the kernel's writeback cache (docs/DESIGN.md, "The replication
# channel"). A write-back that fails here (ENOSPC, EIO) leaves the application's
# bytes in the kernel's page cache, clean and readable, and the file's size as the
# kernel computed it (with the writeback cache the kernel's size is authoritative:
# it ignores the size our getattr reports), while neither disk holds them; dropping
# those pages needs an inode invalidation sent from another thread after the reply
# (from the write handler it deadlocks on the pages under write-back), and the size
# cannot be taken back at all. That explains the copies a chaos check found differing
# after disk-full-primary with it on (7f552d9); not those after disk-full-secondary and
# failover-during-reintegration, which are still unexplained.
FUSE_CAP_WRITEBACK_CACHE = FUSE_CAPS["writeback_cache"]


def caps_named(mask: int) -> str:
    """``mask`` as capability names joined by '+' (unknown bits in hex)."""
    names = [name for name, bit in FUSE_CAPS.items() if mask & bit]
    rest = mask & ~sum(FUSE_CAPS.values())
    return "+".join(names + ([hex(rest)] if rest else [])) or "none"


def negotiated_of(conn: Any) -> dict[str, Any]:
    """What libfuse's ``fuse_conn_info`` holds at init (before libfuse clamps
    max_write to its buffer): protocol, sizes, capabilities offered and wanted."""
    return {"proto": f"{conn.proto_major}.{conn.proto_minor}",
            "max_write": conn.max_write, "max_read": conn.max_read,
            "max_readahead": conn.max_readahead, "max_background": conn.max_background,
            "congestion_threshold": conn.congestion_threshold,
            "capable": caps_named(conn.capable), "want": caps_named(conn.want)}


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_SYMLINK_NOFOLLOW = 0x100

# Flags that must not reach the underlying open: O_APPEND (the kernel computes the
# offset of each write and the op carries it; an O_APPEND fd would ignore it),
# O_DIRECT (our buffers are not aligned), creation flags (handled by create()).
_STRIP_FLAGS = os.O_APPEND | os.O_DIRECT | os.O_CREAT | os.O_EXCL | os.O_NOCTTY
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


class Replicator(Protocol):
    """A replicator may also offer ``submit_many(ops) -> [ticket]``: several ops at
    once, in order (replication/sender.py sends them together); without it each op
    is submitted alone."""

    def submit(self, op: Op) -> Any:
        """Enqueue ``op``; called while the caller holds the ordering lock. Returns a
        ticket, opaque here, for ``wait``."""

    def wait(self, ticket: Any) -> None:
        """Block until acknowledged; an exception makes the FUSE op fail with EIO."""


class _ExclusiveOnly:
    """A plain (R)Lock supplied by the replicator: both sides take it whole."""

    def __init__(self, lock) -> None:
        self._lock = lock

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def shared(self):
        return self._lock


def ordering_lock_for(replicator: object) -> OrderingLock | _ExclusiveOnly:
    """The replicator's ``ordering_lock`` when it has one (so reintegration and the
    FUSE layer exclude each other), else a new OrderingLock."""
    lock = getattr(replicator, "ordering_lock", None)
    if lock is None:
        return OrderingLock()
    if isinstance(lock, OrderingLock):
        return lock
    return _ExclusiveOnly(lock)


class _InodeLocks:
    """One mutex per open inode (st_dev, st_ino), shared by all its handles."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._locks: dict[tuple[int, int], list] = {}

    def take(self, key: tuple[int, int]) -> threading.Lock:
        with self._mu:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.Lock(), 0]
            entry[1] += 1
            return entry[0]

    def drop(self, key: tuple[int, int]) -> None:
        with self._mu:
            entry = self._locks[key]
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]


@dataclass(eq=False)
class _Handle:
    fd: int
    key: tuple[int, int]
    ilock: threading.Lock
    sync: int | None = None     # O_SYNC / O_DSYNC: each write is a barrier (FSYNC mode bits)
    orphan_path: str | None = None  # name found for an unlinked-but-still-linked inode


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
_libc.futimens.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]


def _check(res: int, what: str) -> None:
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _timespec(ns: int) -> tuple[int, int]:
    if ns in (UTIME_NOW, UTIME_OMIT):
        return 0, ns
    return divmod(ns, 1_000_000_000)


def _sync_mode(flags: int) -> int | None:
    """The FSYNC op mode an O_SYNC / O_DSYNC handle's writes carry, else None."""
    if flags & os.O_SYNC == os.O_SYNC:     # O_SYNC includes O_DSYNC's bit
        return 0
    if flags & os.O_DSYNC:
        return FSYNC_DATASYNC
    return None


def _rel(path: str | None) -> str:
    """The path below the root of a FUSE path. libfuse gives None only with a file
    handle (an unlinked file), and the callers use the handle then."""
    if path is None:
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
    return path[1:]


def _ns_of(ts) -> int:
    """A timespec from libfuse in ns, UTIME_NOW / UTIME_OMIT kept as such: with
    them libfuse leaves tv_sec unset (a change of the mtime alone, as ``touch -m``
    or the kernel's writeback cache makes, brings the atime as UTIME_OMIT with
    any tv_sec)."""
    if ts.tv_nsec in (UTIME_NOW, UTIME_OMIT):
        return ts.tv_nsec
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _at(rel: str) -> str:
    return rel or "."


class ReplicatedFS:
    """mfusepy operations (path based, ``use_ns``) over the directory ``root_fd``."""

    use_ns = True

    def __init__(self, root_fd: int, replicator: Replicator, *, read_only: bool = False,
                 ready: Callable[[], None] | None = None,
                 lock: OrderingLock | _ExclusiveOnly | None = None,
                 context: Callable[[], tuple[int, int, int]] | None = None,
                 trust_page_cache: bool | None = None) -> None:
        """``context()`` gives the calling process's (uid, gid, pid) (libfuse's
        fuse_get_context when mounted). ``trust_page_cache`` (off by default; never
        on the read-only view): see ``init_with_config``."""
        self._root = root_fd
        self._rep = replicator
        self.read_only = read_only
        self.trust_page_cache = bool(trust_page_cache)
        if self.trust_page_cache and read_only:
            raise ValueError("the read-only view cannot trust its page cache: the receiver writes underneath")
        self._ready = ready
        self._lock = lock if lock is not None else ordering_lock_for(replicator)
        self._ilocks = _InodeLocks()
        self._handles: dict[int, _Handle] = {}
        self._context = context or (lambda: (os.geteuid(), os.getegid(), os.getpid()))
        self.negotiated: dict[str, Any] = {}
        self._native: native_fuse.NativeWrites | None = None   # C serves writes (serve)
        self._c_opens: Any = None      # the C data plane when it serves opens (serve)
        # fd -> its path below the root or None (the low-level API: fd_path), for the
        # data operations the kernel names by handle alone
        self._fd_name: Callable[[int], str | None] | None = None
        self._adopting = threading.Lock()

    # ---- plumbing -----------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    def _data_section(self) -> contextlib.AbstractContextManager:
        """Around a data change made under the shared ordering lock and its
        submission, when C serves writes: they wait meanwhile (channel order = local
        order; replication/native_fuse.py)."""
        return self._native.section() if self._native is not None else contextlib.nullcontext()

    def _submit(self, ops: Sequence[Op | None]) -> list[object]:
        """Under the ordering lock, after the local change succeeded. When C serves
        writes, the writes it queued before go first."""
        native = self._native
        if native is None:
            return self._submit_now(ops)
        with native.section():
            try:
                queued = native.take_ops_locked()
            except OSError as e:
                raise OSError(errno.EIO, str(e)) from e
            if not queued:
                return self._submit_now(ops)
            # one submission: on the wire together (a barrier and the writes before it)
            try:
                tickets = self._submit_now([*queued, *ops])
            except BaseException as e:
                native.not_submitted(queued, e)
                raise
            return tickets[len(queued):]

    def _submit_now(self, ops: Sequence[Op | None]) -> list[object]:
        todo = [op for op in ops if op is not None]
        many = getattr(self._rep, "submit_many", None)
        if many is not None and len(todo) > 1:
            try:
                return list(many(todo))
            except Exception as e:  # noqa: BLE001 - any failure: the caller gets EIO
                log.error("event=replicate_submit_failed ops=%d first=%r error=%r", len(todo),
                          todo[0].describe(), e)
                raise OSError(errno.EIO, f"not replicated: {e}") from e
        tickets = []
        for op in todo:
            try:
                tickets.append(self._rep.submit(op))
            except Exception as e:  # noqa: BLE001 - any failure: the caller gets EIO
                log.error("event=replicate_submit_failed op=%r error=%r", op.describe(), e)
                raise OSError(errno.EIO, f"not replicated: {e}") from e
        return tickets

    @contextlib.contextmanager
    def _noted(self, *paths: str | None) -> Iterator[None]:
        """Activity log (if the replicator keeps one): the paths are durably
        noted before the change is applied; held until it was submitted."""
        activity = getattr(self._rep, "activity", None)
        token = activity.begin_paths(*[p for p in paths if p]) if activity is not None else None
        try:
            yield
        finally:
            if activity is not None and token is not None:
                activity.end(token)

    @contextlib.contextmanager
    def _written(self, rel: str | None, offset: int, length: int) -> Iterator[None]:
        """Same for the regions a write touches."""
        activity = getattr(self._rep, "activity", None)
        token = (activity.begin_write(rel, offset, length)
                 if activity is not None and rel else None)
        try:
            yield
        finally:
            if activity is not None and token is not None:
                activity.end(token)

    def _wait(self, tickets: list[object]) -> None:
        for ticket in tickets:
            try:
                self._rep.wait(ticket)
            except Exception as e:  # noqa: BLE001
                log.warning("event=replicate_wait_failed error=%r", e)
                raise OSError(errno.EIO, f"not acknowledged: {e}") from e

    def _lstat(self, rel: str) -> os.stat_result:
        return os.stat(_at(rel), dir_fd=self._root, follow_symlinks=False)

    def _times_op(self, rel: str, st: os.stat_result | None = None) -> Op | None:
        """UTIMENS carrying the times ``rel`` has now (None for the root)."""
        if not rel:
            return None
        if st is None:
            st = self._lstat(rel)
        return Op(OpKind.UTIMENS, rel, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)

    def _handle(self, fh: int | None) -> _Handle:
        h = self._handle_or_none(fh)
        if h is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return h

    def _handle_or_none(self, fh: int | None) -> _Handle | None:
        """The handle ``fh``; one the C data plane opened (native_fuse: open and
        release of handles Python never needed stay there) is adopted first."""
        if fh is None:
            return None
        h = self._handles.get(fh)
        if h is None and self._c_opens is not None:
            with self._adopting:
                h = self._handles.get(fh)
                if h is None:
                    flags = self._c_opens.adopt(fh)
                    if flags >= 0:
                        self._register(fh, flags)
                        h = self._handles[fh]
        return h

    def _register(self, fd: int, flags: int) -> int:
        """The file handle given to the kernel is the descriptor itself: the C
        read path (replication/native_fuse.py) preads on it without a lookup. A
        descriptor is unique while open, and is closed only after its handle is
        dropped (``release``)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        self._handles[fd] = _Handle(fd, key, self._ilocks.take(key), sync=_sync_mode(flags))
        return fd

    def _data_path(self, path: str | None, h: _Handle) -> str | None:
        """The name to replicate a handle's data op under; None if the inode has no
        name any more (its changes are then invisible to everyone but its openers).
        Called under the shared ordering lock, so names cannot change meanwhile."""
        if path is not None:
            return path[1:]
        if self._fd_name is not None:
            rel = self._fd_name(h.fd)   # the name the kernel reached it by, if still its own
            if rel:
                return rel
        st = os.fstat(h.fd)
        if st.st_nlink == 0:
            return None
        # Unlinked under this name but still linked elsewhere (hard link): find it.
        if h.orphan_path is not None:
            try:
                cst = self._lstat(h.orphan_path)
                if (cst.st_dev, cst.st_ino) == h.key:
                    return h.orphan_path
            except OSError:
                pass
        h.orphan_path = self._find_inode(h.key)
        if h.orphan_path is None:
            log.error("event=replicate_no_name inode=%s", h.key)
            raise OSError(errno.EIO, "cannot name the file to replicate this change")
        return h.orphan_path

    def _find_inode(self, key: tuple[int, int]) -> str | None:
        todo = [""]
        while todo:
            rel = todo.pop()
            fd = os.open(_at(rel), os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS, dir_fd=self._root)
            try:
                with os.scandir(fd) as it:
                    for e in it:
                        child = f"{rel}/{e.name}" if rel else e.name
                        if e.is_dir(follow_symlinks=False):
                            todo.append(child)
                        elif e.inode() == key[1]:
                            st = self._lstat(child)
                            if (st.st_dev, st.st_ino) == key:
                                return child
            finally:
                os.close(fd)
        return None

    def _own(self, rel: str, st: os.stat_result, uid: int, gid: int, perm: int,
             fd: int | None = None) -> os.stat_result:
        """Give a node we just created (as root) its caller's owner and exactly ``perm``
        (umask undone; a set-gid parent's group and, for directories, its set-gid bit
        kept). Returns the resulting stat."""
        pst = self._lstat(_parent(rel))
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
            if stat.S_ISDIR(st.st_mode):
                perm |= stat.S_ISGID
        if (st.st_uid, st.st_gid) != (uid, gid):
            if fd is not None:
                os.fchown(fd, uid, gid)
            else:
                os.chown(rel, uid, gid, dir_fd=self._root, follow_symlinks=False)
            st = os.fstat(fd) if fd is not None else self._lstat(rel)
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != perm:
            if fd is not None:
                os.fchmod(fd, perm)
            else:
                os.chmod(rel, perm, dir_fd=self._root, follow_symlinks=False)
            st = os.fstat(fd) if fd is not None else self._lstat(rel)
        return st

    # ---- lifecycle ------------------------------------------------------------
    def init_with_config(self, conn: Any, config: Any) -> None:
        """libfuse's init: record what the kernel and libfuse offer (one log line,
        and ``negotiated`` for tests and benchmarks). The kernel's writeback cache
        is deliberately not asked for (see FUSE_CAP_WRITEBACK_CACHE above).

        With ``trust_page_cache`` (for a primary: every change to the directory comes
        through this mount, as kernel_cache already assumes) libfuse's default
        auto_inval_data is turned off. With it the kernel asks for the attributes
        before a read that follows a write, sees the mtime our own write moved, and
        drops the file's whole page cache: reads after writes (a database's pages,
        its WAL at recovery) went back to user space. Without it the cache stays;
        it stays right because writes through the mount update the cached pages
        (a failed or short write un-caches the pages it touched, in the kernel),
        and a size change the kernel did not make still drops them. NOT the default
        yet, because of hard links: libfuse's high-level API gives each *name* its
        own kernel inode, so a write through one name leaves the other name's
        cached pages stale; auto_inval_data bounds that to attr_timeout (1 s),
        without it the staleness lasts until the kernel drops that inode
        (tests/lab/test_fuse_fs.py shows both). Measured on a warm 64 MiB file,
        one 8 KiB write + four 8 KiB reads: 8.4k/s trusted vs 2.9k/s default."""
        if conn is not None and self.trust_page_cache:
            conn.want &= ~FUSE_CAPS["auto_inval_data"]
        if conn is not None:
            self.negotiated = negotiated_of(conn)
            log.info("event=fuse_init %s", " ".join(f"{k}={v}" for k, v in self.negotiated.items()))
        self.init("/")

    def init(self, path: str) -> None:
        if self._ready is not None:
            self._ready()

    # ---- reads (straight to the local directory) --------------------------------
    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        h = self._handle_or_none(fh)
        if h is not None:
            st = os.fstat(h.fd)
        else:
            if path is None:
                raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
            st = self._lstat(path[1:])
        return {"st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_size": st.st_size,
                "st_rdev": st.st_rdev, "st_blocks": st.st_blocks, "st_blksize": st.st_blksize,
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh: int) -> list:
        fd = os.open(_at(path[1:]), os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS, dir_fd=self._root)
        try:
            out = [(".", {"st_ino": os.fstat(fd).st_ino, "st_mode": stat.S_IFDIR}, 0),
                   ("..", {"st_ino": os.stat("..", dir_fd=fd).st_ino, "st_mode": stat.S_IFDIR}, 0)]
            with os.scandir(fd) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        mode = stat.S_IFDIR
                    elif e.is_file(follow_symlinks=False):
                        mode = stat.S_IFREG
                    elif e.is_symlink():
                        mode = stat.S_IFLNK
                    else:
                        mode = 0  # DT_UNKNOWN: the reader stats it
                    out.append((e.name, {"st_ino": e.inode(), "st_mode": mode}, 0))
            return out
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        return os.readlink(path[1:], dir_fd=self._root)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(self._handle(fh).fd, size, offset)

    def statfs(self, path: str) -> dict:
        sv = os.statvfs(self._root)
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                             "f_files", "f_ffree", "f_favail", "f_namemax")}

    def access(self, path: str, amode: int) -> int:
        self._lstat(path[1:])  # the kernel checks permissions (default_permissions)
        if amode & os.W_OK:
            self._writable()
        return 0

    # ---- open files -------------------------------------------------------------
    def _local_flags(self, flags: int) -> int:
        """The flags of our own open of the real file."""
        return (flags & ~_STRIP_FLAGS) | _OPEN_FLAGS

    def open(self, path: str, flags: int) -> int:
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            self._writable()
        rel = path[1:]
        oflags = self._local_flags(flags)
        if not flags & os.O_TRUNC:
            return self._register(os.open(rel, oflags, dir_fd=self._root), flags)
        with self._lock, self._noted(rel):  # open(O_TRUNC) changes the file
            fd = os.open(rel, oflags, dir_fd=self._root)
            try:
                fh = self._register(fd, flags)
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            tickets = self._submit([Op(OpKind.TRUNCATE, rel, length=0), self._times_op(rel, st)])
        self._wait(tickets)
        return fh

    def create(self, path: str, mode: int, flags: int) -> int:
        self._writable()
        uid, gid, _ = self._context()
        rel = path[1:]
        oflags = self._local_flags(flags)
        with self._lock, self._noted(rel):
            try:
                fd = os.open(rel, oflags | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode), dir_fd=self._root)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                fd = None
            if fd is not None:
                tickets, fh = self._created(rel, fd, mode, uid, gid, flags)
        if fd is None:  # it existed after all: a plain open
            return self.open(path, flags)
        self._wait(tickets)
        return fh

    def _created(self, rel: str, fd: int, mode: int, uid: int, gid: int,
                 flags: int) -> tuple[list, int]:
        """create()'s second half, under the ordering lock."""
        try:
            st = self._own(rel, os.fstat(fd), uid, gid, stat.S_IMODE(mode), fd=fd)
            fh = self._register(fd, flags)
        except BaseException:
            os.close(fd)
            os.unlink(rel, dir_fd=self._root)
            raise
        tickets = self._submit([
            Op(OpKind.CREATE, rel, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid),
            self._times_op(rel, st), self._times_op(_parent(rel))])
        return tickets, fh

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self._writable()
        h = self._handle(fh)
        with self._lock.shared(), h.ilock, self._data_section(), \
                self._written(self._data_path(path, h), offset, len(data)):
            n = os.pwrite(h.fd, data, offset)
            rel = self._data_path(path, h)
            if n < len(data):
                data = data[:n]
            op = None
            if rel and n:
                st = os.fstat(h.fd)
                op = Op(OpKind.WRITE, rel, offset=offset, data=data, mode=WRITE_SETS_TIMES,
                        atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)
            # An O_SYNC / O_DSYNC write is a barrier: durable on both copies when
            # answered (the local write is, the fd has the flag).
            tickets = self._submit([op, Op(OpKind.FSYNC, op.path, mode=h.sync)
                                    if op is not None and h.sync is not None else None])
            if self._native is not None and op is not None and h.sync is None:
                self._native.pin_locked(op.path, offset, n)   # the next writes here are C's
        self._wait(tickets)
        return n

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._writable()
        h = self._handle_or_none(fh)
        if h is not None:
            with self._lock.shared(), h.ilock, self._data_section(), \
                    self._noted(self._data_path(path, h)):
                os.ftruncate(h.fd, length)
                rel = self._data_path(path, h)
                tickets = self._submit([Op(OpKind.TRUNCATE, rel, length=length),
                                        self._times_op(rel, os.fstat(h.fd))] if rel else [])
        else:
            rel = _rel(path)
            with self._lock, self._noted(rel):
                fd = os.open(rel, os.O_WRONLY | os.O_NONBLOCK | _OPEN_FLAGS, dir_fd=self._root)
                try:
                    os.ftruncate(fd, length)
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                tickets = self._submit([Op(OpKind.TRUNCATE, rel, length=length), self._times_op(rel, st)])
        self._wait(tickets)
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, length: int, fh: int) -> int:
        self._writable()
        h = self._handle(fh)
        with self._lock.shared(), h.ilock, self._data_section(), \
                self._noted(self._data_path(path, h)):
            _check(_libc.fallocate(h.fd, mode, offset, length), "fallocate")
            rel = self._data_path(path, h)
            tickets = self._submit([Op(OpKind.FALLOCATE, rel, mode=mode, offset=offset, length=length),
                                    self._times_op(rel, os.fstat(h.fd))] if rel else [])
        self._wait(tickets)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        h = self._handle(fh)
        sync = os.fdatasync if datasync else os.fsync
        if self.read_only:
            sync(h.fd)
            return 0
        with self._lock.shared(), h.ilock, self._data_section():
            rel = self._data_path(path, h)
            tickets = self._submit([Op(OpKind.FSYNC, rel, mode=FSYNC_DATASYNC if datasync else 0)
                                    if rel else None])
        self._sync_and_wait(lambda: sync(h.fd), tickets)
        return 0

    def _sync_and_wait(self, local_sync: Callable[[], None], tickets: list[object]) -> None:
        """The local sync while the replica syncs; answered when both are done
        (the local error first: it is the caller's own file system)."""
        local_error: OSError | None = None
        try:
            local_sync()
        except OSError as e:
            local_error = e
        self._wait(tickets)   # always: every submitted op is waited for
        if local_error is not None:
            raise local_error

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        rel = path[1:]

        def local_sync() -> None:
            fd = os.open(_at(rel), os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS, dir_fd=self._root)
            try:
                (os.fdatasync if datasync else os.fsync)(fd)
            finally:
                os.close(fd)

        if self.read_only:
            local_sync()
            return 0
        with self._lock.shared():
            tickets = self._submit([Op(OpKind.FSYNC, rel)])  # '' = the whole tree
        self._sync_and_wait(local_sync, tickets)
        return 0

    # No flush: every change sends the times it gave the file with it (a write carries
    # them, create/truncate/fallocate send a UTIMENS in the same batch), so a close has
    # nothing to send. Without a flush operation libfuse answers the kernel's first
    # FLUSH with ENOSYS and the kernel sends no more: a close costs no request (a
    # crashed PostgreSQL's restart opens and closes every file of its directory twice).
    def release(self, path: str | None, fh: int) -> int:
        h = self._handles.pop(fh, None)
        if h is None:
            return 0
        try:
            os.close(h.fd)
        finally:
            self._ilocks.drop(h.key)
        return 0

    # ---- namespace ------------------------------------------------------------------
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._writable()
        uid, gid, _ = self._context()
        rel = path[1:]
        with self._lock, self._noted(rel):
            os.mknod(rel, mode, dev, dir_fd=self._root)
            try:
                st = self._own(rel, self._lstat(rel), uid, gid, stat.S_IMODE(mode))
            except BaseException:
                os.unlink(rel, dir_fd=self._root)
                raise
            tickets = self._submit([
                Op(OpKind.MKNOD, rel, mode=st.st_mode, rdev=st.st_rdev, uid=st.st_uid, gid=st.st_gid),
                self._times_op(rel, st), self._times_op(_parent(rel))])
        self._wait(tickets)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._writable()
        uid, gid, _ = self._context()
        rel = path[1:]
        perm = stat.S_IMODE(mode) & 0o1777
        with self._lock:
            os.mkdir(rel, perm, dir_fd=self._root)
            try:
                st = self._own(rel, self._lstat(rel), uid, gid, perm)
            except BaseException:
                os.rmdir(rel, dir_fd=self._root)
                raise
            tickets = self._submit([
                Op(OpKind.MKDIR, rel, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid),
                self._times_op(rel, st), self._times_op(_parent(rel))])
        self._wait(tickets)
        return 0

    def symlink(self, target: str, source: str) -> int:
        """mfusepy order: ``target`` is the new link's path, ``source`` its contents."""
        self._writable()
        uid, gid, _ = self._context()
        rel = target[1:]
        with self._lock:
            os.symlink(source, rel, dir_fd=self._root)
            try:
                st = self._own(rel, self._lstat(rel), uid, gid, 0o777)
            except BaseException:
                os.unlink(rel, dir_fd=self._root)
                raise
            tickets = self._submit([
                Op(OpKind.SYMLINK, rel, path2=source, uid=st.st_uid, gid=st.st_gid),
                self._times_op(rel, st), self._times_op(_parent(rel))])
        self._wait(tickets)
        return 0

    def link(self, target: str, source: str) -> int:
        """mfusepy order: ``target`` is the new name, ``source`` the existing file."""
        self._writable()
        new, old = target[1:], source[1:]
        with self._lock, self._noted(new):
            os.link(old, new, src_dir_fd=self._root, dst_dir_fd=self._root, follow_symlinks=False)
            tickets = self._submit([Op(OpKind.LINK, old, path2=new), self._times_op(_parent(new))])
        self._wait(tickets)
        return 0

    def unlink(self, path: str) -> int:
        self._writable()
        rel = path[1:]
        with self._lock:
            os.unlink(rel, dir_fd=self._root)
            tickets = self._submit([Op(OpKind.UNLINK, rel), self._times_op(_parent(rel))])
        self._wait(tickets)
        return 0

    def rmdir(self, path: str) -> int:
        self._writable()
        rel = path[1:]
        with self._lock:
            os.rmdir(rel, dir_fd=self._root)
            tickets = self._submit([Op(OpKind.RMDIR, rel), self._times_op(_parent(rel))])
        self._wait(tickets)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._writable()
        src, dst = old[1:], new[1:]
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, "rename flags not supported")
        with self._lock, self._noted(src, dst):
            if flags:
                _check(_libc.renameat2(self._root, os.fsencode(src), self._root, os.fsencode(dst), flags),
                       "renameat2")
            else:
                os.rename(src, dst, src_dir_fd=self._root, dst_dir_fd=self._root)
            parents = dict.fromkeys((_parent(src), _parent(dst)))
            tickets = self._submit([Op(OpKind.RENAME, src, path2=dst, mode=flags)]
                                   + [self._times_op(p) for p in parents])
        self._wait(tickets)
        return 0

    # ---- attributes -------------------------------------------------------------------
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        self._writable()
        h = self._handle_or_none(fh)
        perm = stat.S_IMODE(mode)
        with self._lock:
            if h is not None:
                os.fchmod(h.fd, perm)
                rel, st = self._data_path(path, h), os.fstat(h.fd)
            else:
                rel = _rel(path)
                os.chmod(_at(rel), perm, dir_fd=self._root, follow_symlinks=False)
                st = self._lstat(rel)
            tickets = self._submit([Op(OpKind.CHMOD, rel, mode=stat.S_IMODE(st.st_mode)) if rel else None])
        self._wait(tickets)
        return 0

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        self._writable()
        h = self._handle_or_none(fh)
        with self._lock:
            if h is not None:
                before = os.fstat(h.fd)
                os.fchown(h.fd, uid, gid)
                rel, st = self._data_path(path, h), os.fstat(h.fd)
            else:
                rel = _rel(path)
                before = self._lstat(rel)
                os.chown(_at(rel), uid, gid, dir_fd=self._root, follow_symlinks=False)
                st = self._lstat(rel)
            ops = []
            if rel:
                ops.append(Op(OpKind.CHOWN, rel, uid=st.st_uid, gid=st.st_gid))
                if stat.S_IMODE(st.st_mode) != stat.S_IMODE(before.st_mode):  # set-id bits cleared
                    ops.append(Op(OpKind.CHMOD, rel, mode=stat.S_IMODE(st.st_mode)))
            tickets = self._submit(ops)
        self._wait(tickets)
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None,
                fh: int | None = None) -> int:
        self._writable()
        h = self._handle_or_none(fh)
        atime, mtime = times if times is not None else (UTIME_NOW, UTIME_NOW)
        ts = (_Timespec * 2)(_Timespec(*_timespec(atime)), _Timespec(*_timespec(mtime)))
        with self._lock:
            if h is not None:
                _check(_libc.futimens(h.fd, ts), "futimens")   # glibc's utimensat refuses a NULL path
                rel, st = self._data_path(path, h), os.fstat(h.fd)
            else:
                rel = _rel(path)
                _check(_libc.utimensat(self._root, os.fsencode(_at(rel)), ts, _AT_SYMLINK_NOFOLLOW),
                       "utimensat")
                st = self._lstat(rel)
            tickets = self._submit([self._times_op(rel, st) if rel else None])
        self._wait(tickets)
        return 0


# ---- mounting ---------------------------------------------------------------------------

def mount_point_path(path: str) -> str:
    """``path`` made absolute and free of symlinks without touching its last
    component, which may be a mount whose server hangs or is gone."""
    path = os.path.abspath(path)
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail) if tail else path


def fuse_mount_at(path: str) -> str | None:
    """The ``major:minor`` of a FUSE mount whose mount point is ``path``, else None."""
    target = os.fsencode(mount_point_path(path))
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            sep = fields.index(b"-")
            mount_point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            if mount_point == target and fields[sep + 1].startswith(b"fuse"):
                found = fields[2].decode()  # the last one listed is the top of a stack
    return found


# The mount's readahead (the kernel gives a FUSE mount 128 KiB and libfuse can only
# lower it at init): 1 MiB, matching the 1 MiB requests. Sequential reads through
# the mount with the file's pages not cached here (the backing file's cached):
# 1.6-1.9 GB/s at 128 KiB, 2.4-3.5 GB/s at 1 MiB; random 8 KiB reads unchanged.
READ_AHEAD_KB = 1024


def set_read_ahead(root: str, kb: int = READ_AHEAD_KB, timeout: float = 10.0) -> bool:
    """Set the readahead of the FUSE mount on ``root`` once it is live (its INIT
    answered: the kernel sets the readahead from libfuse's answer, so an earlier
    write would be lowered again). Runs beside the serving loop; False (logged)
    when the mount or its /sys/class/bdi entry is not there."""
    deadline = time.monotonic() + timeout
    dev = fuse_mount_at(root)
    while dev is None and time.monotonic() < deadline:
        time.sleep(0.01)
        dev = fuse_mount_at(root)
    if dev is None:
        log.warning("event=read_ahead_not_set root=%s reason=%r", root, "not mounted")
        return False
    try:
        os.stat(root)   # answered only after INIT: from then on the value stays
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as e:
        log.warning("event=read_ahead_not_set root=%s dev=%s reason=%r", root, dev, str(e))
        return False
    log.info("event=read_ahead_set root=%s dev=%s kb=%d", root, dev, kb)
    return True


_fuse_cls = None


def _fuse_class():
    """mfusepy's FUSE, bound to libfuse3, passing through what its defaults drop:
    renameat2 flags and the file handle of chmod/chown/truncate/utimens."""
    global _fuse_cls
    if _fuse_cls is not None:
        return _fuse_cls
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy prefers libfuse2 otherwise
    import mfusepy

    if mfusepy.fuse_version_major != 3:
        raise ImportError(f"libfuse3 is needed, mfusepy loaded libfuse {mfusepy.fuse_version_major}")

    def fh_of(fip):
        return fip.contents.fh if fip else None

    class _Fuse(mfusepy.FUSE):
        def _path(self, path):
            return None if path is None else path.decode(self.encoding, self.errors)

        def rename_fuse_3(self, old, new, flags):
            return self.operations.rename(self._path(old), self._path(new), flags)

        def chmod_fuse_3(self, path, mode, fip):
            return self.operations.chmod(self._path(path), mode, fh_of(fip))

        def chown_fuse_3(self, path, uid, gid, fip):
            uid = -1 if uid == 0xFFFFFFFF else uid
            gid = -1 if gid == 0xFFFFFFFF else gid
            return self.operations.chown(self._path(path), uid, gid, fh_of(fip))

        def truncate_fuse_3(self, path, length, fip):
            return self.operations.truncate(self._path(path), length, fh_of(fip))

        def utimens_fuse_3(self, path, buf, fip):
            times = None
            if buf:
                times = (_ns_of(buf.contents.actime), _ns_of(buf.contents.modtime))
            return self.operations.utimens(self._path(path), times, fh_of(fip))

        def create(self, path, mode, fip):  # mfusepy's inspects the signature on every call
            fi = fip.contents
            fi.fh = self.operations.create(self._path(path), mode, fi.flags)
            return 0

    _fuse_cls = _Fuse
    _fuse_cls.get_context = staticmethod(mfusepy.fuse_get_context)
    return _fuse_cls


def _native_writes_for(fs: ReplicatedFS, replicator: object) -> native_fuse.NativeWrites | None:
    """C serves the writes of a mount whose replicator streams them (barrier
    durability, or a replicator saying ``streams_writes``) and that keeps its
    ordering lock as an OrderingLock; None otherwise (every write in Python)."""
    from .activity_log import DEFAULT_COLD_S, DEFAULT_REGION_SIZE
    durability = getattr(getattr(replicator, "durability", None), "value", None)
    if not (durability == "barrier" or getattr(replicator, "streams_writes", False)):
        return None
    if not isinstance(fs._lock, OrderingLock) or not native_fuse.available():
        return None
    activity = getattr(replicator, "activity", None)
    writes = native_fuse.NativeWrites(
        fs._submit_now, activity,
        region_size=getattr(activity, "region_size", DEFAULT_REGION_SIZE),
        idle_s=getattr(activity, "cold_s", DEFAULT_COLD_S) / 2)
    fs._native = writes
    lock = fs._lock
    dp = native_fuse.dataplane()

    def exclusive_taken() -> None:
        dp.block_writes()   # C writes in progress end, new ones wait
        writes.drain()      # what C queued goes before what the holder will submit

    lock.exclusive_hooks = (exclusive_taken, dp.unblock_writes)
    return writes


def _detach_native_writes(fs: ReplicatedFS) -> None:
    if getattr(fs._rep, "tree_durable", None) is not None:
        fs._rep.tree_durable = None   # type: ignore[attr-defined]
    if isinstance(fs._lock, OrderingLock):
        fs._lock.exclusive_hooks = None
    fs._native = None


def _stop_native_writes(fs: ReplicatedFS, writes: native_fuse.NativeWrites) -> None:
    """After the loop: C writes off, the queue drained into the replicator, the pins
    ended; then every change is Python's again."""
    writes.stop()
    _detach_native_writes(fs)
    log.info("event=native_writes_stopped %s",
             " ".join(f"{k}={v}" for k, v in sorted(writes.status().items())))


def serve(root: str, replicator: Replicator, *, read_only: bool = False,
          ready: Callable[[], None] | None = None,
          lock: OrderingLock | None = None, max_threads: int = 16,
          trust_page_cache: bool | None = None, native: bool | None = None) -> None:
    """Mount the replicating file system over ``root`` and serve it until unmounted.

    Blocks (multithreaded libfuse loop). ``ready`` is called once the kernel has
    connected (the mount is live). ``read_only`` mounts a read-only view (EROFS for
    every change) for the secondary; ``max_threads`` bounds libfuse's worker
    threads (operations in flight at once); ``trust_page_cache``: see
    ReplicatedFS.init_with_config (off by default); ``native``: read, getattr and, with
    barrier durability, writes served in C (replication/native_fuse.py; default: when
    built and not turned off). Raises
    if ``root`` already has a FUSE mount on it or the mount fails."""
    fuse_cls = _fuse_class()
    if native is None:
        native = native_fuse.wanted()
    elif native and not native_fuse.available():
        raise RuntimeError(native_fuse.why_unavailable())
    root = mount_point_path(root)
    if fuse_mount_at(root):
        raise RuntimeError(f"{root} already has a FUSE mount on it")
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # before the mount hides it
    try:
        fs = ReplicatedFS(root_fd, replicator, read_only=read_only, ready=ready, lock=lock,
                          context=fuse_cls.get_context, trust_page_cache=trust_page_cache)
        # kernel_cache on the primary: every change to the directory goes through
        # this mount (the primary is its only writer), so the kernel's page cache
        # stays right across opens and reads of cached pages never reach us. Not on
        # the secondary's read-only view: its receiver writes underneath.
        extra = {} if read_only else {"kernel_cache": True}
        threading.Thread(target=set_read_ahead, args=(root,), name="fuse-read-ahead",
                         daemon=True).start()
        writes = _native_writes_for(fs, replicator) if native and not read_only else None
        with native_fuse.installed(sys.modules["mfusepy"], root_fd,
                                   on_installed=writes.start if writes else None,
                                   writable=not read_only) \
                if native else contextlib.nullcontext(False) as in_c:
            if in_c:
                fs._c_opens = native_fuse.dataplane()
                if writes is not None and hasattr(replicator, "tree_durable"):
                    # its barriers answered by the durable mark let C answer fsyncs
                    replicator.tree_durable = writes.tree_durable
                log.info("event=fuse_native ops=%s writes=%s", ",".join(native_fuse.native_ops()),
                         "c" if writes else "python")
            else:
                if writes is not None:
                    _detach_native_writes(fs)
                    writes = None
                log.info("event=fuse_native ops=none reason=%r", native_fuse.why_unavailable()
                         or ("another mount of this process has them" if native else "turned off"))
            try:
                fuse_cls(fs, root, foreground=True, allow_other=True, default_permissions=True,
                         hard_remove=True, use_ino=True, ro=read_only, max_threads=max_threads,
                         fsname="hacluster-replica" if read_only else "hacluster",
                         subtype="hacluster", **extra)
            finally:
                if writes is not None:
                    _stop_native_writes(fs, writes)
            if in_c:
                log.info("event=fuse_native_served %s",
                         " ".join(f"{k}={v}" for k, v in sorted(native_fuse.counters().items())))
    finally:
        os.close(root_fd)
