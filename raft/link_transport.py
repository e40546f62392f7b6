"""Raft over several heartbeat networks: the I/O around raft.links.

Each member listens for Raft on its address on every network (the same port) and
sends an authenticated heartbeat datagram (UDP, the Raft port) on every network to
every peer every ``link_heartbeat_s``. The one Raft connection to a peer is opened on a
network whose path is alive, and moved (closed, reopened at once on a live one) when its
own path goes silent while another is heard: a switch takes about ``link_timeout_s``
plus a round trip, below the election timeout, so losing a network neither starts an
election nor delays a lease renewal enough to matter. Messages in flight on the dead
path are lost, as on any reconnect; Raft sends them again.

With one network configured nothing here runs: no datagram, no extra listener.

Sockets for the other networks are bound with IP_FREEBIND: a member whose second
network is not up yet at boot starts anyway and uses it once the address appears; its
Raft address (network 0) must be up (raft.listen makes that bind fatal).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.tcp_server import SERVER_STATE

from .hardened_transport import HardenedServer, refusal_log
from .links import (MAX_DATAGRAM, Heartbeat, HeartbeatError, LinkTable, decode_heartbeat,
                    encode_heartbeat, member_paths)
from .secure_channel import SecureTransport

log = logging.getLogger("hacluster.raft")

_RECV_PER_EVENT = 64
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)   # Linux <linux/in.h>; in socket from 3.12
_BIND_RETRY_S = 1.0


@dataclass(frozen=True)
class LinkPlan:
    """What the transport needs to know of the networks: this member's hosts per
    network, each peer's (by Raft address), the heartbeat key and timing."""
    own: tuple[str | None, ...]
    peers: Mapping[str, tuple[str | None, ...]]
    key: bytes
    heartbeat_s: float
    timeout_s: float

    @classmethod
    def from_members(cls, self_address: str, members: Mapping[str, Mapping[str, object]],
                     key: bytes, heartbeat_s: float, timeout_s: float) -> "LinkPlan":
        own: tuple[str | None, ...] = (self_address.rsplit(":", 1)[0],)
        peers = {}
        for m in members.values():
            paths = tuple(member_paths(m))
            if m["address"] == self_address:
                own = paths
            else:
                peers[str(m["address"])] = paths
        return cls(own, peers, key, heartbeat_s, timeout_s)


def _freebind_socket(kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setblocking(False)
    return sock


class LinkServer(HardenedServer):
    """A Raft listener on one of this member's other networks (IP_FREEBIND)."""

    def bind(self):
        sock = _freebind_socket(socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self._TcpServer__host, self._TcpServer__port))
            sock.listen(128)
        except OSError as e:
            sock.close()
            self.bind_error = e
            raise
        self.bind_error = None
        self._TcpServer__socket = sock
        self._TcpServer__fileno = sock.fileno()
        self._TcpServer__poller.subscribe(self._TcpServer__fileno, self._TcpServer__onNewConnection,
                                          POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)
        self._TcpServer__state = SERVER_STATE.BINDED
        if self._reserve_fd is None:
            self._reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


class LinkedTransport(SecureTransport):
    """SecureTransport over the networks of ``syncObj.link_plan`` (None: one network)."""

    def __init__(self, syncObj, selfNode, otherNodes):  # noqa: N803 (pysyncobj's names)
        plan: LinkPlan | None = getattr(syncObj, "link_plan", None)
        self._plan = plan
        self._lock = threading.Lock()
        self._links: LinkTable | None = None
        self._link_servers: list[tuple[int, HardenedServer]] = []
        self._datagram: dict[int, socket.socket] = {}
        self._next_heartbeat = 0.0
        self._next_bind = 0.0
        self._seq = time.time_ns()      # above anything sent before a restart
        self._attempts: dict[str, int] = {}
        if plan is not None:
            self._links = LinkTable(plan.own, plan.timeout_s)
            self._links.set_peers(plan.peers)
        super().__init__(syncObj, selfNode, otherNodes)

    # ---- configuration ---------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._links is not None and self._plan is not None and len(self._plan.own) > 1

    def set_peers(self, peers: Mapping[str, Sequence[str | None]]) -> None:
        """Membership changed (any thread)."""
        if self._links is None:
            return
        with self._lock:
            self._links.set_peers(peers)

    def link_status(self) -> dict[str, list[dict[str, object]]]:
        if self._links is None:
            return {}
        with self._lock:
            return self._links.status(time.monotonic())

    def _member_hosts(self) -> set[str]:
        hosts = super()._member_hosts()
        if self._links is not None:
            with self._lock:
                hosts |= self._links.hosts()
        return hosts

    # ---- listeners ------------------------------------------------------------------------
    def _createServer(self):  # noqa: N802
        super()._createServer()
        if not self.active:
            return
        assert self._plan is not None
        port = int(self._selfNode.address.rsplit(":", 1)[1])
        main = self._server
        for i, host in enumerate(self._plan.own[1:], start=1):
            if host is None:
                continue
            server = LinkServer.__new__(LinkServer)
            server.__dict__.update(vars(main))
            server._TcpServer__host = host
            server._TcpServer__port = port
            server._TcpServer__socket = None
            server._TcpServer__fileno = None
            server._TcpServer__state = SERVER_STATE.UNBINDED
            server._reserve_fd = None
            server._paused_until = None
            server.bind_error = None
            self._link_servers.append((i, server))
        for i, host in enumerate(self._plan.own):
            if host is None:
                continue
            sock = _freebind_socket(socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as e:
                sock.close()
                log.warning("event=link_unusable network=%d address=%s:%d reason=%r", i, host,
                            port, e.strerror or str(e))
                continue
            self._datagram[i] = sock
            self._syncObj._poller.subscribe(sock.fileno(), self._on_datagram_event(i),
                                            POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def _bind_link_servers(self, now: float) -> None:
        if now < self._next_bind:
            return
        self._next_bind = now + _BIND_RETRY_S
        for i, server in self._link_servers:
            if server.bound:
                continue
            try:
                server.bind()
                log.info("event=link_listening network=%d address=%s:%d", i,
                         server._TcpServer__host, server._TcpServer__port)
            except OSError as e:
                refusal_log(server._TcpServer__host, "link-bind",
                            "event=link_unusable network=%d address=%s reason=\"cannot listen: "
                            "%s; retrying\"", i, server._TcpServer__host, e.strerror or str(e))

    # ---- heartbeats ------------------------------------------------------------------------
    def _on_datagram_event(self, network: int):
        def handler(_descr, event):
            sock = self._datagram.get(network)
            if sock is None:
                return
            assert self._plan is not None and self._links is not None
            for _ in range(_RECV_PER_EVENT):
                try:
                    data, (src, _port) = sock.recvfrom(MAX_DATAGRAM + 1)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                try:
                    hb = decode_heartbeat(self._plan.key, data)
                except HeartbeatError as e:
                    refusal_log(src, "heartbeat", "event=link_heartbeat_refused peer=%s "
                                "network=%d reason=\"%s\"", src, network, str(e))
                    continue
                if hb.network != network:
                    refusal_log(src, "heartbeat-net", "event=link_heartbeat_refused peer=%s "
                                "network=%d reason=\"sent for network %d: the members' links "
                                "are not listed in the same order\"", src, network, hb.network)
                    continue
                with self._lock:
                    self._links.heard(hb, time.monotonic())
        return handler

    def next_timer(self) -> float | None:
        """pysyncobj monotonic time of the next heartbeat (the tick thread wakes then)."""
        return self._next_heartbeat if self.active else None

    def _send_heartbeats(self, now: float) -> None:
        assert self._plan is not None and self._links is not None
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self._plan.heartbeat_s
        me = self._selfNode.address
        with self._lock:
            targets = [(peer, i, self._links.host(peer, i)) for peer in self._links.peers
                       for i in self._links.shared(peer)]
        for peer, i, host in targets:
            sock = self._datagram.get(i)
            if sock is None or host is None:
                continue
            self._seq += 1
            data = encode_heartbeat(self._plan.key, Heartbeat(me, i, self._seq))
            try:
                sock.sendto(data, (host, int(peer.rsplit(":", 1)[1])))
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.ENETUNREACH, errno.EHOSTUNREACH,
                                   errno.EADDRNOTAVAIL, errno.EPERM, errno.ENOBUFS):
                    log.debug("event=link_send_failed peer=%s network=%d reason=%r", peer, i, str(e))

    # ---- which network a connection rides on -----------------------------------------------
    def _network_of(self, node, conn) -> int | None:
        net = getattr(conn, "link_network", None)
        if net is not None:
            return net
        host = getattr(conn, "peer_host", None)
        if host is None or self._links is None:
            return None
        with self._lock:
            found = self._links.peer_of(host)
        if found is not None and found[0] == node.address:
            conn.link_network = found[1]
            return found[1]
        return 0 if host == getattr(node, "ip", None) else None

    def _connectIfNecessarySingle(self, node):  # noqa: N802
        if not self.active:
            return super()._connectIfNecessarySingle(node)
        conn = self._connections.get(node)
        if conn is not None and conn.state != CONNECTION_STATE.DISCONNECTED:
            return True
        if not self._shouldConnect(node):
            return False
        now = monotonic_time()
        last = self._lastConnectAttempt.get(node)
        if last is not None and now - last < self._syncObj.conf.connectionRetryTime:
            return False
        self._lastConnectAttempt[node] = now
        assert self._links is not None and conn is not None
        attempt = self._attempts.get(node.address, 0)
        self._attempts[node.address] = attempt + 1
        with self._lock:
            net = self._links.connect_choice(node.address, time.monotonic(), attempt)
            host = self._links.host(node.address, net) or node.ip
        conn.link_network = net
        return conn.connect(host, node.port)

    def _switch_if_needed(self) -> None:
        assert self._links is not None
        now = time.monotonic()
        moves = []
        with self._lock:
            changes = self._links.changes(now)
        for ch in changes:
            if ch.alive:
                log.info("event=link_up peer=%s network=%d address=%s", ch.peer, ch.network, ch.host)
            else:
                log.warning("event=link_down peer=%s network=%d address=%s reason=\"no heartbeat "
                            "for %.2f s\"", ch.peer, ch.network, ch.host, self._links.timeout_s)
        for node, conn in list(self._connections.items()):
            if getattr(node, "address", None) is None or conn.state != CONNECTION_STATE.CONNECTED:
                continue
            current = self._network_of(node, conn)
            if current is None:
                continue
            with self._lock:
                target = self._links.switch_to(node.address, current, now)
            if target is not None:
                moves.append((node, conn, current, target))
        for node, conn, current, target in moves:
            log.warning("event=raft_link_switch peer=%s from_network=%d to_network=%d "
                        "reason=\"network %d silent for %.2f s, network %d heard\"", node.address,
                        current, target, current, self._links.timeout_s, target)
            self._lastConnectAttempt.pop(node, None)   # reconnect at once, not after the retry time
            conn.disconnect()

    def _onTick(self):  # noqa: N802
        super()._onTick()
        if not self.active:
            return
        now = monotonic_time()
        self._bind_link_servers(now)
        for _i, server in self._link_servers:
            server.resume_if_due(now)
        self._send_heartbeats(now)
        self._switch_if_needed()

    def destroy(self):
        for _i, server in self._link_servers:
            server.unbind()
        for sock in self._datagram.values():
            try:
                self._syncObj._poller.unsubscribe(sock.fileno())
            except (KeyError, ValueError, OSError):
                pass
            sock.close()
        self._datagram.clear()
        super().destroy()
