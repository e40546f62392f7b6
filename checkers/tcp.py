"""tcp: a service accepts TCP connections on addr:port (SafeKit ``<tcp><to addr port/>``).

Decision (pure): :class:`~checkers.resource.Debounce` over connect results, so a single
lost SYN does not restart an application when ``fail_count`` > 1.
Probe: an asyncio connect with a timeout (never blocks the loop; needs no privilege).
A hung service (SIGSTOPped) still completes the handshake in the kernel's backlog until
the backlog fills, so a connect alone detects a dead or closed port, not a hung one:
``send``/``expect`` add an application-level exchange for that.
"""
from __future__ import annotations

import asyncio
import logging

from .resource import Debounce

log = logging.getLogger("hacluster.checkers.tcp")


class TcpDecision(Debounce):
    """up/down from connect results (``observe(True|False)``)."""


async def probe_tcp(addr: str, port: int, timeout_s: float,
                    send: bytes | None = None, expect: bytes | None = None) -> bool:
    """True if a connection to addr:port opens within ``timeout_s`` (and, with ``expect``,
    the answer to ``send`` starts with ``expect`` within the same timeout)."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(addr, port)
            try:
                if send:
                    writer.write(send)
                    await writer.drain()
                if expect is not None:
                    answer = await reader.read(len(expect)) if expect else b""
                    while len(answer) < len(expect):
                        more = await reader.read(len(expect) - len(answer))
                        if not more:
                            break
                        answer += more
                    if answer != expect:
                        return False
            finally:
                writer.close()
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
        return True
    except (OSError, TimeoutError) as exc:
        log.debug("event=tcp_probe_failed addr=%s port=%d error=%r", addr, port, exc)
        return False
