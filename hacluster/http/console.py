"""The web console: static HTML, JavaScript and CSS shipped in the package
(hacluster/http/console/), served by the API's HTTPS server at /console/. Nothing is
fetched from elsewhere (no CDN, no build step): plain JavaScript on the API
(/api/...), the same session cookie and CSRF token as any program uses. The files are
read once, when the server is made, and kept in memory (a few tens of kB).

The page's rules live in the page (console.js): what a role may not do is hidden, and
the server refuses it anyway (``api``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

DIRECTORY = Path(__file__).with_name("console")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
         ".svg": "image/svg+xml", ".png": "image/png"}
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
# only this origin's files, no inline script or style, never framed. connect-src
# allows https: beyond 'self' for one thing: when its node dies the page probes the
# other members' APIs (no-cors: it reads nothing of their answers) before moving there.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' https:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def load(directory: Path = DIRECTORY) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of the console's files."""
    files = {}
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file() and _NAME.fullmatch(path.name) and path.suffix in TYPES:
            files[path.name] = (path.read_bytes(), TYPES[path.suffix])
    return files


def add_routes(app: "web.Application", directory: Path = DIRECTORY) -> None:
    from aiohttp import web
    files = load(directory)

    async def index(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    async def page(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        if name not in files:
            raise web.HTTPNotFound()
        body, content_type = files[name]
        return web.Response(body=body, content_type=content_type,
                            headers={"Content-Security-Policy": CSP})

    app.router.add_get("/", index)
    app.router.add_get("/console/", page)
    app.router.add_get("/console/{name}", page)
