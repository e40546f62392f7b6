"""A module's log files (``module.log``, ``script.log``): written whole line by whole
line, rotated at a size cap, and read back from the end without reading them all.

Writing. Every line of a module's logs reaches its file through one
:class:`RotatingLog` owned by the daemon: the module log's lines are the daemon's own,
and a script's output comes through a pipe the daemon reads (scripts never get the file
as their stdout). So the daemon is the only writer, on its event loop, and rotation is
one more step between two whole lines: when the next line would take the file past
``max_bytes``, ``path.N-1`` becomes ``path.N`` (``path.KEEP`` is dropped), ``path``
becomes ``path.1`` and a fresh ``path`` is opened. No line is lost, split or
interleaved, and nobody keeps writing into a rotated file (the daemon writes into the
file it just opened; a script writes into its pipe). A line longer than the cap sits
alone in its file; script lines are cut at 64 KiB before they get here.

Reading. :func:`read_tail` seeks from the end and reads blocks backwards until it has
the lines asked for, never more than ``max_bytes``: its cost is the tail's, not the
file's (the control command runs it in a thread, off the loop that renews the leases).
:func:`read_since` continues from a cursor (the file's identity and an offset) and
follows the file into its rotated name, so ``hacluster log -f`` sees every line once.

Every line starts with the time in UTC, ISO 8601 with milliseconds
(``2026-12-06T20:57:15.123Z``), as the daemon's structured log does.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_KEEP = 5
MIN_MAX_BYTES = 4096
TAIL_BLOCK = 64 << 10
TAIL_MAX_BYTES = 4 << 20     # the most a tail or a follow step reads (and sends)
_FIND_TRIES = 4
HEAD_BYTES = 64


def utc_timestamp(now: float | None = None) -> str:
    """``now`` (default: the wall clock) in UTC, ISO 8601 with milliseconds."""
    now = time.time() if now is None else now
    ms = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{ms:03d}Z"


def rotated_name(path: Path, n: int) -> Path:
    return path if n == 0 else path.with_name(f"{path.name}.{n}")


class RotatingLog:
    """Appends whole lines to ``path``, rotating it at ``max_bytes``, keeping ``keep``
    rotated files. One writer per path (the daemon): see the module's docstring."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"log size cap {max_bytes} bytes is under the minimum of {MIN_MAX_BYTES}")
        if keep < 1:
            raise ValueError(f"rotated logs to keep must be at least 1, got {keep}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = None
        self._size = 0
        self.rotations = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write_line(self, line: bytes) -> None:
        """Append ``line`` (a newline is added) in one write, rotating first when it
        would take the file past the cap."""
        data = line + b"\n"
        fd = self._open()
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
            fd = self._open()
        written = os.write(fd, data)
        while written < len(data):      # a short write (a full disk): the rest, or OSError
            written += os.write(fd, data[written:])
        self._size += len(data)

    def write_text(self, text: str) -> None:
        """One line ``<UTC time> <text>``."""
        self.write_line(f"{utc_timestamp()} {text}".encode(errors="replace"))

    def _rotate(self) -> None:
        self.close()
        for n in range(self.keep, 0, -1):
            src = rotated_name(self.path, n - 1)
            try:
                os.replace(src, rotated_name(self.path, n))     # .KEEP is overwritten: dropped
            except FileNotFoundError:
                pass
        self.rotations += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---- reading -------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    """Where a reader stands: the file (device, inode, and its first bytes: an inode
    freed by a dropped file is reused at once by a new one) and the offset after the
    last whole line it was given."""
    dev: int
    ino: int
    offset: int
    head: str = ""      # hex of the file's first HEAD_BYTES (fewer when it was shorter)

    def to_dict(self) -> dict[str, int | str]:
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "head": self.head}

    @classmethod
    def from_dict(cls, raw: object) -> "Cursor":
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), int) and not isinstance(raw[k], bool)
                                                and raw[k] >= 0 for k in ("dev", "ino", "offset")) \
                or not isinstance(raw.get("head", ""), str) or len(raw.get("head", "")) > 2 * HEAD_BYTES:
            raise ValueError(f"bad log cursor {raw!r}: expected dev, ino and offset (integers) and head")
        try:
            bytes.fromhex(raw.get("head", ""))
        except ValueError:
            raise ValueError(f"bad log cursor {raw!r}: head is not hex") from None
        return cls(raw["dev"], raw["ino"], raw["offset"], raw.get("head", ""))


def _head(fd: int) -> str:
    return os.pread(fd, HEAD_BYTES, 0).hex()


def _same_file(fd: int, st: os.stat_result, dev: int, ino: int, head: str) -> bool:
    return (st.st_dev, st.st_ino) == (dev, ino) and _head(fd).startswith(head)


@dataclass(frozen=True)
class Chunk:
    lines: list[str]
    cursor: Cursor | None      # None: the file does not exist (yet)
    bytes_read: int            # what this read took from the disk (bounded)
    skipped: bool = False      # lines were lost to the reader: rotated away before it came back


def _lines(data: bytes) -> list[str]:
    return data.decode(errors="replace").splitlines()


def read_tail(path: Path, lines: int, max_bytes: int = TAIL_MAX_BYTES) -> Chunk:
    """The last ``lines`` whole lines of ``path``, reading backwards from its end in
    blocks and never more than ``max_bytes``; the cursor stands after the last whole
    line (a line being written is left for the next read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Chunk([], None, 0)
    try:
        st = os.fstat(fd)
        head = _head(fd)
        end = st.st_size
        buf = b""
        pos = end
        read = 0
        # Enough when the buffer holds lines + 1 newlines (the first may be partial)
        # or the start of the file.
        while pos > 0 and read < max_bytes and buf.count(b"\n") <= lines:
            size = min(TAIL_BLOCK, pos, max_bytes - read)
            pos -= size
            block = os.pread(fd, size, pos)
            read += len(block)
            buf = block + buf
    finally:
        os.close(fd)
    last_nl = buf.rfind(b"\n")
    if last_nl < 0:
        return Chunk([], Cursor(st.st_dev, st.st_ino, pos, head), read)
    whole = buf[:last_nl + 1]
    if pos > 0:        # the first line may be cut: drop it
        first_nl = whole.find(b"\n")
        whole = whole[first_nl + 1:]
    out = _lines(whole)[-lines:] if lines > 0 else []
    return Chunk(out, Cursor(st.st_dev, st.st_ino, pos + last_nl + 1, head), read)


def _find(path: Path, dev: int, ino: int, keep: int) -> Path | None:
    """The name the file (dev, ino) has now: ``path`` or one of its rotated names.
    Rotations move it up while we look: the names are searched from ``path`` upwards
    (the way it moves, stopping at the first gap), and again when it was not seen."""
    for _ in range(_FIND_TRIES):
        for n in range(keep + 1):
            candidate = rotated_name(path, n)
            try:
                st = os.stat(candidate)
            except FileNotFoundError:
                if n > 0:
                    break       # no more rotated files (or a rotation under way: again)
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):
                return candidate
    return None


def _read_fd(fd: int, offset: int, max_bytes: int) -> tuple[bytes, int, os.stat_result]:
    """Whole lines of the open file from ``offset``, at most ``max_bytes``."""
    st = os.fstat(fd)
    if offset > st.st_size:      # truncated behind our back: start again
        offset = 0
    data = os.pread(fd, min(max_bytes, st.st_size - offset), offset)
    cut = data.rfind(b"\n")
    if cut < 0 and len(data) >= max_bytes > 0:      # one line longer than a read: in parts
        cut = len(data) - 1
    return data[:cut + 1], offset, st


def _open_id(name: Path) -> tuple[int, os.stat_result] | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    return fd, os.fstat(fd)


def _open_by_id(path: Path, dev: int, ino: int, head: str,
                keep: int) -> tuple[int, os.stat_result] | None:
    """Open the file (dev, ino) under whatever name it has now. Checked on the file
    opened: a rotation between finding the name and opening it would give its
    successor, which must not be read from this file's offset."""
    for _ in range(_FIND_TRIES):
        name = _find(path, dev, ino, keep)
        if name is None:
            return None
        opened = _open_id(name)
        if opened is None:
            continue
        if _same_file(opened[0], opened[1], dev, ino, head):
            return opened
        os.close(opened[0])
    return None


def _open_successor(path: Path, dev: int, ino: int, keep: int) -> int | None:
    """Open the file written after the rotated file (dev, ino): the one a name newer.
    Names shift only by rotations, so the successor is right when (dev, ino) still has
    the name it had before the open; otherwise a rotation came between: again."""
    for _ in range(8):
        older = _find(path, dev, ino, keep)
        if older is None or older == path:
            return None
        n = int(older.name.rsplit(".", 1)[1])
        opened = _open_id(rotated_name(path, n - 1))
        if opened is None:
            return None
        fd, _ = opened
        try:
            st = os.stat(older)
            if (st.st_dev, st.st_ino) == (dev, ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return None


def read_since(path: Path, cursor: Cursor, keep: int = DEFAULT_KEEP,
               max_bytes: int = TAIL_MAX_BYTES) -> Chunk:
    """The whole lines written after ``cursor``, at most ``max_bytes``: first the rest of
    the file the cursor is in (under its rotated name if it was rotated), then the files
    after it, newest last. ``skipped`` when the cursor's file is gone (rotated out of
    the ``keep`` files before the reader came back): the reader goes on from the oldest
    file there is, as one with the cursor ``Cursor(0, 0, 0)`` (no file seen yet) does."""
    out: list[str] = []
    read = 0
    skipped = False
    offset = cursor.offset
    opened = _open_by_id(path, cursor.dev, cursor.ino, cursor.head, keep)
    if opened is None:
        oldest = next((rotated_name(path, n) for n in range(keep, -1, -1)
                       if rotated_name(path, n).exists()), None)
        opened = _open_id(oldest) if oldest is not None else None
        if opened is None:
            return Chunk([], cursor, 0)
        # ino 0: a reader that has seen no file yet starts at the oldest, losing nothing
        skipped, offset = cursor.ino != 0, 0
    fd, _ = opened
    current = cursor
    try:
        while True:
            data, offset, st = _read_fd(fd, offset, max_bytes - read)
            read += len(data)
            out += _lines(data)
            current = Cursor(st.st_dev, st.st_ino, offset + len(data), _head(fd))
            if current.offset < st.st_size or read >= max_bytes:
                break
            # At the end of this file: if it has been rotated, nothing more comes into
            # it; go on in the one after it.
            nxt = _open_successor(path, st.st_dev, st.st_ino, keep)
            if nxt is None:
                break
            if os.fstat(fd).st_size > current.offset:
                # lines came in before the rotation: rotated, its size is final now;
                # read them from where this read ended (not where it began)
                os.close(nxt)
                offset = current.offset
                continue
            os.close(fd)
            fd, offset = nxt, 0
    finally:
        os.close(fd)
    return Chunk(out, current, read, skipped=skipped)
