"""Control requests between nodes, for ``hacluster -H HOSTS ...``.

The CLI talks only to its local daemon (Unix socket, root only); that daemon
forwards the request to each named peer over TCP on Raft port + 3. Both
directions are authenticated with the cluster secret, so the CLI never needs
the secret and a host outside the cluster can neither drive a node nor fake
an answer. One request per connection:

    server -> client  nonce (32 random bytes)
    client -> server  length (4 bytes, big endian) + JSON request
                      + HMAC-SHA256(secret, b"hacluster-control" + nonce + JSON)
    server -> client  length + JSON reply
                      + HMAC-SHA256(secret, b"hacluster-control-reply" + nonce + JSON)

The nonce makes a recorded request or reply useless on another connection.
Before the MAC is checked a peer gets one deadline for the whole handshake, may
announce at most ``MAX_REQUEST_BYTES``, and may hold a few such connections per
address (``tcp_service.HandshakeLimits``); silent connections never take the
slots of authenticated requests, so they cannot lock ``-H`` out.
Only the commands declared remote in ``commands.py`` are served: the replication
hooks and module installation (which names a local file) stay local, and so does a
checker program's ``set_resource`` (it sets its own node's resources).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import struct
from typing import Any, Awaitable, Callable, Iterable, Mapping

from raft.links import member_paths

from .commands import LOCAL_MODULE_COMMANDS, MODULE_CMD, REMOTE_COMMANDS
from .tcp_service import HandshakeLimits, TcpService

log = logging.getLogger("hacluster.peer_control")

PORT_OFFSET = 3
NONCE_BYTES = 32
MAC_BYTES = 32
MAX_BODY_BYTES = 1 << 20       # a reply
MAX_REQUEST_BYTES = 64 << 10   # a request, read before its MAC can be checked
REQUEST_CONTEXT = b"hacluster-control"
REPLY_CONTEXT = b"hacluster-control-reply"
_LENGTH = struct.Struct(">I")

Dispatch = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class PeerControlError(Exception):
    """A forwarded request that got no authenticated answer; one line naming the peer."""


def peer_control_address(raft_address: str) -> tuple[str, int]:
    host, port = raft_address.rsplit(":", 1)
    return host, int(port) + PORT_OFFSET


def _mac(secret: str, context: bytes, nonce: bytes, body: bytes) -> bytes:
    return hmac.new(secret.encode(), context + nonce + body, hashlib.sha256).digest()


def _frame(secret: str, context: bytes, nonce: bytes, body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body + _mac(secret, context, nonce, body)


async def _read_frame(reader: asyncio.StreamReader, secret: str, context: bytes,
                      nonce: bytes, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The body, or None when its MAC is wrong. Raises ValueError when oversize."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > limit:
        raise ValueError(f"{length} bytes is over the {limit} byte limit")
    body = await reader.readexactly(length)
    mac = await reader.readexactly(MAC_BYTES)
    return body if hmac.compare_digest(mac, _mac(secret, context, nonce, body)) else None


class PeerControlServer(TcpService):
    event_prefix = "peer_control"
    purpose = "peer control, where the other nodes send hacluster -H requests (Raft port + 3)"
    """Serves ``dispatch(request) -> reply`` to peers that know the cluster secret."""

    def __init__(self, host: str, port: int, secret: str, dispatch: Dispatch, *,
                 request_timeout: float = 5.0, max_connections: int = 16,
                 handshake: HandshakeLimits | None = None,
                 member_hosts: Callable[[], Iterable[str]] = lambda: (),
                 extra_hosts: Iterable[str] = ()) -> None:
        if not secret:
            raise ValueError("peer control: the cluster secret must be a non-empty string")
        super().__init__(host, port, log, max_connections,
                         handshake=handshake or HandshakeLimits(deadline_s=request_timeout),
                         member_hosts=member_hosts, extra_hosts=extra_hosts)
        self._secret = secret
        self._dispatch = dispatch

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: str) -> tuple[bytes, bytes] | None:
        nonce = os.urandom(NONCE_BYTES)
        writer.write(nonce)
        await writer.drain()
        body = await _read_frame(reader, self._secret, REQUEST_CONTEXT, nonce, MAX_REQUEST_BYTES)
        if body is None:
            # No reply at all: a reply would need the secret the peer does not have.
            self.refused(peer.rsplit(":", 1)[0], "secret",
                         'event=peer_control_refused peer=%s reason="wrong cluster secret"', peer)
            return None
        return nonce, body

    async def _serve_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             peer: str, request: tuple[bytes, bytes]) -> None:
        nonce, body = request
        reply = await self._answer(body, peer)
        writer.write(_frame(self._secret, REPLY_CONTEXT, nonce, json.dumps(reply).encode()))
        await writer.drain()

    async def _answer(self, body: bytes, peer: str) -> dict[str, Any]:
        try:
            request = json.loads(body)
        except ValueError as e:
            return {"ok": False, "error": f"bad peer control request: {e}"}
        if not isinstance(request, dict) or request.get("cmd") not in REMOTE_COMMANDS:
            cmd = request.get("cmd") if isinstance(request, dict) else None
            return {"ok": False, "error": f"{cmd!r} cannot be run from another node "
                                          f"(remote commands: {', '.join(sorted(REMOTE_COMMANDS))})"}
        if request["cmd"] == MODULE_CMD.name and request.get("cmd_name") in LOCAL_MODULE_COMMANDS:
            return {"ok": False, "error": f"module_cmd {request['cmd_name']} cannot be run from another node "
                                          "(a checker program sets its own node's resources)"}
        log.info("event=peer_control_request peer=%s cmd=%s module=%s", peer, request["cmd"],
                 request.get("module", "-"))
        return await self._dispatch(request)


class PeerUnreachable(PeerControlError):
    """No connection could be opened (nothing was sent): another network may do."""


# A member with several networks: how long a connection may take on one before the
# next is tried (a LAN answers a SYN in well under a millisecond; a dead network never).
CONNECT_TRY_S = 1.0


async def call_member(member: Mapping[str, Any], secret: str, request: dict[str, Any],
                      timeout: float = 30.0) -> dict[str, Any]:
    """``call_peer`` on a member over each of its networks in turn (its Raft host, then
    its links, raft.links), within one deadline: a network on which no connection can
    be opened is skipped; once the request is sent, its answer (or its failure) is final,
    so a request is never sent twice."""
    port = peer_control_address(str(member["address"]))[1]
    hosts = [h for h in member_paths(member) if h is not None]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failures = []
    for i, host in enumerate(hosts):
        left = deadline - loop.time()
        if left <= 0:
            break
        last = i == len(hosts) - 1
        try:
            return await call_peer(host, port, secret, request, timeout=left,
                                   connect_timeout=None if last else min(left, CONNECT_TRY_S))
        except PeerUnreachable as e:
            failures.append(str(e))
            if last:
                raise PeerUnreachable("; ".join(failures)) from None
    raise PeerUnreachable("; ".join(failures) or f"node at {member['address']}: no time left")


async def call_peer(host: str, port: int, secret: str, request: dict[str, Any],
                    timeout: float = 30.0, connect_timeout: float | None = None) -> dict[str, Any]:
    """Send one control request to a peer; return its reply ``{"ok": ..., ...}``.
    PeerUnreachable when no connection could be opened (within ``connect_timeout``)."""
    where = f"node at {host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        connect_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                if connect_timeout is None:
                    raise
                raise PeerUnreachable(f"{where}: no connection within {connect_timeout:g} s") from None
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
                raise PeerUnreachable(f"{where}: {reason}") from None
            try:
                nonce = await reader.readexactly(NONCE_BYTES)
                writer.write(_frame(secret, REQUEST_CONTEXT, nonce, json.dumps(request).encode()))
                await writer.drain()
                body = await _read_frame(reader, secret, REPLY_CONTEXT, nonce)
            finally:
                writer.close()
    except (asyncio.TimeoutError, TimeoutError):
        raise PeerControlError(f"{where}: no answer within {timeout:g} s") from None
    except asyncio.IncompleteReadError:
        raise PeerControlError(f"{where}: connection closed without an answer "
                               "(wrong cluster secret?)") from None
    except ValueError as e:
        raise PeerControlError(f"{where}: {e}") from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise PeerControlError(f"{where}: {reason}") from None
    if body is None:
        raise PeerControlError(f"{where}: answer not authenticated with the cluster secret; ignored")
    try:
        reply = json.loads(body)
    except ValueError as e:
        raise PeerControlError(f"{where}: unreadable answer: {e}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise PeerControlError(f"{where}: answer is not a control reply")
    return reply
