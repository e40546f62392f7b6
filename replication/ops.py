"""The mutating file operations that the replication channel carries.

One ``Op`` is one change to the replicated tree, as the application made it
(or as reintegration re-sends it). Paths are relative to the replicated root,
'/'-separated, without a leading '/'; ``paths.check_relative`` enforces that.
This module is the shared language of the FUSE layer, the sender, the frame
codec and the applier.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

# utimensat's special nanosecond values (include/uapi/linux/stat.h).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


# Op.mode bits of WRITE and FSYNC (other kinds use mode for their own meaning).
WRITE_SETS_TIMES = 1   # WRITE: then set atime_ns/mtime_ns (the times the write left)
FSYNC_DATASYNC = 1     # FSYNC: fdatasync is enough (the caller asked for no more)


class OpKind(enum.IntEnum):
    WRITE = 1       # path, offset, data; mode WRITE_SETS_TIMES: atime_ns, mtime_ns
    TRUNCATE = 2    # path, length (new size)
    CREATE = 3      # path, mode (regular file, O_EXCL semantics not required)
    MKNOD = 4       # path, mode (incl. file type bits), rdev
    MKDIR = 5       # path, mode
    RMDIR = 6       # path
    UNLINK = 7      # path
    RENAME = 8      # path -> path2, mode = renameat2 flags (0 or RENAME_NOREPLACE/EXCHANGE)
    LINK = 9        # new hard link path2 to existing path
    SYMLINK = 10    # symlink at path pointing to path2 (target text, not confined)
    CHMOD = 11      # path, mode
    CHOWN = 12      # path, uid, gid (-1 = unchanged); never follows a symlink
    UTIMENS = 13    # path, atime_ns, mtime_ns (UTIME_NOW / UTIME_OMIT allowed)
    FALLOCATE = 14  # path, mode (fallocate flags), offset, length
    FSYNC = 15      # path ('' = whole tree): durable on the receiver before the ack;
                    # mode FSYNC_DATASYNC: data (and size) durable, like fdatasync
    DELETE = 16     # reintegration: remove path whatever it is (file, link, whole tree)


NAMESPACE_KINDS = frozenset({OpKind.CREATE, OpKind.MKNOD, OpKind.MKDIR, OpKind.RMDIR,
                             OpKind.UNLINK, OpKind.RENAME, OpKind.LINK, OpKind.SYMLINK,
                             OpKind.DELETE})
DATA_KINDS = frozenset({OpKind.WRITE, OpKind.TRUNCATE, OpKind.FALLOCATE})


@dataclass(frozen=True)
class Op:
    kind: OpKind
    path: str
    path2: str = ""
    offset: int = 0
    length: int = 0
    mode: int = 0
    uid: int = -1
    gid: int = -1
    rdev: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    data: bytes = b""

    def describe(self) -> str:
        """Short text for logs and error messages (no payload)."""
        extra = f" -> {self.path2}" if self.path2 else ""
        if self.kind in DATA_KINDS:
            extra += f" @{self.offset}+{len(self.data) or self.length}"
        return f"{self.kind.name} {self.path or '/'}{extra}"
