"""Apply Ops to a directory tree, confined to its root (receiver side).

Every path is resolved from one root directory fd with paths.parent_dir (no
symlink followed in a parent) and the final component is handled with *at()
calls that do not follow it. Data ops (write, truncate, fallocate, fsync)
only ever touch regular files: a device node or FIFO in the tree is never
opened for writing, so a MKNOD'ed block device cannot become a way out.

Errors surface as OSError with an errno (the receiver turns them into ACKs).
Also the read side of reintegration: tree manifest, block digests, blocks.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import os
import stat
from contextlib import ExitStack
from typing import Callable, Iterator, NamedTuple

import xxhash

from .ops import FSYNC_DATASYNC, UTIME_NOW, UTIME_OMIT, WRITE_SETS_TIMES, Op, OpKind
from .paths import DIR_FLAGS, check_relative, parent_dir

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.fchmodat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_int]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]
_libc.futimens.argtypes = [ctypes.c_int, ctypes.POINTER(_Timespec)]

AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
_READ_CHUNK = 8 * 1024 * 1024
_FD_CACHE = 64
_SYNCED_DIRS_MAX = 4096
# Ops that change which names a directory holds (its entries must be fsynced again).
_DIRENT_KINDS = frozenset({OpKind.CREATE, OpKind.MKNOD, OpKind.MKDIR, OpKind.SYMLINK,
                           OpKind.LINK, OpKind.UNLINK})
# Ops that may move or remove whole directories: every cached "synced" mark is dropped.
_TREE_KINDS = frozenset({OpKind.RENAME, OpKind.RMDIR, OpKind.DELETE})
MAX_BLOCK_SIZE = 64 * 1024 * 1024


def _check(ret: int, what: str, path: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o777   # unknown: always chmod explicitly


def _timespec(ns: int) -> _Timespec:
    if ns in (UTIME_NOW, UTIME_OMIT):
        return _Timespec(0, ns)
    sec, nsec = divmod(ns, 1_000_000_000)
    return _Timespec(sec, nsec)


class Entry(NamedTuple):
    """One node of a tree manifest. type: f d l p c b s. size is 0 for
    directories (their size is file-system history, not content); ino/nlink let
    a comparer find hard-link groups."""
    path: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    target: str
    ino: int
    nlink: int
    rdev: int


def _type_letter(mode: int) -> str:
    fmt = stat.S_IFMT(mode)
    return {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
            stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFSOCK: "s"}.get(fmt, "?")


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class Applier:
    """Applies Ops under root_path. Not thread-safe: one applier thread per tree
    (the receiver applies in arrival order)."""

    def __init__(self, root_path: str) -> None:
        self.root_path = root_path
        self.root_fd = os.open(root_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._umask = _umask()
        # writable fds of regular files, by path; valid until a namespace op
        # changes what a cached path names (see _forget)
        self._files: collections.OrderedDict[str, int] = collections.OrderedDict()
        # directories fsynced by an FSYNC and whose entries no op changed since: an
        # FSYNC of a file in them need not fsync them again
        self._synced_dirs: set[str] = set()
        self._dispatch: dict[OpKind, Callable[[Op], None]] = {
            OpKind.WRITE: self._write, OpKind.TRUNCATE: self._truncate,
            OpKind.CREATE: self._create, OpKind.MKNOD: self._mknod, OpKind.MKDIR: self._mkdir,
            OpKind.RMDIR: self._rmdir, OpKind.UNLINK: self._unlink, OpKind.RENAME: self._rename,
            OpKind.LINK: self._link, OpKind.SYMLINK: self._symlink, OpKind.CHMOD: self._chmod,
            OpKind.CHOWN: self._chown, OpKind.UTIMENS: self._utimens,
            OpKind.FALLOCATE: self._fallocate, OpKind.FSYNC: self._fsync,
            OpKind.DELETE: self._delete,
        }

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._forget_all()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __enter__(self) -> "Applier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def apply(self, op: Op) -> None:
        """Apply one op; raises OSError (errno set) when it cannot be applied."""
        if op.kind in _DIRENT_KINDS:
            self._synced_dirs.discard(_parent(op.path))
            if op.kind == OpKind.LINK:
                self._synced_dirs.discard(_parent(op.path2))
        elif op.kind in _TREE_KINDS:
            self._synced_dirs.clear()
        try:
            self._dispatch[op.kind](op)
        except OSError:
            raise
        except (ValueError, OverflowError) as exc:   # e.g. NUL in a symlink target
            raise OSError(errno.EINVAL, f"{op.kind.name}: {exc}", op.path) from None

    # ------------------------------------------------------------ fd cache

    def _forget(self, *paths: str) -> None:
        for cached in [p for p in self._files if any(_under(p, q) for q in paths)]:
            os.close(self._files.pop(cached))

    def _forget_all(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])

    def _remember(self, path: str, fd: int) -> None:
        self._files[path] = fd
        while len(self._files) > _FD_CACHE:
            os.close(self._files.popitem(last=False)[1])

    def _open_regular(self, pfd: int, name: str, flags: int, path: str) -> int:
        """Open an existing regular file without following a symlink and
        without opening anything else (devices, FIFOs)."""
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            err = {stat.S_IFDIR: errno.EISDIR, stat.S_IFLNK: errno.ELOOP}.get(
                stat.S_IFMT(st.st_mode), errno.EINVAL)
            raise OSError(err, f"not a regular file ({_type_letter(st.st_mode)})", path)
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or fst.st_ino != st.st_ino:
            os.close(fd)
            raise OSError(errno.EAGAIN, "file changed while opening", path)
        return fd

    def _file(self, path: str) -> int:
        fd = self._files.get(path)
        if fd is not None:
            self._files.move_to_end(path)
            return fd
        with parent_dir(self.root_fd, path) as (pfd, name):
            fd = self._open_regular(pfd, name, os.O_WRONLY, path)
        self._remember(path, fd)
        return fd

    # ------------------------------------------------------------ data ops

    def _write(self, op: Op) -> None:
        fd = self._file(op.path)
        data = memoryview(op.data)
        done = 0
        while done < len(data):
            n = os.pwrite(fd, data[done:], op.offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "short write", op.path)
            done += n
        if op.mode & WRITE_SETS_TIMES:
            times = (_Timespec * 2)(_timespec(op.atime_ns), _timespec(op.mtime_ns))
            _check(_libc.futimens(fd, times), "futimens", op.path)

    def _truncate(self, op: Op) -> None:
        os.ftruncate(self._file(op.path), op.length)

    def _fallocate(self, op: Op) -> None:
        fd = self._file(op.path)
        _check(_libc.fallocate64(fd, op.mode, op.offset, op.length), "fallocate", op.path)

    def sync_tree(self) -> None:
        """Everything applied so far, on disk (syncfs of the copy's file system)."""
        _check(_libc.syncfs(self.root_fd), "syncfs", "")

    def _fsync(self, op: Op) -> None:
        if op.path == "":
            self.sync_tree()
            return
        sync = os.fdatasync if op.mode & FSYNC_DATASYNC else os.fsync
        fd = self._files.get(op.path)
        if fd is not None and _parent(op.path) in self._synced_dirs:
            # A regular file held open for its writes (the cache drops a path at every
            # namespace change that could make it name something else) whose entry is
            # durable already: its own sync is all, without walking the path again
            # (a database's commits fsync the same log file over and over).
            self._files.move_to_end(op.path)
            sync(fd)
            return
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                sync(self._file(op.path))
            elif stat.S_ISDIR(st.st_mode):
                fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
                try:
                    sync(fd)
                finally:
                    os.close(fd)
                self._synced_dirs.add(op.path)   # its own entries: synced just now
            # the entry itself (and, for a new file, its name) lives in the parent
            parent = _parent(op.path)
            if parent not in self._synced_dirs:
                os.fsync(pfd)
                if len(self._synced_dirs) >= _SYNCED_DIRS_MAX:
                    self._synced_dirs.clear()
                self._synced_dirs.add(parent)

    # ------------------------------------------------------------ namespace ops

    def _finish_new(self, pfd: int, name: str, op: Op, fd: int | None = None) -> None:
        """Ownership (when given) and the exact mode, which umask may have cut."""
        if op.uid != -1 or op.gid != -1:
            if fd is not None:
                os.fchown(fd, op.uid, op.gid)
            else:
                os.chown(name, op.uid, op.gid, dir_fd=pfd, follow_symlinks=False)
        perm = op.mode & 0o7777
        if perm & self._umask or perm & 0o7000:
            # chown clears set-id bits, and umask cut some: set exactly what was asked
            if fd is not None:
                os.fchmod(fd, perm)
            else:
                os.chmod(name, perm, dir_fd=pfd)

    def _create(self, op: Op) -> None:
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, op.mode & 0o7777, dir_fd=pfd)
            except FileExistsError:
                # like open(O_CREAT) on an existing file: keep it, mode unchanged
                self._file(op.path)
                return
            try:
                self._finish_new(pfd, name, op, fd)
            except BaseException:
                os.close(fd)
                raise
        self._forget(op.path)
        self._remember(op.path, fd)

    def _mknod(self, op: Op) -> None:
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            os.mknod(name, op.mode, op.rdev, dir_fd=pfd)
            self._finish_new(pfd, name, op)

    def _mkdir(self, op: Op) -> None:
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            os.mkdir(name, op.mode & 0o7777, dir_fd=pfd)
            self._finish_new(pfd, name, op)

    def _symlink(self, op: Op) -> None:
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            os.symlink(op.path2, name, dir_fd=pfd)   # the target is text, never followed here
            if op.uid != -1 or op.gid != -1:
                os.chown(name, op.uid, op.gid, dir_fd=pfd, follow_symlinks=False)

    def _rmdir(self, op: Op) -> None:
        self._forget(op.path)
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            os.rmdir(name, dir_fd=pfd)

    def _unlink(self, op: Op) -> None:
        self._forget(op.path)
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            os.unlink(name, dir_fd=pfd)

    def _rename(self, op: Op) -> None:
        flags = op.mode
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, f"unsupported rename flags {flags:#x}", op.path)
        check_relative(op.path2)
        self._forget(op.path, op.path2)
        with ExitStack() as stack:
            spfd, sname = stack.enter_context(parent_dir(self.root_fd, op.path))
            dpfd, dname = stack.enter_context(parent_dir(self.root_fd, op.path2))
            if flags == 0:
                os.rename(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd)
            else:
                _check(_libc.renameat2(spfd, os.fsencode(sname), dpfd, os.fsencode(dname),
                                       flags), "renameat2", op.path)

    def _link(self, op: Op) -> None:
        check_relative(op.path2)
        with ExitStack() as stack:
            spfd, sname = stack.enter_context(parent_dir(self.root_fd, op.path))
            dpfd, dname = stack.enter_context(parent_dir(self.root_fd, op.path2))
            os.link(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd, follow_symlinks=False)

    def _delete(self, op: Op) -> None:
        """Remove whatever is at path (a whole tree for a directory); absent is fine
        so that an interrupted reintegration can simply resend it."""
        self._forget(op.path)
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                _rmtree(pfd, name)
            else:
                os.unlink(name, dir_fd=pfd)

    # ------------------------------------------------------------ attributes

    def _chmod(self, op: Op) -> None:
        perm = op.mode & 0o7777
        if op.path == "":
            os.fchmod(self.root_fd, perm)
            return
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            if _libc.fchmodat(pfd, os.fsencode(name), perm, AT_SYMLINK_NOFOLLOW) == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
                raise OSError(err, f"chmod: {os.strerror(err)}", op.path)
            # no-follow chmod unsupported (old libc) or the target is a symlink
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                return       # Linux has no symlink modes: nothing to do
            os.chmod(name, perm, dir_fd=pfd)

    def _chown(self, op: Op) -> None:
        if op.path == "":
            os.fchown(self.root_fd, op.uid, op.gid)
            return
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            os.chown(name, op.uid, op.gid, dir_fd=pfd, follow_symlinks=False)

    def _utimens(self, op: Op) -> None:
        times = (_Timespec * 2)(_timespec(op.atime_ns), _timespec(op.mtime_ns))
        if op.path == "":
            _check(_libc.futimens(self.root_fd, times), "futimens", "")
            return
        with parent_dir(self.root_fd, op.path) as (pfd, name):
            _check(_libc.utimensat(pfd, os.fsencode(name), times, AT_SYMLINK_NOFOLLOW),
                   "utimensat", op.path)

    # ------------------------------------------------------------ read side

    def _open_read(self, path: str) -> int:
        with parent_dir(self.root_fd, path) as (pfd, name):
            return self._open_regular(pfd, name, os.O_RDONLY, path)

    def tree_manifest(self, include_root: bool = False) -> Iterator[Entry]:
        """Every node under the root, depth first, names sorted; symlinks are
        reported, never followed."""
        if include_root:
            st = os.fstat(self.root_fd)
            yield Entry("", "d", 0, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, "",
                        st.st_ino, st.st_nlink, 0)
        yield from _walk_tree(os.dup(self.root_fd), "")

    def iter_block_digests(self, path: str, block_size: int, start: int = 0
                           ) -> Iterator[int]:
        """xxh3_64 of each block of path from offset start (a multiple of
        block_size) to EOF, the last one short. Holes are not read."""
        if not 0 < block_size <= MAX_BLOCK_SIZE or start % block_size:
            raise OSError(errno.EINVAL, f"bad block size {block_size} or start {start}", path)
        fd = self._open_read(path)
        try:
            yield from _digests(fd, block_size, start)
        finally:
            os.close(fd)

    def block_digests(self, path: str, block_size: int) -> list[int]:
        return list(self.iter_block_digests(path, block_size))

    def read_block(self, path: str, offset: int, length: int) -> bytes:
        """Up to length bytes of path at offset (short at EOF)."""
        fd = self._open_read(path)
        try:
            out = bytearray()
            while len(out) < length:
                chunk = os.pread(fd, length - len(out), offset + len(out))
                if not chunk:
                    break
                out += chunk
            return bytes(out)
        finally:
            os.close(fd)


def _rmtree(pfd: int, name: str) -> None:
    fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
    try:
        for entry in list(os.scandir(fd)):
            if entry.is_dir(follow_symlinks=False):
                _rmtree(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


def _walk_tree(fd: int, prefix: str) -> Iterator[Entry]:
    """Entries under the directory fd (which this generator closes)."""
    try:
        entries = sorted(os.scandir(fd), key=lambda e: e.name)
        for entry in entries:
            path = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            kind = _type_letter(st.st_mode)
            target = os.readlink(entry.name, dir_fd=fd) if kind == "l" else ""
            yield Entry(path, kind, 0 if kind == "d" else st.st_size, st.st_mode, st.st_uid,
                        st.st_gid, st.st_mtime_ns, target, st.st_ino, st.st_nlink,
                        st.st_rdev if kind in "cb" else 0)
            if kind == "d":
                yield from _walk_tree(os.open(entry.name, DIR_FLAGS, dir_fd=fd), path + "/")
    finally:
        os.close(fd)


def _digests(fd: int, bs: int, pos: int) -> Iterator[int]:
    size = os.fstat(fd).st_size
    digest = xxhash.xxh3_64_intdigest
    zeros: dict[int, int] = {}

    def zero_digest(n: int) -> int:
        if n not in zeros:
            zeros[n] = digest(bytes(n))
        return zeros[n]

    chunk = max(bs, _READ_CHUNK // bs * bs)
    buf = bytearray(chunk)
    view = memoryview(buf)
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data = size               # only a hole up to EOF
        if data >= size:
            while pos < size:
                yield zero_digest(min(bs, size - pos))
                pos += bs
            break
        while pos + bs <= data:       # whole blocks inside a hole: nothing to read
            yield zero_digest(bs)
            pos += bs
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        end = min(size, -(-hole // bs) * bs)       # read up to the block that holds the hole
        while pos < end:
            want = min(chunk, end - pos)
            got = 0
            while got < want:
                n = os.preadv(fd, [view[got:want]], pos + got)
                if n == 0:
                    break             # the file shrank under us: digest what is there
                got += n
            for i in range(0, got, bs):
                yield digest(view[i:min(i + bs, got)])
            pos += got
            if got < want:
                return
