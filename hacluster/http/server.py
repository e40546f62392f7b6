"""The HTTP listener of a member, on the daemon's own event loop (aiohttp).

Why aiohttp: a maintained asyncio server that runs on uvloop's loop as it is (no thread,
no second loop), streams, and carries TLS contexts and websockets, which issue 22's
HTTPS API and web console need on the same server. Handlers only take a snapshot and
call the pure functions of ``metrics`` and ``readiness``: no I/O, nothing that waits,
so a scrape never delays the lease renewals on the same loop.

Bound on the member's own address like every listener (raft.listen); a failed bind
is a one-line ``ListenError``. aiohttp is imported when the server is made, not with
this module: the CLI imports the daemon's modules, and aiohttp costs it ~0.2 s.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from raft.listen import listen_error

from . import metrics, readiness
from .exposition import CONTENT_TYPE
from .snapshot import NodeProbe

if TYPE_CHECKING:
    import ssl

    from aiohttp import web

log = logging.getLogger("hacluster.http")

PURPOSE = ("the HTTP endpoints (metrics, readiness), where monitoring and load balancers "
           "connect (Raft port + 4, or http in cluster.json)")


def _json(answer: readiness.Answer) -> "web.Response":
    from aiohttp import web
    return web.Response(status=answer.status, text=json.dumps(answer.body, sort_keys=True) + "\n",
                        content_type="application/json")


def make_app(probe: NodeProbe) -> "web.Application":
    """The routes: /metrics, /primary/{module}, /ready, /health (GET and HEAD)."""
    from aiohttp import web

    async def get_metrics(request: web.Request) -> web.Response:
        body = metrics.render(probe.http_snapshot())
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def get_primary(request: web.Request) -> web.Response:
        return _json(readiness.primary(probe.http_snapshot(), request.match_info["module"]))

    async def get_ready(request: web.Request) -> web.Response:
        return _json(readiness.ready(probe.http_snapshot()))

    async def get_health(request: web.Request) -> web.Response:
        return _json(readiness.health(probe.http_snapshot()))

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/primary/{module}", get_primary)
    app.router.add_get("/ready", get_ready)
    app.router.add_get("/health", get_health)
    return app


async def start_site(runner: "web.AppRunner", host: str, port: int, purpose: str,
                     ssl_context: "ssl.SSLContext | None" = None) -> int:
    """Set ``runner`` up and listen on host:port (TLS with ``ssl_context``); the port
    bound (0 asks for any). raft.listen.ListenError, one line, when it cannot bind;
    nothing is left running then."""
    from aiohttp import web
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise listen_error(host, port, purpose, e) from None
    addresses = runner.addresses
    return addresses[0][1] if addresses else port


class HttpServer:
    purpose = PURPOSE

    def __init__(self, host: str, port: int, probe: NodeProbe) -> None:
        from aiohttp import web
        self.host = host
        self.port = port
        self._runner = web.AppRunner(make_app(probe), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)

    async def start(self) -> None:
        """Listen; raft.listen.ListenError (one line) when the address cannot be bound."""
        self.port = await start_site(self._runner, self.host, self.port, self.purpose)
        log.info("event=http_listening host=%s port=%d", self.host, self.port)

    async def close(self) -> None:
        await self._runner.cleanup()
