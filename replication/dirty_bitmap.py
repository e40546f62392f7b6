"""What changed while the primary ran ALONE: per-file dirty block bitmaps and a
journal of namespace changes, so reintegration re-sends only that.

``DirtyBitmap`` is the pure core (no I/O). ``BitmapStore`` persists one bitmap
file per replicated file plus the journal, in a state directory outside the
replicated tree (one store per replicated root)::

    <state_dir>/store.json        block size, open/clean marker, trusted, generation
    <state_dir>/bitmaps/<sha1>.bm header (block size, low water, path) + bits
    <state_dir>/journal           one JSON line per namespace/metadata op, fsynced

The sender calls ``record(op)`` (its ``ChangeRecorder``) for every op while
ALONE, and answers the application only after it returned: a write
that flips no new bit costs nothing; one that does costs one pwrite+fdatasync of
the changed bitmap bytes. Namespace ops always cost one journal fdatasync.

Truncation. ``truncate`` clears the bits of blocks past the new size and keeps
the *low water*: the smallest size the file had. Remote bytes in
[low water, remote size) are stale unless marked again later, so reintegration
re-sends that range from the local copy; this needs no marks when a file is
extended (by truncate or by writing past its end).

What can be trusted (``trusted()``):

* Store created fresh, or every previous session ended with ``close()``: every
  change that went through ``record`` is covered: a block is marked durably
  before the write is answered, a rename/unlink/... is journaled before it is
  answered.
  Reintegration may send only marked blocks.
* The store was found open (the node crashed while it was in use): the marks
  and journal entries are still there (each was fsynced before its op was
  answered, so nothing acknowledged is missing), but an op that was in flight at
  the crash may have reached the local tree without having been noted (a sender
  that applies before noting, a page cache that had the write before the mark
  hit the disk), and the peer may hold writes the crashed node had sent but not
  applied. So the store is untrusted: reintegration compares digests of every
  file and uses marks only as extra work. The taint is sticky (it survives
  further clean restarts) until ``reset()`` after a complete reintegration.

Writes that were in flight towards the peer when the sender went ALONE are the
sender's to mark (it must ``record`` them when it enters ALONE), and a returning
peer's activity-log regions (DESIGN.md) can be added with ``mark`` before
reintegration starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from replication.durable_file import atomic_write, fsync_dir
from replication.ops import Op, OpKind

DEFAULT_BLOCK_SIZE = 1 << 20

# renameat2 flags (include/uapi/linux/fs.h) and fallocate modes (linux/falloc.h).
RENAME_EXCHANGE = 2
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_INSERT_RANGE = 0x20

# Ops whose effect on a file is not a set of rewritten blocks: after one of
# these, the remote path may be another file altogether (or shifted content),
# so reintegration compares digests there instead of trusting bitmaps.
METADATA_KINDS = frozenset({OpKind.CHMOD, OpKind.CHOWN, OpKind.UTIMENS})


class DirtyBitmap:
    """Dirty blocks of one file (bit i = block i) and its low-water size."""

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, bits: bytes = b"",
                 low_water: int | None = None) -> None:
        if block_size <= 0:
            raise ValueError(f"block size must be > 0, got {block_size}")
        self.block_size = block_size
        self.low_water = low_water
        self._bits = bytearray(bits)

    def copy(self) -> DirtyBitmap:
        return DirtyBitmap(self.block_size, bytes(self._bits), self.low_water)

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def mark(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Mark the blocks touched by [offset, offset+length). Returns the runs
        (first block, count) that flipped 0 -> 1: those must be made durable
        before the write is answered; an empty list means nothing to persist."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length}")
        if length == 0:
            return []
        first = offset // self.block_size
        last = (offset + length - 1) // self.block_size
        needed = last // 8 + 1
        if len(self._bits) < needed:
            self._bits.extend(bytes(needed - len(self._bits)))
        runs: list[tuple[int, int]] = []
        for byte in range(first // 8, last // 8 + 1):
            low = max(first - byte * 8, 0)
            high = min(last - byte * 8, 7)
            new = (0xFF >> (7 - high)) & (0xFF << low) & ~self._bits[byte] & 0xFF
            if not new:
                continue
            self._bits[byte] |= new
            for bit in range(8):
                if new >> bit & 1:
                    block = byte * 8 + bit
                    if runs and runs[-1][0] + runs[-1][1] == block:
                        runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                    else:
                        runs.append((block, 1))
        return runs

    def truncate(self, size: int) -> bool:
        """The file was truncated to ``size``: forget blocks that start at or past
        it. Returns True if the low water went down (that must be durable)."""
        if size < 0:
            raise ValueError(f"bad size {size}")
        first_gone = -(-size // self.block_size)
        keep = -(-first_gone // 8)
        del self._bits[keep:]
        if first_gone % 8 and keep <= len(self._bits):
            self._bits[first_gone // 8] &= (1 << (first_gone % 8)) - 1
        if self.low_water is None or size < self.low_water:
            self.low_water = size
            return True
        return False

    def expand_low_water(self, stale_end: int) -> None:
        """Mark the blocks of [low water, stale_end) (the bytes the peer still has
        past the low water) and forget the low water: from then on they can be
        cleared block by block as they are resent."""
        if self.low_water is not None and stale_end > self.low_water:
            self.mark(self.low_water, stale_end - self.low_water)
        self.low_water = None

    def clear(self, first: int, count: int) -> None:
        """Forget blocks [first, first+count) (they were resent and acknowledged)."""
        for block in range(first, min(first + count, len(self._bits) * 8)):
            self._bits[block // 8] &= ~(1 << (block % 8)) & 0xFF

    def update(self, other: DirtyBitmap) -> None:
        """Union with ``other`` (same block size): dirty in either, low water of
        both. Marks past the merged low water are kept: they may be writes made
        after the truncation."""
        if other.block_size != self.block_size:
            raise ValueError(f"block sizes differ: {self.block_size} != {other.block_size}")
        if len(self._bits) < len(other._bits):
            self._bits.extend(bytes(len(other._bits) - len(self._bits)))
        for i, byte in enumerate(other._bits):
            self._bits[i] |= byte
        if other.low_water is not None and (self.low_water is None
                                            or other.low_water < self.low_water):
            self.low_water = other.low_water

    def is_dirty(self, block: int) -> bool:
        return block // 8 < len(self._bits) and bool(self._bits[block // 8] >> (block % 8) & 1)

    def blocks(self) -> Iterator[int]:
        """Dirty block indices, ascending."""
        for byte_index, byte in enumerate(self._bits):
            if byte:
                for bit in range(8):
                    if byte >> bit & 1:
                        yield byte_index * 8 + bit

    def runs(self) -> list[tuple[int, int]]:
        """Dirty blocks as (first, count) runs, ascending."""
        runs: list[tuple[int, int]] = []
        for block in self.blocks():
            if runs and runs[-1][0] + runs[-1][1] == block:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((block, 1))
        return runs

    def count(self) -> int:
        return sum(bin(byte).count("1") for byte in self._bits)

    def is_clean(self) -> bool:
        return self.low_water is None and not any(self._bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirtyBitmap):
            return NotImplemented
        return (self.block_size == other.block_size and self.low_water == other.low_water
                and self._bits.rstrip(b"\0") == other._bits.rstrip(b"\0"))

    def __repr__(self) -> str:
        return (f"DirtyBitmap(block_size={self.block_size}, runs={self.runs()}, "
                f"low_water={self.low_water})")


@dataclass(frozen=True)
class JournalEntry:
    kind: OpKind
    path: str
    path2: str = ""


def changed_paths(entries: Iterable[JournalEntry]) -> set[str]:
    """Paths that may now name another file than the peer's copy (or content
    that moved), so bitmaps say nothing about them or anything below them.
    Both names of a LINK: bitmaps are kept by name, and a write through the
    new name marks only that one."""
    paths: set[str] = set()
    for entry in entries:
        if entry.kind in METADATA_KINDS:
            continue
        paths.add(entry.path)
        if entry.path2 and entry.kind != OpKind.SYMLINK:       # SYMLINK's path2 is text
            paths.add(entry.path2)
    return paths


def under(path: str, top: str) -> bool:
    """``path`` is ``top`` or inside it ('' is the root)."""
    return top == "" or path == top or path.startswith(top + "/")


_MAGIC = b"HABMAP01"
_HEADER = struct.Struct("<8sQqI")        # magic, block size, low water (-1: none), path length
_LOW_WATER_OFFSET = 16


class StoreClosed(RuntimeError):
    pass


class BitmapStore:
    """Durable dirty bitmaps + namespace journal of one replicated root.

    Thread-safe (one lock; the FUSE layer calls it from many threads). Paths
    are relative to the replicated root, as in ``Op``. ``block_size`` only
    applies when the store is created; an existing store keeps its own."""

    def __init__(self, state_dir: str, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self._lock = threading.Lock()
        self._dir = state_dir
        self._bitmap_dir = os.path.join(state_dir, "bitmaps")
        self._state_path = os.path.join(state_dir, "store.json")
        os.makedirs(self._bitmap_dir, exist_ok=True)
        try:
            with open(self._state_path, encoding="ascii") as f:
                state = json.load(f)
        except FileNotFoundError:
            state = {"block_size": block_size, "open": False, "trusted": True, "generation": 0}
        self.block_size: int = state["block_size"]
        self._trusted: bool = state["trusted"] and not state["open"]
        self.generation: int = state["generation"] + (1 if state["open"] else 0)
        self._bitmaps: dict[str, DirtyBitmap] = {}
        self._load_bitmaps()
        self._journal_path = os.path.join(state_dir, "journal")
        self._journal: list[JournalEntry] = []
        self._journal_fd = self._open_journal()
        self._closed = False
        self._save_state(open_=True)

    # ---- state -----------------------------------------------------------

    def trusted(self) -> bool:
        """True if every change since the store was created or reset is covered
        (see the module docstring for what an untrusted store still offers)."""
        return self._trusted

    def _save_state(self, open_: bool) -> None:
        state = {"version": 1, "block_size": self.block_size, "open": open_,
                 "trusted": self._trusted, "generation": self.generation}
        atomic_write(self._state_path, json.dumps(state).encode("ascii"), sync_dir=False)
        fsync_dir(self._dir)

    def close(self) -> None:
        """Clean shutdown: the next open finds the store trusted (if it was)."""
        with self._lock:
            if self._closed:
                return
            os.fsync(self._journal_fd)
            os.close(self._journal_fd)
            self._save_state(open_=False)
            self._closed = True

    def reset(self) -> None:
        """Forget everything after a complete reintegration (the peer is an
        exact copy again): no bitmaps, empty journal, trusted, new generation
        (so a saved reintegration cursor of the old generation is void)."""
        with self._lock:
            self._check_open()
            for path in list(self._bitmaps):
                self._unlink_bitmap(path)
            self._bitmaps.clear()
            fsync_dir(self._bitmap_dir)
            os.ftruncate(self._journal_fd, 0)
            os.fsync(self._journal_fd)
            self._journal.clear()
            self._trusted = True
            self.generation += 1
            self._save_state(open_=True)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"bitmap store {self._dir} is closed")

    # ---- the sender's entry point ---------------------------------------

    def record(self, op: Op) -> None:
        """Record durably what ``op`` changes (the sender's ChangeRecorder).

        While reintegration runs, the sender should go on recording namespace
        ops (not writes): the driver re-checks the paths they touched."""
        if op.kind == OpKind.WRITE:
            self.mark(op.path, op.offset, len(op.data) or op.length)
        elif op.kind == OpKind.TRUNCATE:
            self.truncate(op.path, op.length)
        elif op.kind == OpKind.FALLOCATE:
            if op.mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE):
                self._journal_op(op.kind, op.path)     # content shifts: compare digests
            else:
                self.mark(op.path, op.offset, op.length)
        elif op.kind != OpKind.FSYNC:
            self._journal_op(op.kind, op.path, op.path2,
                             rename_flags=op.mode if op.kind == OpKind.RENAME else 0)

    # ---- bitmaps ---------------------------------------------------------

    def mark(self, path: str, offset: int, length: int) -> None:
        with self._lock:
            self._check_open()
            bitmap = self._bitmaps.get(path)
            if bitmap is None:
                bitmap = DirtyBitmap(self.block_size)
                if not bitmap.mark(offset, length):
                    return
                self._bitmaps[path] = bitmap
                self._create_bitmap_file(path, bitmap)
                return
            runs = bitmap.mark(offset, length)
            if runs:
                first_byte = runs[0][0] // 8
                last_byte = (runs[-1][0] + runs[-1][1] - 1) // 8
                self._write_bits(path, bitmap, first_byte, last_byte + 1, durable=True)

    def truncate(self, path: str, size: int) -> None:
        with self._lock:
            self._check_open()
            bitmap = self._bitmaps.get(path)
            if bitmap is None:
                bitmap = DirtyBitmap(self.block_size)
                bitmap.truncate(size)
                self._bitmaps[path] = bitmap
                self._create_bitmap_file(path, bitmap)
            else:
                # Only a lower low water must be durable; dropped bits may come
                # back after a crash and then cost a (clipped) resend.
                self._write_truncated(path, bitmap, durable=bitmap.truncate(size))

    def clear(self, path: str, first: int, count: int) -> None:
        """Forget blocks the peer acknowledged. Not fsynced: a clear lost in a
        crash only costs a resend."""
        with self._lock:
            self._check_open()
            bitmap = self._bitmaps.get(path)
            if bitmap is None:
                return
            bitmap.clear(first, count)
            if count > 0:
                self._write_bits(path, bitmap, first // 8,
                                 min((first + count - 1) // 8 + 1, len(bitmap.to_bytes())),
                                 durable=False)

    def expand_low_water(self, path: str, stale_end: int) -> None:
        """``DirtyBitmap.expand_low_water`` for ``path``, durably (reintegration
        calls it before resending, so an interrupted run resumes exactly)."""
        with self._lock:
            self._check_open()
            bitmap = self._bitmaps.get(path)
            if bitmap is None or bitmap.low_water is None:
                return
            bitmap.expand_low_water(stale_end)
            self._create_bitmap_file(path, bitmap)

    def drop(self, path: str) -> None:
        """Forget ``path``'s bitmap (the peer has the file). Not fsynced either."""
        with self._lock:
            self._check_open()
            if self._bitmaps.pop(path, None) is not None:
                self._unlink_bitmap(path)

    def bitmap(self, path: str) -> DirtyBitmap | None:
        """A copy of ``path``'s bitmap, or None if it has none."""
        with self._lock:
            bitmap = self._bitmaps.get(path)
            return None if bitmap is None else bitmap.copy()

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._bitmaps)

    # ---- journal -------------------------------------------------------

    def _journal_op(self, kind: OpKind, path: str, path2: str = "", rename_flags: int = 0) -> None:
        """Journal a namespace or metadata op durably, and move/drop bitmaps:
        a renamed dirty file stays dirty under its new name."""
        entry = JournalEntry(OpKind(kind), path, path2)
        line = json.dumps({"k": int(entry.kind), "p": entry.path, "q": entry.path2}) + "\n"
        with self._lock:
            self._check_open()
            os.write(self._journal_fd, line.encode("ascii"))
            os.fdatasync(self._journal_fd)
            self._journal.append(entry)
            # A rename onto itself, into itself or over an ancestor fails or
            # does nothing: journaled (so compared later), bitmaps untouched.
            if kind == OpKind.RENAME and not (under(path2, path) or under(path, path2)):
                self._rename_bitmaps(path, path2, exchange=bool(rename_flags & RENAME_EXCHANGE))
            elif kind in (OpKind.UNLINK, OpKind.RMDIR, OpKind.DELETE):
                # Only DELETE removes a whole tree; if the op then fails, the
                # journal entry still makes reintegration compare the path.
                for gone in self._subtree(path) if kind == OpKind.DELETE else [path]:
                    if self._bitmaps.pop(gone, None) is not None:
                        self._unlink_bitmap(gone)

    def note(self, path: str) -> None:
        """Journal ``path`` as changed (reintegration then compares digests at
        and under it): a returning node's activity-log path notes."""
        self._journal_op(OpKind.CREATE, path)

    def journal_position(self) -> int:
        with self._lock:
            return len(self._journal)

    def journal(self, since: int = 0) -> list[JournalEntry]:
        with self._lock:
            return self._journal[since:]

    # ---- files -----------------------------------------------------------

    def _subtree(self, top: str) -> list[str]:
        return [path for path in self._bitmaps if under(path, top)]

    def _rename_bitmaps(self, src: str, dst: str, exchange: bool) -> None:
        moving = {path: dst + path[len(src):] for path in self._subtree(src)}
        if exchange:
            moving.update({path: src + path[len(dst):] for path in self._subtree(dst)})
        else:
            for replaced in self._subtree(dst):
                del self._bitmaps[replaced]
                self._unlink_bitmap(replaced)
        if not moving:
            return
        moved = {new: self._bitmaps.pop(old) for old, new in moving.items()}
        # New files first (durable), old ones after: a crash in between leaves
        # an extra bitmap under the old name, which only costs a resend.
        for new, bitmap in moved.items():
            self._bitmaps[new] = bitmap
            self._write_file_contents(new, bitmap)
        fsync_dir(self._bitmap_dir)
        for old in moving:
            if old not in self._bitmaps:
                os.unlink(self._file_of(old))

    def _file_of(self, path: str) -> str:
        digest = hashlib.sha1(os.fsencode(path)).hexdigest()
        return os.path.join(self._bitmap_dir, digest + ".bm")

    @staticmethod
    def _header_size(path: str) -> int:
        return _HEADER.size + len(os.fsencode(path))

    def _write_file_contents(self, path: str, bitmap: DirtyBitmap) -> None:
        name = os.fsencode(path)
        low_water = -1 if bitmap.low_water is None else bitmap.low_water
        header = _HEADER.pack(_MAGIC, bitmap.block_size, low_water, len(name)) + name
        atomic_write(self._file_of(path), header + bitmap.to_bytes(), sync_dir=False)

    def _create_bitmap_file(self, path: str, bitmap: DirtyBitmap) -> None:
        self._write_file_contents(path, bitmap)
        fsync_dir(self._bitmap_dir)

    def _write_bits(self, path: str, bitmap: DirtyBitmap, first_byte: int, end_byte: int,
                    durable: bool) -> None:
        fd = os.open(self._file_of(path), os.O_WRONLY)
        try:
            os.pwrite(fd, bitmap.to_bytes()[first_byte:end_byte],
                      self._header_size(path) + first_byte)
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def _write_truncated(self, path: str, bitmap: DirtyBitmap, durable: bool) -> None:
        bits = bitmap.to_bytes()
        fd = os.open(self._file_of(path), os.O_WRONLY)
        try:
            os.pwrite(fd, struct.pack("<q", bitmap.low_water), _LOW_WATER_OFFSET)
            if bits:        # the last kept byte may have lost bits
                os.pwrite(fd, bits[-1:], self._header_size(path) + len(bits) - 1)
            os.ftruncate(fd, self._header_size(path) + len(bits))
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def _unlink_bitmap(self, path: str) -> None:
        try:
            os.unlink(self._file_of(path))
        except FileNotFoundError:
            pass

    def _load_bitmaps(self) -> None:
        for name in os.listdir(self._bitmap_dir):
            full = os.path.join(self._bitmap_dir, name)
            if name.endswith(".tmp"):       # a creation that did not complete
                os.unlink(full)
                continue
            with open(full, "rb") as f:
                data = f.read()
            magic, block_size, low_water, name_len = _HEADER.unpack_from(data)
            if magic != _MAGIC:
                raise ValueError(f"{full}: not a dirty bitmap file")
            path = os.fsdecode(data[_HEADER.size:_HEADER.size + name_len])
            self._bitmaps[path] = DirtyBitmap(block_size, data[_HEADER.size + name_len:],
                                              None if low_water < 0 else low_water)

    def _open_journal(self) -> int:
        fd = os.open(self._journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with open(self._journal_path, "rb") as f:
            data = f.read()
        good_end = 0
        for line in data.split(b"\n")[:-1]:
            try:
                record = json.loads(line)
                entry = JournalEntry(OpKind(record["k"]), record["p"], record["q"])
            except (ValueError, KeyError):
                break
            self._journal.append(entry)
            good_end += len(line) + 1
        if good_end != len(data):
            # A line torn by a crash was never acknowledged: drop it, so the
            # next append starts on a fresh line.
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        fsync_dir(self._dir)
        return fd
