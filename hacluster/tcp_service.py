"""A small TCP service for node-to-node requests: one request per connection, a cap
on connections served at once, every failure of a connection logged as one line
(``event=<prefix>_dropped``) and the connection closed; subclasses write ``_serve``."""
from __future__ import annotations

import asyncio
import logging


class TcpService:
    event_prefix = "service"

    def __init__(self, host: str, port: int, log: logging.Logger, max_connections: int) -> None:
        self.host = host
        self.port = port
        self._log = log
        self._slots = asyncio.Semaphore(max_connections)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()

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
        ev = self.event_prefix
        try:
            if self._slots.locked():
                self._log.warning('event=%s_refused peer=%s reason="too many connections"', ev, peer)
                return
            async with self._slots:
                await self._serve(reader, writer, peer)
        except (asyncio.TimeoutError, TimeoutError):
            self._log.warning("event=%s_dropped peer=%s reason=timeout", ev, peer)
        except asyncio.IncompleteReadError:
            self._log.warning('event=%s_dropped peer=%s reason="short request"', ev, peer)
        except (ConnectionError, OSError, ValueError) as exc:
            self._log.warning("event=%s_dropped peer=%s reason=%r", ev, peer, str(exc))
        finally:
            self._handlers.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
                pass
