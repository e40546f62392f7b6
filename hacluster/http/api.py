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
without ``force`` is refused when a chosen node holds the only current copy (the CLI's
confirmation, asked from the same module states), and with ``"force": true`` it is
``second --force``. Module packages (admin) go through the same control request as
``hacluster module install``, checked first with every error at file:line.

Live events (``events``) and streamed logs are server-sent events: one shared reading
of the cluster a second while pages listen; a log stream asks its node for the lines
since its cursor once a second (the node reads them bounded, in a thread). The web
console (``console``) is served beside the API from the package's static files.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from . import console, passwords, roles, sessions
from .api_backend import ApiBackend, BackendError
from .audit import AuditLog, record
from .events import EventHub, frame
from .login_limit import LoginLimit
from .openapi import DOCUMENT

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("hacluster.http.api")

# The module commands the API runs, and whether they take "fullsync" and "force": the
# CLI's module verbs, automatic failover on|off and the checkers' switches
# (``hacluster -m M errd off`` ...). "why" and "resources" read: GET, monitor role.
MODULE_COMMANDS = {
    "start": (False, False), "stop": (False, False), "forcestop": (False, False),
    "restart": (False, False), "stopstart": (False, False), "swap": (False, False),
    "prim": (True, False), "second": (True, True), "primforce": (False, True),
    "failover_on": (False, False), "failover_off": (False, False),
    "errd_on": (False, False), "errd_off": (False, False),
    "checker_on": (False, False), "checker_off": (False, False), "resetloop": (False, False),
}
LOG_KINDS = ("module", "script")
MAX_LOG_LINES = 2000
MAX_BODY = 64 << 10
MAX_PACKAGE = 64 << 20      # a .safe (hacluster.modules.package.MAX_TOTAL_BYTES)
LOG_POLL_S = 1.0            # a streamed log asks its node for new lines this often
KEEPALIVE_S = 15.0          # an idle event stream sends a comment this often
HANDOFF_S = 600.0           # a handoff token (the console's reconnection) lives this long
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
    events_period_s: float = 1.0
    log_poll_s: float = LOG_POLL_S
    hub: EventHub | None = None

    def event_hub(self) -> EventHub:
        if self.hub is None:
            async def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
                return await self.backend.api_cluster(), await self.backend.api_modules()
            self.hub = EventHub(read, self.events_period_s, self.wall)
        return self.hub


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


async def _raw_body(request: "web.Request", limit: int) -> bytes:
    """The body as bytes (an uploaded package), refused over ``limit`` before it is all read."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(1 << 16)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise ApiError(400, "request body: empty (send the .safe file's bytes)")
    return b"".join(chunks)


def _gone(request: "web.Request") -> bool:
    """The client of a stream closed its connection."""
    return request.transport is None or request.transport.is_closing()


def _flag(request: "web.Request", name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, f"query {name}={value!r}: true or false")
    return value in ("true", "1")


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
        return self._logged_in(key, session, user["role"])

    async def logout(self, request: "web.Request") -> "web.Response":
        caller = self.authorize(request, roles.MONITOR)
        self._audit(request, caller.user, "logout", caller.user, "ok")
        response = _json(200, {"user": caller.user, "logged_out": True})
        response.del_cookie(sessions.COOKIE, path="/")
        response.del_cookie(sessions.CSRF_COOKIE, path="/")
        return response

    async def session(self, request: "web.Request") -> "web.Response":
        caller = self.caller(request)
        handoff = sessions.Session(caller.user, caller.session.password, self.s.wall(),
                                   min(self.s.wall() + HANDOFF_S, caller.session.expires),
                                   "handoff")
        return _json(200, {"user": caller.user, "role": caller.role, "csrf": caller.session.csrf,
                           "expires": caller.session.expires,
                           "handoff": sessions.encode(sessions.handoff_key(self._key()), handoff)})

    async def handoff(self, request: "web.Request") -> "web.Response":
        """A session on this node from a handoff token another node's /api/session gave
        the console (signed with a key of its own: a token is not a session cookie, nor
        the reverse): the page follows a failover without a new login."""
        if not _origin_ok(request):
            raise ApiError(403, f"cross-origin handoff refused (Origin "
                                f"{request.headers.get('Origin')!r})")
        key = self._key()
        body = await _body(request)
        _fields(body, "handoff", {"token": str})
        token = sessions.decode(sessions.handoff_key(key), body["token"], self.s.wall())
        user = self.s.backend.api_users().get(token.user) if token else None
        if token is None or user is None or passwords.fingerprint(user["hash"]) != token.password:
            self._audit(request, token.user if token else None, "handoff", "-", "failed")
            raise ApiError(401, "handoff token invalid or expired: log in again")
        session = sessions.new_session(token.user, token.password, self.s.wall(),
                                       self.s.session_lifetime_s)
        self._audit(request, token.user, "handoff", token.user, "ok")
        return self._logged_in(key, session, user["role"])

    def _logged_in(self, key: bytes, session: sessions.Session, role: str) -> "web.Response":
        response = _json(200, {"user": session.user, "role": role, "csrf": session.csrf,
                               "expires": session.expires})
        max_age = int(self.s.session_lifetime_s)
        response.set_cookie(sessions.COOKIE, sessions.encode(key, session), max_age=max_age,
                            path="/", secure=True, httponly=True, samesite="Strict")
        response.set_cookie(sessions.CSRF_COOKIE, session.csrf, max_age=max_age, path="/",
                            secure=True, httponly=False, samesite="Strict")
        return response

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

    @staticmethod
    def _log_query(request: "web.Request") -> tuple[str, str, int, str]:
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
        return node, kind, lines, query.get("filter", "").lower()

    async def module_log(self, request: "web.Request") -> "web.Response":
        """The last lines (bounded: read by the node with its tail reader, in a thread);
        ``filter``: only lines holding that text (any case)."""
        self.authorize(request, roles.MONITOR)
        node, kind, lines, grep = self._log_query(request)
        answer = await self.s.backend.api_module_log(request.match_info["module"], node, kind, lines)
        return _json(200, {"module": request.match_info["module"], "node": node, "kind": kind,
                           "lines": [x for x in answer.get("lines", []) if grep in x.lower()]})

    async def _event_stream(self, request: "web.Request") -> "web.StreamResponse":
        from aiohttp import web
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        return response

    async def module_log_stream(self, request: "web.Request") -> "web.StreamResponse":
        """Server-sent events "lines": the last ``lines`` lines, then the new ones as the
        node writes them (asked for once a second with the cursor of the previous
        answer: the node reads them in a thread, bounded); "error" while the node does
        not answer (the stream goes on)."""
        caller = self.authorize(request, roles.MONITOR)
        module = request.match_info["module"]
        node, kind, lines, grep = self._log_query(request)
        answer: dict[str, Any] | None = await self.s.backend.api_module_log(module, node, kind, lines)
        response = await self._event_stream(request)
        seq, cursor = 0, None
        try:
            while not _gone(request):
                seq += 1
                if answer is not None:
                    shown = [x for x in answer.get("lines", []) if grep in x.lower()]
                    if shown or answer.get("skipped") or seq == 1:
                        await response.write(frame(seq, "lines", {
                            "module": module, "node": node, "kind": kind, "lines": shown,
                            "skipped": answer.get("skipped", 0)}))
                    cursor = answer.get("cursor")
                else:
                    await response.write(b": waiting\n\n")
                await asyncio.sleep(self.s.log_poll_s)
                self._still_valid(caller)
                try:
                    answer = await self.s.backend.api_module_log(
                        module, node, kind, MAX_LOG_LINES, cursor) if cursor else \
                        await self.s.backend.api_module_log(module, node, kind, lines)
                except BackendError as e:
                    answer = None
                    await response.write(frame(seq, "error", {"error": str(e)}))
        except (ConnectionResetError, ApiError):
            pass
        return response

    def _still_valid(self, caller: Caller) -> None:
        """A long stream ends when its session would no longer be accepted."""
        user = self.s.backend.api_users().get(caller.user)
        if (caller.session.expires <= self.s.wall() or user is None
                or passwords.fingerprint(user["hash"]) != caller.session.password):
            raise ApiError(401, "session ended")

    async def events(self, request: "web.Request") -> "web.StreamResponse":
        """Server-sent events of the whole cluster (``events``): "snapshot" (the
        cluster and every module on every node: first, then after each change),
        "module", "member", "raft" (what changed), "error" (a reading failed)."""
        caller = self.authorize(request, roles.MONITOR)
        response = await self._event_stream(request)
        try:
            async with self.s.event_hub().listen() as queue:
                idle_since = self.s.mono()
                while not _gone(request):
                    try:
                        # wake up once a second: a page that left is noticed (and the
                        # poller stopped when it was the last) without waiting for a write
                        item = await asyncio.wait_for(queue.get(), 1.0)
                    except asyncio.TimeoutError:
                        if self.s.mono() - idle_since >= KEEPALIVE_S:
                            idle_since = self.s.mono()
                            await response.write(b": keep-alive\n\n")
                            self._still_valid(caller)
                        continue
                    if item is None:
                        break
                    self._still_valid(caller)
                    await response.write(frame(*item))
        except (ConnectionResetError, ApiError):
            pass
        return response

    async def why(self, request: "web.Request") -> "web.Response":
        """``hacluster -m M why`` on nodes: why the module is in its state (reads)."""
        self.authorize(request, roles.MONITOR)
        module = request.match_info["module"]
        nodes = request.query.get("nodes", "all")
        rows = await self.s.backend.api_module_command(
            module, "why", None if nodes == "all" else _nodes(nodes.split(","), "why"))
        return _json(200, {"module": module, "nodes": rows})

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
        if command == "second" and not force:
            last = await self._only_current_copies(module, nodes)
            if last:
                why = (f"the copy on {','.join(last)} is the only current copy of {module}: "
                       "'second' discards it (it is overwritten from the other node); confirm "
                       "with \"force\": true")
                self._audit(request, caller.user, name, target, "refused", why)
                raise ApiError(409, why)
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

    # ---- module packages (admin) --------------------------------------------------------
    async def _checked_install(self, request: "web.Request", caller: Caller, module: str,
                               data: bytes | None, userconfig: str | None,
                               check_only: bool) -> "web.Response":
        """Check first (every error, each at file:line: ``hacluster module check``);
        install only a package without error, as ``hacluster module install`` does
        (atomic on each node: nothing of a refused version is left)."""
        action = "module_userconfig" if userconfig is not None else "module_install"
        report = await self.s.backend.api_install(module, data, userconfig, True)
        if not report.get("ok") or check_only:
            if not report.get("ok") and not check_only:      # a check alone reads
                self._audit(request, caller.user, action, module, "refused",
                            "; ".join(report.get("errors", []))[:500])
            errors = [str(e) for e in report.get("errors", [])]
            body: dict[str, Any] = {
                    "module": module, "ok": bool(report.get("ok")), "mode": report.get("mode"),
                    "errors": errors,
                    "warnings": list(report.get("warnings", [])), "installed": False}
            if not report.get("ok"):
                body["error"] = (f"{len(errors)} error(s), nothing installed: "
                                 f"{errors[0] if errors else 'invalid package'}")
            return _json(200 if report.get("ok") else 400, body)
        try:
            result = await self.s.backend.api_install(module, data, userconfig, False)
        except BackendError as e:
            self._audit(request, caller.user, action, module, "refused", str(e))
            raise
        self._audit(request, caller.user, action, module, "ok",
                    f"sha256 {str(result.get('digest', ''))[:12]}")
        return _json(200, {"module": module, "ok": True, "mode": result.get("mode"),
                           "digest": result.get("digest"), "errors": [],
                           "warnings": list(result.get("warnings", [])), "installed": True,
                           "replication_ports": list(result.get("replication_ports", []))})

    async def install(self, request: "web.Request") -> "web.Response":
        """PUT the bytes of a .safe (``?check=true``: only check it)."""
        caller = self.authorize(request, roles.ADMIN)
        module = request.match_info["module"]
        error = _module_name_error(module)
        if error:
            raise ApiError(400, error)
        check_only = _flag(request, "check")
        data = await _raw_body(request, MAX_PACKAGE)
        return await self._checked_install(request, caller, module, data, None, check_only)

    async def uninstall(self, request: "web.Request") -> "web.Response":
        caller = self.authorize(request, roles.ADMIN)
        module = request.match_info["module"]
        try:
            await self.s.backend.api_uninstall(module)
        except BackendError as e:
            self._audit(request, caller.user, "module_uninstall", module, "refused", str(e))
            raise
        self._audit(request, caller.user, "module_uninstall", module, "ok")
        return _json(200, {"module": module, "uninstalled": True})

    async def get_userconfig(self, request: "web.Request") -> "web.Response":
        # admin: a userconfig.xml's <user> variables may hold credentials
        self.authorize(request, roles.ADMIN)
        module = request.match_info["module"]
        return _json(200, {"module": module,
                           "userconfig": await self.s.backend.api_userconfig(module)})

    async def put_userconfig(self, request: "web.Request") -> "web.Response":
        """A new conf/userconfig.xml for an installed module: the installed package with
        that file replaced, checked and installed as an upload is."""
        caller = self.authorize(request, roles.ADMIN)
        module = request.match_info["module"]
        body = await _body(request)
        _fields(body, "userconfig", {"userconfig": str}, {"check_only": bool})
        return await self._checked_install(request, caller, module, None, body["userconfig"],
                                           body.get("check_only", False))

    async def _only_current_copies(self, module: str, nodes: list[str] | None) -> list[str]:
        """The CLI's guard of ``second`` (cli._confirm_second): the chosen nodes whose
        mirror copy is the only current one (not the primary, alone in sync)."""
        entry = next((m for m in await self.s.backend.api_modules() if m["name"] == module), None)
        if entry is None:
            return []
        out = []
        for row in entry["nodes"]:
            st = row.get("result") or {}
            if (row.get("ok") and (nodes is None or row["node"] in nodes)
                    and st.get("mode", entry.get("mode")) != "farm"
                    and st.get("primary") != row["node"]
                    and list(st.get("in_sync") or []) == [row["node"]]):
                out.append(row["node"])
        return out

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


def _module_name_error(name: str) -> str | None:
    import re
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", name):
        return None
    return (f"invalid module name {name!r}: a letter then up to 31 letters, digits, '_' or '-'")


# A hash of no password anyone has, verified when the user does not exist (same cost).
_DUMMY_HASH = "scrypt$15$8$1$" + "A" * 22 + "$" + "A" * 43

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]
NextHandler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def routes(api: Api) -> list[tuple[str, str, Handler]]:
    """(method, path, handler): what the server registers; the OpenAPI document
    declares exactly these (tests/unit/test_http_openapi.py)."""
    return [
        ("GET", "/api/openapi.json", api.openapi),
        ("POST", "/api/login", api.login),
        ("POST", "/api/logout", api.logout),
        ("GET", "/api/session", api.session),
        ("POST", "/api/handoff", api.handoff),
        ("GET", "/api/cluster", api.cluster),
        ("GET", "/api/events", api.events),
        ("GET", "/api/modules", api.modules),
        ("GET", "/api/modules/{module}", api.module),
        ("DELETE", "/api/modules/{module}", api.uninstall),
        ("PUT", "/api/modules/{module}/package", api.install),
        ("GET", "/api/modules/{module}/userconfig", api.get_userconfig),
        ("PUT", "/api/modules/{module}/userconfig", api.put_userconfig),
        ("GET", "/api/modules/{module}/resources", api.resources),
        ("GET", "/api/modules/{module}/why", api.why),
        ("GET", "/api/modules/{module}/log", api.module_log),
        ("GET", "/api/modules/{module}/log/stream", api.module_log_stream),
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
            if response.prepared:       # a stream (server-sent events): its headers are sent
                return response
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
    console.add_routes(app)
    return app
