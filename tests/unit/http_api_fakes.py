"""A fake ApiBackend (the narrow interface hacluster.http.api_backend) and a real
HTTPS API server on 127.0.0.1 with certificates from hacluster.http.tls, for the API's
unit tests. The daemon's side (hacluster.node.api_backend) is run in the lab."""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp

from hacluster.http import passwords, sessions, tls
from hacluster.http.api_backend import BackendError
from hacluster.http.api_server import ApiServer
from tests.unit.http_snapshots import mirror, node

SECRET = "the-cluster-secret-" + "x" * 40
FAST = 10       # log2 N of the test users' hashes: the format is the same, the cost lower


class FakeBackend:
    def __init__(self, secret: str | None = SECRET) -> None:
        self.secret = secret
        self.users: dict[str, dict[str, str]] = {}
        self.commands: list[tuple[str, str, list[str] | None]] = []
        self.refuse: dict[str, str] = {}    # node -> error of its module commands
        self.installed: dict[str, bytes] = {"db": b"PK-db"}   # module -> package bytes
        self.userconfigs: dict[str, str] = {"db": "<safe><service mode=\"mirror\"/></safe>"}
        self.log: list[str] = [f"line {i}" for i in range(5)]    # written so far
        self.module_states: dict[str, str | None] = {"n1": "PRIM", "n2": None}
        self.reads = 0

    def add(self, name: str, role: str, password: str) -> None:
        self.users[name] = {"role": role, "hash": passwords.hash_password(password, log2_n=FAST)}

    def http_snapshot(self):
        return node([mirror("PRIM")])

    def api_session_key(self) -> bytes | None:
        return None if self.secret is None else sessions.session_key(self.secret)

    def api_users(self):
        return self.users

    async def api_set_user(self, name: str, role: str, password_hash: str | None) -> dict[str, Any]:
        created = name not in self.users
        self.users[name] = {"role": role, "hash": password_hash or self.users[name]["hash"]}
        return {"ok": True, "name": name, "role": role, "created": created}

    async def api_remove_user(self, name: str) -> dict[str, Any]:
        del self.users[name]
        return {"ok": True, "name": name}

    async def api_cluster(self) -> dict[str, Any]:
        return {"cluster": "prod", "node": "n1", "leader": "n1", "term": 3, "has_quorum": True,
                "commit_index": 10, "members": [
                    {"name": "n1", "role": "node", "address": "10.0.0.1:7400", "live": True,
                     "connected": True, "leader": True},
                    {"name": "w", "role": "witness", "address": "10.0.0.9:7400", "live": True,
                     "connected": True, "leader": False}]}

    async def api_modules(self) -> list[dict[str, Any]]:
        self.reads += 1
        return [{"name": "db", "mode": "mirror", "failover": True, "nodes": [
            {"node": n, "ok": True, "result": {"state": st}} if st is not None else
            {"node": n, "ok": False, "error": f"{n}: unreachable"}
            for n, st in self.module_states.items()]}]

    async def api_module_command(self, module: str, command: str,
                                 nodes: list[str] | None) -> list[dict[str, Any]]:
        if module != "db":
            raise BackendError(f"no module {module!r}", 404)
        self.commands.append((module, command, nodes))
        return [{"node": n, "ok": n not in self.refuse,
                 **({"error": self.refuse[n]} if n in self.refuse
                    else {"result": {"message": f"{command} done"}})}
                for n in (nodes or ["n1", "n2"])]

    async def api_resources(self, module: str, nodes: list[str] | None) -> list[dict[str, Any]]:
        return [{"node": n, "ok": True, "result": {"resources": []}} for n in (nodes or ["n1"])]

    async def api_module_log(self, module: str, node: str, kind: str, lines: int,
                             cursor: dict[str, Any] | None = None) -> dict[str, Any]:
        if node == "gone":
            raise BackendError("gone: unreachable", 409)
        # without a cursor: the last lines, at most 3 (a bounded tail)
        start = cursor["at"] if cursor else max(0, len(self.log) - min(lines, 3))
        return {"lines": [f"{kind} {x}" for x in self.log[start:]],
                "cursor": {"at": len(self.log)}, "skipped": 0}

    async def api_install(self, name: str, data: bytes | None, userconfig: str | None,
                          check_only: bool) -> dict[str, Any]:
        """A package is good when its bytes start with PK and hold no "bad"; a
        userconfig when it holds no "bad" (the real checks: hacluster.modules.package)."""
        text = userconfig if userconfig is not None else (data or b"").decode("latin-1")
        if userconfig is not None and name not in self.installed:
            raise BackendError(f"module {name} is not installed", 400)
        errors = []
        if userconfig is None and not text.startswith("PK"):
            errors.append(f"{name}.safe: package: not a zip file")
        if "bad" in text:
            errors.append(f"{name}.safe:conf/userconfig.xml:3: <service>: bad element")
        if check_only or errors:
            return {"module": name, "ok": not errors, "mode": None if errors else "mirror",
                    "errors": errors, "warnings": []}
        if "started" in text:
            raise BackendError(f"module {name} is started; stop it on every node before "
                               "installing another version (nothing installed)", 409)
        if userconfig is not None:
            self.userconfigs[name] = userconfig
        else:
            self.installed[name] = data or b""
        return {"module": name, "digest": "ab" * 32, "mode": "mirror", "warnings": [],
                "replication_ports": [7500]}

    async def api_uninstall(self, name: str) -> dict[str, Any]:
        if name not in self.installed:
            raise BackendError(f"no module {name!r} installed", 404)
        del self.installed[name]
        return {"module": name}

    async def api_userconfig(self, name: str) -> str:
        if name not in self.userconfigs:
            raise BackendError(f"no module {name!r} installed", 404)
        return self.userconfigs[name]


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for member n1 at 127.0.0.1: (cert, key, ca cert)."""
    ca = tls.make_ca("test")
    tls.write_member(directory, tls.sign_member(ca, "test", "n1", "127.0.0.1"), ca.cert)
    return directory / tls.MEMBER_CERT, directory / tls.MEMBER_KEY, directory / tls.CA_CERT


def client_context(ca_cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_cert))


async def start_server(backend: FakeBackend, certs: tuple[Path, Path, Path],
                       audit: Path | None = None, period_s: float = 0.05) -> ApiServer:
    server = ApiServer("127.0.0.1", 0, backend, tls.server_context(certs[0], certs[1]), audit)
    # the event hub and streamed logs poll fast here (the daemon's: once a second)
    server.state.events_period_s = period_s
    server.state.log_poll_s = period_s
    await server.start()
    return server


def client(ca_cert: Path) -> aiohttp.ClientSession:
    # unsafe: keep cookies of an IP address host (127.0.0.1), as a browser does
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(ssl=client_context(ca_cert)))


async def login(session: aiohttp.ClientSession, base: str, user: str, password: str) -> tuple[int, dict]:
    async with session.post(base + "/api/login", json={"user": user, "password": password}) as r:
        return r.status, await r.json()
