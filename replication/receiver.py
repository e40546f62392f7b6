"""The secondary's side of the replication channel: verify, confine, apply, ack.

One sender at a time (plus a few query-only connections: verify, answered on
their own threads; they never replace the sender). Per sender connection two
threads: the connection thread reads
and verifies frames (frame.py), refuses stale epochs and unsafe paths at once
(error ACK, nothing applied), and queues the rest; the apply thread applies
them in arrival order (applier.py) and acknowledges. Ops that arrive alone
(nothing more received behind those of one read) and find the apply thread idle
with nothing queued are applied by the connection thread itself, and answered
with one ACK range: order is the same (nothing is ahead of them), and a
synchronous writer, or a barrier sent with the writes before it, saves a thread
wake-up per round trip (~0.1-0.3 ms on a small VM). A sender that
pipelines keeps both threads busy, reading overlapping applying. A corrupt
or oversized frame resets the channel after everything queued before it was applied and
acknowledged: once a frame is lost, applying later ones could reorder writes
(the sender resends from its unacknowledged ops on a new connection).
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from . import activity_log
from . import frame as fr
from .applier import Applier
from .channel import ChannelServer, ServerConn, pack_entries
from .frame import AckMode, Feature, Frame, FrameError, FrameType, QueryKind
from .ops import OpKind
from .paths import PathError, check_relative

log = logging.getLogger("replication.receiver")

QUEUE_BYTES = 64 * 1024 * 1024      # applied-but-not-yet queue: backpressure beyond this
# How often a sender that asked for it (Feature.DURABLE_MARK) hears how far this copy
# is on disk: a syncfs of the copy each time ops were applied since the last one.
DURABLE_INTERVAL_S = 0.5
ACK_BATCH = 256                      # at most this many ops per success ACK
ACK_HOLD_BYTES = 256 * 1024          # ...and never hold an ACK behind more data than this
ACK_HOLD_S = 0.0005                  # ...or longer than this
INLINE_MAX_BYTES = 256 * 1024        # a read applied by the connection thread itself: at most
DIGESTS_PER_REPLY = 128 * 1024       # 1 MiB of u64 per REPLY chunk
TREE_CHUNK_BYTES = 1024 * 1024       # manifest entries per REPLY chunk
MAX_QUERY_SESSIONS = 4               # query-only connections (verify) at once
_PATH2_CONFINED = (OpKind.RENAME, OpKind.LINK)   # SYMLINK's path2 is target text
_ROOT_OK = (OpKind.FSYNC, OpKind.CHMOD, OpKind.CHOWN, OpKind.UTIMENS)   # '' = the root


def _q(text: str) -> str:
    return '"' + str(text).replace('"', "'").replace("\n", " ") + '"'


class _LogLimiter:
    """At most `burst` lines per event per window; a hostile or broken sender
    must not flood the log."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst, self.window = burst, window
        self._state: dict[str, list[float | int]] = {}

    def allow(self, event: str) -> bool:
        now = time.monotonic()
        start, count = self._state.get(event, (now, 0))
        if now - start > self.window:
            start, count = now, 0
        self._state[event] = [start, count + 1]
        return count < self.burst


@dataclass
class _Item:
    kind: str                   # "op" | "query" | "reset" | "end"
    frame: Frame | None = None
    size: int = 0
    receipt_acked: bool = False
    err: tuple[int, str] | None = None   # reset: what to tell the sender
    seq: int | None = None               # reset: the bad frame's seq, when known


class _WorkQueue:
    """FIFO bounded by bytes (always admits one item so a big frame never deadlocks).

    ``busy`` is set from the moment the consumer takes an item until it calls
    ``done()``; ``claim_idle()`` lets the producer apply an item itself when
    nothing is queued or being applied."""

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._bytes = 0
        self._limit = limit
        self._cond = threading.Condition()
        self._busy = False

    def put(self, item: _Item) -> None:
        with self._cond:
            while self._items and self._bytes + item.size > self._limit:
                self._cond.wait()
            self._items.append(item)
            self._bytes += item.size
            self._cond.notify_all()

    def get(self) -> _Item:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            self._bytes -= item.size
            self._busy = True
            self._cond.notify_all()
            return item

    def done(self) -> None:
        """The consumer (or an idle claim) finished its item."""
        with self._cond:
            self._busy = False

    def claim_idle(self) -> bool:
        """True (and busy) when nothing is queued or being worked on."""
        with self._cond:
            if self._items or self._busy:
                return False
            self._busy = True
            return True

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)


class _AckRun:
    """Consecutive successful seqs, sent as one ACK range. Coalescing saves
    frames while the sender pipelines, but an ACK is never held long: a
    synchronous writer is waiting for it."""

    def __init__(self, conn: ServerConn, epoch: int) -> None:
        self.conn, self.epoch = conn, epoch
        self.first = self.last = -1
        self.nbytes = 0
        self.since = 0.0

    def add(self, seq: int, nbytes: int = 0) -> None:
        if self.first >= 0 and (seq != self.last + 1 or self.last - self.first + 1 >= ACK_BATCH):
            self.flush()
        if self.first < 0:
            self.first = seq
            self.since = time.monotonic()
        self.last = seq
        self.nbytes += nbytes

    def due(self) -> bool:
        return self.first >= 0 and (self.nbytes >= ACK_HOLD_BYTES
                                    or time.monotonic() - self.since >= ACK_HOLD_S)

    def flush(self) -> None:
        if self.first >= 0:
            self.conn.send(fr.encode_ack(self.last, first_seq=self.first, epoch=self.epoch))
            self.first = self.last = -1
            self.nbytes = 0


class _Session:
    def __init__(self, receiver: "Receiver", conn: ServerConn, previous: "_Session | None"
                 ) -> None:
        self.receiver = receiver
        self.conn = conn
        self.previous = previous
        self.queue = _WorkQueue(QUEUE_BYTES)
        self.applier_thread: threading.Thread | None = None
        self.done = threading.Event()     # the apply thread has drained and exited
        self.last_applied = 0             # seq of the last op applied (for durable marks)
        self._ended = threading.Event()   # the connection is over (stops the durable marks)
        self.end_reason = "sender closed the connection"
        self._inline_acks = _AckRun(conn, conn.epoch)

    # ------------------------------------------------------------ control

    def stop(self, status: int, reason: str, frame_type: FrameType = FrameType.RESET,
             epoch: int = 0) -> None:
        """Tell the sender why and cut the connection; queued ops still get applied."""
        self.end_reason = reason
        if frame_type == FrameType.EPOCH:
            self.conn.send(fr.encode_epoch(epoch, reason))
        else:
            self.conn.send(fr.encode_reset(status, reason))
        self.conn.shutdown()

    def join(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    # ------------------------------------------------------------ reading (connection thread)

    def run(self) -> None:
        rx = self.receiver
        if self.previous is not None:
            # the old sender's queued ops are applied first, in their order
            self.previous.join()
            self.previous = None
        rx._session_started(self)
        self.applier_thread = threading.Thread(target=self._apply_loop, daemon=True,
                                               name=f"repl-apply-{self.conn.peer}")
        self.applier_thread.start()
        durable = None
        if self.conn.features & Feature.DURABLE_MARK:
            durable = threading.Thread(target=self._durable_loop, daemon=True,
                                       name=f"repl-durable-{self.conn.peer}")
            durable.start()
        receipts = _AckRun(self.conn, self.conn.epoch)
        try:
            self._read_loop(receipts)
        finally:
            receipts.flush()
            self.queue.put(_Item("end"))
            self.applier_thread.join()
            self._ended.set()
            if durable is not None:
                durable.join()
            rx._session_ended(self)

    def _durable_loop(self) -> None:
        """Tell the sender how far this copy is on disk: the seq of the last op
        applied, read *before* a syncfs of the copy, once that syncfs returned.
        The first report (0) follows a syncfs at the session's start, so what
        earlier sessions applied counts as durable from then on. The sender uses
        it to answer a barrier on a path nothing touched since (PostgreSQL fsyncs
        every file of its data directory when it starts after a crash)."""
        reported = -1
        while not self._ended.is_set():
            applied = self.last_applied
            if applied != reported:
                try:
                    self.receiver.applier.sync_tree()
                except OSError as exc:
                    log.warning("event=durable_mark_failed peer=%s error=%r", self.conn.peer,
                                str(exc))
                else:
                    if not self.conn.send(fr.encode_durable(applied, self.conn.epoch)):
                        return
                    reported = applied
            self._ended.wait(DURABLE_INTERVAL_S)

    def _read_loop(self, receipts: _AckRun) -> None:
        reader = self.conn.reader
        while self.conn.alive:
            try:
                frames = reader.read()
            except (TimeoutError, OSError) as exc:
                if isinstance(exc, TimeoutError):
                    continue   # idle sender
                self.end_reason = f"connection lost: {exc}"
                return
            except FrameError as exc:
                self._inline_acks.flush()
                receipts.flush()
                self._bad_frame(exc)
                return
            if frames is None:
                return
            # alone: nothing of another frame behind this read's, and a small read (a
            # barrier with the writes before it, whose sender waits for them); a stream's
            # big reads are applied by the apply thread while this one reads on
            alone = (not reader.decoder.buffered
                     and sum(len(f.payload) for f in frames) <= INLINE_MAX_BYTES)
            for f in frames:
                if not self._dispatch(f, receipts, alone):
                    self._inline_acks.flush()
                    return
            self._inline_acks.flush()
            receipts.flush()   # one ACK for everything that arrived in this read

    def _bad_frame(self, exc: FrameError) -> None:
        rx = self.receiver
        rx._count_error(str(exc))
        if rx._limiter.allow("frame_refused"):
            log.warning("event=frame_refused peer=%s seq=%s path=%s reason=%s action=reset",
                        self.conn.peer, exc.seq if exc.seq is not None else "-",
                        _q(exc.path) if exc.path is not None else "-", _q(exc.reason))
        self.end_reason = f"bad frame: {exc.reason}"
        self.queue.put(_Item("reset", err=(errno.EBADMSG, str(exc)), seq=exc.seq))

    def _dispatch(self, f: Frame, receipts: _AckRun, alone: bool = False) -> bool:
        h = f.header
        if h.ftype == FrameType.OP:
            refusal = self._refusal(f)
            if refusal is not None:
                self._inline_acks.flush()
                receipts.flush()
                self._refuse_op(f, *refusal)
                return True
            item = _Item("op", f, size=len(f.payload) + 200)
            if (self.conn.ack_mode == AckMode.RECEIPT and f.op is not None
                    and f.op.kind != OpKind.FSYNC):
                self._inline_acks.flush()
                item.receipt_acked = True
                receipts.add(h.seq)
            else:
                receipts.flush()   # keep receipt ACKs from overtaking this op's ACK range
                if alone and self.queue.claim_idle():
                    try:
                        self._apply_item(item, self._inline_acks)
                    finally:
                        self.queue.done()
                    if self._inline_acks.due():   # a slow batch still shows progress
                        self._inline_acks.flush()
                    return True
            # inline ACKs first: the apply thread's must not overtake them
            self._inline_acks.flush()
            self.queue.put(item)
        elif h.ftype == FrameType.QUERY:
            self._inline_acks.flush()
            self.queue.put(_Item("query", f, size=200))
        elif h.ftype == FrameType.PING:
            self.conn.send(fr.encode_pong(h.offset))
        else:
            self._bad_frame(FrameError(f"unexpected {h.ftype.name} frame from a sender",
                                       seq=h.seq))
            return False
        return True

    def _refusal(self, f: Frame) -> tuple[int, str] | None:
        op = f.op
        assert op is not None
        min_epoch = self.receiver.min_epoch
        if f.header.epoch < min_epoch:
            return errno.ESTALE, (f"epoch {f.header.epoch} is older than this receiver's "
                                  f"epoch {min_epoch}: refused, nothing applied")
        try:
            if not (op.path == "" and op.kind in _ROOT_OK):
                check_relative(op.path)
            if op.kind in _PATH2_CONFINED:
                check_relative(op.path2)
        except PathError as exc:
            return exc.errno or errno.EINVAL, f"{exc.strerror}: {exc.filename!r}"
        return None

    def _refuse_op(self, f: Frame, err: int, message: str) -> None:
        rx = self.receiver
        rx._count_error(message)
        if rx._limiter.allow("op_refused"):
            log.warning("event=op_refused peer=%s epoch=%d seq=%d op=%s errno=%s reason=%s",
                        self.conn.peer, f.header.epoch, f.header.seq,
                        _q(f.op.describe() if f.op else "?"),
                        errno.errorcode.get(err, err), _q(message))
        self.conn.send(fr.encode_ack(f.header.seq, err, message))

    # ------------------------------------------------------------ applying (apply thread)

    def _apply_loop(self) -> None:
        acks = _AckRun(self.conn, self.conn.epoch)
        try:
            while True:
                item = self.queue.get()
                try:
                    if item.kind == "end":
                        break
                    if item.kind == "reset":
                        acks.flush()
                        err, message = item.err or (errno.EBADMSG, "bad frame")
                        if item.seq is not None:
                            self.conn.send(fr.encode_ack(item.seq, err, message))
                        self.conn.send(fr.encode_reset(err, message))
                        self.conn.shutdown()
                        continue   # drain until "end"
                    if item.kind == "query":
                        acks.flush()
                        assert item.frame is not None    # a query item carries its frame
                        self._answer(item.frame)
                        continue
                    self._apply_item(item, acks)
                    if self.queue.empty() or acks.due():
                        acks.flush()
                finally:
                    # idle only with every ACK sent: an inline apply must not overtake them
                    if self.queue.empty():
                        acks.flush()
                    self.queue.done()
        finally:
            acks.flush()
            self.done.set()

    def _apply_item(self, item: _Item, acks: _AckRun) -> None:
        """Apply one op and acknowledge it (or send its error). Runs on the apply
        thread, or on the connection thread when the apply thread is idle."""
        rx = self.receiver
        assert item.frame is not None and item.frame.op is not None   # an op item
        op = item.frame.op
        seq = item.frame.header.seq
        try:
            rx.applier.apply(op)
        except Exception as exc:  # noqa: BLE001 - an op must not stop the session
            acks.flush()
            err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            message = f"{op.describe()}: {detail}"
            rx._count_error(message)
            if rx._limiter.allow("apply_failed"):
                log.warning("event=apply_failed peer=%s seq=%d op=%s errno=%s "
                            "reason=%s", self.conn.peer, seq, _q(op.describe()),
                            errno.errorcode.get(err, err), _q(str(detail)))
            self.conn.send(fr.encode_ack(seq, err, message, late=item.receipt_acked))
        else:
            rx._count_applied(seq, len(op.data))
            self.last_applied = seq
            if not item.receipt_acked:
                acks.add(seq, len(op.data))

    def _answer(self, f: Frame) -> None:
        if f.header.kind == QueryKind.IN_SYNC:
            self.receiver._declared_in_sync(self.conn, f)
        else:
            answer_query(self.conn, self.receiver.applier, f, self.receiver.state_dir)


class _QuerySession:
    """A query-only connection (verify): answers QUERY and PING frames on its own
    thread while the sender's session goes on; any op is refused and ends it."""

    def __init__(self, receiver: "Receiver", conn: ServerConn) -> None:
        self.receiver = receiver
        self.conn = conn

    def run(self) -> None:
        rx, conn = self.receiver, self.conn
        log.info("event=query_session_started peer=%s", conn.peer)
        reason = "peer closed the connection"
        try:
            while conn.alive:
                try:
                    frames = conn.reader.read()
                except TimeoutError:
                    continue
                except FrameError as exc:
                    rx._count_error(str(exc))
                    reason = f"bad frame: {exc.reason}"
                    conn.send(fr.encode_reset(errno.EBADMSG, str(exc)))
                    return
                except OSError as exc:
                    reason = f"connection lost: {exc}"
                    return
                if frames is None:
                    return
                for f in frames:
                    if f.ftype == FrameType.QUERY and f.header.kind == QueryKind.IN_SYNC:
                        conn.send(fr.encode_reply(f.header.seq, fr._text(
                            "IN_SYNC on a query-only connection: refused"), status=errno.EPERM))
                    elif f.ftype == FrameType.QUERY:
                        answer_query(conn, rx.applier, f, rx.state_dir)
                    elif f.ftype == FrameType.PING:
                        conn.send(fr.encode_pong(f.header.offset))
                    else:
                        reason = (f"a query-only connection sent {f.ftype.name} "
                                  f"(seq {f.header.seq}): refused, nothing applied")
                        rx._count_error(reason)
                        if rx._limiter.allow("query_session_refused"):
                            log.warning("event=frame_refused peer=%s reason=%s action=reset",
                                        conn.peer, _q(reason))
                        conn.send(fr.encode_reset(errno.EPERM, reason))
                        return
        finally:
            conn.shutdown()
            rx._query_session_ended(self)
            log.info("event=query_session_ended peer=%s reason=%s", conn.peer, _q(reason))


def answer_query(conn: ServerConn, applier: Applier, f: Frame,
                 state_dir: str | None = None) -> None:
    """Answer one QUERY frame (REPLY chunks; the last one carries any error).
    ``state_dir``: where this node's activity log is (ACTIVITY queries)."""
    h = f.header
    sent_any = False
    try:
        if f.path:
            check_relative(f.path)
        if h.kind == QueryKind.TREE:
            chunks = pack_entries(applier.tree_manifest(include_root=bool(h.offset)),
                                  TREE_CHUNK_BYTES)
        elif h.kind == QueryKind.DIGESTS:
            chunks = _digest_chunks(applier.iter_block_digests(f.path, h.length, h.offset))
        elif h.kind == QueryKind.ACTIVITY:
            report = (activity_log.read_report(state_dir) if state_dir else
                      {"version": activity_log.VERSION, "valid": False,
                       "reason": "receiver runs without a state directory"})
            data = json.dumps(report).encode("ascii")
            chunks = iter([data[i:i + fr.MAX_PAYLOAD]
                           for i in range(0, len(data), fr.MAX_PAYLOAD)] or [b""])
        elif h.kind != QueryKind.READ:
            raise OSError(errno.EINVAL, f"unknown query kind {h.kind}")
        else:
            chunks = iter([applier.read_block(f.path, h.offset,
                                              min(h.length, fr.MAX_PAYLOAD))])
        pending: bytes | None = None
        for chunk in chunks:
            if pending is not None:
                conn.send(fr.encode_reply(h.seq, pending, more=True))
                sent_any = True
            pending = chunk
        conn.send(fr.encode_reply(h.seq, pending or b""))
    except OSError as exc:
        # also after partial chunks: the final REPLY carries the error
        conn.send(fr.encode_reply(h.seq, fr._text(f"{exc}"), status=exc.errno or errno.EIO))
        if sent_any:
            log.info("event=query_failed peer=%s query=%d after_partial_reply=1",
                     conn.peer, h.seq)


def _digest_chunks(digests: Iterator[int]) -> Iterator[bytes]:
    batch: list[int] = []
    for d in digests:
        batch.append(d)
        if len(batch) >= DIGESTS_PER_REPLY:   # read at call time: tests shrink it
            yield struct.pack(f"<{len(batch)}Q", *batch)
            batch = []
    if batch:
        yield struct.pack(f"<{len(batch)}Q", *batch)


class Receiver:
    """Receives one sender's ops into root. Thread-safe control methods."""

    def __init__(self, root: str, secret: str | bytes, host: str = "0.0.0.0", port: int = 0,
                 min_epoch: int = 0, *, io_timeout: float = 10.0,
                 state_dir: str | None = None) -> None:
        """``state_dir``: this node's state for the root (its activity log from
        when it was primary; the in-sync marker its primary sets)."""
        self.root = root
        self.state_dir = state_dir
        self.applier = Applier(root)
        self._lock = threading.Lock()
        self._min_epoch = min_epoch
        self._current: _Session | None = None
        self._query_sessions: set[_QuerySession] = set()
        self._limiter = _LogLimiter()
        self._stats: dict[str, Any] = {"ops_applied": 0, "bytes_applied": 0, "last_seq": 0,
                                       "errors": 0, "last_error": "", "sessions": 0,
                                       "epoch": 0}
        self._server = ChannelServer(host, port, secret, self, io_timeout=io_timeout)
        self.address: tuple[str, int] = self._server.address
        self._stopped = False

    # ------------------------------------------------------------ control

    def start(self) -> "Receiver":
        """Serve on a background thread."""
        self._server.start()
        log.info("event=receiver_started root=%s listen=%s:%d min_epoch=%d", _q(self.root),
                 self.address[0], self.address[1], self._min_epoch)
        return self

    def serve_forever(self) -> None:
        log.info("event=receiver_started root=%s listen=%s:%d min_epoch=%d", _q(self.root),
                 self.address[0], self.address[1], self._min_epoch)
        self._server.serve_forever()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.stop()
        with self._lock:
            session = self._current
            queries = list(self._query_sessions)
        if session is not None:
            session.stop(errno.ESHUTDOWN, "receiver stopping")
        for query in queries:
            query.conn.shutdown()
        self._server.join_connections()
        self.applier.close()
        log.info("event=receiver_stopped ops_applied=%d errors=%d",
                 self._stats["ops_applied"], self._stats["errors"])

    @property
    def min_epoch(self) -> int:
        return self._min_epoch

    def set_min_epoch(self, epoch: int) -> None:
        """Refuse epochs older than epoch from now on (never lowers it). A
        connected older sender is told (EPOCH frame) and disconnected."""
        with self._lock:
            self._min_epoch = max(self._min_epoch, epoch)
            session = self._current
        if session is not None and session.conn.epoch < epoch:
            log.info("event=sender_fenced peer=%s epoch=%d min_epoch=%d", session.conn.peer,
                     session.conn.epoch, epoch)
            session.stop(errno.ESTALE, f"receiver now refuses epochs older than {epoch}",
                         FrameType.EPOCH, epoch)

    def status(self) -> dict[str, Any]:
        with self._lock:
            session = self._current
            out = dict(self._stats)
            out["min_epoch"] = self._min_epoch
        connected = session is not None and session.conn.alive
        conn = session.conn if session is not None else None
        out.update(connected=connected, peer=conn.peer if conn and connected else "",
                   ack_mode=conn.ack_mode.name.lower() if conn and connected else "",
                   queued=len(session.queue) if session else 0,
                   query_connections=len(self._query_sessions))
        if conn is not None and connected:
            out["epoch"] = conn.epoch
        return out

    # ------------------------------------------------------------ SessionHandler

    def admit(self, conn: ServerConn) -> tuple[int, str] | None:
        with self._lock:
            if self._stopped:
                return errno.ESHUTDOWN, "receiver stopping"
            if conn.epoch < self._min_epoch:
                return errno.ESTALE, (f"epoch {conn.epoch} is older than this receiver's "
                                      f"epoch {self._min_epoch}")
            if conn.features & Feature.QUERY_ONLY:
                # questions only: the sender's session and the epoch stay as they are
                if len(self._query_sessions) >= MAX_QUERY_SESSIONS:
                    return errno.EBUSY, (f"already {MAX_QUERY_SESSIONS} query-only "
                                         f"connections; try again later")
                query = _QuerySession(self, conn)
                self._query_sessions.add(query)
                conn.session = query  # type: ignore[attr-defined]
                return None
            old = self._current
            if old is not None and old.conn.alive and conn.epoch < old.conn.epoch:
                return errno.ESTALE, (f"epoch {conn.epoch} is older than the connected "
                                      f"sender's epoch {old.conn.epoch} ({old.conn.peer})")
            # an authenticated sender's epoch was handed out by Raft: older ones are stale
            self._min_epoch = max(self._min_epoch, conn.epoch)
            if self.state_dir:
                # A new primary session reintegrates: the copy is not known identical
                # until it says so again (before it can apply anything).
                activity_log.drop_receiver_in_sync(self.state_dir)
            session = _Session(self, conn, old)
            self._current = session
            conn.session = session  # type: ignore[attr-defined]
        if old is not None:
            log.info("event=sender_replaced old=%s old_epoch=%d new=%s epoch=%d",
                     old.conn.peer, old.conn.epoch, conn.peer, conn.epoch)
            old.stop(errno.ECONNRESET, f"replaced by a sender with epoch {conn.epoch} "
                                       f"from {conn.peer}")
        return None

    def serve(self, conn: ServerConn) -> None:
        conn.session.run()  # type: ignore[attr-defined]

    # ------------------------------------------------------------ bookkeeping

    def _session_started(self, session: _Session) -> None:
        if self.state_dir:
            # Again once the previous session drained: its queued IN_SYNC may have
            # noted a copy that this session is about to change.
            activity_log.drop_receiver_in_sync(self.state_dir)
        with self._lock:
            self._stats["sessions"] += 1
            self._stats["epoch"] = session.conn.epoch
        log.info("event=session_started peer=%s epoch=%d ack_mode=%s", session.conn.peer,
                 session.conn.epoch, session.conn.ack_mode.name.lower())

    def _session_ended(self, session: _Session) -> None:
        with self._lock:
            if self._current is session:
                self._current = None
        session.conn.shutdown()
        log.info("event=session_ended peer=%s reason=%s", session.conn.peer,
                 _q(session.end_reason))

    def _declared_in_sync(self, conn: ServerConn, f: Frame) -> None:
        """The primary's IN_SYNC: every op before it is applied (queries run in order)."""
        try:
            if self.state_dir:
                activity_log.mark_receiver_in_sync(self.state_dir, conn.epoch)
            log.info("event=declared_in_sync peer=%s epoch=%d noted=%s", conn.peer, conn.epoch,
                     bool(self.state_dir))
            conn.send(fr.encode_reply(f.header.seq, b""))
        except OSError as exc:
            conn.send(fr.encode_reply(f.header.seq, fr._text(str(exc)), status=exc.errno or errno.EIO))

    def _query_session_ended(self, query: _QuerySession) -> None:
        with self._lock:
            self._query_sessions.discard(query)

    def _count_applied(self, seq: int, nbytes: int) -> None:
        with self._lock:
            s = self._stats
            s["ops_applied"] += 1
            s["bytes_applied"] += nbytes
            s["last_seq"] = seq

    def _count_error(self, message: str) -> None:
        with self._lock:
            self._stats["errors"] += 1
            self._stats["last_error"] = message
