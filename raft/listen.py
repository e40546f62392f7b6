"""The listeners of a member bind its own address, and a failed bind is said plainly.

Every listener of the product (Raft here; module fetch, peer control and the
control socket in hacluster/; the replication receiver) binds the address the
member is configured with, never the wildcard, so that a member with several
networks serves each thing only where it is meant to be reached. A bind that fails
is fatal: ``ListenError`` carries one line naming the address, the port and what
the listener is for, with the likely cause.
"""
from __future__ import annotations

import errno
import socket


class ListenError(Exception):
    """A listener this member needs could not bind; the message is one line."""


_HINTS = {
    errno.EADDRNOTAVAIL: "{host} is not an address of this host: not configured yet, or "
                         "the wrong address in cluster.json",
    errno.EADDRINUSE: "another process listens there: a second daemon of this member?",
}


def listen_error(host: str, port: int, purpose: str, error: OSError) -> ListenError:
    """The ListenError for ``error``, raised binding ``host:port`` for ``purpose``
    (what the listener is for, e.g. "Raft, where the other members connect")."""
    reason = error.strerror or str(error)
    hint = _HINTS.get(error.errno or 0)
    text = f"cannot listen on {host}:{port} for {purpose}: {reason}"
    return ListenError(f"{text}; {hint.format(host=host)}" if hint else text)


def check_can_listen(host: str, port: int, purpose: str) -> None:
    """Bind ``host:port`` as the real listener will (SO_REUSEADDR) and close it at once:
    a member checks all its ports before it opens its Raft journal, so a second daemon
    of the same member stops before it touches anything. Raises ListenError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host}:{port} for {purpose}: "
                          f"{host!r} does not resolve ({e.strerror})") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise listen_error(host, port, purpose, e) from None
