"""Peers fetch a module's ``.safe`` bytes, by digest, from a node that has them.

Protocol (one request per connection):

    server -> client  nonce (32 random bytes)
    client -> server  digest (64 lower-case hex ASCII) + HMAC-SHA256(secret, b"hacluster-fetch" + nonce + digest)
    server -> client  status (1 byte) [+ length (8 bytes, big endian) + content, when status is OK]

The nonce makes a recorded request useless on another connection. Content is not
secret (the scripts are the same on every node) but only cluster members may pull it,
and the client trusts nothing it receives until its sha256 equals the digest that
Raft committed.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import struct
from typing import Callable, Iterable

from .package import MAX_TOTAL_BYTES
from hacluster.node.tcp_service import HandshakeLimits, TcpService

log = logging.getLogger("hacluster.module_fetch")

NONCE_BYTES = 32
MAC_BYTES = 32
DIGEST_HEX = 64
CONTEXT = b"hacluster-fetch"
STATUS_OK = 0
STATUS_UNKNOWN = 1
STATUS_REFUSED = 2
MAX_MODULE_BYTES = MAX_TOTAL_BYTES  # check() refuses a bigger .safe anyway
_DIGEST = re.compile(rb"[0-9a-f]{64}")
_LENGTH = struct.Struct(">Q")


class ModuleFetchError(Exception):
    """A fetch that did not deliver verified content; one line naming peer and digest."""


def request_mac(secret: str, nonce: bytes, digest: bytes) -> bytes:
    return hmac.new(secret.encode(), CONTEXT + nonce + digest, hashlib.sha256).digest()


def _check_secret(secret: str) -> None:
    if not isinstance(secret, str) or not secret:
        raise ValueError("module fetch: the cluster secret must be a non-empty string")


class ModuleFetchServer(TcpService):
    event_prefix = "fetch"
    purpose = "module fetch, where the data nodes fetch module packages (Raft port + 2)"
    """Serves ``lookup(digest) -> bytes | None`` to peers that know the cluster secret.

    The request has a fixed size and one deadline (``request_timeout``) covers the
    whole handshake; connections in their handshake are capped per address and in
    total (``HandshakeLimits``; members' hosts count against their own cap only),
    and only authenticated requests take the ``max_connections`` slots, so a peer
    that sends garbage or nothing cannot hold the service.
    """

    def __init__(self, host: str, port: int, secret: str, lookup: Callable[[str], bytes | None], *,
                 request_timeout: float = 5.0, send_timeout: float = 60.0, max_connections: int = 32,
                 handshake: HandshakeLimits | None = None,
                 member_hosts: Callable[[], Iterable[str]] = lambda: ()) -> None:
        _check_secret(secret)
        # A node fetches each missing module from its peers: a few at once per address.
        super().__init__(host, port, log, max_connections,
                         handshake=handshake or HandshakeLimits(per_address=8,
                                                                deadline_s=request_timeout),
                         member_hosts=member_hosts)
        self._secret = secret
        self._lookup = lookup
        self._send_timeout = send_timeout

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         peer: str) -> str | None:
        nonce = os.urandom(NONCE_BYTES)
        writer.write(nonce)
        await writer.drain()
        request = await reader.readexactly(DIGEST_HEX + MAC_BYTES)
        digest, mac = request[:DIGEST_HEX], request[DIGEST_HEX:]
        host = peer.rsplit(":", 1)[0]
        if not hmac.compare_digest(mac, request_mac(self._secret, nonce, digest)):
            self.refused(host, "secret", 'event=fetch_refused peer=%s reason="wrong cluster secret"', peer)
            writer.write(bytes([STATUS_REFUSED]))
            return None
        if not _DIGEST.fullmatch(digest):
            self.refused(host, "digest", 'event=fetch_refused peer=%s reason="malformed digest"', peer)
            writer.write(bytes([STATUS_REFUSED]))
            return None
        return digest.decode()

    async def _serve_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             peer: str, name: str) -> None:
        # lookup may read a file: keep the loop (heartbeats, leases) free meanwhile.
        content = await asyncio.to_thread(self._lookup, name)
        async with asyncio.timeout(self._send_timeout):
            if content is None:
                log.info("event=fetch_unknown peer=%s digest=%s", peer, name)
                writer.write(bytes([STATUS_UNKNOWN]))
            else:
                writer.write(bytes([STATUS_OK]) + _LENGTH.pack(len(content)))
                writer.write(content)
                log.info("event=fetch_served peer=%s digest=%s bytes=%d", peer, name, len(content))
            await writer.drain()


async def fetch_module(host: str, port: int, secret: str, digest: str,
                       timeout: float = 10.0, max_bytes: int = MAX_MODULE_BYTES) -> bytes:
    """Fetch the content whose sha256 hex digest is ``digest`` from ``host:port``.

    Returns it only once verified; raises ModuleFetchError otherwise.
    """
    _check_secret(secret)
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest.encode()):
        raise ValueError(f"module fetch: {digest!r} is not a sha256 hex digest (64 lower-case hex digits)")
    where = f"fetch {digest[:12]} from {host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                return await _request(reader, writer, secret, digest, max_bytes, where)
            finally:
                writer.close()
    except (asyncio.TimeoutError, TimeoutError):
        raise ModuleFetchError(f"{where}: no complete answer within {timeout:g} s") from None
    except asyncio.IncompleteReadError:
        raise ModuleFetchError(f"{where}: connection closed before the answer was complete") from None
    except OSError as exc:
        # asyncio's connect errors carry errno but a message without its meaning.
        reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise ModuleFetchError(f"{where}: {reason}") from None


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: str,
                   digest: str, max_bytes: int, where: str) -> bytes:
    nonce = await reader.readexactly(NONCE_BYTES)
    writer.write(digest.encode() + request_mac(secret, nonce, digest.encode()))
    await writer.drain()
    status = (await reader.readexactly(1))[0]
    if status == STATUS_REFUSED:
        raise ModuleFetchError(f"{where}: refused (wrong cluster secret?)")
    if status == STATUS_UNKNOWN:
        raise ModuleFetchError(f"{where}: the peer does not have this module content")
    if status != STATUS_OK:
        raise ModuleFetchError(f"{where}: unknown status {status}")
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > max_bytes:
        raise ModuleFetchError(f"{where}: {length} bytes is over the {max_bytes} byte limit")
    content = await reader.readexactly(length)
    got = hashlib.sha256(content).hexdigest()
    if got != digest:
        raise ModuleFetchError(f"{where}: content has digest {got[:12]}, not the one asked for; refused")
    return content
