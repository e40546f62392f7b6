"""The HTTPS listener of the API (``api``), beside the plain-HTTP one (``server``).

Why two listeners: /metrics and the readiness endpoints stay plain HTTP on Raft port
+ 4, as Prometheus and load balancers poll them today (no CA to hand them, no
password crosses that port: it has none); everything behind a login is HTTPS only, on
Raft port + 5, and is not served at all without a certificate. Both run on the
daemon's loop (aiohttp), and a handler never blocks it: scrypt runs in the default
executor when a password is checked or hashed (``api``), the rest is a read of the
committed state or a forwarded control request.
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path


from .api import ApiState, make_api_app
from .api_backend import ApiBackend
from .audit import AuditLog
from .server import start_site

log = logging.getLogger("hacluster.http")

PURPOSE = ("the HTTPS API (users, modules, commands), where browsers and programs connect "
           "(Raft port + 5, or http.api_port in cluster.json)")


class ApiServer:
    purpose = PURPOSE

    def __init__(self, host: str, port: int, backend: ApiBackend, ssl_context: ssl.SSLContext,
                 audit_path: Path | None) -> None:
        from aiohttp import web
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.state = ApiState(backend, AuditLog(audit_path))
        self._runner = web.AppRunner(make_api_app(self.state), access_log=None,
                                     handle_signals=False, shutdown_timeout=1.0)

    async def start(self) -> None:
        """Listen; raft.listen.ListenError (one line) when the address cannot be bound."""
        self.port = await start_site(self._runner, self.host, self.port, self.purpose,
                                     self.ssl_context)
        log.info("event=api_listening host=%s port=%d", self.host, self.port)

    async def close(self) -> None:
        if self.state.hub is not None:
            await self.state.hub.close()
        await self._runner.cleanup()
