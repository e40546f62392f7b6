"""The JSON API under /api/, served over HTTPS (``api_server``): log in, read the
cluster, its modules on every node, their resources and logs, run module commands,
manage users. Described by ``openapi.DOCUMENT`` (served at /api/openapi.json).

Who may do what (``roles``): Monitor reads, Control also runs module commands, Admin
also manages users and reads the audit trail. The role is read from the committed user
table on every request (a changed role applies at once, on every node).

Sessions: a signed cookie (``sessions``; HttpOnly, Secure, SameSite=Strict) any data
node accepts. CSRF: every state-changing request (POST, PUT, DELETE; login excepted)
must carry its session's token in the ``X-CSRF-Token`` header (a synchronizer token
held in the signed session: a page of another origin can neither read it nor set the
header without a CORS preflight this server never grants), and a request whose
``Origin`` header names another origin is refused outright, login included. SameSite
=Strict is a third layer, not the one relied on (old browsers ignore it).

Logins are limited per source address and per user (``login_limit``): 429 with
Retry-After. Every action (logins, commands, user changes; not reads) goes to the
audit trail (``audit``).

The module commands keep the CLI's guards: ``primforce`` needs ``"force": true`` and
exactly one node (the CLI's confirmation; never on several nodes at once); ``second``
without ``force`` is the daemon's plain ``second``, which it refuses when this node
holds the only current copy, and with ``"force": true`` it is ``second --force``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from . import passwords, roles, sessions
from .api_backend import ApiBackend, BackendError
from .audit import AuditLog, record
from .login_limit import LoginLimit
from .openapi import DOCUMENT

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("hacluster.http.api")

# The module commands the API runs, and whether they take "fullsync" and "force".
MODULE_COMMANDS = {
    "start": (False, False), "stop": (False, False), "forcestop": (False, False),
    "restart": (False, False), "stopstart": (False, False), "swap": (False, False),
    "prim": (True, False), "second": (True, True), "primforce": (False, True),
}
LOG_KINDS = ("module", "script")
MAX_LOG_LINES = 2000
MAX_BODY = 64 << 10
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Caller:
    user: str
    role: str
    session: sessions.Session


@dataclass
class ApiState:
    backend: ApiBackend
    audit: AuditLog
    limit: LoginLimit = field(default_factory=LoginLimit)
    wall: Callable[[], float] = time.time
    mono: Callable[[], float] = time.monotonic
    session_lifetime_s: float = sessions.LIFETIME_S


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> "web.Response":
    from aiohttp import web
    return web.Response(status=status, text=json.dumps(body, sort_keys=True) + "\n",
                        content_type="application/json", headers=headers)


def _address(request: "web.Request") -> str:
    return request.remote or "-"


async def _body(request: "web.Request") -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"request body: invalid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body: must be a JSON object")
    return body


def _fields(body: dict[str, Any], where: str, required: dict[str, type | tuple],
            optional: dict[str, type | tuple] | None = None) -> None:
    """Check the body's fields: known, present when required, of the right type."""
    optional = optional or {}
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ApiError(400, f"{where}: unknown field {unknown[0]!r} (known: "
                            f"{', '.join(sorted({*required, *optional}))})")
    for name, kind in {**required, **optional}.items():
        if name not in body:
            if name in required:
                raise ApiError(400, f"{where}: missing field {name!r}")
            continue
        value = body[name]
        if isinstance(value, bool) and kind is not bool and bool not in (
                kind if isinstance(kind, tuple) else (kind,)):
            raise ApiError(400, f"{where}: field {name!r} has the wrong type")
        if not isinstance(value, kind):
            raise ApiError(400, f"{where}: field {name!r} has the wrong type")


def _nodes(value: Any, where: str) -> list[str] | None:
    if value == "all":
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(dict.fromkeys(value))
    raise ApiError(400, f"{where}: 'nodes' must be \"all\" or a non-empty list of node names")


def _origin_ok(request: "web.Request") -> bool:
    """No Origin header (curl, scripts), or the origin this request was sent to."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin == f"{request.scheme}://{request.host}"


class Api:
    def __init__(self, state: ApiState) -> None:
        self.s = state

    # ---- sessions ---------------------------------------------------------------------
    def _key(self) -> bytes:
        key = self.s.backend.api_session_key()
        if key is None:
            raise ApiError(503, "this member holds no cluster secret (a witness): log in on a "
                                "data node")
        return key

    def caller(self, request: "web.Request") -> Caller:
        cookie = request.cookies.get(sessions.COOKIE)
        if not cookie:
            raise ApiError(401, "not logged in (POST /api/login)")
        session = sessions.decode(self._key(), cookie, self.s.wall())
        if session is None:
            raise ApiError(401, "session invalid or expired: log in again")
        user = self.s.backend.api_users().get(session.user)
        if user is None or passwords.fingerprint(user["hash"]) != session.password:
            raise ApiError(401, "session ended (user removed or password changed): log in again")
        return Caller(session.user, user["role"], session)

    def authorize(self, request: "web.Request", needed: str) -> Caller:
        caller = self.caller(request)
        if request.method in STATE_CHANGING:
            if not _origin_ok(request):
                raise ApiError(403, "cross-origin request refused (Origin "
                                    f"{request.headers.get('Origin')!r})")
            if not sessions.csrf_ok(caller.session, request.headers.get(sessions.CSRF_HEADER)):
                raise ApiError(403, f"missing or wrong {sessions.CSRF_HEADER} header (the "
                                    "csrf value of the login's answer)")
        if not roles.allows(caller.role, needed):
            raise ApiError(403, f"user {caller.user} ({caller.role}) may not do this: it needs "
                                f"the {needed} role")
        return caller

    def _audit(self, request: "web.Request", user: str | None, action: str, target: str,
               result: str, detail: str = "") -> None:
        self.s.audit.write(record(user, _address(request), action, target, result, detail,
                                  now=self.s.wall()))

    # ---- login ------------------------------------------------------------------------
    async def login(self, request: "web.Request") -> "web.Response":
        if not _origin_ok(request):
            raise ApiError(403, f"cross-origin login refused (Origin "
                                f"{request.headers.get('Origin')!r})")
        key = self._key()
        body = await _body(request)
        _fields(body, "login", {"user": str, "password": str})
        name, password, address = body["user"], body["password"], _address(request)
        wait = self.s.limit.retry_after(address, name, self.s.mono())
        if wait > 0:
            self._audit(request, name, "login", name, "limited")
            raise ApiError(429, f"too many failed logins from {address} or for {name!r}: try "
                                f"again in {int(wait) + 1} s", {"Retry-After": str(int(wait) + 1)})
        user = self.s.backend.api_users().get(name)
        # A missing user costs a hash too: the answer's time does not say who exists.
        stored = user["hash"] if user else _DUMMY_HASH
        # scrypt takes tens of milliseconds and 32 MiB: off the loop that renews leases
        good = await asyncio.get_running_loop().run_in_executor(
            None, passwords.verify_password, stored, password)
        if user is None or not good:
            self.s.limit.failed(address, name, self.s.mono())
            self._audit(request, name, "login", name, "failed")
            raise ApiError(401, "wrong user name or password")
        self.s.limit.succeeded(name)
        session = sessions.new_session(name, passwords.fingerprint(user["hash"]), self.s.wall(),
                                       self.s.session_lifetime_s)
        self._audit(request, name, "login", name, "ok")
        response = _json(200, {"user": name, "role": user["role"], "csrf": session.csrf,
                               "expires": session.expires})
        max_age = int(self.s.session_lifetime_s)
        response.set_cookie(sessions.COOKIE, sessions.encode(key, session), max_age=max_age,
                            path="/", secure=True, httponly=True, samesite="Strict")
        response.set_cookie(sessions.CSRF_COOKIE, session.csrf, max_age=max_age, path="/",
                            secure=True, httponly=False, samesite="Strict")
        return response

    async def logout(self, request: "web.Request") -> "web.Response":
        caller = self.authorize(request, roles.MONITOR)
        self._audit(request, caller.user, "logout", caller.user, "ok")
        response = _json(200, {"user": caller.user, "logged_out": True})
        response.del_cookie(sessions.COOKIE, path="/")
        response.del_cookie(sessions.CSRF_COOKIE, path="/")
        return response

    async def session(self, request: "web.Request") -> "web.Response":
        caller = self.caller(request)
        return _json(200, {"user": caller.user, "role": caller.role, "csrf": caller.session.csrf,
                           "expires": caller.session.expires})

    # ---- reads ------------------------------------------------------------------------
    async def cluster(self, request: "web.Request") -> "web.Response":
        self.authorize(request, roles.MONITOR)
        return _json(200, await self.s.backend.api_cluster())

    async def modules(self, request: "web.Request") -> "web.Response":
        self.authorize(request, roles.MONITOR)
        return _json(200, {"modules": await self.s.backend.api_modules()})

    async def module(self, request: "web.Request") -> "web.Response":
        self.authorize(request, roles.MONITOR)
        name = request.match_info["module"]
        for entry in await self.s.backend.api_modules():
            if entry["name"] == name:
                return _json(200, entry)
        raise ApiError(404, f"no module {name!r} installed")

    async def resources(self, request: "web.Request") -> "web.Response":
        self.authorize(request, roles.MONITOR)
        nodes = request.query.get("nodes", "all")
        rows = await self.s.backend.api_resources(
            request.match_info["module"], None if nodes == "all" else _nodes(nodes.split(","), "resources"))
        return _json(200, {"module": request.match_info["module"], "nodes": rows})

    async def module_log(self, request: "web.Request") -> "web.Response":
        self.authorize(request, roles.MONITOR)
        query = request.query
        node, kind = query.get("node"), query.get("kind", "module")
        if not node:
            raise ApiError(400, "log: the query needs node=NAME")
        if kind not in LOG_KINDS:
            raise ApiError(400, f"log: kind {kind!r}: one of {', '.join(LOG_KINDS)}")
        try:
            lines = int(query.get("lines", "100"))
        except ValueError:
            raise ApiError(400, f"log: lines {query.get('lines')!r} is not a number") from None
        if not 1 <= lines <= MAX_LOG_LINES:
            raise ApiError(400, f"log: lines must be 1 to {MAX_LOG_LINES}")
        answer = await self.s.backend.api_module_log(request.match_info["module"], node, kind, lines)
        return _json(200, {"module": request.match_info["module"], "node": node, "kind": kind,
                           "lines": list(answer.get("lines", []))})

    # ---- commands ---------------------------------------------------------------------
    async def module_command(self, request: "web.Request") -> "web.Response":
        caller = self.authorize(request, roles.CONTROL)
        module, command = request.match_info["module"], request.match_info["command"]
        if command not in MODULE_COMMANDS:
            raise ApiError(404, f"no module command {command!r} (commands: "
                                f"{', '.join(MODULE_COMMANDS)})")
        body = await _body(request)
        _fields(body, command, {"nodes": (str, list)}, {"force": bool, "fullsync": bool})
        nodes = _nodes(body["nodes"], command)
        takes_fullsync, takes_force = MODULE_COMMANDS[command]
        force, fullsync = body.get("force", False), body.get("fullsync", False)
        if fullsync and not takes_fullsync:
            raise ApiError(400, f"{command}: takes no fullsync")
        if force and not takes_force:
            raise ApiError(400, f"{command}: takes no force")
        if command == "primforce":
            if nodes is None or len(nodes) != 1:
                raise ApiError(400, "primforce makes one node's copy the truth: name exactly one "
                                    "node, never several")
            if not force:
                raise ApiError(400, "primforce overwrites whatever the current copy holds that "
                                    "this one lacks: confirm with \"force\": true")
        name = command + ("_fullsync" if fullsync else "") + ("_force" if force else "")
        target = f"{module} on {'all' if nodes is None else ','.join(nodes)}"
        try:
            rows = await self.s.backend.api_module_command(module, name, nodes)
        except BackendError as e:
            self._audit(request, caller.user, name, target, "refused", str(e))
            raise
        ok = all(r.get("ok") for r in rows)
        self._audit(request, caller.user, name, target, "ok" if ok else "refused",
                    "; ".join(f"{r['node']}: {r['error']}" for r in rows if not r.get("ok")))
        return _json(200 if ok else 409, {"module": module, "command": name, "ok": ok,
                                          "nodes": rows})

    # ---- users ------------------------------------------------------------------------
    async def users(self, request: "web.Request") -> "web.Response":
        self.authorize(request, roles.ADMIN)
        table = self.s.backend.api_users()
        return _json(200, {"users": [{"name": n, "role": table[n]["role"]} for n in sorted(table)]})

    async def put_user(self, request: "web.Request") -> "web.Response":
        caller = self.authorize(request, roles.ADMIN)
        name = request.match_info["name"]
        body = await _body(request)
        _fields(body, "user", {"role": str}, {"password": str})
        error = roles.name_error(name) or roles.role_error(body["role"])
        if error:
            raise ApiError(400, error)
        table = self.s.backend.api_users()
        if name not in table and "password" not in body:
            raise ApiError(400, f"user {name!r} is new: it needs a password")
        if body["role"] != roles.ADMIN and self._last_admin(table, name):
            raise ApiError(409, f"{name} is the last admin: make another admin first")
        try:
            hashed = (await asyncio.get_running_loop().run_in_executor(
                None, passwords.hash_password, body["password"]) if "password" in body else None)
        except passwords.PasswordError as e:
            raise ApiError(400, f"user {name}: {e}") from None
        try:
            result = await self.s.backend.api_set_user(name, body["role"], hashed)
        except BackendError as e:
            self._audit(request, caller.user, "user_set", name, "refused", str(e))
            raise
        self._audit(request, caller.user, "user_set", name, "ok",
                    f"role={body['role']}" + (" password changed" if hashed else ""))
        return _json(200, {"name": name, "role": body["role"], "created": bool(result.get("created"))})

    async def delete_user(self, request: "web.Request") -> "web.Response":
        caller = self.authorize(request, roles.ADMIN)
        name = request.match_info["name"]
        table = self.s.backend.api_users()
        if name not in table:
            raise ApiError(404, f"no user {name!r}")
        if self._last_admin(table, name):
            raise ApiError(409, f"{name} is the last admin: make another admin first")
        try:
            await self.s.backend.api_remove_user(name)
        except BackendError as e:
            self._audit(request, caller.user, "user_remove", name, "refused", str(e))
            raise
        self._audit(request, caller.user, "user_remove", name, "ok")
        return _json(200, {"name": name, "removed": True})

    @staticmethod
    def _last_admin(table: Any, name: str) -> bool:
        admins = [n for n, u in table.items() if u["role"] == roles.ADMIN]
        return admins == [name]

    async def audit(self, request: "web.Request") -> "web.Response":
        self.authorize(request, roles.ADMIN)
        try:
            limit = min(max(int(request.query.get("limit", "200")), 1), 2000)
        except ValueError:
            raise ApiError(400, "audit: limit is not a number") from None
        return _json(200, {"entries": self.s.audit.tail(limit)})

    async def openapi(self, request: "web.Request") -> "web.Response":
        return _json(200, DOCUMENT)


# A hash of no password anyone has, verified when the user does not exist (same cost).
_DUMMY_HASH = "scrypt$15$8$1$" + "A" * 22 + "$" + "A" * 43

Handler = Callable[["web.Request"], Awaitable["web.Response"]]
NextHandler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def routes(api: Api) -> list[tuple[str, str, Handler]]:
    """(method, path, handler): what the server registers; the OpenAPI document
    declares exactly these (tests/unit/test_http_openapi.py)."""
    return [
        ("GET", "/api/openapi.json", api.openapi),
        ("POST", "/api/login", api.login),
        ("POST", "/api/logout", api.logout),
        ("GET", "/api/session", api.session),
        ("GET", "/api/cluster", api.cluster),
        ("GET", "/api/modules", api.modules),
        ("GET", "/api/modules/{module}", api.module),
        ("GET", "/api/modules/{module}/resources", api.resources),
        ("GET", "/api/modules/{module}/log", api.module_log),
        ("POST", "/api/modules/{module}/commands/{command}", api.module_command),
        ("GET", "/api/users", api.users),
        ("PUT", "/api/users/{name}", api.put_user),
        ("DELETE", "/api/users/{name}", api.delete_user),
        ("GET", "/api/audit", api.audit),
    ]


def make_api_app(state: ApiState) -> "web.Application":
    from aiohttp import web

    @web.middleware
    async def errors(request: web.Request, handler: NextHandler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as e:
            response = _json(e.status, {"error": str(e)}, e.headers)
        except BackendError as e:
            response = _json(e.status, {"error": str(e)})
        except web.HTTPException as e:
            if e.status < 400:
                raise
            response = _json(e.status, {"error": e.reason})
        except Exception as e:  # noqa: BLE001 - one request fails, the node keeps serving
            log.exception("event=api_error path=%s", request.path)
            response = _json(500, {"error": f"internal error: {type(e).__name__}"})
        # nothing of the API is cached, nor framed by another page
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY)
    api = Api(state)
    for method, path, handler in routes(api):
        app.router.add_route(method, path, handler)
    return app
