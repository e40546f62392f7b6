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
        return [{"name": "db", "mode": "mirror", "failover": True, "nodes": [
            {"node": "n1", "ok": True, "result": {"state": "PRIM"}},
            {"node": "n2", "ok": False, "error": "n2: unreachable"}]}]

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

    async def api_module_log(self, module: str, node: str, kind: str, lines: int) -> dict[str, Any]:
        return {"lines": [f"{kind} line {i}" for i in range(lines)][-3:]}


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for member n1 at 127.0.0.1: (cert, key, ca cert)."""
    ca = tls.make_ca("test")
    tls.write_member(directory, tls.sign_member(ca, "test", "n1", "127.0.0.1"), ca.cert)
    return directory / tls.MEMBER_CERT, directory / tls.MEMBER_KEY, directory / tls.CA_CERT


def client_context(ca_cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_cert))


async def start_server(backend: FakeBackend, certs: tuple[Path, Path, Path],
                       audit: Path | None = None) -> ApiServer:
    server = ApiServer("127.0.0.1", 0, backend, tls.server_context(certs[0], certs[1]), audit)
    await server.start()
    return server


def client(ca_cert: Path) -> aiohttp.ClientSession:
    # unsafe: keep cookies of an IP address host (127.0.0.1), as a browser does
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(ssl=client_context(ca_cert)))


async def login(session: aiohttp.ClientSession, base: str, user: str, password: str) -> tuple[int, dict]:
    async with session.post(base + "/api/login", json={"user": user, "password": password}) as r:
        return r.status, await r.json()
