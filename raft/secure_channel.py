"""Authenticated Raft transport on pysyncobj's Fernet encryption.

pysyncobj's wire format is zlib(pickle): without a password anyone who
reaches the port runs code. With a password every message is a Fernet token
(AES + HMAC), checked *before* anything is unpickled, but a bad token is
dropped silently. This module:

* wraps the encryptor per connection so a wrong or missing secret is refused
  with a clear log line naming the peer (rate-limited: a refused peer retries
  twice a second);
* disables pysyncobj's unauthenticated-by-design admin "utility" commands that
  would change membership behind the cluster state's back (add, remove,
  set_version, transfer); membership goes through ``ClusterState``;
* fsyncs the journal before any message leaves (see durable_storage).
"""
from __future__ import annotations

import logging
import socket

from cryptography.fernet import InvalidToken

from .hardened_transport import HardenedTransport, refusal_log

log = logging.getLogger("hacluster.raft")


def _log_refusal(peer: str, direction: str) -> None:
    # Once per address and interval: a refused peer reconnects from a new port
    # every time, so the port is not part of the key.
    refusal_log(peer.rsplit(":", 1)[0], "secret",
                "event=peer_refused peer=%s direction=%s reason=\"wrong or missing cluster secret: "
                "message failed authentication, connection closed, nothing unpickled\"",
                peer, direction)


class AuditingEncryptor:
    """Fernet with a log line for every refused peer."""

    def __init__(self, fernet, peer: str, direction: str) -> None:
        self._fernet = fernet
        self.peer = peer
        self.direction = direction

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        return self._fernet.encrypt_at_time(data, current_time)

    def extract_timestamp(self, token: bytes) -> int:
        try:
            return self._fernet.extract_timestamp(token)
        except InvalidToken:
            _log_refusal(self.peer, self.direction)
            raise

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            _log_refusal(self.peer, self.direction)
            raise


def _peer_of(conn) -> str:
    try:
        sock = socket.socket(fileno=socket.dup(conn.fileno()))
        try:
            host, port = sock.getpeername()[:2]
        finally:
            sock.close()
        return f"{host}:{port}"
    except (OSError, TypeError):
        return "unknown"


class SecureTransport(HardenedTransport):
    _DISABLED_UTILITY_COMMANDS = ("add", "remove", "set_version", "transfer")

    def _onUtilityMessage(self, conn, message):  # noqa: N802
        if message and message[0] in self._DISABLED_UTILITY_COMMANDS:
            log.warning("event=admin_command_refused peer=%s command=%s reason=\"membership and "
                        "leadership change only through the cluster state (hacluster cluster ...)\"",
                        _peer_of(conn), message[0])
            conn.send(f"FAIL {message[0]} is disabled: use hacluster cluster add-node/remove-node")
            return True
        return super()._onUtilityMessage(conn, message)

    def _onNewIncomingConnection(self, conn):  # noqa: N802
        super()._onNewIncomingConnection(conn)
        base = self._syncObj.encryptor
        if base is not None:
            conn.encryptor = AuditingEncryptor(base, getattr(conn, "peer", None) or _peer_of(conn),
                                               "incoming")

    def addNode(self, node):  # noqa: N802
        super().addNode(node)
        conn = self._connections.get(node)
        base = self._syncObj.encryptor
        if conn is not None and base is not None:
            conn.encryptor = AuditingEncryptor(base, node.address, "outgoing")

    def send(self, node, message):
        # No message may claim an entry (append or ack) before it is on disk.
        self._syncObj.sync_journal()
        return super().send(node, message)
