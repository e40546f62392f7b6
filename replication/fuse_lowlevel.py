"""The primary's mount on libfuse's low-level API (replication/_lowlevel.c).

One kernel inode per file instead of one per name (the high-level API's, which
mfusepy serves): what makes a trusted page cache and long entry/attribute timeouts
safe on the primary, the only writer of its directory (docs/DESIGN.md "The floor").
C serves lookups, attributes, opens, reads, directory listings and the streamed
writes; every change of the tree comes here (``Bridge``) and is made by the same
path-based operations of ``ReplicatedFS`` as with the high-level API, so the rules
(activity log, channel order, barriers, peer loss) are written once.

Paths: C hands over node ids; ``Bridge`` turns them into paths (``node_path``) while
C holds its names lock, so no rename of a directory above can move them before the
operation has been made and submitted (_lowlevel.c says why that is enough). An
operation on an open file resolves its path in ``ReplicatedFS._data_path``, under the
ordering lock, from the descriptor itself (``fd_path``).

Only for a writable mount with the C extension built: the secondary's read-only view
stays on the high-level API (its receiver writes underneath: nothing may be cached
long there).
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import stat
import threading
from typing import Any, Callable, TypeVar

from . import native_fuse
from .fuse_fs import (ReplicatedFS, Replicator, _detach_native_writes, _native_writes_for,
                      _stop_native_writes, caps_named, fuse_mount_at, mount_point_path,
                      set_read_ahead)
from .ops import UTIME_NOW, UTIME_OMIT
from .ordering_lock import OrderingLock

log = logging.getLogger("replication.fuse")

# fuse_lowlevel.h's setattr bits
SET_ATTR_MODE = 1 << 0
SET_ATTR_UID = 1 << 1
SET_ATTR_GID = 1 << 2
SET_ATTR_SIZE = 1 << 3
SET_ATTR_ATIME = 1 << 4
SET_ATTR_MTIME = 1 << 5
SET_ATTR_ATIME_NOW = 1 << 7
SET_ATTR_MTIME_NOW = 1 << 8

# How long the kernel may keep names and attributes without asking (seconds). Long:
# every change to the primary's directory comes through this mount, and the kernel
# updates or drops what it cached for each change it makes (a write's size and times,
# a rename's names, a link count) whatever the timeout; with one kernel inode per file
# no other name of the file keeps an old copy (the high-level API's 1 s bounded that).
DEFAULT_ENTRY_TIMEOUT_S = 60.0
DEFAULT_ATTR_TIMEOUT_S = 60.0

F = TypeVar("F", bound=Callable[..., Any])


def _answered(fn: F) -> F:
    """A bridge call ends in a result or an OSError (its errno goes to the kernel);
    anything else is logged once and answered EIO."""
    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - the kernel gets EIO, the log says why
            log.error("event=fuse_request_failed op=%s error=%r", fn.__name__, e)
            raise OSError(errno.EIO, f"{fn.__name__}: {e}") from e
    return call  # type: ignore[return-value]


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class Bridge:
    """The requests C does not serve, as ReplicatedFS's path-based operations. Called
    by libfuse's worker threads through C (``call_bridge``), with the GIL."""

    def __init__(self, fs: ReplicatedFS, dataplane: Any) -> None:
        self.fs = fs
        self._dp = dataplane

    def _path(self, node: int) -> str:
        """'/rel' of a node (C holds the names lock); ENOENT when it has no name."""
        rel = self._dp.node_path(node)
        if rel is None:
            raise OSError(errno.ENOENT, "no name for this node")
        return "/" + rel if rel else "/"

    def _child(self, parent: int, name: bytes) -> str:
        base = self._path(parent)
        return (base if base != "/" else "") + "/" + _name(name)

    @staticmethod
    def _fh(fh: int) -> int | None:
        return fh if fh >= 0 else None

    # ---- lifecycle -------------------------------------------------------------------
    @_answered
    def init(self, info: dict[str, Any]) -> None:
        self.fs.negotiated = {
            "api": info["api"], "proto": f"{info['proto_major']}.{info['proto_minor']}",
            "max_write": info["max_write"], "max_readahead": info["max_readahead"],
            "max_background": info["max_background"],
            "capable": caps_named(info["capable"]), "want": caps_named(info["want"])}
        log.info("event=fuse_init %s", " ".join(f"{k}={v}" for k, v in self.fs.negotiated.items()))
        self.fs.init("/")

    # ---- attributes ------------------------------------------------------------------
    @_answered
    def setattr(self, node: int, fh: int, valid: int, mode: int, uid: int, gid: int,
                size: int, atime: int, mtime: int) -> None:
        h = self._fh(fh)
        path = None if h is not None else self._path(node)
        fs = self.fs
        if valid & SET_ATTR_MODE:
            fs.chmod(path, stat.S_IMODE(mode), h)
        if valid & (SET_ATTR_UID | SET_ATTR_GID):
            fs.chown(path, uid if valid & SET_ATTR_UID else -1,
                     gid if valid & SET_ATTR_GID else -1, h)
        if valid & SET_ATTR_SIZE:
            fs.truncate(path, size, h)
        if valid & (SET_ATTR_ATIME | SET_ATTR_MTIME | SET_ATTR_ATIME_NOW | SET_ATTR_MTIME_NOW):
            fs.utimens(path, (UTIME_NOW if valid & SET_ATTR_ATIME_NOW else
                              atime if valid & SET_ATTR_ATIME else UTIME_OMIT,
                              UTIME_NOW if valid & SET_ATTR_MTIME_NOW else
                              mtime if valid & SET_ATTR_MTIME else UTIME_OMIT), h)

    # ---- namespace ---------------------------------------------------------------------
    @_answered
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int) -> None:
        self.fs.mknod(self._child(parent, name), mode, rdev)

    @_answered
    def mkdir(self, parent: int, name: bytes, mode: int) -> None:
        self.fs.mkdir(self._child(parent, name), mode)

    @_answered
    def symlink(self, parent: int, name: bytes, target: bytes) -> None:
        self.fs.symlink(self._child(parent, name), _name(target))

    @_answered
    def link(self, node: int, newparent: int, newname: bytes) -> None:
        self.fs.link(self._child(newparent, newname), self._path(node))

    @_answered
    def unlink(self, parent: int, name: bytes) -> None:
        self.fs.unlink(self._child(parent, name))

    @_answered
    def rmdir(self, parent: int, name: bytes) -> None:
        self.fs.rmdir(self._child(parent, name))

    @_answered
    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> None:
        self.fs.rename(self._child(parent, name), self._child(newparent, newname), flags)

    # ---- open files ----------------------------------------------------------------------
    @_answered
    def open(self, node: int, flags: int) -> int:
        return self.fs.open(self._path(node), flags)

    @_answered
    def create(self, parent: int, name: bytes, mode: int, flags: int) -> int:
        return self.fs.create(self._child(parent, name), mode, flags)

    @_answered
    def release(self, fh: int) -> None:
        self.fs.release(None, fh)

    @_answered
    def write(self, node: int, fh: int, data: bytes, offset: int) -> int:
        return self.fs.write(None, data, offset, fh)

    @_answered
    def fsync(self, node: int, fh: int, datasync: int) -> None:
        self.fs.fsync(None, datasync, fh)

    @_answered
    def fallocate(self, node: int, fh: int, mode: int, offset: int, length: int) -> None:
        self.fs.fallocate(None, mode, offset, length, fh)

    @_answered
    def fsyncdir(self, node: int, datasync: int) -> None:
        self.fs.fsyncdir(self._path(node), datasync, 0)   # the handle is not used


class DataPlaneBusy(RuntimeError):
    """Another mount of this process holds the C data plane (tests run several)."""


def fd_limits(soft: int, hard: int, nr_open: int, privileged: bool) -> tuple[int, int]:
    """The descriptor limits to serve with: the node of every inode the kernel keeps
    cached holds an O_PATH descriptor (60 s entries: a database's whole directory), so
    the soft limit goes up to the hard one, and a privileged mount raises the hard one
    to the kernel's nr_open. RLIM_INFINITY (-1) stays as it is."""
    inf = resource.RLIM_INFINITY
    if privileged and hard != inf and hard < nr_open:
        hard = nr_open
    if soft != inf and (hard == inf or soft < hard):
        soft = hard
    return soft, hard


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
    except (OSError, ValueError):
        nr_open = hard
    error = ""
    for privileged in (os.geteuid() == 0, False):   # a container may refuse the hard one
        want = fd_limits(soft, hard, nr_open, privileged)
        if want == (soft, hard):
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            break
        except (OSError, ValueError) as e:
            error = str(e)
    else:
        log.warning("event=fd_limit_not_raised soft=%d hard=%d error=%r", soft, hard, error)
        return
    log.info("event=fd_limit soft=%d hard=%d", *resource.getrlimit(resource.RLIMIT_NOFILE))


MOUNT_OPTIONS = "allow_other,default_permissions,fsname=hacluster,subtype=hacluster"


def available() -> bool:
    return native_fuse.available()


def serve_lowlevel(root: str, replicator: Replicator, *,
                   ready: Callable[[], None] | None = None,
                   lock: OrderingLock | None = None, max_threads: int = 16,
                   trust_page_cache: bool | None = True,
                   entry_timeout: float = DEFAULT_ENTRY_TIMEOUT_S,
                   attr_timeout: float = DEFAULT_ATTR_TIMEOUT_S) -> None:
    """Mount the replicating file system over ``root`` on the low-level API and serve it
    until unmounted (as fuse_fs.serve, writable only). ``trust_page_cache`` (see
    ReplicatedFS.init_with_config) is on unless False: what kept it off on the
    high-level API, a hard link's other name, has no pages of its own here. Raises
    RuntimeError when the C extension is not built or the mount fails, DataPlaneBusy
    (before mounting) when another mount of this process holds the C data plane."""
    if not native_fuse.available():
        raise RuntimeError(native_fuse.why_unavailable())
    root = mount_point_path(root)
    if fuse_mount_at(root):
        raise RuntimeError(f"{root} already has a FUSE mount on it")
    dp = native_fuse.dataplane()
    with native_fuse.claimed() as mine:
        if not mine:
            raise DataPlaneBusy("another mount of this process serves the C data plane")
        _raise_fd_limit()
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fs = ReplicatedFS(root_fd, replicator, ready=ready, lock=lock,
                              context=dp.req_context, trust_page_cache=trust_page_cache)
            fs._fd_name = dp.fd_path
            dp.set_root(root_fd)
            dp.set_python_ops(0, 0, 0, True)   # writable opens are served in C
            fs._c_opens = dp
            dp.ll_set_bridge(Bridge(fs, dp))
            writes = _native_writes_for(fs, replicator)
            if writes is not None:
                writes.start()
                if hasattr(replicator, "tree_durable"):
                    replicator.tree_durable = writes.tree_durable
            elif isinstance(fs._lock, OrderingLock):
                # names change only under the exclusive lock: its hooks expire the
                # remembered paths (with C writes on, block/unblock_writes do)
                fs._lock.exclusive_hooks = (dp.names_changed, dp.names_changed)
            # without hooks no remembered path could be trusted: every one looked up
            dp.fd_path_cache(isinstance(fs._lock, OrderingLock))
            log.info("event=fuse_native api=lowlevel writes=%s entry_timeout=%s attr_timeout=%s "
                     "trust_page_cache=%s", "c" if writes else "python", entry_timeout,
                     attr_timeout, fs.trust_page_cache)
            threading.Thread(target=set_read_ahead, args=(root,), name="fuse-read-ahead",
                             daemon=True).start()
            try:
                dp.ll_serve(os.fsencode(root), MOUNT_OPTIONS, max_threads, entry_timeout,
                            attr_timeout, fs.trust_page_cache)
            finally:
                if writes is not None:
                    _stop_native_writes(fs, writes)
                else:
                    _detach_native_writes(fs)
                dp.fd_path_cache(False)
                dp.ll_set_bridge(None)
                dp.set_root(-1)
                log.info("event=fuse_native_served api=lowlevel %s", " ".join(
                    f"{k}={v}" for k, v in sorted({**native_fuse.counters(),
                                                   **dp.ll_counters()}.items())))
        finally:
            os.close(root_fd)
