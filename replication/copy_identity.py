"""Which copy a replicated directory holds (DESIGN rule 6; DRBD's generation UUIDs).

Raft's in-sync set names *nodes*; a node's disk can be replaced, left unmounted
(the bare mount point underneath), restored from an old backup or swapped with
another module's data, and the node would still be "in sync". So each replicated
directory carries an identity record *on its own file system* and Raft commits
which record each in-sync node must show:

* ``copy``: a random id given to a copy the first time it is stamped. A new disk,
  an empty mount point or a directory made by hand has no record at all.
* ``generation``: the primary session whose writes the copy holds. It is the
  epoch of that session's ``mirror/<module>`` lease, so generations only grow and
  every new primary session (a restarted holder too) starts a new one.
* ``history``: the copy's earlier generations, oldest first (a short tail).

Where it lives: an extended attribute of the directory itself, in the ``trusted.``
namespace. Chosen over a file at the root because nothing the application sees
changes (no name to hide from readdir, to skip in reintegration or to be deleted
by ``rm -rf dir/*`` of a restore script), only root can read or write it, it is
replaced atomically by one setxattr, and it belongs to the inode of that very
directory: a file system mounted there later, or a directory recreated by hand,
does not carry it. A backup tool copies it only when asked to (``tar --xattrs``,
``rsync -X``), and then with the old generation, which the rules below refuse.

This module is pure apart from the small I/O functions at the end; the rules take
records and the committed state as arguments.
"""
from __future__ import annotations

import errno
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

XATTR = "trusted.hacluster.identity"
VERSION = 1
HISTORY_MAX = 16
RECORD_MAX = 4096


class IdentityError(Exception):
    """A record that cannot be read or written (one line, names the directory)."""


@dataclass(frozen=True)
class Record:
    cluster: str
    module: str
    copy: str
    generation: int
    history: tuple[int, ...] = ()

    def to_bytes(self) -> bytes:
        return json.dumps({"v": VERSION, "cluster": self.cluster, "module": self.module,
                           "copy": self.copy, "generation": self.generation,
                           "history": list(self.history)}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Record":
        if len(raw) > RECORD_MAX:
            raise ValueError(f"identity record of {len(raw)} bytes (max {RECORD_MAX})")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("v") != VERSION:
            raise ValueError(f"identity record version {data.get('v') if isinstance(data, dict) else '?'!r}, "
                             f"expected {VERSION}")
        gen, hist = data.get("generation"), data.get("history")
        if not _is_gen(gen) or not isinstance(hist, list) or not all(_is_gen(h) for h in hist):
            raise ValueError("identity record with a bad generation or history")
        for key in ("cluster", "module", "copy"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"identity record without {key}")
        assert isinstance(gen, int)           # _is_gen said so (for the type checker)
        return cls(data["cluster"], data["module"], data["copy"], gen, tuple(hist))

    def advanced(self, generation: int) -> "Record":
        """The same copy, now holding ``generation``."""
        if generation == self.generation:
            return self
        history = (self.history + (self.generation,)) if self.generation else self.history
        return Record(self.cluster, self.module, self.copy, generation, history[-HISTORY_MAX:])

    def short(self) -> str:
        return f"copy {self.copy[:8]} generation {self.generation}"


def _is_gen(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def new_record(cluster: str, module: str, generation: int = 0) -> Record:
    return Record(cluster, module, uuid.uuid4().hex, generation)


# ---- what Raft committed, and the rules --------------------------------------------------

@dataclass(frozen=True)
class Committed:
    """A mirror module's identity section in Raft, seen by one node.

    ``generation``: the current primary session's (0: none ever committed — the
    first start, or an installation from before identities). ``copies``: for each
    node, the last (copy, generation) committed for it; a node that left the
    in-sync set keeps its last entry, which says what its copy was when it left.
    """
    generation: int = 0
    history: tuple[int, ...] = ()
    copies: dict[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def from_module(cls, module: dict[str, Any] | None) -> "Committed":
        ident = (module or {}).get("identity") or {}
        copies = {n: (c["copy"], c["generation"]) for n, c in (ident.get("copies") or {}).items()}
        return cls(ident.get("generation", 0), tuple(ident.get("history", ())), copies)


@dataclass(frozen=True)
class LocalDir:
    """A local read of one replicated directory: its record, or why it cannot be
    used (``missing``: it does not exist at all)."""
    path: str
    record: Record | None
    problem: str | None = None
    missing: bool = False


Local = list[LocalDir]


def _one_record(local: Local, cluster: str, module: str) -> tuple[Record | None, str | None]:
    """The record every replicated directory carries, or why there is none."""
    records = []
    for entry in local:
        d, rec = entry.path, entry.record
        if entry.problem is not None:
            return None, entry.problem
        if rec is None:
            return None, (f"{d} has no identity record: disk replaced, file system not mounted "
                          "or directory recreated?")
        if rec.cluster != cluster or rec.module != module:
            return None, (f"{d} holds a copy of module {rec.module} of cluster {rec.cluster}, "
                          f"not of {module} of {cluster}")
        records.append((d, rec))
    if not records:
        return None, "no replicated directory"
    first_dir, first = records[0]
    for d, rec in records[1:]:
        if (rec.copy, rec.generation) != (first.copy, first.generation):
            return None, (f"the replicated directories disagree: {first_dir} holds {first.short()}, "
                          f"{d} holds {rec.short()}")
    return first, None


def matches(record: Record, committed: Committed, node: str) -> bool:
    """The record is the copy Raft committed for ``node``, at that generation.

    Also accepted: a record stamped *ahead* for a primary session whose commit
    never happened (the stamp comes first, then the commit; see ``stamp_order``):
    its generation is newer than any committed one and its previous generation is
    the committed one. No write can have reached it under the uncommitted
    generation, because the mount starts only after the commit."""
    entry = committed.copies.get(node)
    if entry is None or record.copy != entry[0]:
        return False
    if record.generation == entry[1]:
        return True
    return (record.generation > committed.generation and bool(record.history)
            and record.history[-1] == entry[1])


def promotion_problem(local: Local, committed: Committed, node: str, cluster: str,
                      module: str) -> str | None:
    """Why ``node``'s copy must not become primary by itself (None: it may).

    Before the first generation (first start, or an upgrade from before
    identities) only the in-sync set decides, as it did, and a missing directory
    may still be created; the first primary session then stamps its copy."""
    for entry in local:
        if entry.problem is not None and not (entry.missing and committed.generation == 0):
            return entry.problem
    if committed.generation == 0:
        return None
    record, problem = _one_record(local, cluster, module)
    if record is None:
        return f"copy on {node}: {problem}"
    theirs = committed.copies.get(node)      # (copy id, generation) the cluster committed
    if theirs is None:
        return (f"copy on {node} ({record.short()}): the cluster has no committed identity for "
                f"{node}'s copy")
    if matches(record, committed, node):
        return None
    if record.copy != theirs[0]:
        return (f"copy on {node} is {record.short()}, but the cluster's copy on {node} is "
                f"copy {theirs[0][:8]}: another disk or a restored backup?")
    older = "older than" if record.generation < theirs[1] else "not"
    return (f"copy on {node} holds generation {record.generation}, {older} the committed "
            f"generation {theirs[1]}: restored from a backup?")


FULL = "full"                   # compare every block; the copy is of unknown content
INCREMENTAL = "incremental"     # the primary's sync point (bitmaps, activity log) holds
REFUSE = "refuse"               # a newer copy: never overwritten without the administrator


def resync_mode(local: Local, committed: Committed, node: str, cluster: str,
                module: str) -> tuple[str, str]:
    """How this node's copy may be resynchronised from the current primary, and why.

    Only a copy that is exactly the one Raft last recorded for this node (same copy
    id, same generation) may trust the primary's sync point: anything else (no
    record, another module's, another copy, another generation) is of unknown
    content and gets every block compared — it may *receive* a full resync, never
    give one. A copy newer than the cluster's current generation is never
    overwritten (a resync only runs from newer to older) unless the administrator
    says so (``second fullsync``)."""
    for entry in local:
        if entry.problem is not None and not (entry.missing and committed.generation == 0):
            return REFUSE, entry.problem
    if committed.generation == 0:
        # No generation ever: the primary's first reintegration compares every
        # block anyway (no sync point before a first complete one).
        return INCREMENTAL, "first generation"
    record, problem = _one_record(local, cluster, module)
    if record is None:
        return FULL, problem or "no identity"
    if matches(record, committed, node):
        return INCREMENTAL, f"{record.short()} is {node}'s last committed copy"
    if record.generation > committed.generation:
        return REFUSE, (f"copy on {node} holds generation {record.generation}, newer than the "
                        f"cluster's generation {committed.generation}: not overwritten; if it is "
                        f"to be discarded, run 'hacluster -m {module} second fullsync' on {node}")
    theirs = committed.copies.get(node)
    last = f"copy {theirs[0][:8]} generation {theirs[1]}" if theirs else "none"
    return FULL, f"{record.short()} is not {node}'s last committed copy ({last})"


def next_record(local: Local, cluster: str, module: str, generation: int) -> Record:
    """What a new primary session stamps: its copy id kept when the directories
    carry one for this module, a new one otherwise (first start, primforce of an
    unknown copy)."""
    record, _problem = _one_record(local, cluster, module)
    if record is None:
        return new_record(cluster, module).advanced(generation)
    return record.advanced(generation)


def generations_newer(committed: Committed, generation: int) -> int:
    """How many committed primary sessions came after ``generation``."""
    timeline = committed.history + ((committed.generation,) if committed.generation else ())
    return sum(1 for g in timeline if g > generation)


# ---- I/O at the edge -------------------------------------------------------------------------

def read_local(dirs: list[str]) -> Local:
    """Each directory's record, or the reason it cannot be used at all."""
    out: Local = []
    for d in dirs:
        try:
            out.append(LocalDir(d, read_record(d)))
        except IdentityError as e:
            out.append(LocalDir(d, None, str(e), missing=not os.path.lexists(d)))
    return out


def read_record(path: str) -> Record | None:
    """The directory's record; None when it has none. IdentityError when the
    directory is missing or the record cannot be read."""
    try:
        raw = os.getxattr(path, XATTR, follow_symlinks=False)
    except FileNotFoundError:
        raise IdentityError(f"replicated directory {path} does not exist: file system not "
                            "mounted? (it is never created again once the module has data)") from None
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise IdentityError(f"{path}: its file system does not support trusted.* extended "
                                "attributes, where hacluster keeps the copy's identity") from None
        raise IdentityError(f"{path}: cannot read its identity: {e.strerror}") from None
    try:
        return Record.from_bytes(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise IdentityError(f"{path}: damaged identity record: {e}") from None


def write_record(path: str, record: Record) -> None:
    """Stamp ``record`` on the directory, durably (the attribute lives in the
    directory's inode: an fsync of the directory makes it stick)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise IdentityError(f"cannot stamp {path}: {e.strerror}") from None
    try:
        os.setxattr(fd, XATTR, record.to_bytes())
        os.fsync(fd)
    except OSError as e:
        raise IdentityError(f"cannot stamp {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def check_mount_point(path: str) -> str | None:
    """``<replicated mountpoint="yes">``: why ``path`` is not a mounted file system's
    root (None when it is): the bare directory underneath an unmounted one has the
    same device as its parent."""
    try:
        st, parent = os.stat(path), os.stat(os.path.dirname(path.rstrip("/")) or "/")
    except FileNotFoundError:
        return f"replicated directory {path} does not exist: file system not mounted?"
    if st.st_dev == parent.st_dev and st.st_ino != parent.st_ino:
        return (f"replicated directory {path} is not a mount point (mountpoint=\"yes\"): its "
                "file system is not mounted")
    return None
