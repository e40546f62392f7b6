"""A small TCP service for node-to-node requests: one request per connection.

A subclass writes ``_handshake`` (authenticate the peer and read its request, under
one deadline for the whole of it) and ``_serve_request``. Connections still in their
handshake are capped per address and in total (addresses of cluster members count
against their own cap only, so a flood from elsewhere cannot lock members out); the
cap on requests served at once applies only to authenticated ones, so silent
connections never take those slots. Every failure of a connection closes it and is
logged as one line (``event=<prefix>_refused`` / ``_dropped``), once per address and
kind per interval, with a count of those not logged.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from raft.hardened_transport import RefusalLog
from raft.link_transport import IP_FREEBIND
from raft.listen import listen_error


@dataclass(frozen=True)
class HandshakeLimits:
    per_address: int = 4
    total: int = 64          # from addresses that are not cluster members
    deadline_s: float = 5.0  # the whole handshake: nonce out, request in, MAC checked


class TcpService:
    event_prefix = "service"
    purpose = "a node-to-node service"     # what it is for, in a failed bind's message

    def __init__(self, host: str, port: int, log: logging.Logger, max_connections: int,
                 handshake: HandshakeLimits | None = None,
                 member_hosts: Callable[[], Iterable[str]] = lambda: (),
                 extra_hosts: Iterable[str] = ()) -> None:
        """``extra_hosts``: this member's addresses on its other heartbeat networks
        (raft.links): listened on too, with IP_FREEBIND so that a network not up yet
        is not a failure (its address is used once it appears)."""
        self.host = host
        self.port = port
        self.extra_hosts = list(extra_hosts)
        self._extra_servers: list[asyncio.Server] = []
        self._log = log
        self._slots = asyncio.Semaphore(max_connections)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()
        self._limits = handshake or HandshakeLimits()
        self._member_hosts = member_hosts
        self._in_handshake: dict[str, int] = {}
        self._refusals = RefusalLog(logger=log)

    async def start(self) -> None:
        """Listen on the member's address; raft.listen.ListenError (one line) when it cannot."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as e:
            raise listen_error(self.host, self.port, self.purpose, e) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._log.info("event=%s_listening host=%s port=%d", self.event_prefix, self.host, self.port)
        for host in self.extra_hosts:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, self.port))
                self._extra_servers.append(await asyncio.start_server(self._handle, sock=sock))
            except OSError as e:
                sock.close()
                self._log.warning("event=%s_link_unusable host=%s port=%d reason=%r",
                                  self.event_prefix, host, self.port, e.strerror or str(e))
                continue
            self._log.info("event=%s_listening host=%s port=%d", self.event_prefix, host, self.port)

    async def close(self) -> None:
        for extra in self._extra_servers:
            extra.close()
        self._extra_servers.clear()
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: str) -> Any:
        """Authenticate and read the request (None: refused, already logged)."""
        raise NotImplementedError

    async def _serve_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             peer: str, request: Any) -> None:
        raise NotImplementedError

    def refused(self, host: str, kind: str, fmt: str, *args: object) -> None:
        """A refusal line, once per address and kind per interval."""
        self._refusals(host, kind, fmt, *args)

    def _admission_refusal(self, host: str) -> str | None:
        lim = self._limits
        same = self._in_handshake.get(host, 0)
        if same >= lim.per_address:
            return (f"{same} connections from this address are in their handshake "
                    f"(limit {lim.per_address})")
        members = set(self._member_hosts())
        if host not in members:
            others = sum(n for h, n in self._in_handshake.items() if h not in members)
            if others >= lim.total:
                return (f"{others} connections from non-members are in their handshake "
                        f"(limit {lim.total})")
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if peername else "?"
        peer = f"{host}:{peername[1]}" if peername else "?"
        ev = self.event_prefix
        try:
            refusal = self._admission_refusal(host)
            if refusal is not None:
                self.refused(host, "cap", 'event=%s_refused peer=%s reason="%s: connection closed"',
                             ev, peer, refusal)
                return
            self._in_handshake[host] = self._in_handshake.get(host, 0) + 1
            try:
                async with asyncio.timeout(self._limits.deadline_s):
                    request = await self._handshake(reader, writer, peer)
            finally:
                self._end_handshake(host)
            if request is None:
                return
            if self._slots.locked():
                self.refused(host, "busy", 'event=%s_refused peer=%s reason="too many requests '
                             'being served"', ev, peer)
                return
            async with self._slots:
                await self._serve_request(reader, writer, peer, request)
        except (asyncio.TimeoutError, TimeoutError):
            self.refused(host, "timeout", 'event=%s_dropped peer=%s reason=timeout detail="no '
                         'authenticated request within %g s, or the answer stalled"', ev, peer,
                         self._limits.deadline_s)
        except asyncio.IncompleteReadError:
            self.refused(host, "short", 'event=%s_dropped peer=%s reason="short request"', ev, peer)
        except (ConnectionError, OSError, ValueError) as exc:
            self.refused(host, "error", "event=%s_dropped peer=%s reason=%r", ev, peer, str(exc))
        finally:
            self._handlers.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
                pass

    def _end_handshake(self, host: str) -> None:
        n = self._in_handshake.get(host, 0) - 1
        if n > 0:
            self._in_handshake[host] = n
        else:
            self._in_handshake.pop(host, None)
