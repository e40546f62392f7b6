"""Confinement of replicated paths to the receiver's root directory.

A path on the wire is relative, '/'-separated, without '.', '..' or empty
components. On the receiver every path is resolved from the root directory
descriptor one component at a time with O_NOFOLLOW|O_DIRECTORY, so no symlink
is ever followed in a parent (a symlink there is refused, whatever it points
to), and the final component is handled with *at() calls that do not follow
it either. Nothing a peer sends can make the receiver touch a file outside
its root.
"""
from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from typing import Iterator

MAX_PATH = 4096
NAME_MAX = 255
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathError(OSError):
    """A path refused before touching the file system (errno says why)."""

    def __init__(self, err: int, reason: str, path: str) -> None:
        super().__init__(err, f"path refused: {reason}", path)
        self.reason = reason


def _raw(path: str) -> bytes:
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise PathError(errno.EINVAL, "not encodable as file name bytes", path) from None


# Paths found safe, remembered: a receiver checks every op's path, and a database's
# ops name the same few files over and over. A pure function of the string; the set is
# emptied when full rather than kept in order (cheaper, and refilled at once).
_CHECKED: set[str] = set()
_CHECKED_MAX = 4096


def check_relative(path: str) -> str:
    """Return path if it is a safe relative path, else raise PathError."""
    if type(path) is str and path in _CHECKED:
        return path
    if not isinstance(path, str):
        raise PathError(errno.EINVAL, f"not a string ({type(path).__name__})", repr(path))
    if path == "":
        raise PathError(errno.EINVAL, "empty path", path)
    if "\0" in path:
        raise PathError(errno.EINVAL, "NUL byte in path", path)
    if path.startswith("/"):
        raise PathError(errno.EINVAL, "absolute path", path)
    raw = _raw(path)
    if len(raw) > MAX_PATH:
        raise PathError(errno.ENAMETOOLONG, f"{len(raw)} bytes, over {MAX_PATH}", path[:80])
    for comp in path.split("/"):
        if comp == "":
            raise PathError(errno.EINVAL, "empty component ('//' or trailing '/')", path)
        if comp == "..":
            raise PathError(errno.EINVAL, "'..' component", path)
        if comp == ".":
            raise PathError(errno.EINVAL, "'.' component", path)
        if len(_raw(comp)) > NAME_MAX:
            raise PathError(errno.ENAMETOOLONG, f"a name is over {NAME_MAX} bytes", path[:80])
    if type(path) is str:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED.add(path)
    return path


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _walk(root_fd: int, comps: list[str], path: str) -> int:
    """Open the directory root/comps... without following any symlink; new fd."""
    fd = root_fd
    try:
        for i, comp in enumerate(comps):
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                # O_NOFOLLOW|O_DIRECTORY on a symlink gives ENOTDIR (or ELOOP): say which
                if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(fd, comp):
                    where = "/".join(comps[:i + 1])
                    raise PathError(errno.ELOOP, f"{where!r} is a symlink (never followed)",
                                    path) from None
                raise OSError(exc.errno, exc.strerror, path) from None
            if fd != root_fd:
                os.close(fd)
            fd = nfd
    except BaseException:
        if fd != root_fd:
            os.close(fd)
        raise
    return fd if fd != root_fd else os.dup(root_fd)


def open_parent(root_fd: int, path: str) -> tuple[int, str]:
    """(parent directory fd, final name) for a checked path; the caller closes the fd."""
    comps = check_relative(path).split("/")
    return _walk(root_fd, comps[:-1], path), comps[-1]


@contextmanager
def parent_dir(root_fd: int, path: str) -> Iterator[tuple[int, str]]:
    """Like open_parent, closing the fd afterwards (and not dup'ing the root
    for top-level names, the common case)."""
    comps = check_relative(path).split("/")
    if len(comps) == 1:
        yield root_fd, comps[0]
        return
    fd = _walk(root_fd, comps[:-1], path)
    try:
        yield fd, comps[-1]
    finally:
        os.close(fd)


def open_dir(root_fd: int, path: str) -> int:
    """A new fd on the directory at path ('' = the root itself), no symlink followed."""
    if path == "":
        return os.dup(root_fd)
    return _walk(root_fd, check_relative(path).split("/"), path)
