"""systemd's notification protocol (sd_notify(3)), for the units' Type=notify and
WatchdogSec: one datagram of newline-separated ``VAR=value`` lines to the AF_UNIX
socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a
leading ``@``). Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.

Written out rather than a dependency: the protocol is the few lines of ``_send``;
systemd-python needs libsystemd's headers and a compiler to install, and the pure
Python ``sdnotify`` package is these same lines, unreleased since 2017.

What the daemon says and when (hacluster.node.daemon): ``READY=1`` once its Raft is
up (``raft_up``), ``STATUS=`` what it waits for until then, ``WATCHDOG=1`` from its
liveness lease loop (``watchdog_due``), ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC=``
when it stops (its modules' stop scripts may need more than TimeoutStopSec).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import MutableMapping

log = logging.getLogger("hacluster.daemon")

# Read once and removed from the environment: the processes the daemon starts
# (module scripts, the applications they start, replication processes) must not
# speak for the unit (PostgreSQL, for one, sends READY=1 when it sees NOTIFY_SOCKET).
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def raft_up(leader: str | None, members: dict, name: str, caught_up: bool) -> bool:
    """Is this member's Raft up, as READY=1 means it: a leader is known, the committed
    membership counts this member and it has applied what the leader had committed."""
    return leader is not None and name in members and caught_up


def watchdog_due(now: float, last_sent: float, interval_s: float, raft_ticked_at: float) -> bool:
    """Feed the watchdog now? At most every half interval, and only when Raft's tick
    thread turned since the last feed: the caller (the lease loop) shows that the event
    loop turns, this that the tick thread does."""
    return now - last_sent >= interval_s / 2 and raft_ticked_at > last_sent


class Notifier:
    def __init__(self, environ: MutableMapping[str, str] = os.environ) -> None:
        values = {k: environ.pop(k) for k in _VARIABLES if k in environ}
        socket_name = values.get("NOTIFY_SOCKET", "")
        self.address = "\0" + socket_name[1:] if socket_name.startswith("@") else socket_name
        self.watchdog_s: float | None = None
        pid = values.get("WATCHDOG_PID")
        usec = values.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and (pid is None or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self, status: str, extend_s: float) -> None:
        """The stop has begun and may take ``extend_s`` seconds from now."""
        self._send("STOPPING=1", f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(extend_s * 1e6)}")

    def _send(self, *assignments: str) -> None:
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as e:
            # systemd may have gone (a reload, a test that stopped listening): the
            # daemon goes on; said once.
            if not self._failed:
                log.warning("event=sd_notify_failed socket=%r error=%r", self.address, str(e))
            self._failed = True
