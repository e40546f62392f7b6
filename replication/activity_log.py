"""The primary's activity log (DESIGN.md "In-flight writes", DRBD's AL).

Before a write lands in a region (``region_size`` bytes of a file) that is not
active, the region is marked active *durably*; a write into an active region
costs no I/O. Some changes are noted for a whole path instead (``NOTE``):
create, link, rename, truncate, fallocate (they may change a file's content in
ways that size and mtime do not show). A region goes cold (cleared) when no
write is in progress there, none came for ``cold_s`` and the peer acknowledged
every op sent (the owner's ``quiescent()``). After a crash of the primary its
copy can differ from the peer's acknowledged state only inside active keys.

``ActivityState`` is the pure core (no I/O, time passed in); ``ActivityLog``
persists it as an append-only file of CRC-checked lines, fsynced in batches
(group commit), compacted now and then by rewrite + rename:

    <crc32 hex> {"h": {"v": 1, "epoch": E, "region": R, "tainted": false}}
    <crc32 hex> {"+": [[path, region], ...]}     keys made active (fsynced)
    <crc32 hex> {"-": [[path, region], ...]}     keys cleared (not fsynced)

``read_report(state_dir)`` is what a returning node tells the new primary:
its active keys, or why they cannot be trusted.

Promotion bookkeeping (per replicated root, in its state directory):
``receiver_in_sync`` (written by the receiver when its primary declared the
copies identical, removed when any primary session starts), and
``al_pending`` (written at promotion from it: the new primary may resync
from the returning node's activity log instead of every block).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .dirty_bitmap import BitmapStore
from .durable_file import atomic_write, fsync_dir

log = logging.getLogger("replication.activity_log")

VERSION = 1
DEFAULT_REGION_SIZE = 4 << 20
DEFAULT_COLD_S = 2.0
COMPACT_AFTER_RECORDS = 4096
NOTE = -1                               # region index meaning "the whole path"
AL_FILE = "activity_log"
IN_SYNC_FILE = "receiver_in_sync"
PENDING_FILE = "al_pending"
CHANGES_DIR = "changes"             # the primary sessions' BitmapStore (primary_link)

Key = tuple[str, int]


def regions_of(offset: int, length: int, region_size: int) -> range:
    """Region indexes that [offset, offset+length) touches (none if empty)."""
    if length <= 0:
        return range(0)
    return range(offset // region_size, (offset + length - 1) // region_size + 1)


# ---- pure core -----------------------------------------------------------------------

@dataclass
class ActivityState:
    """Active keys, writes in progress, and the ordered records not yet written.

    ``begin`` returns the sequence number that must be durable before the
    caller may apply its change; ``written(seq)`` says records up to seq are
    on disk. A key is cleared only while nothing is in progress on it, so a
    clear record can never follow the add record that guards a live write."""
    active: set[Key] = field(default_factory=set)
    busy: dict[Key, int] = field(default_factory=dict)
    last_use: dict[Key, float] = field(default_factory=dict)
    added_at: dict[Key, int] = field(default_factory=dict)
    records: list[tuple[int, str, list[Key]]] = field(default_factory=list)
    next_seq: int = 1
    durable_seq: int = 0

    def _append(self, sign: str, keys: list[Key]) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.records.append((seq, sign, keys))
        return seq

    def cover(self, keys: Iterable[Key]) -> list[Key]:
        """``keys`` with each region of a path whose NOTE key is active replaced by
        that NOTE key (the whole path is marked already: a new file's writes then
        cost no record, hence no fsync, while its create is still hot)."""
        active = self.active
        return list(dict.fromkeys((p, NOTE) if r != NOTE and (p, NOTE) in active else (p, r)
                                  for p, r in keys))

    def begin(self, keys: Iterable[Key], now: float) -> int:
        keys = list(dict.fromkeys(keys))
        new = [k for k in keys if k not in self.active]
        for k in keys:
            self.busy[k] = self.busy.get(k, 0) + 1
            self.last_use[k] = now
        if new:
            seq = self._append("+", new)
            self.active.update(new)
            for k in new:
                self.added_at[k] = seq
        return max((self.added_at[k] for k in keys), default=0)

    def end(self, keys: Iterable[Key], now: float) -> None:
        for k in dict.fromkeys(keys):
            left = self.busy.get(k, 0) - 1
            if left <= 0:
                self.busy.pop(k, None)
            else:
                self.busy[k] = left
            self.last_use[k] = now

    def cold(self, now: float, cold_s: float) -> list[Key]:
        return [k for k in self.active if k not in self.busy
                and now - self.last_use.get(k, float("-inf")) >= cold_s
                and self.added_at.get(k, 0) <= self.durable_seq]

    def clear(self, keys: list[Key]) -> None:
        """Forget ``keys`` (from ``cold``; the caller checked the peer has them)."""
        keys = [k for k in keys if k in self.active and k not in self.busy]
        if not keys:
            return
        for k in keys:
            self.active.discard(k)
            self.added_at.pop(k, None)
            self.last_use.pop(k, None)
        self._append("-", keys)

    def pending(self) -> tuple[list[tuple[int, str, list[Key]]], int]:
        return list(self.records), self.next_seq - 1

    def written(self, seq: int) -> None:
        self.durable_seq = max(self.durable_seq, seq)
        self.records = [r for r in self.records if r[0] > seq]


def replay(records: Iterable[tuple[str, list[Key]]], start: Iterable[Key] = ()) -> set[Key]:
    """The active set a reader finds from these records, in file order."""
    active = set(start)
    for sign, keys in records:
        if sign == "+":
            active.update(keys)
        else:
            active.difference_update(keys)
    return active


# ---- file format -------------------------------------------------------------------------

class ActivityLogError(ValueError):
    pass


def _line(obj: dict) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _record_line(sign: str, keys: list[Key]) -> bytes:
    return _line({sign: [[p, i] for p, i in keys]})


@dataclass(frozen=True)
class ParsedLog:
    epoch: int
    region_size: int
    tainted: bool
    keys: frozenset[Key]


def parse_log(data: bytes, where: str) -> ParsedLog:
    """Parse a whole activity-log file; any damage (torn or corrupt line,
    unknown version) raises ActivityLogError naming ``where``."""
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise ActivityLogError(f"{where}: torn last line (crash during an activity-log write)")
    header: dict | None = None
    active: set[Key] = set()
    for number, line in enumerate(lines[:-1], 1):
        crc, _, body = line.partition(b" ")
        try:
            ok = len(crc) == 8 and int(crc, 16) == zlib.crc32(body)
            record = json.loads(body) if ok else None
        except ValueError:
            ok = False
        if not ok or not isinstance(record, dict) or len(record) != 1:
            raise ActivityLogError(f"{where}: line {number} is corrupt")
        (kind, value), = record.items()
        if number == 1:
            if kind != "h" or not isinstance(value, dict):
                raise ActivityLogError(f"{where}: no header line")
            if value.get("v") != VERSION:
                raise ActivityLogError(f"{where}: version {value.get('v')!r}, "
                                       f"this node reads version {VERSION}")
            header = value
            continue
        if kind not in ("+", "-") or not isinstance(value, list):
            raise ActivityLogError(f"{where}: line {number}: unknown record {kind!r}")
        try:
            keys = [(str(p), int(i)) for p, i in value]
        except (TypeError, ValueError):
            raise ActivityLogError(f"{where}: line {number}: bad keys") from None
        active = replay([(kind, keys)], active)
    if header is None:
        raise ActivityLogError(f"{where}: empty file")
    try:
        return ParsedLog(int(header["epoch"]), int(header["region"]), bool(header["tainted"]),
                         frozenset(active))
    except (KeyError, TypeError, ValueError):
        raise ActivityLogError(f"{where}: bad header {header!r}") from None


# ---- the primary's log ---------------------------------------------------------------------

class Activity:
    """Token of one change in progress (``ActivityLog.end`` it)."""
    __slots__ = ("keys",)

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys


class ActivityLog:
    """Durable activity log of one replicated root, in ``state_dir/activity_log``.

    Keys still active in a log found there (an earlier crash of this node)
    are carried over; a damaged one makes the new log *tainted* (its report
    is refused, so the peer falls back to a full digest comparison)."""

    def __init__(self, state_dir: str, epoch: int, *, region_size: int = DEFAULT_REGION_SIZE,
                 cold_s: float = DEFAULT_COLD_S, clock: Callable[[], float] = time.monotonic,
                 compact_after: int = COMPACT_AFTER_RECORDS) -> None:
        if region_size <= 0:
            raise ValueError(f"activity log region size must be > 0, got {region_size}")
        self.path = os.path.join(state_dir, AL_FILE)
        self.epoch = epoch
        self.region_size = region_size
        self.cold_s = cold_s
        self._clock = clock
        self._compact_after = compact_after
        self._lock = threading.Lock()        # the state
        self._io_lock = threading.Lock()     # the file; taken before _lock
        self._state = ActivityState()
        carried: frozenset[Key] = frozenset()
        self.tainted = False
        try:
            with open(self.path, "rb") as f:
                old = parse_log(f.read(), self.path)
            carried, self.tainted = old.keys, old.tainted
            if old.region_size != region_size:
                carried = frozenset((p, NOTE) for p, _ in old.keys)   # whole files then
        except FileNotFoundError:
            pass
        except ActivityLogError as e:
            log.warning("event=activity_log_damaged path=%s error=%r action=taint", self.path, str(e))
            self.tainted = True
        now = clock()
        self._state.active.update(carried)
        for k in carried:
            self._state.added_at[k] = 0
            self._state.last_use[k] = now
        self._records_in_file = 0
        self._fd = -1
        self._rewrite()
        log.info("event=activity_log_opened path=%s epoch=%d region=%d carried=%d tainted=%s",
                 self.path, epoch, region_size, len(carried), self.tainted)

    # ---- hot path ----------------------------------------------------------------------
    def begin_write(self, path: str, offset: int, length: int) -> Activity:
        return self.begin([(path, r) for r in regions_of(offset, length, self.region_size)])

    def begin_paths(self, *paths: str) -> Activity:
        return self.begin([(p, NOTE) for p in paths if p])

    def begin(self, keys: list[Key]) -> Activity:
        """Returns once every key is durably active; the change may then be applied."""
        with self._lock:
            keys = self._state.cover(keys)
            need = self._state.begin(keys, self._clock())
            durable = self._state.durable_seq >= need
        if not durable:
            try:
                self._flush(need, sync=True)
            except BaseException:
                self.end(Activity(keys))
                raise
        return Activity(keys)

    def end(self, activity: Activity) -> None:
        with self._lock:
            self._state.end(activity.keys, self._clock())

    # ---- lazy clearing -----------------------------------------------------------------
    def clear_cold(self, quiescent: Callable[[], bool]) -> int:
        """Clear cold keys if ``quiescent()`` (the peer acknowledged every op
        sent so far). Not fsynced: a clear lost in a crash costs a resync."""
        with self._lock:
            cold = self._state.cold(self._clock(), self.cold_s)
            if not cold or not quiescent():
                return 0
            self._state.clear(cold)
        self._flush(0, sync=False)
        return len(cold)

    def active(self) -> set[Key]:
        with self._lock:
            return set(self._state.active)

    def close(self) -> None:
        with self._io_lock:
            if self._fd >= 0:
                self._flush_locked(0, sync=True)
                os.close(self._fd)
                self._fd = -1

    # ---- file --------------------------------------------------------------------------
    def _flush(self, need: int, sync: bool) -> None:
        with self._io_lock:
            self._flush_locked(need, sync)

    def _flush_locked(self, need: int, sync: bool) -> None:
        with self._lock:
            if need and self._state.durable_seq >= need:
                return      # another thread's batch carried it
            records, seq = self._state.pending()
        if self._fd < 0:
            raise OSError(f"activity log {self.path} is closed")
        if self._records_in_file + len(records) > self._compact_after:
            self._rewrite()
            return
        if records:
            os.write(self._fd, b"".join(_record_line(s, k) for _, s, k in records))
            self._records_in_file += len(records)
        if sync and any(s == "+" for _, s, _ in records):
            os.fdatasync(self._fd)
        with self._lock:
            self._state.written(seq)

    def _rewrite(self) -> None:
        """Header + the active keys now, by rename: a crash leaves old or new."""
        with self._lock:
            _, seq = self._state.pending()
            active = sorted(self._state.active)
        data = _line({"h": {"v": VERSION, "epoch": self.epoch, "region": self.region_size,
                            "tainted": self.tainted}})
        if active:
            data += _record_line("+", active)
        atomic_write(self.path, data)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._records_in_file = 1
        with self._lock:
            self._state.written(seq)


# ---- what a returning node reports ---------------------------------------------------------

def store_is_clean(changes_dir: str) -> tuple[bool, str]:
    """Read-only look at a BitmapStore directory: no marks, no journal, trusted."""
    try:
        with open(os.path.join(changes_dir, "store.json"), encoding="ascii") as f:
            state = json.load(f)
        marks = [n for n in os.listdir(os.path.join(changes_dir, "bitmaps")) if n.endswith(".bm")]
        journal = os.path.getsize(os.path.join(changes_dir, "journal"))
    except FileNotFoundError as e:
        return False, f"no change store ({e.filename})"
    except (OSError, ValueError) as e:
        return False, f"change store unreadable: {e}"
    if not state.get("trusted", False):
        return False, "change store untrusted since an earlier crash"
    if marks or journal:
        return False, (f"change store holds changes not yet reintegrated "
                       f"({len(marks)} bitmaps, journal {journal} bytes)")
    return True, ""


def read_report(state_dir: str) -> dict:
    """The returning node's activity report for the new primary (plain data)."""
    path = os.path.join(state_dir, AL_FILE)
    report: dict = {"version": VERSION, "valid": False, "reason": "", "epoch": None,
                    "region_size": 0, "keys": []}
    try:
        with open(path, "rb") as f:
            parsed = parse_log(f.read(), path)
    except FileNotFoundError:
        report["reason"] = f"no activity log at {path} (never primary here)"
        return report
    except (OSError, ActivityLogError) as e:
        report["reason"] = str(e)
        return report
    report.update(epoch=parsed.epoch, region_size=parsed.region_size,
                  keys=sorted([p, i] for p, i in parsed.keys))
    if parsed.tainted:
        report["reason"] = f"{path}: tainted (an earlier activity log was damaged)"
        return report
    clean, why = store_is_clean(os.path.join(state_dir, "changes"))
    if not clean:
        report["reason"] = why
        return report
    report["valid"] = True
    return report


def check_report(report: dict, after_epoch: int) -> str | None:
    """None if the new primary may resync only the report's keys (plus its own
    marks); else why not."""
    if not isinstance(report, dict) or report.get("version") != VERSION:
        return f"activity report version {report.get('version') if isinstance(report, dict) else '?'!r}, expected {VERSION}"
    if not report.get("valid"):
        return f"peer's activity log refused: {report.get('reason') or 'invalid'}"
    if report.get("epoch") != after_epoch:
        return (f"peer's activity log is of epoch {report.get('epoch')}, this primary took over "
                f"from epoch {after_epoch}")
    if not isinstance(report.get("region_size"), int) or report["region_size"] <= 0:
        return f"bad region size {report.get('region_size')!r}"
    return None


# ---- promotion bookkeeping -----------------------------------------------------------------

def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="ascii") as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def mark_receiver_in_sync(state_dir: str, epoch: int) -> None:
    """The receiver's copy equals its primary's (epoch ``epoch``) now."""
    os.makedirs(state_dir, exist_ok=True)
    atomic_write(os.path.join(state_dir, IN_SYNC_FILE),
                 json.dumps({"epoch": epoch}).encode("ascii"))


def drop_receiver_in_sync(state_dir: str) -> None:
    """A primary session starts: the copy is not known identical any more."""
    path = os.path.join(state_dir, IN_SYNC_FILE)
    if os.path.exists(path):
        os.unlink(path)
        fsync_dir(state_dir)


def prepare_promotion(state_dir: str) -> int | None:
    """At promotion: forget the baseline (as before); if this node's receiver
    was in sync with its primary, leave ``al_pending`` naming that primary's
    epoch, so the first reintegration may use the old primary's activity log.
    Returns that epoch, or None (full digest comparison)."""
    os.makedirs(state_dir, exist_ok=True)
    for name in ("baseline", PENDING_FILE):
        try:
            os.unlink(os.path.join(state_dir, name))
        except FileNotFoundError:
            pass
    marker = _read_json(os.path.join(state_dir, IN_SYNC_FILE))
    epoch = marker.get("epoch") if marker else None
    if isinstance(epoch, int):
        # This copy equals that primary's: the marks of this node's own earlier
        # primary session, and the sticky crash taint on them, describe nothing
        # now (left, the taint made this promotion compare every block). A reset
        # also voids a reintegration cursor of that session.
        store = BitmapStore(os.path.join(state_dir, CHANGES_DIR))
        store.reset()
        store.close()
        atomic_write(os.path.join(state_dir, PENDING_FILE),
                     json.dumps({"after_epoch": epoch}).encode("ascii"))
    drop_receiver_in_sync(state_dir)
    fsync_dir(state_dir)
    return epoch if isinstance(epoch, int) else None


def pending_epoch(state_dir: str) -> int | None:
    marker = _read_json(os.path.join(state_dir, PENDING_FILE))
    epoch = marker.get("after_epoch") if marker else None
    return epoch if isinstance(epoch, int) else None
