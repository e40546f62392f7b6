"""A small TCP service for node-to-node requests: one request per connection, a cap
on connections served at once and on those from one address (so that a few silent
connections from one host cannot take every slot from the cluster's own members),
every failure of a connection logged as one line (``event=<prefix>_dropped``,
refusals at most once per address and reason every few seconds) and the connection
closed; subclasses write ``_serve``."""
from __future__ import annotations

import asyncio
import logging
import time

PER_HOST_MAX = 4            # connections served at once from one address
REFUSAL_LOG_INTERVAL_S = 5.0


class TcpService:
    event_prefix = "service"

    def __init__(self, host: str, port: int, log: logging.Logger, max_connections: int,
                 per_host_max: int = PER_HOST_MAX) -> None:
        self.host = host
        self.port = port
        self._log = log
        self._slots = asyncio.Semaphore(max_connections)
        self._per_host_max = per_host_max
        self._per_host: dict[str, int] = {}
        self._last_refusal: dict[tuple[str, str], float] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()

    def _refused(self, host: str, peer: str, reason: str) -> None:
        key = (host, reason)
        now = time.monotonic()
        if now - self._last_refusal.get(key, -1e9) < REFUSAL_LOG_INTERVAL_S:
            return
        if len(self._last_refusal) > 1000:
            self._last_refusal.clear()
        self._last_refusal[key] = now
        self._log.warning('event=%s_refused peer=%s reason="%s"', self.event_prefix, peer, reason)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._log.info("event=%s_listening host=%s port=%d", self.event_prefix, self.host, self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        host = str(peername[0]) if peername else "?"
        ev = self.event_prefix
        counted = False
        try:
            if self._per_host.get(host, 0) >= self._per_host_max:
                self._refused(host, peer, f"too many connections from {host} "
                                          f"(at most {self._per_host_max} at a time)")
                return
            if self._slots.locked():
                self._refused(host, peer, "too many connections")
                return
            self._per_host[host] = self._per_host.get(host, 0) + 1
            counted = True
            async with self._slots:
                await self._serve(reader, writer, peer)
        except (asyncio.TimeoutError, TimeoutError):
            self._log.warning("event=%s_dropped peer=%s reason=timeout", ev, peer)
        except asyncio.IncompleteReadError:
            self._log.warning('event=%s_dropped peer=%s reason="short request"', ev, peer)
        except (ConnectionError, OSError, ValueError) as exc:
            self._log.warning("event=%s_dropped peer=%s reason=%r", ev, peer, str(exc))
        finally:
            if counted:
                left = self._per_host.get(host, 1) - 1
                if left > 0:
                    self._per_host[host] = left
                else:
                    self._per_host.pop(host, None)
            self._handlers.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
                pass
