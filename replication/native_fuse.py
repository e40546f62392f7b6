"""The FUSE layer's hot requests served in C (replication/_dataplane.c).

mfusepy builds libfuse's operations table out of ctypes callbacks into Python; every
request then crosses ctypes and takes the GIL. For read, getattr and write the C
functions of ``_dataplane`` go into the table in their place, and libfuse's worker
threads call them without entering Python. Everything else stays in ReplicatedFS
(replication/fuse_fs.py).

Writes (``NativeWrites``, with barrier durability only): C applies the write locally
and queues a record of it; a pump thread here turns the records into WRITE ops and
submits them, in queue order, before anything Python submits after them (every
submission drains the queue first, under ``submit_lock`` and the queue lock). The
rules stay in Python, once:
  - channel order = local order: Python's own data changes are made and submitted
    under the queue lock (C writes wait meanwhile); a holder of the exclusive
    ordering lock also holds C writes back (``OrderingLock`` hooks) after draining
    the queue;
  - the activity log: C writes only to regions whose keys Python pinned, each pin an
    Activity begun (made durable) by Python's own write of that region; a pin unused
    for ``idle_s`` is taken back under the queue lock, the queue drained, and only
    then its Activity ended, so the log may clear the key once the peer has all;
  - barriers and peer loss: fsync and friends are Python's, after the drain; a
    record that cannot be submitted turns C writes off and fails every later change
    (EIO), as the Python path would have failed the write itself.

The swap happens inside mfusepy's call of ``fuse_main_real``: mfusepy builds the
table and hands it to libfuse in the same call, so that call is the one place where
the table exists and is not used yet.

The extension is optional (setup.py): where it was not built, ``available()`` is
False, ``why_unavailable()`` says why, and every request is served in Python.
``HACLUSTER_FUSE_NATIVE=0`` in the environment asks for Python too (benchmarks
compare both in one run).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import threading
import logging
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

from .activity_log import regions_of
from .ops import WRITE_SETS_TIMES, Op, OpKind

log = logging.getLogger("replication.fuse")

_dataplane: ModuleType | None
try:
    _dataplane = importlib.import_module("replication._dataplane")
    _WHY = ""
except ImportError as exc:   # not built here (setup.py: optional)
    _dataplane = None
    _WHY = f"replication._dataplane is not built ({exc})"


def available() -> bool:
    return _dataplane is not None


def why_unavailable() -> str:
    return _WHY


def wanted() -> bool:
    """Built, and not turned off by HACLUSTER_FUSE_NATIVE=0."""
    return available() and os.environ.get("HACLUSTER_FUSE_NATIVE", "1") != "0"


def counters() -> dict[str, int]:
    """Requests served in C so far in this process, by operation ({} if not built)."""
    return dict(_dataplane.counters()) if _dataplane is not None else {}


def native_ops() -> list[str]:
    return sorted(_dataplane.addresses()) if _dataplane is not None else []


def put_into(ops: Any, writable: bool = True) -> list[str]:
    """Replace the C-served operations in a libfuse operations table (mfusepy's
    ctypes ``fuse_operations``); returns their names. mfusepy's write, open, release
    and fsync stay reachable from C (for what C does not serve). ``writable``:
    writable opens may be served in C (not on a read-only mount)."""
    assert _dataplane is not None
    fields = {f[0]: f[1] for f in type(ops)._fields_}
    python = {name: ctypes.cast(getattr(ops, name), ctypes.c_void_p).value
              for name in ("write", "open", "release", "fsync")}
    missing = [name for name, address in python.items() if not address]
    if missing:
        raise RuntimeError(f"the operations table has no {', '.join(missing)} to fall back to")
    _dataplane.set_python_write(python["write"])
    _dataplane.set_python_ops(python["open"], python["release"], python["fsync"], writable)
    done = []
    for name, address in sorted(_dataplane.addresses().items()):
        setattr(ops, name, ctypes.cast(ctypes.c_void_p(address), fields[name]))
        done.append(name)
    return done


_claim_lock = threading.Lock()
_claimed = False


def dataplane() -> Any:
    assert _dataplane is not None
    return _dataplane


@contextlib.contextmanager
def claimed() -> Iterator[bool]:
    """Yields True while this mount holds the C data plane: it knows one served
    directory, and the product runs each mount in a process of its own (tests may
    run several: the others get False)."""
    global _claimed
    with _claim_lock:
        mine = not _claimed
        _claimed = True
    if not mine:
        yield False
        return
    try:
        yield True
    finally:
        with _claim_lock:
            _claimed = False


@contextlib.contextmanager
def installed(mfusepy: Any, root_fd: int,
              on_installed: Callable[[], None] | None = None,
              writable: bool = True) -> Iterator[bool]:
    """While inside, the mount this thread makes with mfusepy (``FUSE(...)``) serves
    read, getattr, open (and release of what C opened: ``adopt``) and
    (once ``NativeWrites`` turns them on) writes in C, under the directory ``root_fd`` (opened before the mount
    covered it); ``on_installed`` runs once the table holds the C functions, before the
    mount starts. Yields False (and changes nothing) when another mount of this
    process has the C functions already (``claimed``)."""
    assert _dataplane is not None
    with claimed() as mine:
        if not mine:
            yield False
            return
        _dataplane.set_root(root_fd)
        real = mfusepy.fuse_main_real
        owner = threading.get_ident()

        def fuse_main_real(argc: Any, argv: Any, ops_p: Any, size: Any, ctx: Any) -> Any:
            if threading.get_ident() == owner:   # not another thread's mount made meanwhile
                put_into(ops_p.contents, writable)
                if on_installed is not None:
                    on_installed()
            return real(argc, argv, ops_p, size, ctx)

        mfusepy.fuse_main_real = fuse_main_real
        try:
            yield True
        finally:
            mfusepy.fuse_main_real = real
            _dataplane.set_root(-1)


# The pump sends what no barrier drained: once per PUMP_LINGER_S while writes come (or
# at once for a full batch), parked after PUMP_HOT_ROUNDS periods with nothing queued.
PUMP_LINGER_S = 0.004
PUMP_HOT_ROUNDS = 5


class NativeWriteError(OSError):
    pass


class NativeWrites:
    """Python's half of the C write path (module doc). ``submit(ops)`` submits ops
    to the replicator, in order; ``activity``: the replicator's activity log (None:
    it keeps none, and C writes need no pins)."""

    def __init__(self, submit: Callable[[Sequence[Op]], list], activity: Any,
                 region_size: int, idle_s: float) -> None:
        assert _dataplane is not None
        self._dp = _dataplane
        self._submit = submit
        self.activity = activity
        self.region_size = region_size
        self.idle_s = idle_s
        # Taken before the queue lock by whoever drains the queue and submits.
        self.submit_lock = threading.RLock()
        self._section_owner: int | None = None
        self._section_depth = 0
        self._pins: dict[tuple[str, int], Any] = {}   # pinned key -> its Activity
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.records = 0

    # ---- life --------------------------------------------------------------------
    def start(self) -> None:
        self._dp.writes(True, self.region_size, self.activity is not None)
        for target, name in ((self._pump, "native-pump"), (self._unpin_loop, "native-unpin")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """C writes off (later ones go to Python), the queue drained, every pin ended."""
        self._stop.set()
        self._dp.tree_durable(False, False)
        self._dp.writes(False, self.region_size, self.activity is not None)   # wakes the pump
        for t in self._threads:
            t.join(timeout=10)
        with self.section():
            self._drain_locked()
            tokens = self._unpin_locked(-1.0)
        self._end(tokens)

    # ---- the queue ---------------------------------------------------------------
    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """A change made and submitted by Python: C writes wait until it is
        submitted (``drain_locked`` inside, before the submission). Reentrant."""
        me = threading.get_ident()
        with self.submit_lock:
            if self._section_owner == me:
                self._section_depth += 1
                try:
                    yield
                finally:
                    self._section_depth -= 1
                return
            self._dp.lock()
            self._section_owner, self._section_depth = me, 1
            try:
                yield
            finally:
                self._section_owner, self._section_depth = None, 0
                self._dp.unlock()

    def tree_durable(self, on: bool) -> bool:
        """The replicator's word (Sender.tree_durable): every change so far is durable
        on the peer (on), or a change was made (off). While on, an fsync of a handle C
        opened is served in C by the local sync alone. On is taken only with nothing
        queued, and only inside ``section`` (a barrier is; the queue lock is taken
        before the replicator's, never after)."""
        if not on:
            return bool(self._dp.tree_durable(False, False))
        if self._section_owner != threading.get_ident():
            return False
        return bool(self._dp.tree_durable(True, True))

    def drain_locked(self) -> None:
        """Under ``section`` (or the exclusive ordering lock's hook): submit every
        queued record. Raises EIO if an earlier record could not be."""
        self._drain_locked()
        if self.error is not None:
            raise NativeWriteError(5, f"not replicated: {self.error}")

    def take_ops_locked(self) -> list[Op]:
        """Under ``section``: the queued writes as WRITE ops, for a caller that submits
        them (in order, before its own) and calls ``not_submitted`` if that fails.
        Raises EIO if an earlier record could not be submitted."""
        ops = self._take_locked()
        if self.error is not None:
            raise NativeWriteError(5, f"not replicated: {self.error}")
        return ops

    def not_submitted(self, ops: Sequence[Op], exc: BaseException) -> None:
        """Under ``submit_lock``: ``take_ops_locked``'s ops could not be submitted:
        they were answered and applied here, so every later change fails instead.
        (What C queued meanwhile, behind them, is dropped by the next take: writes of
        the same kind as theirs, applied here, answered and never replicated; the
        barrier after them fails, as for the batch.)"""
        if self.error is None:
            self.error = exc
            self._dp.writes_off()   # maybe under the queue lock: writes() would wait for it
            log.error("event=native_write_not_replicated records=%d error=%r", len(ops), exc)
        self.records -= len(ops)

    def _take_locked(self) -> list[Op]:
        failure = self._dp.failure()
        if failure and self.error is None:
            self.error = OSError(failure, "a write applied locally could not be queued for "
                                 f"replication: {os.strerror(failure)}")
            log.error("event=native_write_not_queued error=%r", str(self.error))
        records = self._dp.take_locked()
        if self.error is not None:
            return []   # none should be there: C writes are off
        self.records += len(records)
        return [Op(OpKind.WRITE, path, offset=offset, data=data, mode=WRITE_SETS_TIMES,
                   atime_ns=atime_ns, mtime_ns=mtime_ns)
                for path, offset, data, atime_ns, mtime_ns in records]

    def _drain_locked(self) -> None:
        self._take_and_submit(self._take_locked)

    def _take_and_submit(self, take: Callable[[], list[Op]]) -> None:
        """Submit what ``take()`` took, in order; if that fails, the failure rule
        (``not_submitted``)."""
        ops: list[Op] = []
        try:
            ops = take()
            if ops:
                self._submit(ops)
        except BaseException as exc:  # noqa: BLE001 - every later change fails instead
            self.not_submitted(ops, exc)

    def drain(self) -> None:
        with self.section():
            self._drain_locked()

    def _pump_drain(self) -> None:
        """The pump's drain: the records are taken under the queue lock, and submitted
        holding only ``submit_lock``, so C writes go on queueing while a batch is
        encoded and sent (they used to wait for the whole send). Order holds: every
        other submitter (``section``) takes ``submit_lock`` first, so this batch is on
        the channel before anything taken after it; what C queues meanwhile is the
        next drain's."""
        with self.submit_lock:
            self._take_and_submit(self._take_under_queue_lock)

    def _take_under_queue_lock(self) -> list[Op]:
        self._dp.lock()
        try:
            return self._take_locked()
        finally:
            self._dp.unlock()

    def _pump(self) -> None:
        idle = 0
        while not self._stop.is_set():
            if self.error is not None:   # C writes are off: nothing more will be queued
                self._stop.wait(1.0)
                continue
            # A batch's worth or PUMP_LINGER_S; parked (woken by the first record)
            # after PUMP_HOT_ROUNDS with nothing to send. Barriers do not wait for
            # this: they drain the queue themselves.
            if self._dp.wait(1.0, PUMP_LINGER_S, idle >= PUMP_HOT_ROUNDS):
                self._pump_drain()
                idle = 0
            else:
                idle += 1

    # ---- pins --------------------------------------------------------------------
    def pin_locked(self, path: str, offset: int, length: int) -> None:
        """Under ``section``, after Python's write of these regions (its Activity is
        durable): pin them, so that the next writes there are C's."""
        if self.activity is None or self.error is not None:
            return
        for region in regions_of(offset, length, self.region_size):
            key = (path, region)
            if key in self._pins:
                continue
            token = self.activity.begin([key])     # active already: no flush
            try:
                pinned = self._dp.pin(path, region)
            except (ValueError, MemoryError) as exc:   # never fails the write: stays Python's
                log.warning("event=native_pin_failed path=%r error=%r", path, exc)
                pinned = False
            if pinned:
                self._pins[key] = token
            else:
                self.activity.end(token)

    def _unpin_loop(self) -> None:
        while not self._stop.wait(max(self.idle_s, 0.05)):
            if not self._pins:
                continue
            with self.section():
                tokens = self._unpin_locked(self.idle_s)
            self._end(tokens)

    def _unpin_locked(self, idle_s: float) -> list:
        """Under ``section``: take back the pins unused for idle_s (all if < 0); their
        records are submitted before their Activities may end (returned, to end)."""
        unpinned = self._dp.unpin_idle(idle_s)
        if unpinned:
            self._drain_locked()
        return [t for t in (self._pins.pop((p, r), None) for p, r in unpinned) if t is not None]

    def _end(self, tokens: list) -> None:
        if self.activity is not None:
            for token in tokens:
                self.activity.end(token)

    def status(self) -> dict[str, Any]:
        n, nbytes = self._dp.pending()
        return {"pins": len(self._pins), "queued": n, "queued_bytes": nbytes,
                "records": self.records, **self._dp.counters()}

