"""Authenticated framed TCP connections between a sender and a receiver.

Handshake (both sides know the cluster secret; nothing secret crosses the wire)::

    client -> HELLO  version, epoch, ack mode, features offered, client nonce (32 bytes)
    server -> HELLO  features accepted, server nonce
    client -> AUTH   HMAC-SHA256(secret, "client" | transcript)
    server -> AUTH   HMAC-SHA256(secret, "receiver" | transcript)   or a refusal
                     (status EACCES: wrong secret, ESTALE: old epoch, ...)

transcript = version, ack mode, epoch, both nonces (and, when both sides know
features, both feature words): each proof is bound to this connection and to a
role, so it can be neither replayed nor reflected. A peer from before features
offers and accepts none, and its transcript has no feature words; a client that
needs a feature the receiver did not accept gives up before AUTH, so the
receiver admits nothing. The
client proves first, so a peer without the secret learns nothing. Afterwards
frames are integrity-checked by xxh3 only: this authenticates the peer that
connects, it does not protect against an active man-in-the-middle on the
replication LAN (that would need TLS).

Blocking sockets with threads; senders may call send_op/wait from many
threads. Whoever waits for an answer reads the socket itself (one reader at a
time; the others sleep until it has handled what arrived): a synchronous write
then costs no thread hand-off between an ack-reader thread and the writer. The
client's background thread reads only when nobody has waited for a while
(frames nobody asked for: EPOCH, RESET, late errors, acks of async ops), and
runs the late-error hook.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import errno as errno_mod
import hashlib
import hmac
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from . import frame as fr
from .applier import Entry
from .frame import AckMode, Feature, Frame, FrameError, FrameType, QueryKind
from .ops import WRITE_SETS_TIMES, Op, OpKind
from .secure_stream import Opener, Sealer, derive_keys

log = logging.getLogger("replication.channel")

HANDSHAKE_TIMEOUT = 5.0
HANDSHAKE_BODY_MAX = 2048       # HELLO: a nonce; AUTH: a proof or a refusal of <= MAX_MESSAGE
PREAUTH_MAX_TOTAL = 32          # connections still in their handshake, at a time
PREAUTH_MAX_PER_HOST = 4        # ... from one address
SOCKET_BUFFER = 4 * 1024 * 1024
NONCE_SIZE = 32
_RECV_SIZE = 1024 * 1024
_REFUSAL_LOG_INTERVAL_S = 10.0
_DURABLE = int(fr.Flag.DURABLE)   # a plain int: an IntFlag "&" per ACK builds a Flag
IDLE_GRACE_S = 0.05     # the ack thread reads only once waiters have been gone this long
_IDLE_POLL_MS = 200     # ...and then checks the socket at least this often


# ---------------------------------------------------------------- errors


class ChannelError(OSError):
    """Base of the channel's errors. They are OSErrors: to a caller the
    replication link is I/O that failed (a sender catches OSError)."""


class AuthError(ChannelError, PermissionError):
    """The handshake failed: wrong or missing secret on one side, or not a peer."""


class PeerTimeout(ChannelError, TimeoutError):
    """The receiver did not answer in time (the caller decides: peer lost)."""


class ChannelClosed(ChannelError, ConnectionError):
    """The connection is gone; ops not yet acknowledged have no answer."""


class ReplicationRefused(ChannelError):
    """The receiver answered an error for an op or query; errno is the receiver's."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, f"receiver refused: {message} "
                              f"({errno_mod.errorcode.get(err, '?')})")
        self.message = message

    def __reduce__(self) -> tuple:
        return (self.__class__, (self.errno, self.message))


class IncompatiblePeer(ChannelError):
    """The receiver is an older version without a feature this client needs."""


class StaleEpoch(ReplicationRefused):
    """The receiver has seen a newer epoch: this sender is fenced."""


def _refusal(err: int, message: str) -> ReplicationRefused:
    return StaleEpoch(err, message) if err == errno_mod.ESTALE else ReplicationRefused(err, message)


# ---------------------------------------------------------------- sockets


def tune_socket(sock: socket.socket) -> None:
    """Low latency for small acks, big buffers for 1 MiB writes."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass


def send_parts(sock: socket.socket, parts: list[bytes], sealer: Sealer | None = None) -> None:
    """sendall for a list of buffers, without joining them; sealed into AEAD
    records first when the connection has its keys (after the handshake)."""
    if sealer is not None:
        parts = sealer.seal(parts)
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


class FrameReader:
    """Frames from a socket; keeps what it has buffered across calls. Handshake
    frames are read exactly (nothing beyond them: what follows is encrypted),
    with small caps and one deadline; after ``secure`` every byte goes through
    the AEAD opener first."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = fr.FrameDecoder()
        # The big receive buffer only once frames flow: an unauthenticated peer gets
        # the handshake's small exact reads, never a megabyte of ours.
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._ready: collections.deque[Frame] = collections.deque()
        self._opener: Opener | None = None

    def secure(self, opener: Opener) -> None:
        if self.decoder.buffered or self._ready:
            raise fr.FrameError("plaintext left over from the handshake")
        self._opener = opener

    def _recv_exact(self, n: int, deadline: float) -> bytes | None:
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("handshake deadline")
            self.sock.settimeout(left)
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return bytes(out)

    def handshake_frame(self, deadline: float) -> Frame | None:
        """One handshake frame, read exactly; its body is at most
        HANDSHAKE_BODY_MAX bytes (checked before it is read); the whole exchange
        ends by ``deadline`` (monotonic), however slowly the peer sends.
        None at end of stream."""
        head = self._recv_exact(fr.HEADER_SIZE, deadline)
        if head is None:
            return None
        header = fr.decode_header(head, HANDSHAKE_BODY_MAX)
        if header.body_len > HANDSHAKE_BODY_MAX:
            raise fr.FrameError(f"handshake frame of {header.body_len} bytes "
                                f"(at most {HANDSHAKE_BODY_MAX})")
        body = self._recv_exact(header.body_len, deadline) if header.body_len else b""
        if body is None:
            return None
        return fr.decode_body(header, body)

    def read(self) -> list[Frame] | None:
        """Frames from one recv (maybe none yet); None at end of stream.
        Raises FrameError, OSError, TimeoutError."""
        if self._ready:
            out = list(self._ready)
            self._ready.clear()
            return out
        if not self._buf:
            self._buf = bytearray(_RECV_SIZE)
            self._view = memoryview(self._buf)
        if self._opener is not None:
            n = self.sock.recv_into(self._buf)
            if n == 0:
                return None
            frames: list[Frame] = []
            # the decoder copies what it keeps: the opener reuses its plaintext buffer
            self._opener.feed(self._view[:n], lambda plain: frames.extend(self.decoder.feed(plain)))
            return frames
        target = self.decoder.body_target()
        if target is not None:   # a big body: straight into its own buffer
            n = self.sock.recv_into(target)
            if n == 0:
                return None
            return self.decoder.body_received(n)
        n = self.sock.recv_into(self._buf)
        if n == 0:
            return None
        return self.decoder.feed(self._view[:n])

    def next_frame(self) -> Frame | None:
        while not self._ready:
            frames = self.read()
            if frames is None:
                return None
            self._ready.extend(frames)
        return self._ready.popleft()


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "unknown"


# ---------------------------------------------------------------- handshake


def _transcript(version: int, ack_mode: int, epoch: int, nonce_c: bytes, nonce_s: bytes,
                offered: int = 0, accepted: int = 0) -> bytes:
    out = struct.pack("<BBQ", version, ack_mode, epoch) + nonce_c + nonce_s
    if accepted & Feature.NEGOTIATE:
        out += struct.pack("<II", offered, accepted)
    return out


SERVER_FEATURES = (Feature.WRITE_TIMES | Feature.QUERY_ONLY | Feature.ACTIVITY_LOG | Feature.AEAD
                   | Feature.DURABLE_MARK)


def accept_features(offered: int) -> int:
    """What a receiver answers to a client's offer (0 to a client from before features)."""
    if not offered & Feature.NEGOTIATE:
        return 0
    return int(Feature.NEGOTIATE | (offered & SERVER_FEATURES))


def _proof(secret: bytes, role: bytes, transcript: bytes) -> bytes:
    return hmac.new(secret, b"hacluster-replication " + role + b"\0" + transcript,
                    hashlib.sha256).digest()


def _secret_bytes(secret: str | bytes | None) -> bytes:
    if secret is None:
        return b""
    return secret.encode() if isinstance(secret, str) else bytes(secret)


# ---------------------------------------------------------------- manifest wire form

_ENTRY = struct.Struct("<cIIIQqQIQHH")


def pack_entries(entries: Iterable[Entry], chunk_size: int = 1024 * 1024) -> Iterable[bytes]:
    """Tree manifest entries as chunks of whole entries (each <= chunk_size + one entry)."""
    buf = bytearray()
    for e in entries:
        path = e.path.encode("utf-8", "surrogateescape")
        target = e.target.encode("utf-8", "surrogateescape")
        buf += _ENTRY.pack(e.type.encode(), e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.ino,
                           e.nlink, e.rdev, len(path), len(target))
        buf += path
        buf += target
        if len(buf) >= chunk_size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def unpack_entries(data: bytes) -> list[Entry]:
    out = []
    pos = 0
    view = memoryview(data)
    while pos < len(data):
        (kind, mode, uid, gid, size, mtime_ns, ino, nlink, rdev, plen,
         tlen) = _ENTRY.unpack_from(view, pos)
        pos += _ENTRY.size
        path = bytes(view[pos:pos + plen]).decode("utf-8", "surrogateescape")
        pos += plen
        target = bytes(view[pos:pos + tlen]).decode("utf-8", "surrogateescape")
        pos += tlen
        out.append(Entry(path, kind.decode(), size, mode, uid, gid, mtime_ns, target, ino,
                         nlink, rdev))
    return out


# ---------------------------------------------------------------- client


class ChannelClient:
    """The sender's end: pipelined ops, acks collected by a reader thread.

    send_op assigns sequence numbers in call order and puts frames on the wire
    in that order; wait(seq) blocks until that op's ack (mode "apply": applied;
    "receipt": verified and queued; FSYNC always waits for durability). In
    "async" mode wait returns at once; acks still flow (see unacked, drain,
    late_errors)."""

    def __init__(self, host: str, port: int, secret: str | bytes, epoch: int,
                 ack_mode: str | AckMode = "apply", *, timeout: float = 10.0,
                 compress: bool = True,
                 on_late_error: Callable[[int, int, str], None] | None = None,
                 query_only: bool = False) -> None:
        """``query_only``: this connection only asks questions (verify); the
        receiver keeps its sender connected, and send_op is refused."""
        self.host = host
        self.port = port
        self.epoch = epoch
        self.ack_mode = AckMode.parse(ack_mode)
        self.timeout = timeout
        self.compress = compress
        self.on_late_error = on_late_error
        self._secret = _secret_bytes(secret)
        self.query_only = query_only
        self.features = Feature(0)   # what the receiver accepted (set by connect)
        self._companions: dict[int, int] = {}   # seq of a UTIMENS sent for its WRITE
        self._sock: socket.socket | None = None
        self._reader: FrameReader | None = None
        self._sealer: Sealer | None = None       # set by the handshake: every send is sealed
        self._handshake_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._next_seq = 1
        self._next_id = 1
        self._outstanding: set[int] = set()
        # The seqs sent, oldest first, trimmed from the front as they are
        # acknowledged: its head is the oldest unacknowledged op (``acked_through``).
        self._order: collections.deque[int] = collections.deque()
        self._errors: dict[int, tuple[int, str]] = {}
        self._replies: dict[int, list[Frame]] = {}
        self._complete: set[int] = set()
        self._pongs: dict[int, float] = {}
        self._closed: ChannelError | None = ChannelClosed("not connected")
        self.late_errors: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=1000)
        self.late_error_count = 0   # every late error received (each goes to on_late_error)
        self.acked_ops = 0
        # The receiver's durable mark (Feature.DURABLE_MARK): every op up to it that
        # was applied is on its disk; -1 until the receiver's first report.
        self.durable_through = -1
        # the read side: at most one thread reads the socket at a time (see module doc)
        self._reading = False
        self._waiters = 0
        self._last_wait = 0.0
        self._late_hooks: collections.deque[tuple[int, int, str]] = collections.deque()
        self._wake = threading.Event()   # wakes the ack thread (close, late errors)
        self._read_poll = select.poll()
        self._idle_poll = select.poll()

    # ------------------------------------------------------------ connection

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> None:
        """Connect and authenticate. Raises AuthError, StaleEpoch,
        ReplicationRefused, ChannelClosed or OSError (unreachable). A client
        connects once; after a loss, make a new one."""
        if self._sock is not None:
            raise ChannelClosed("this client was already connected once; make a new one")
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            tune_socket(sock)
            sock.settimeout(min(self.timeout, HANDSHAKE_TIMEOUT))
            self._handshake_deadline = time.monotonic() + min(self.timeout, HANDSHAKE_TIMEOUT)
            reader = FrameReader(sock)
            self._handshake(sock, reader)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout)   # bounds a blocked send; the reader treats it as idle
        self._sock, self._reader = sock, reader
        for poller in (self._read_poll, self._idle_poll):
            poller.register(sock.fileno(), select.POLLIN)
        with self._cond:
            self._closed = None
        self._thread = threading.Thread(target=self._read_loop, name=f"repl-acks-{self.peer}",
                                        daemon=True)
        self._thread.start()

    def _handshake(self, sock: socket.socket, reader: FrameReader) -> None:
        nonce_c = os.urandom(NONCE_SIZE)
        offered = (Feature.NEGOTIATE | Feature.WRITE_TIMES | Feature.ACTIVITY_LOG | Feature.AEAD
                   | Feature.DURABLE_MARK)
        if self.query_only:
            offered |= Feature.QUERY_ONLY
        sock.sendall(fr.encode_hello(self.epoch, self.ack_mode, nonce_c, offered))
        hello = self._handshake_frame(reader, FrameType.HELLO)
        if len(hello.payload) != NONCE_SIZE:
            raise AuthError(f"{self.peer}: malformed receiver HELLO")
        accepted = hello.header.mode
        features = Feature(accepted & offered & ~Feature.NEGOTIATE) \
            if accepted & Feature.NEGOTIATE else Feature(0)
        if not features & Feature.AEAD:
            raise IncompatiblePeer(f"receiver {self.peer} does not encrypt the channel (an older "
                                   "version): upgrade it; nothing was sent")
        if self.query_only and not features & Feature.QUERY_ONLY:
            # before AUTH: the receiver admits nothing, its sender stays connected
            raise IncompatiblePeer(f"receiver {self.peer} is an older version without "
                                   f"query-only connections (verify would take the primary's "
                                   f"place there): upgrade it; nothing was sent")
        transcript = _transcript(fr.PROTOCOL_VERSION, self.ack_mode, self.epoch, nonce_c,
                                 hello.payload, offered, accepted)
        sock.sendall(fr.encode_auth(_proof(self._secret, b"client", transcript)))
        auth = self._handshake_frame(reader, FrameType.AUTH)
        if not hmac.compare_digest(auth.payload, _proof(self._secret, b"receiver", transcript)):
            raise AuthError(f"receiver {self.peer} did not prove the cluster secret (a different "
                            f"secret is configured there, or it is not our receiver)")
        self.features = features
        to_receiver, from_receiver = derive_keys(self._secret, transcript)
        self._sealer = Sealer(to_receiver)
        reader.secure(Opener(from_receiver))

    def _handshake_frame(self, reader: FrameReader, want: FrameType) -> Frame:
        try:
            f = reader.handshake_frame(self._handshake_deadline)
        except FrameError as exc:
            raise AuthError(f"{self.peer} does not speak the replication protocol: {exc}") from None
        except (TimeoutError, socket.timeout):
            raise AuthError(f"{self.peer}: no handshake answer within "
                            f"{min(self.timeout, HANDSHAKE_TIMEOUT)} s") from None
        if f is None:
            raise ChannelClosed(f"{self.peer} closed the connection during the handshake")
        if f.ftype in (FrameType.AUTH, FrameType.RESET) and f.header.status:
            if f.header.status == errno_mod.EACCES:
                raise AuthError(f"receiver {self.peer} refused us: {f.message}")
            raise _refusal(f.header.status, f.message)
        if f.ftype != want:
            raise AuthError(f"{self.peer}: expected {want.name} in the handshake, got "
                            f"{f.ftype.name}")
        return f

    def close(self) -> None:
        self._fail(ChannelClosed("closed by this side"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> "ChannelClient":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> ChannelError | None:
        """Why the channel is closed, or None while it is usable."""
        return self._closed

    def _closed_error(self) -> ChannelError:
        """A fresh copy of why the channel closed: re-raising one instance from
        many threads would grow its traceback without end."""
        assert self._closed is not None
        return copy.copy(self._closed)

    def _fail(self, exc: ChannelError) -> None:
        with self._cond:
            if self._closed is not None:
                return
            self._closed = exc
            self._cond.notify_all()
        self._wake.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)   # wakes a sender blocked in send
            except OSError:
                pass

    # ------------------------------------------------------------ ops

    def send_op(self, op: Op) -> int:
        """Queue op on the wire; returns its seq. Raises ChannelClosed/PeerTimeout.

        A WRITE carrying its times (WRITE_SETS_TIMES) to a receiver that does
        not know them goes as the bare WRITE plus a UTIMENS; the seq returned is
        the UTIMENS's, and wait() reports either one's error."""
        return self.send_ops((op,))[0]

    def send_ops(self, ops: Sequence[Op]) -> list[int]:
        """``send_op`` for each of ``ops``, in order, in one send: the seq of each.
        Why one send: a batch of streamed writes (the C write path's queue, the
        writes before a barrier) then costs one encryption record and one system
        call, and the receiver reads it at once and answers it with one ACK range,
        where a send per op cost a wake-up on both sides each."""
        if self.query_only:
            raise ChannelClosed("a query-only connection sends no ops")
        groups = [self._frames_of(op) for op in ops]
        prepared = [[fr.prepare_op(o, self.compress) for o in group]   # outside the lock
                    for group in groups]
        with self._send_lock:
            first = seq = self._next_seq
            parts: list[bytes] = []
            lasts: list[int] = []
            companions: dict[int, int] = {}
            for group in prepared:
                group_first = seq
                for one in group:                        # FrameError here: nothing sent
                    parts += one.parts(self.epoch, seq)
                    seq += 1
                lasts.append(seq - 1)
                if seq - 1 != group_first and self.ack_mode != AckMode.ASYNC:
                    companions[seq - 1] = group_first
            with self._cond:
                if self._closed is not None:
                    raise self._closed_error()
                # before sending: the ack may come fast
                self._outstanding.update(range(first, seq))
                self._order.extend(range(first, seq))
                self._companions.update(companions)
            self._send(parts)
            self._next_seq = seq
        return lasts

    def _frames_of(self, op: Op) -> list[Op]:
        if (op.kind == OpKind.WRITE and op.mode & WRITE_SETS_TIMES
                and not self.features & Feature.WRITE_TIMES):
            return [dataclasses.replace(op, mode=op.mode & ~WRITE_SETS_TIMES),
                    Op(OpKind.UTIMENS, op.path, atime_ns=op.atime_ns, mtime_ns=op.mtime_ns)]
        return [op]

    def _send(self, parts: list[bytes]) -> None:
        """Caller holds _send_lock. A failed send leaves the stream out of step:
        the channel is closed."""
        assert self._sock is not None
        try:
            send_parts(self._sock, parts, self._sealer)
        except (TimeoutError, socket.timeout):
            exc: ChannelError = PeerTimeout(f"send to {self.peer} blocked for {self.timeout} s")
            self._fail(exc)
            raise exc from None
        except OSError as err:
            self._fail(ChannelClosed(f"connection to {self.peer} lost: {err}"))
            raise self._closed_error() from None

    def wait(self, seq: int, timeout: float | None = None) -> None:
        """Block until op seq is acknowledged. Raises PeerTimeout,
        ReplicationRefused (StaleEpoch) or ChannelClosed."""
        if seq >= self._next_seq or seq < 1:
            raise ValueError(f"seq {seq} was never sent (last is {self._next_seq - 1})")
        if self.ack_mode == AckMode.ASYNC:
            return
        self._wait_acked(lambda: seq in self._outstanding, timeout, f"seq {seq}")
        with self._cond:
            err = self._errors.pop(seq, None)
            first = self._companions.pop(seq, None)
            if first is not None:
                err = self._errors.pop(first, None) or err
        if err is not None:
            raise _refusal(*err)

    def drain(self, timeout: float | None = None) -> None:
        """Block until every op sent so far is acknowledged (any ack mode)."""
        with self._cond:
            last = self._next_seq - 1
        self.wait_through(last, timeout)

    def wait_through(self, seq: int, timeout: float | None = None) -> None:
        """Block until every op up to ``seq`` is answered (any ack mode): a barrier.
        A refusal among them is not raised here: in async mode it is a late error
        (``late_error_count`` counts it before this returns, since the receiver
        answers in order). Raises PeerTimeout or ChannelClosed."""
        # The timeout is on progress: a barrier behind many streamed megabytes waits
        # as long as the receiver keeps answering, and no longer than ``timeout``
        # once it stops (a slow secondary is not a lost one).
        self._wait_acked(lambda: self._acked_through() < seq, timeout, f"ops up to seq {seq}",
                         progress=self._acked_through)

    @property
    def acked_through(self) -> int:
        """The highest seq such that it and every op before it were answered."""
        with self._cond:
            return self._acked_through()

    def _acked_through(self) -> int:
        """Caller holds _cond."""
        self._trim_order()
        return self._order[0] - 1 if self._order else self._next_seq - 1

    def _trim_order(self) -> None:
        """Caller holds _cond: drop answered seqs from the front of _order."""
        order, outstanding = self._order, self._outstanding
        while order and order[0] not in outstanding:
            order.popleft()

    def _wait_acked(self, pending: Callable[[], bool], timeout: float | None, what: str,
                    progress: Callable[[], int] | None = None) -> None:
        """Until ``pending()`` is false (called under _cond). ``progress()``, if
        given, restarts the timeout whenever its value changes."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
            seen = progress() if progress is not None else None
            try:
                while pending():
                    if self._closed is not None:
                        raise self._closed_error()
                    if progress is not None and (now := progress()) != seen:
                        seen, deadline = now, time.monotonic() + timeout
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PeerTimeout(f"no ack for {what} from {self.peer} within {timeout} s")
                    self._pump(remaining)
            finally:
                self._waiters -= 1
                self._last_wait = time.monotonic()

    def _pump(self, timeout: float) -> None:
        """Called by a waiter holding _cond: read and handle what arrives within
        timeout when nobody else is reading, else sleep until the reader has
        handled something (or timeout)."""
        if self._reading:
            self._cond.wait(timeout)
            return
        self._reading = True
        self._cond.release()
        try:
            self._read_once(self._read_poll, timeout)
        finally:
            self._cond.acquire()
            self._reading = False
            self._cond.notify_all()   # answers for others, or the read side is free

    @property
    def unacked(self) -> int:
        return len(self._outstanding)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    # ------------------------------------------------------------ queries

    def _query(self, encode: Callable[[int], bytes], timeout: float | None) -> list[Frame]:
        with self._send_lock:
            qid = self._next_id
            self._next_id += 1
            with self._cond:
                if self._closed is not None:
                    raise self._closed_error()
                self._replies[qid] = []
            self._send([encode(qid)])
        timeout = self.timeout if timeout is None else timeout
        try:
            with self._cond:
                seen = -1
                deadline = time.monotonic() + timeout
                self._waiters += 1
                try:
                    while qid not in self._complete:
                        if self._closed is not None:
                            raise self._closed_error()
                        if len(self._replies[qid]) != seen:     # progress: inactivity timeout
                            seen = len(self._replies[qid])
                            deadline = time.monotonic() + timeout
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise PeerTimeout(f"no reply to query {qid} from {self.peer} "
                                              f"within {timeout} s")
                        self._pump(remaining)
                finally:
                    self._waiters -= 1
                    self._last_wait = time.monotonic()
                frames = self._replies[qid]
        finally:
            with self._cond:
                self._replies.pop(qid, None)
                self._complete.discard(qid)
        last = frames[-1]
        if last.header.status:
            raise _refusal(last.header.status, last.message)
        return frames

    def query_tree(self, timeout: float | None = None, include_root: bool = False
                   ) -> list[Entry]:
        """The receiver's tree manifest (after every op sent before this call)."""
        frames = self._query(lambda q: fr.encode_query(q, QueryKind.TREE,
                                                       offset=int(include_root),
                                                       epoch=self.epoch), timeout)
        return [e for f in frames for e in unpack_entries(f.payload)]

    def query_digests(self, path: str, block_size: int, start: int = 0,
                      timeout: float | None = None) -> list[int]:
        """xxh3_64 of each block of the receiver's copy of path, from start."""
        frames = self._query(lambda q: fr.encode_query(q, QueryKind.DIGESTS, path, offset=start,
                                                       length=block_size, epoch=self.epoch),
                             timeout)
        out: list[int] = []
        for f in frames:
            out.extend(struct.unpack(f"<{len(f.payload) // 8}Q", f.payload))
        return out

    def query_activity(self, timeout: float | None = None) -> dict:
        """The receiver's activity report (``activity_log.read_report``)."""
        import json
        frames = self._query(lambda q: fr.encode_query(q, QueryKind.ACTIVITY, epoch=self.epoch),
                             timeout)
        try:
            report = json.loads(b"".join(f.payload for f in frames))
        except ValueError as e:
            raise ChannelError(f"unreadable activity report from {self.peer}: {e}") from None
        return report if isinstance(report, dict) else {}

    def declare_in_sync(self, timeout: float | None = None) -> None:
        """Tell the receiver its copy equals ours now (after every op sent before)."""
        self._query(lambda q: fr.encode_query(q, QueryKind.IN_SYNC, epoch=self.epoch), timeout)

    def read_block(self, path: str, offset: int, length: int,
                   timeout: float | None = None) -> bytes:
        """Bytes of the receiver's copy (for verify); length <= MAX_PAYLOAD."""
        frames = self._query(lambda q: fr.encode_query(q, QueryKind.READ, path, offset=offset,
                                                       length=length, epoch=self.epoch),
                             timeout)
        return b"".join(f.payload for f in frames)

    def ping(self, timeout: float | None = None) -> float:
        """Round-trip time in seconds (the receiver answers from its reader thread)."""
        with self._send_lock:
            pid = self._next_id
            self._next_id += 1
            start = time.monotonic()
            self._send([fr.encode_ping(pid)])
        self._wait_acked(lambda: pid not in self._pongs, timeout, f"ping {pid}")
        with self._cond:
            return self._pongs.pop(pid) - start

    # ------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        """The ack thread: reads only while nobody waits (see module doc)."""
        while self._closed is None:
            self._run_late_hooks()
            with self._cond:
                busy = (self._waiters or self._reading
                        or time.monotonic() - self._last_wait < IDLE_GRACE_S)
            if busy:
                self._wake.wait(IDLE_GRACE_S)
                self._wake.clear()
                continue
            try:
                ready = self._idle_poll.poll(_IDLE_POLL_MS)
            except OSError as exc:
                self._fail(ChannelClosed(f"connection to {self.peer} lost: {exc}"))
                break
            if not ready:
                continue
            with self._cond:
                if self._reading or self._waiters:
                    continue   # a waiter reads it
                self._reading = True
            try:
                self._read_once(self._idle_poll, 0)
            finally:
                with self._cond:
                    self._reading = False
                    self._cond.notify_all()
        self._run_late_hooks()

    def _read_once(self, poller: select.poll, timeout: float) -> None:
        """Caller holds the read side: wait up to timeout for data, then read and
        handle one recv worth of frames. A broken stream closes the channel."""
        assert self._reader is not None
        try:
            if not poller.poll(math.ceil(max(timeout, 0.0) * 1000)):
                return
            frames = self._reader.read()
        except (TimeoutError, socket.timeout):
            return   # idle
        except FrameError as exc:
            self._fail(ChannelClosed(f"bad frame from {self.peer}: {exc}"))
            return
        except OSError as exc:
            self._fail(ChannelClosed(f"connection to {self.peer} lost: {exc}"))
            return
        if frames is None:
            self._fail(ChannelClosed(f"{self.peer} closed the connection"))
            return
        for f in frames:
            try:
                self._handle(f)
            except ChannelError as exc:
                self._fail(exc)
                return

    def _run_late_hooks(self) -> None:
        """On the ack thread: a hook may take long (the owner commits to Raft)."""
        while self._late_hooks:
            late = self._late_hooks.popleft()
            if self.on_late_error is None:
                continue
            try:
                self.on_late_error(*late)
            except Exception:  # noqa: BLE001 - the ack thread must keep running
                log.exception("event=late_error_hook_failed seq=%d", late[0])

    def _handle(self, f: Frame) -> None:
        h = f.header
        if h.ftype == FrameType.ACK and h.flags & _DURABLE:
            with self._cond:
                self.durable_through = max(self.durable_through, h.seq)
                self._cond.notify_all()
        elif h.ftype == FrameType.ACK:
            late = None
            with self._cond:
                if h.status == 0:
                    first, last = h.offset, h.seq
                    if last - first + 1 > len(self._outstanding):
                        done = [s for s in self._outstanding if first <= s <= last]
                    else:
                        done = [s for s in range(first, last + 1) if s in self._outstanding]
                    self._outstanding.difference_update(done)
                    self.acked_ops += len(done)
                    self._trim_order()
                else:
                    was_waited = h.seq in self._outstanding
                    self._outstanding.discard(h.seq)
                    self._trim_order()
                    if h.flags & fr.Flag.LATE or not was_waited \
                            or self.ack_mode == AckMode.ASYNC:
                        late = (h.seq, h.status, f.message)
                        self.late_errors.append(late)
                        self.late_error_count += 1
                    else:
                        self._errors[h.seq] = (h.status, f.message)
                self._cond.notify_all()
            if late is not None and self.on_late_error is not None:
                self._late_hooks.append(late)
                self._wake.set()
        elif h.ftype == FrameType.REPLY:
            with self._cond:
                if h.seq in self._replies:
                    self._replies[h.seq].append(f)
                    if not h.flags & fr.Flag.MORE:
                        self._complete.add(h.seq)
                self._cond.notify_all()
        elif h.ftype == FrameType.PONG:
            with self._cond:
                self._pongs[h.offset] = time.monotonic()
                self._cond.notify_all()
        elif h.ftype == FrameType.EPOCH:
            raise StaleEpoch(errno_mod.ESTALE, f.message or
                             f"receiver {self.peer} now refuses epochs older than {h.epoch}")
        elif h.ftype == FrameType.RESET:
            raise ChannelClosed(f"receiver {self.peer} reset the channel: {f.message}")
        else:
            raise ChannelClosed(f"unexpected {h.ftype.name} frame from {self.peer}")


# ---------------------------------------------------------------- server


@dataclass
class ServerConn:
    """One authenticated connection on the receiver side."""
    sock: socket.socket
    reader: FrameReader
    peer: str
    epoch: int
    ack_mode: AckMode
    features: Feature = Feature(0)   # accepted in the handshake (QUERY_ONLY: verify)

    def __post_init__(self) -> None:
        self._send_lock = threading.Lock()
        self.alive = True
        self.sealer: Sealer | None = None     # set when the handshake ends

    def send(self, *parts: bytes) -> bool:
        """Send frames, sealed; False (and the connection is marked dead) when the
        peer is gone."""
        if not self.alive:
            return False
        if self.sealer is None:
            raise RuntimeError("ServerConn.send before the channel's keys were set")
        try:
            with self._send_lock:
                send_parts(self.sock, list(parts), self.sealer)
            return True
        except OSError:
            self.shutdown()
            return False

    def shutdown(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.shutdown()
        self.sock.close()


class SessionHandler(Protocol):
    def admit(self, conn: ServerConn) -> tuple[int, str] | None:
        """Accept (None) or refuse (errno, message) an authenticated peer."""

    def serve(self, conn: ServerConn) -> None:
        """Run the connection until it ends (called on its own thread)."""


_last_refusal: dict[tuple[str, str], float] = {}


def log_refusal(peer: str, reason: str) -> None:
    """One line per refused peer address and reason every few seconds (a refused
    sender retries in a loop)."""
    key = (peer.rsplit(":", 1)[0], reason)
    now = time.monotonic()
    if now - _last_refusal.get(key, -1e9) < _REFUSAL_LOG_INTERVAL_S:
        return
    if len(_last_refusal) > 1000:
        _last_refusal.clear()
    _last_refusal[key] = now
    log.warning('event=peer_refused peer=%s reason="%s"', peer, reason.replace('"', "'"))


class ListenFailed(OSError):
    """The receiver's listener could not bind; ``str()`` is one line naming the
    address, the port and what it is for."""

    def __str__(self) -> str:
        return str(self.strerror)


class ChannelServer:
    """Accepts connections, authenticates them, hands them to a SessionHandler."""

    def __init__(self, host: str, port: int, secret: str | bytes, handler: SessionHandler,
                 *, io_timeout: float = 10.0) -> None:
        self._secret = _secret_bytes(secret)
        if not self._secret:
            raise ValueError("a receiver needs the cluster secret (refusing to run open)")
        self.handler = handler
        self.io_timeout = io_timeout
        try:
            self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        except OSError as e:
            raise ListenFailed(e.errno, f"cannot listen on {host}:{port} for replication, where "
                                        f"the primary's mount connects: "
                                        f"{os.strerror(e.errno) if e.errno else e}") from None
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conns: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._unauthenticated: dict[str, int] = {}     # peer host -> handshakes under way

    def _admit_unauthenticated(self, host: str) -> str | None:
        """Caller holds _lock. Why a new connection is closed at once, or None: a
        peer that has not authenticated gets a thread and small buffers for at most
        HANDSHAKE_TIMEOUT, and only so many of them exist at a time."""
        total = sum(self._unauthenticated.values())
        if total >= PREAUTH_MAX_TOTAL:
            return f"{total} unauthenticated connections already (at most {PREAUTH_MAX_TOTAL})"
        if self._unauthenticated.get(host, 0) >= PREAUTH_MAX_PER_HOST:
            return (f"{PREAUTH_MAX_PER_HOST} unauthenticated connections from {host} already "
                    f"(at most {PREAUTH_MAX_PER_HOST} per address)")
        self._unauthenticated[host] = self._unauthenticated.get(host, 0) + 1
        return None

    def _authenticated_or_gone(self, host: str) -> None:
        with self._lock:
            left = self._unauthenticated.get(host, 0) - 1
            if left > 0:
                self._unauthenticated[host] = left
            else:
                self._unauthenticated.pop(host, None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="repl-accept",
                                        daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _addr = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)   # e.g. EMFILE: do not spin
                continue
            host = str(_addr[0]) if isinstance(_addr, tuple) else "?"
            with self._lock:
                refused = self._admit_unauthenticated(host)
            if refused is not None:
                log_refusal(_peer_name(sock), f"closed at once: {refused}")
                sock.close()
                continue
            t = threading.Thread(target=self._connection, args=(sock, host), daemon=True,
                                 name=f"repl-conn-{_peer_name(sock)}")
            with self._lock:
                self._conns.add(t)
            t.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def join_connections(self, timeout: float = 5.0) -> None:
        with self._lock:
            threads = list(self._conns)
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def _connection(self, sock: socket.socket, host: str = "?") -> None:
        peer = _peer_name(sock)
        try:
            try:
                conn = self._handshake(sock, peer)
            finally:
                self._authenticated_or_gone(host)
            if conn is not None:
                sock.settimeout(self.io_timeout)
                self.handler.serve(conn)
        except Exception:  # noqa: BLE001 - one bad connection must not stop the receiver
            log.exception('event=connection_failed peer=%s', peer)
        finally:
            sock.close()
            with self._lock:
                self._conns.discard(threading.current_thread())

    def _refuse(self, sock: socket.socket, peer: str, err: int, reason: str) -> None:
        log_refusal(peer, reason)
        try:
            sock.sendall(fr.encode_auth(status=err, message=reason))
        except OSError:
            pass

    def _handshake(self, sock: socket.socket, peer: str) -> ServerConn | None:
        tune_socket(sock)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT    # the whole handshake, not per recv
        reader = FrameReader(sock)
        try:
            hello = reader.handshake_frame(deadline)
            if hello is None:
                log_refusal(peer, "closed before HELLO")
                return None
            if hello.ftype != FrameType.HELLO or len(hello.payload) != NONCE_SIZE:
                self._refuse(sock, peer, errno_mod.EPROTO,
                             f"expected HELLO, got {hello.ftype.name}")
                return None
            ack_mode = AckMode(hello.header.kind)
            epoch = hello.header.epoch
            offered = hello.header.mode
            accepted = accept_features(offered)
            if not accepted & Feature.AEAD:
                self._refuse(sock, peer, errno_mod.EPROTO,
                             "the replication channel is encrypted: this sender does not offer "
                             "it (an older version?): upgrade it")
                return None
            nonce_s = os.urandom(NONCE_SIZE)
            sock.sendall(fr.encode_hello(0, ack_mode, nonce_s, accepted))   # echoes the ack mode
            auth = reader.handshake_frame(deadline)
            if auth is None or auth.ftype != FrameType.AUTH:
                log_refusal(peer, "no AUTH after HELLO (client gave up: wrong secret on "
                                  "this receiver?)")
                return None
            transcript = _transcript(fr.PROTOCOL_VERSION, ack_mode, epoch, hello.payload, nonce_s,
                                     offered, accepted)
            if not hmac.compare_digest(auth.payload, _proof(self._secret, b"client", transcript)):
                self._refuse(sock, peer, errno_mod.EACCES,
                             "authentication failed: wrong or missing cluster secret")
                return None
        except FrameError as exc:
            self._refuse(sock, peer, errno_mod.EPROTO, f"not a replication peer: {exc}")
            return None
        except (TimeoutError, socket.timeout):
            log_refusal(peer, f"handshake not completed within {HANDSHAKE_TIMEOUT} s")
            return None
        except OSError as exc:
            log_refusal(peer, f"connection lost during handshake: {exc}")
            return None
        conn = ServerConn(sock, reader, peer, epoch, ack_mode,
                          Feature(accepted & ~Feature.NEGOTIATE) if accepted else Feature(0))
        refused = self.handler.admit(conn)
        if refused is not None:
            self._refuse(sock, peer, *refused)
            return None
        from_client, to_client = derive_keys(self._secret, transcript)
        try:
            sock.sendall(fr.encode_auth(_proof(self._secret, b"receiver", transcript)))
        except OSError:
            conn.shutdown()   # admitted, but gone: serve() sees the dead socket and ends
        # From here on, both ways, only AEAD records (the client switches when it
        # has checked this AUTH; it sends nothing before).
        conn.sealer = Sealer(to_client)
        reader.secure(Opener(from_client))
        return conn
