"""The primary's side of the channel: the FUSE layer's ``Replicator``.

Every mutating operation is applied locally, submitted here (in local order,
under ``ordering_lock``), and answered to the application only when ``wait``
returns. With BARRIER durability (the default, see ``Durability``) ``wait``
returns at once for every op but a barrier (FSYNC), which waits for every op
before it; below, "an op" is then "a barrier and the ops before it". With
WRITE durability every op waits:

* CONNECTED: ``wait`` returns once the receiver acknowledged the op (after
  apply, or on receipt, as the channel's ack mode says).
* The receiver stops answering (timeout, closed channel, or it refused an op
  that succeeded here): the ops it had not acknowledged are recorded as
  changed (durably), then the owner's ``peer_lost`` hook runs (the mirror
  module commits the secondary's removal from the in-sync set there), and
  only then are the blocked writes answered. If the hook fails, every write
  fails with EIO from then on: nothing goes on unreplicated and unrecorded.
* ALONE: each op is recorded as changed, durably, before ``wait`` returns;
  reintegration later sends only what was recorded.
* CONNECTED and *settling* (attached for a reintegration, until ``settled``):
  the receiver's copy is not in sync yet, so it may refuse an op that
  succeeded here (a write to a file it does not have yet, a rename of a name
  it never had). Such a refusal is handed to ``on_refused`` (the owner records
  the op, durably, for the running reintegration to settle) and the op is
  answered as done; only a transport failure, a timeout or a stale epoch is a
  lost peer. Once ``settled``, a refusal is a lost peer again: an in-sync copy
  must apply every op. With acknowledgements on receipt (or none), a refusal
  comes later, as a *late error* naming only the op's sequence number: while
  settling, the sender keeps a light copy (no data) of the last
  ``LATE_OPS_KEPT`` ops it sent, to record the refused one; a late error for
  an op no longer kept is a lost peer.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import logging
import threading
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable, Protocol

from .channel import ReplicationRefused, StaleEpoch
from .ops import FSYNC_DATASYNC, NAMESPACE_KINDS, WRITE_SETS_TIMES, Op, OpKind
from .ordering_lock import OrderingLock

if TYPE_CHECKING:
    from .activity_log import ActivityLog

log = logging.getLogger("replication.sender")

# Ops remembered for late errors while settling (~200 bytes each): the receiver's
# apply lag is far shorter than this many ops.
LATE_OPS_KEPT = 1 << 16


class ChangeRecorder(Protocol):
    """Where ALONE-mode changes go (dirty bitmaps + namespace journal)."""

    def record(self, op: Op) -> None:
        """Durable when it returns."""


class Channel(Protocol):
    def send_op(self, op: Op) -> int: ...
    def wait(self, seq: int, timeout: float) -> None: ...
    def close(self) -> None: ...

    # Used in barrier durability only (the channel runs in async ack mode then).
    def wait_through(self, seq: int, timeout: float) -> None: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def acked_through(self) -> int: ...
    @property
    def late_error_count(self) -> int: ...


class Durability(enum.Enum):
    """When an application's change is answered (DESIGN.md "The replication channel").

    BARRIER: changes are applied locally and streamed without waiting; a barrier
    (fsync, fdatasync, fsyncdir, an O_SYNC/O_DSYNC write: an FSYNC op) is
    answered only once every op before it in channel order was applied by the
    receiver, the barrier itself made durable there, and each refusal among them
    handled -- the local disk's contract, as DRBD protocol C gives under a page
    cache. The channel then runs in async ack mode (refusals come as late errors).
    WRITE: every op is answered only once the receiver acknowledged it."""
    BARRIER = "barrier"
    WRITE = "write"


class SenderState(enum.Enum):
    CONNECTED = "connected"
    ALONE = "alone"
    FAILED = "failed"  # peer lost and the owner could not record it: writes fail


class ReplicationUnavailable(OSError):
    """The op was applied locally but can be neither replicated nor recorded."""


@dataclass(frozen=True)
class Ticket:
    generation: int
    seq: int | None  # None: recorded locally (ALONE), nothing to wait for
    barrier: bool = True  # False: BARRIER durability and not a barrier (answered at once)
    synced: str | None = None  # a full fsync sent: the path it makes durable over there


class Sender:
    def __init__(self, recorder: ChangeRecorder, peer_lost: Callable[[str], None],
                 ack_timeout_s: float = 3.0, alone: bool = False,
                 durability: Durability = Durability.WRITE) -> None:
        """``alone``: the owner knows the peer is already out of the in-sync set.
        Otherwise the sender starts as if connected to a peer that is not there
        yet: the first op triggers ``peer_lost`` before anything is answered.
        ``durability``: see Durability (BARRIER needs an async-mode channel)."""
        self.recorder = recorder
        self.peer_lost = peer_lost
        self.ack_timeout_s = ack_timeout_s
        self.durability = durability
        self._barriers = durability is Durability.BARRIER
        # Held by the FUSE layer (and reintegration) around "apply locally + submit",
        # so that channel order is local order.
        self.ordering_lock = OrderingLock()
        self._lock = threading.Lock()
        # Notified whenever an op leaves _in_flight (``quiesce`` waits on it).
        self._answered = threading.Condition(self._lock)
        self._settling = False
        self._refusals = 0      # refusals recorded while settling, this generation
        self._keep_for_late = False
        self._sent_ops: dict[int, Op] = {}  # seq -> op without data (settling, late errors)
        self._late_handled = 0  # late errors of this generation's channel handled
        self._state = SenderState.ALONE if alone else SenderState.CONNECTED
        self._channel: Channel | None = None
        self._generation = 0
        # seq -> op sent and not known to be answered, oldest first. With
        # BARRIER durability nobody waits for most of them: they are kept without
        # their data and trimmed by the channel's ``acked_through``; on a peer loss
        # what is left is recorded (more than needed at worst, never less).
        self._in_flight: collections.OrderedDict[int, Op] = collections.OrderedDict()
        # BARRIER durability: path -> seq of the last op sent that touched it (or its
        # entries), forgotten once the receiver's durable mark passes it. A barrier on
        # a path absent here needs no round trip when everything sent was answered
        # and the mark covers what the reintegration sent (``_durable_floor``).
        self._path_seq: dict[str, int] = {}
        self._pruned_through = -1
        self._durable_floor = 0
        self._fast_barriers = 0
        # Sent to a receiver by this process (counters, for the owner's metrics).
        self._ops_sent = 0
        self._bytes_sent = 0
        self._failure: str | None = None
        # Unset while a peer-loss transition runs: nothing is answered until it ends.
        self._transition = threading.Event()
        self._transition.set()
        # Called with each op sent while connected (reintegration journals
        # namespace ops with it); runs under the ordering lock.
        self.on_sent: Callable[[Op], None] | None = None
        # While settling: records an op the receiver refused (durable when it
        # returns); runs on the waiting thread, outside the ordering lock.
        self.on_refused: Callable[[Op, OSError], None] | None = None
        # The activity log (DESIGN.md "In-flight writes"): the FUSE layer marks
        # regions in it before it applies a change. None: no activity log.
        self.activity: ActivityLog | None = None
        # Told False at every submission and every change of channel or state, True
        # when a barrier found the whole tree covered by the receiver's durable mark
        # (the C data plane then serves fsyncs of the handles it owns by the local
        # sync alone, as this barrier was: replication/native_fuse.py).
        self.tree_durable: Callable[[bool], object] | None = None

    # ---- owner API -----------------------------------------------------------
    @property
    def state(self) -> SenderState:
        return self._state

    def attach(self, channel: Channel, settling: bool = False,
               late_errors: bool = False) -> None:
        """Start replicating live ops on ``channel``. ``settling``: a
        reintegration runs, so refusals go to ``on_refused`` until ``settled``.
        ``late_errors``: the channel reports refusals after acknowledging
        (receipt or async mode; see ``late_error``)."""
        with self._lock:
            self._tell_tree(False)
            self._keep_for_late = late_errors
            self._sent_ops.clear()
            self._late_handled = 0
            self._generation += 1
            self._channel = channel
            self._in_flight.clear()
            self._state = SenderState.CONNECTED
            self._failure = None
            self._settling = settling
            self._refusals = 0
            self._path_seq.clear()
            self._pruned_through = -1
            self._durable_floor = getattr(channel, "last_seq", 0)
        log.info("event=sender_connected generation=%d settling=%s", self._generation, settling)

    def quiesce(self, timeout: float) -> None:
        """Return once every op submitted so far was answered (a refusal
        recorded by ``on_refused``). The caller holds the ordering lock, so
        nothing new is submitted meanwhile. Raises TimeoutError (the receiver
        is not answering: the caller treats it as a lost peer)."""
        if self._barriers:
            self._drain(timeout)
            return
        deadline = time.monotonic() + timeout
        with self._answered:
            while self._in_flight and self._state is SenderState.CONNECTED:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self._in_flight)} op(s) still unanswered "
                                       f"after {timeout} s")
                self._answered.wait(remaining)
            if self._state is not SenderState.CONNECTED:
                raise ConnectionError(f"receiver lost: {self._failure or 'peer lost'}")

    def quiesce_late(self, channel: Channel, received: Callable[[], int], timeout: float) -> None:
        """Return once the late errors ``received()`` counts for ``channel`` were
        all handled (the caller put a barrier on the channel first, so every
        refusal of an op sent before is among them)."""
        deadline = time.monotonic() + timeout
        with self._answered:
            while self._channel is channel and self._late_handled < received():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"late errors still being handled after {timeout} s")
                self._answered.wait(min(remaining, 0.05))
            if self._channel is not channel or self._state is not SenderState.CONNECTED:
                raise ConnectionError(f"receiver lost: {self._failure or 'peer lost'}")

    def settled(self) -> None:
        """The reintegration is complete (caller holds the ordering lock, after
        ``quiesce``): from now on a refusal is a lost peer."""
        with self._lock:
            self._tell_tree(False)
            self._settling = False
            self._sent_ops.clear()
            if self._channel is not None:   # what the reintegration sent must be durable too
                self._durable_floor = getattr(self._channel, "last_seq", 0)

    def late_error(self, channel: Channel, seq: int, err: int, message: str) -> None:
        """The channel's late-error hook: ``seq`` was refused after it was
        acknowledged. Settling: record it (as ``wait`` does for a refusal);
        else, or if the op is no longer known, the peer is lost."""
        with self._lock:
            if channel is not self._channel:
                return          # an earlier connection's: that loss was handled then
            generation = self._generation
            op = self._sent_ops.get(seq) if self._settling else None
            if op is None and self._settling:
                # A WRITE with times goes as WRITE + UTIMENS to an older receiver:
                # seq may be the WRITE's, one before the seq the sender was given.
                after = self._sent_ops.get(seq + 1)
                if after is not None and after.kind == OpKind.WRITE and after.mode & WRITE_SETS_TIMES:
                    op = after
        error = ReplicationRefused(err, message)
        try:
            if op is not None and err != errno.ESTALE and self.on_refused is not None:
                self._record_refused(op, error)
                return
            # The op was answered already, so it is in no in-flight list: record
            # it with the loss. Not known any more (in sync, nothing is kept):
            # the whole tree is recorded as changed (as BitmapStore.note('')
            # does), so the next reintegration compares every file's digests.
            self._lose_peer(generation, f"late error for seq {seq}: {message}",
                            extra=[op if op is not None else Op(OpKind.CREATE, "")])
        finally:
            with self._answered:
                self._late_handled += 1
                self._answered.notify_all()

    def remember(self, channel: Channel, seq: int, op: Op) -> None:
        """An op sent on ``channel`` by someone else (the reintegration itself):
        kept like the live ones, so that a late refusal of it is recorded too."""
        with self._lock:
            if channel is self._channel and self._settling and self._keep_for_late:
                self._keep_sent(seq, op)

    def detach(self, reason: str) -> None:
        """Owner-initiated: stop replicating (e.g. the secondary was stopped)."""
        self._lose_peer(self._generation, reason)

    def shutdown(self, reason: str) -> None:
        """Owner-initiated clean stop (the mount is gone, nothing writes any more).
        If the receiver acknowledged every op, its copy is exactly this one: close
        without ``peer_lost``, so a clean stop or swap keeps it in sync. With ops
        still unacknowledged it is an ordinary loss."""
        if self._barriers:
            try:    # streamed ops still unanswered: give the receiver its usual time
                self._drain(self.ack_timeout_s)
            except OSError:
                pass    # not answered: an ordinary loss below
        with self._lock:
            quiet = self._state is SenderState.CONNECTED and not self._in_flight
            if quiet:
                self._state = SenderState.ALONE
                channel, self._channel = self._channel, None
        if not quiet:
            self.detach(reason)
            return
        if channel is not None:
            channel.close()
        log.info("event=sender_closed reason=%r unacknowledged=0", reason)

    def status(self) -> dict:
        with self._lock:
            return {"state": self._state.value, "in_flight": len(self._in_flight),
                    "generation": self._generation, "failure": self._failure,
                    "settling": self._settling, "refusals_recorded": self._refusals,
                    "barriers_answered_by_durable_mark": self._fast_barriers,
                    "ops_sent": self._ops_sent, "bytes_sent": self._bytes_sent}

    # ---- Replicator API (called by the FUSE layer) ------------------------------
    def _tell_tree(self, durable: bool) -> None:
        hook = self.tree_durable
        if hook is not None:
            hook(durable)

    def submit(self, op: Op) -> Ticket:
        with self._lock:
            self._tell_tree(False)
            state, generation, channel = self._state, self._generation, self._channel
            if state is SenderState.CONNECTED:
                if (self._barriers and op.kind == OpKind.FSYNC and channel is not None
                        and self._durable_already(channel, op.path)):
                    self._fast_barriers += 1
                    if self._durable_already(channel, ""):
                        self._tell_tree(True)
                    return Ticket(generation, None, barrier=False)
                try:
                    if channel is None:
                        raise ConnectionError("no receiver connected")
                    seq = channel.send_op(op)
                except OSError as e:
                    # Record it below as an unacknowledged op of this generation.
                    send_error = e
                else:
                    if self._barriers:
                        self._trim_answered(channel)
                    return self._sent(op, seq, generation)
        if state is SenderState.CONNECTED:
            self._lose_peer(generation, f"send failed: {send_error}", extra=[op])
            return Ticket(generation, None, self._is_barrier(op))
        if state is SenderState.FAILED:
            self._record_or_fail([op])
            raise ReplicationUnavailable(f"replication failed earlier ({self._failure}); "
                                         f"{op.describe()} applied locally only")
        self._record_or_fail([op])
        return Ticket(generation, None, self._is_barrier(op))

    def submit_many(self, ops: Sequence[Op]) -> list[Ticket]:
        """``submit`` for each of ``ops``, in order. Connected, with a channel that
        sends several ops at once (``send_ops``), they go on the wire together: the
        C write path's batches, and a barrier with the writes it drains."""
        ops = list(ops)
        if ops and ops[0].kind == OpKind.FSYNC:
            # only a barrier first in line can find everything before it answered
            # (see _durable_already); one behind ops of the same batch never does
            return [self.submit(ops[0])] + self.submit_many(ops[1:])
        if len(ops) < 2:
            return [self.submit(op) for op in ops]
        with self._lock:
            self._tell_tree(False)
            state, generation, channel = self._state, self._generation, self._channel
            send_ops = getattr(channel, "send_ops", None)
            if state is SenderState.CONNECTED and channel is not None and send_ops is None:
                by_one = True
            elif state is SenderState.CONNECTED:
                by_one = False
                try:
                    if channel is None or send_ops is None:
                        raise ConnectionError("no receiver connected")
                    seqs = send_ops(ops)
                except OSError as e:
                    send_error = e
                else:
                    if self._barriers:
                        self._trim_answered(channel)
                    return [self._sent(op, seq, generation)
                            for op, seq in zip(ops, seqs, strict=True)]
        if state is SenderState.CONNECTED and by_one:
            return [self.submit(op) for op in ops]
        if state is SenderState.CONNECTED:
            self._lose_peer(generation, f"send failed: {send_error}", extra=ops)
            return [Ticket(generation, None, self._is_barrier(op)) for op in ops]
        if state is SenderState.FAILED:
            self._record_or_fail(ops)
            raise ReplicationUnavailable(f"replication failed earlier ({self._failure}); "
                                         f"{len(ops)} changes applied locally only")
        self._record_or_fail(ops)
        return [Ticket(generation, None, self._is_barrier(op)) for op in ops]

    def _sent(self, op: Op, seq: int, generation: int) -> Ticket:
        """Caller holds _lock: ``op`` went on the wire as ``seq``; its ticket."""
        self._ops_sent += 1
        self._bytes_sent += len(op.data)
        if self._barriers:
            self._note_paths(op, seq)
            op = _light(op)
        self._in_flight[seq] = op
        if self._settling and self._keep_for_late:
            self._keep_sent(seq, op)
        if self.on_sent is not None:
            self.on_sent(op)
        return Ticket(generation, seq, self._is_barrier(op), _synced(op))

    def wait(self, ticket: Ticket) -> None:
        """Return when the op of ``ticket`` may be answered to the application:
        acknowledged, or recorded with the peer's loss committed (its owner's
        ``peer_lost`` returned). Raises ReplicationUnavailable if it can be
        neither. With BARRIER durability a non-barrier op returns at once: it was
        sent (or recorded) by ``submit``, and the next barrier answers for it."""
        if not ticket.barrier:
            return
        if ticket.seq is not None:
            try:
                if self._barriers:
                    self._wait_barrier(ticket)
                else:
                    self._channel_of(ticket).wait(ticket.seq, self.ack_timeout_s)
                    self._answer(ticket)
                    return
            except OSError as e:
                if not self._settle_refusal(ticket, e):
                    self._lose_peer(ticket.generation, f"no acknowledgement: {e}")
        # An op recorded while the peer-loss transition runs is answered only after
        # the owner's hook returned (the peer is then out of the in-sync set).
        self._transition.wait()
        with self._lock:
            failed = self._state is SenderState.FAILED
        if failed:
            raise ReplicationUnavailable(f"replication failed: {self._failure}")

    # ---- internals -------------------------------------------------------------------
    def _is_barrier(self, op: Op) -> bool:
        return not self._barriers or op.kind == OpKind.FSYNC

    def _wait_barrier(self, ticket: Ticket) -> None:
        """BARRIER durability: every op up to the barrier answered by the receiver
        (in order: the barrier's FSYNC is answered once it is durable there), and
        every refusal among them handled by ``late_error`` (recorded while
        settling; else the peer's loss, committed). The caller then waits for a
        loss transition that may be running."""
        assert ticket.seq is not None       # a ticket of an op sent
        channel = self._channel_of(ticket)
        # a timeout on the receiver's progress (see wait_through), not on the total
        channel.wait_through(ticket.seq, self.ack_timeout_s)
        # The receiver answers in order: a refusal of an op before the barrier
        # arrived before the barrier's answer, so it is counted by now.
        self._await_late(channel, channel.late_error_count,
                         time.monotonic() + self.ack_timeout_s)
        with self._lock:
            if channel is self._channel:
                self._trim_answered(channel)
                if (ticket.synced is not None and not self._settling
                        and ticket.generation == self._generation):
                    self._synced_through(ticket.synced, ticket.seq)

    def _synced_through(self, path: str, seq: int) -> None:
        """Caller holds _lock: the full fsync of ``path`` sent as ``seq`` was answered
        with nothing refused before it: the receiver applied every op before it, then
        fsynced the file (or directory) and the directory holding its name (applier
        ``_fsync``; '': a syncfs of the copy). What it covers needs no round trip at the
        next barrier, as if the durable mark had passed it: a crashed PostgreSQL's start
        fsyncs every file, and the files written just before the crash then stop
        keeping the whole tree from counting as durable."""
        keys = list(self._path_seq) if path == "" else [path, path.rpartition("/")[0]]
        for key in keys:
            if self._path_seq.get(key, seq) < seq:
                del self._path_seq[key]

    def _await_late(self, channel: Channel, received: int, deadline: float) -> None:
        """Until ``late_error`` handled ``received`` late errors of ``channel``, or
        the channel was replaced (a loss began: the caller waits for it)."""
        with self._answered:
            while self._channel is channel and self._late_handled < received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"refusals from the receiver still being handled "
                                       f"after {self.ack_timeout_s} s")
                self._answered.wait(min(remaining, 0.05))

    def _drain(self, timeout: float) -> None:
        """BARRIER durability: every op sent so far answered and its refusals
        handled. Raises ConnectionError (no receiver) or TimeoutError."""
        with self._lock:
            channel, state = self._channel, self._state
        if channel is None or state is not SenderState.CONNECTED:
            raise ConnectionError(f"receiver lost: {self._failure or 'peer lost'}")
        channel.wait_through(channel.last_seq, timeout)
        self._await_late(channel, channel.late_error_count, time.monotonic() + timeout)
        with self._lock:
            if channel is not self._channel or self._state is not SenderState.CONNECTED:
                raise ConnectionError(f"receiver lost: {self._failure or 'peer lost'}")
            self._trim_answered(channel)

    def _note_paths(self, op: Op, seq: int) -> None:
        """Caller holds _lock: ``op`` (sent as ``seq``) changed its paths and the
        entries of their directories."""
        if op.kind == OpKind.FSYNC:
            return
        for path in (op.path, op.path2) if op.path2 else (op.path,):
            self._path_seq[path] = seq
            if op.kind in NAMESPACE_KINDS:
                self._path_seq[path.rpartition("/")[0]] = seq

    def _durable_already(self, channel: Channel, path: str) -> bool:
        """Caller holds _lock. A barrier on ``path`` needs no round trip: nothing
        is settling, every op sent was answered (applied over there), and the
        receiver's durable mark covers the last op on ``path`` and on its parent's
        entries, and everything the reintegration sent. '' is the whole tree."""
        mark = getattr(channel, "durable_through", -1)
        if self._settling or mark < self._durable_floor or mark < 0:
            return False
        if channel.acked_through < channel.last_seq:
            return False
        if mark > self._pruned_through:
            self._path_seq = {p: q for p, q in self._path_seq.items() if q > mark}
            self._pruned_through = mark
        if path == "":
            return not self._path_seq
        return path not in self._path_seq and path.rpartition("/")[0] not in self._path_seq

    def _trim_answered(self, channel: Channel) -> None:
        """Caller holds _lock: forget the in-flight ops the receiver answered."""
        through = channel.acked_through
        in_flight = self._in_flight
        while in_flight and next(iter(in_flight)) <= through:
            in_flight.popitem(last=False)
        if not in_flight:
            self._answered.notify_all()

    def _keep_sent(self, seq: int, op: Op) -> None:
        """Caller holds _lock."""
        self._sent_ops[seq] = _light(op)
        if len(self._sent_ops) > LATE_OPS_KEPT:
            del self._sent_ops[next(iter(self._sent_ops))]

    def _answer(self, ticket: Ticket) -> None:
        with self._answered:
            if ticket.generation == self._generation and ticket.seq is not None:
                self._in_flight.pop(ticket.seq, None)
                self._answered.notify_all()

    def _settle_refusal(self, ticket: Ticket, error: OSError) -> bool:
        """A refusal while settling: record the op and answer it (True). False:
        not a refusal (transport, timeout), a stale epoch (we are fenced), or
        not settling: the caller loses the peer."""
        refused = isinstance(error, ReplicationRefused) and not isinstance(error, StaleEpoch)
        with self._lock:
            op = self._in_flight.get(ticket.seq) if ticket.seq is not None else None
            if not (refused and self._settling and op is not None
                    and ticket.generation == self._generation
                    and self._state is SenderState.CONNECTED and self.on_refused is not None):
                return False
        # Outside the lock: recording fsyncs. The op stays in flight until it is
        # recorded, so ``quiesce`` (and the in-sync transition) wait for it.
        refusals = self._record_refused(op, error)
        if refusals is None:
            self._answer(ticket)
            raise ReplicationUnavailable(self._failure)
        if refusals == 1:   # PostgreSQL makes thousands while a WAL segment is missing: one line
            log.info("event=refused_while_settling op=%r reason=%r action=recorded",
                     op.describe(), str(error))
        self._answer(ticket)
        return True

    def _record_refused(self, op: Op, error: OSError) -> int | None:
        """Record a refused op (``on_refused``: the store marks its path, fsynced);
        the refusals so far, or None when it could not be recorded: the sender has
        then failed (a change nobody recorded must not be acknowledged)."""
        on_refused = self.on_refused
        assert on_refused is not None       # the callers check it
        try:
            on_refused(op, error)
        except OSError as e:
            with self._lock:
                self._state = SenderState.FAILED
                self._failure = f"cannot record a refused op: {e}"
            log.error("event=sender_failed reason=%r", self._failure)
            return None
        with self._lock:
            self._refusals += 1
            return self._refusals

    def _channel_of(self, ticket: Ticket) -> Channel:
        with self._lock:
            if ticket.generation != self._generation or self._channel is None:
                raise ConnectionError("channel replaced")
            return self._channel

    def _record_or_fail(self, ops: list[Op]) -> None:
        try:
            for op in ops:
                self.recorder.record(op)
        except OSError as e:
            with self._lock:
                self._state = SenderState.FAILED
                self._failure = f"cannot record changes: {e}"
            log.error("event=sender_failed reason=%r", self._failure)
            raise ReplicationUnavailable(self._failure) from e

    def _lose_peer(self, generation: int, reason: str, extra: Sequence[Op] = ()) -> None:
        """Exactly one caller per generation does the transition; the others wait for it."""
        with self._lock:
            self._tell_tree(False)
            if generation != self._generation or self._state is not SenderState.CONNECTED:
                pending = list(extra)
                first = False
            else:
                # From here on, submits record instead of sending.
                self._state = SenderState.ALONE
                if self._barriers and self._channel is not None:
                    self._trim_answered(self._channel)    # what was answered is there
                pending = [op for _, op in sorted(self._in_flight.items())] + list(extra)
                self._in_flight.clear()
                self._answered.notify_all()
                channel, self._channel = self._channel, None
                first = True
            if first:
                self._transition = threading.Event()
            done = self._transition
        if not first:
            if pending:
                self._record_or_fail(pending)
            done.wait()
            return
        log.warning("event=peer_lost reason=%r unacknowledged=%d", reason, len(pending))
        try:
            if channel is not None:
                channel.close()
            self._record_or_fail(pending)
            self.peer_lost(reason)
            log.warning("event=sender_alone reason=%r", reason)
        except Exception as e:  # noqa: BLE001 - any hook failure means: do not go on
            with self._lock:
                self._state = SenderState.FAILED
                self._failure = self._failure or f"peer_lost hook failed: {e}"
            log.error("event=sender_failed reason=%r", self._failure)
        finally:
            done.set()


def _synced(op: Op) -> str | None:
    """The path a sent op makes durable on the receiver once answered: a full fsync's
    (a datasync leaves times behind)."""
    if op.kind == OpKind.FSYNC and not op.mode & FSYNC_DATASYNC:
        return op.path
    return None


def _light(op: Op) -> Op:
    """What ``record`` needs of ``op``, without its data."""
    if op.data:
        return dataclasses.replace(op, data=b"", length=len(op.data))
    return op
