"""pysyncobj's TCP transport with limits for peers that have not authenticated.

pysyncobj 0.3.17 (tcp_connection.py, tcp_server.py) reads a 4-byte length and
buffers that many bytes (up to 2 GiB) with ``bytes +=`` before anything is
checked: one unauthenticated connection streaming 2–3 MiB/s kept the tick
thread at 100 % (each recv copies the whole buffer) and the member lost its
role. Idle connections never time out (the timeout is only looked at when the
socket has an event), and an accept error other than EAGAIN (EMFILE: out of
file descriptors) unbinds the listener for good.

Here, without copying pysyncobj's code (its private methods are overridden by
their mangled names, as raft.member does for SyncObj):

* ``HardenedConnection`` keeps its input in a bytearray (appends and drops from
  the front are amortised O(1)), reads at most ``read_per_event`` bytes per poll
  event, and checks the announced length of every message *before* buffering
  its body: at most ``max_preauth_bytes`` until the peer has proved it holds the
  cluster secret (a message that decrypted and carried this connection's random
  key, so a replayed token does not count), ``max_message_bytes`` after. A
  whole message is handed to pysyncobj's own decoder (Fernet, then unpickle).
* ``HardenedServer`` accepts in a bounded loop; the transport may refuse a new
  connection (caps); EMFILE/ENFILE never unbind the listener: a reserve file
  descriptor is given up to accept and close the waiting connection, and if that
  fails too the listener pauses for a moment (it stays bound; the kernel queues).
* ``HardenedTransport`` caps connections that have not completed the handshake
  per address and in total (addresses of members count against their own cap
  only, so a flood from other addresses cannot lock members out), closes those
  that do not complete it within ``handshake_deadline_s``, and rebinds a
  listener that was closed.

Refusals are logged once per address per interval, with a count.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import struct
import time
from dataclasses import dataclass

from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import SERVER_STATE, TcpServer
from pysyncobj.transport import TCPTransport

log = logging.getLogger("hacluster.raft")

_LENGTH = struct.Struct("i")  # pysyncobj's length prefix (native int, signed)
_READ_CHUNK = 1 << 16
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class TransportLimits:
    # The handshake's messages (a random key, then the member's address) are
    # ~200 bytes once encrypted; pysyncobj's appends are batched to 64 KiB
    # (appendEntriesBatchSizeBytes) and bigger entries split, so 16 MiB is ample.
    max_preauth_bytes: int = 4096
    max_message_bytes: int = 16 << 20
    read_per_event: int = 1 << 20
    handshake_deadline_s: float = 5.0
    preauth_per_address: int = 8
    preauth_total: int = 64
    accepts_per_event: int = 64
    listener_pause_s: float = 0.1
    refusal_log_interval_s: float = 10.0


class RefusalLog:
    """One warning per (address, kind) per interval, saying how many were refused
    since the last line. Bounded: the table is cleared when it grows past
    ``max_entries`` (an attacker with many addresses gets more lines, not memory)."""

    def __init__(self, interval_s: float = 10.0, max_entries: int = 4096,
                 logger: logging.Logger = log) -> None:
        self.interval_s = interval_s
        self.log = logger
        self.max_entries = max_entries
        self._last: dict[tuple[str, str], list] = {}

    def __call__(self, peer: str, kind: str, fmt: str, *args: object) -> bool:
        """Log unless this peer's ``kind`` was logged within the interval; True if logged."""
        now = time.monotonic()
        key = (peer, kind)
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval_s:
            entry[1] += 1
            return False
        if len(self._last) >= self.max_entries:
            self._last.clear()
        suppressed = entry[1] if entry is not None else 0
        self._last[key] = [now, 0]
        self.log.warning(fmt + " refused_since_last_line=%d", *args, suppressed)
        return True


refusal_log = RefusalLog()


def _host_of(peer: str) -> str:
    return peer.rsplit(":", 1)[0] if ":" in peer else peer


class HardenedConnection(TcpConnection):
    """A TcpConnection whose input is bounded before authentication and buffered
    efficiently after. Built directly for accepted sockets, or turned into one by
    ``harden`` for the outgoing connections pysyncobj creates itself."""

    def __init__(self, *args, limits: TransportLimits, peer: str = "unknown", **kwargs) -> None:
        self._harden(limits, peer)
        super().__init__(*args, **kwargs)

    def _harden(self, limits: TransportLimits, peer: str) -> None:
        self.limits = limits
        self.peer = peer
        self.peer_host = _host_of(peer)
        self.authenticated = False
        self.opened_at = monotonic_time()
        self._input = bytearray()

    @classmethod
    def harden(cls, conn: TcpConnection, limits: TransportLimits, peer: str) -> "HardenedConnection":
        # pysyncobj constructs its outgoing connections inline (TCPTransport.addNode)
        # and binds callbacks to that object; the subclass adds no slots, so the
        # object can take the subclass in place.
        conn.__class__ = cls
        conn._harden(limits, peer)
        return conn

    # ---- pysyncobj's entry points -------------------------------------------------
    def connect(self, host, port):
        self._input = bytearray()
        self.authenticated = False
        self.opened_at = monotonic_time()
        return super().connect(host, port)

    def disconnect(self):
        self._input = bytearray()
        self.authenticated = False
        super().disconnect()

    def _limit(self) -> int:
        return self.limits.max_message_bytes if self.authenticated else self.limits.max_preauth_bytes

    def _TcpConnection__tryReadBuffer(self):  # noqa: N802 (pysyncobj's mangled name)
        """Read what is there, at most ``read_per_event`` bytes, and never more than
        one message of the current limit in the buffer (before authentication: 4 KiB
        per connection). The rest waits in the socket; the poll reports it again."""
        sock = self._TcpConnection__socket
        buf = self._input
        budget = self.limits.read_per_event
        enough = 4 + self._limit()
        while budget > 0 and len(buf) < enough:
            try:
                chunk = sock.recv(min(budget, _READ_CHUNK, enough - len(buf)))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.disconnect()
                return
            if not chunk:
                self.disconnect()
                return
            buf += chunk
            budget -= len(chunk)
        self._TcpConnection__lastReadTime = monotonic_time()

    def _TcpConnection__processParseMessage(self):  # noqa: N802
        buf = self._input
        if len(buf) < 4:
            return None
        (length,) = _LENGTH.unpack_from(buf)
        limit = self._limit()
        if not 0 < length <= limit:
            stage = "after" if self.authenticated else "before"
            refusal_log(self.peer_host, "size",
                        "event=peer_refused peer=%s reason=\"announced a message of %d bytes "
                        "%s authenticating (limit %d): connection closed, nothing buffered\"",
                        self.peer, length, stage, limit)
            self.disconnect()
            return None
        if len(buf) - 4 < length:
            return None
        frame = bytes(buf[:4 + length])
        del buf[:4 + length]
        proves_key = self.encryptor is not None and bool(self.recvRandKey)
        # pysyncobj's own decoder (Fernet check, then zlib and unpickle, then the
        # connection's random key) on exactly one whole message; it disconnects on
        # any failure.
        self._TcpConnection__readBuffer = frame
        message = TcpConnection._TcpConnection__processParseMessage(self)
        if message is None or self.state == CONNECTION_STATE.DISCONNECTED:
            return None
        if proves_key:
            self.authenticated = True
        return message


class HardenedServer(TcpServer):
    """pysyncobj's TcpServer with an accept loop that never unbinds on an accept
    error and lets the transport refuse connections."""

    @classmethod
    def adopt(cls, plain: TcpServer, transport: "HardenedTransport") -> "HardenedServer":
        # TCPTransport._createServer builds a plain TcpServer inline; take over its
        # settings rather than repeat how they are worked out.
        server = cls.__new__(cls)
        server.__dict__.update(vars(plain))
        server._transport = transport
        server._limits = transport.limits
        server._reserve_fd = None
        server._paused_until = None
        server.bind_error = None
        return server

    def bind(self):
        try:
            super().bind()
        except OSError as e:
            # pysyncobj swallows the error and retries every second for ever, and
            # leaves the failed socket open: keep the error for RaftMember, which
            # makes a failed first bind fatal (raft.listen).
            self.bind_error = e
            if self._TcpServer__socket is not None:
                self._TcpServer__socket.close()
            raise
        self.bind_error = None
        self._TcpServer__socket.listen(128)  # pysyncobj's backlog is 5
        if self._reserve_fd is None:
            self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def unbind(self):
        super().unbind()
        self._paused_until = None
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None

    @property
    def bound(self) -> bool:
        return self._TcpServer__state == SERVER_STATE.BINDED

    def _TcpServer__onNewConnection(self, descr, event):  # noqa: N802
        if event & POLL_EVENT_TYPE.READ:
            for _ in range(self._limits.accepts_per_event):
                try:
                    sock, addr = self._TcpServer__socket.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    if e.errno in _OUT_OF_DESCRIPTORS:
                        self._shed(e)
                        break
                    continue  # ECONNABORTED, EPROTO, EPERM (firewall): that connection only
                self._admit(sock, addr)
        if event & POLL_EVENT_TYPE.ERROR and self.bound:
            log.warning("event=raft_listener_error reason=\"poll reported an error on the Raft "
                        "listener; binding it again\"")
            self.unbind()

    def _shed(self, error: OSError) -> None:
        """Out of descriptors: accept the waiting connection with the reserve
        descriptor and close it (so the listener is not reported readable forever),
        else stop polling the listener for a moment. It stays bound either way."""
        refusal_log("*", "accept",
                    "event=raft_accept_failed reason=\"%s: connection refused; the listener stays "
                    "bound\" open_files_limit=%d", os.strerror(error.errno) if error.errno is not None else str(error),
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            try:
                sock, _ = self._TcpServer__socket.accept()
                sock.close()
            except OSError:
                pass
            try:
                self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        if self._reserve_fd is None:
            self.pause()

    def pause(self) -> None:
        if self._TcpServer__fileno is not None and self._paused_until is None:
            self._TcpServer__poller.unsubscribe(self._TcpServer__fileno)
            self._paused_until = monotonic_time() + self._limits.listener_pause_s

    def resume_if_due(self, now: float) -> None:
        if self._paused_until is None or now < self._paused_until or not self.bound:
            return
        self._paused_until = None
        if self._reserve_fd is None:
            try:
                self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.pause()
                return
        self._TcpServer__poller.subscribe(self._TcpServer__fileno, self._TcpServer__onNewConnection,
                                          POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def _admit(self, sock: socket.socket, addr) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        refusal = self._transport.admission_refusal(addr[0])
        if refusal is not None:
            sock.close()
            refusal_log(addr[0], "cap", "event=peer_refused peer=%s reason=\"%s\"", peer, refusal)
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpServer__sendBufferSize)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpServer__recvBufferSize)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            conn = HardenedConnection(poller=self._TcpServer__poller, socket=sock,
                                      timeout=self._TcpServer__connectionTimeout,
                                      sendBufferSize=self._TcpServer__sendBufferSize,
                                      recvBufferSize=self._TcpServer__recvBufferSize,
                                      keepalive=self._TcpServer__keepalive,
                                      limits=self._limits, peer=peer)
        except OSError:
            sock.close()  # reset before we got to it
            return
        self._TcpServer__onNewConnectionCallback(conn)


class HardenedTransport(TCPTransport):
    limits = TransportLimits()

    def _createServer(self):  # noqa: N802
        super()._createServer()
        self._server = HardenedServer.adopt(self._server, self)

    def addNode(self, node):  # noqa: N802
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and not isinstance(conn, HardenedConnection):
            HardenedConnection.harden(conn, self.limits, node.address)

    def admission_refusal(self, host: str) -> str | None:
        """Why a new connection from ``host`` is refused, or None. Counts the
        connections still in their handshake."""
        members = self._member_hosts()
        same = total = 0
        for conn in self._unknownConnections:
            h = getattr(conn, "peer_host", None)
            if h == host:
                same += 1
            if h not in members:
                total += 1
        lim = self.limits
        if same >= lim.preauth_per_address:
            return (f"{same} connections from this address have not completed the handshake "
                    f"(limit {lim.preauth_per_address}): connection closed")
        if host not in members and total >= lim.preauth_total:
            return (f"{total} connections from non-members have not completed the handshake "
                    f"(limit {lim.preauth_total}): connection closed")
        return None

    def _member_hosts(self) -> set[str]:
        return {node.ip for node in self._nodes if getattr(node, "ip", None)}

    def _onTick(self):  # noqa: N802
        server = self._server
        if isinstance(server, HardenedServer):
            if self._ready and not server.bound:
                self._ready = False  # pysyncobj's _maybeBind binds it again
            else:
                server.resume_if_due(monotonic_time())
        super()._onTick()
        if self._unknownConnections:
            self._close_late_handshakes(monotonic_time())

    def _close_late_handshakes(self, now: float) -> None:
        deadline = self.limits.handshake_deadline_s
        for conn in list(self._unknownConnections):
            opened = getattr(conn, "opened_at", None)
            if opened is not None and now - opened > deadline:
                refusal_log(conn.peer_host, "deadline",
                            "event=peer_refused peer=%s reason=\"no authenticated handshake within "
                            "%.1f s: connection closed\"", conn.peer, deadline)
                conn.disconnect()
                self._unknownConnections.discard(conn)


OPEN_FILES_TARGET = 65536


def raise_open_files_limit(target: int = OPEN_FILES_TARGET) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards ``target``, within the hard limit (a
    daemon holds a descriptor per peer connection, listener, journal, module
    process pipe); returns (soft, hard) as they are afterwards. Not to the hard
    limit itself: children (module scripts, the applications they start) inherit
    the soft limit, and some programs loop over every possible descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard
