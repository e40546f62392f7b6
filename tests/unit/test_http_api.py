"""hacluster/http/api.py over real HTTPS on 127.0.0.1 (certificates from
hacluster.http.tls, the client trusting only the cluster CA), with a fake backend
(the narrow interface the daemon implements): login, roles, CSRF, the login limit,
sessions across two servers with the same cluster secret, the commands' guards and
the audit trail."""
from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import pytest

from hacluster.http import sessions
from tests.unit.http_api_fakes import FakeBackend, client, login, make_certs, start_server


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


PASSWORDS = {"ann": "admin-password", "carl": "control-password", "mona": "monitor-password"}


def backend() -> FakeBackend:
    b = FakeBackend()
    b.add("ann", "admin", PASSWORDS["ann"])
    b.add("carl", "control", PASSWORDS["carl"])
    b.add("mona", "monitor", PASSWORDS["mona"])
    return b


def run(coro):
    return asyncio.run(coro)


async def logged_in(http: aiohttp.ClientSession, base: str, user: str) -> str:
    status, body = await login(http, base, user, PASSWORDS[user])
    assert status == 200, body
    return body["csrf"]


def test_login_sets_secure_cookies_and_reads_need_a_session(certs, tmp_path):
    async def go():
        b = backend()
        server = await start_server(b, certs, tmp_path / "audit.log")
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                async with http.get(base + "/api/cluster") as r:
                    assert r.status == 401 and "not logged in" in (await r.json())["error"]
                status, body = await login(http, base, "mona", "wrong-password")
                assert status == 401 and body == {"error": "wrong user name or password"}
                status, body = await login(http, base, "nobody", "whatever-pass")
                assert status == 401
                async with http.post(base + "/api/login",
                                     json={"user": "mona", "password": "monitor-password"}) as r:
                    assert r.status == 200
                    body = await r.json()
                    raw = r.headers.getall("Set-Cookie")
                session_cookie = next(c for c in raw if c.startswith(sessions.COOKIE + "="))
                for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
                    assert attribute in session_cookie
                csrf_cookie = next(c for c in raw if c.startswith(sessions.CSRF_COOKIE + "="))
                assert "HttpOnly" not in csrf_cookie and "Secure" in csrf_cookie
                assert body["user"] == "mona" and body["role"] == "monitor" and body["csrf"]
                async with http.get(base + "/api/cluster") as r:
                    assert r.status == 200 and (await r.json())["cluster"] == "prod"
                    assert r.headers["Cache-Control"] == "no-store"
                async with http.get(base + "/api/modules") as r:
                    assert (await r.json())["modules"][0]["nodes"][1]["error"] == "n2: unreachable"
                async with http.get(base + "/api/modules/nope") as r:
                    assert r.status == 404
                async with http.get(base + "/api/modules/db/log?node=n1&lines=5&kind=script") as r:
                    assert (await r.json())["lines"] == ["script line 2", "script line 3",
                                                         "script line 4"]
                async with http.get(base + "/api/modules/db/log?node=n1&lines=0") as r:
                    assert r.status == 400 and "lines must be 1 to" in (await r.json())["error"]
        finally:
            await server.close()
        entries = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
        assert [(e["user"], e["action"], e["result"]) for e in entries] == [
            ("mona", "login", "failed"), ("nobody", "login", "failed"), ("mona", "login", "ok")]
        assert all(e["address"] == "127.0.0.1" for e in entries)
    run(go())


def test_roles_decide_who_may_act(certs):
    async def go():
        b = backend()
        server = await start_server(b, certs)
        base = f"https://127.0.0.1:{server.port}"
        try:
            for user, command_status, users_status in (("mona", 403, 403), ("carl", 200, 403),
                                                       ("ann", 200, 200)):
                async with client(certs[2]) as http:
                    csrf = await logged_in(http, base, user)
                    async with http.post(base + "/api/modules/db/commands/swap",
                                         json={"nodes": ["n1"]},
                                         headers={sessions.CSRF_HEADER: csrf}) as r:
                        assert r.status == command_status, (user, await r.text())
                        if r.status == 403:
                            assert "needs the control role" in (await r.json())["error"]
                    async with http.get(base + "/api/users") as r:
                        assert r.status == users_status, user
            assert b.commands == [("db", "swap", ["n1"]), ("db", "swap", ["n1"])]
        finally:
            await server.close()
    run(go())


def test_a_state_changing_request_without_the_csrf_token_or_from_another_origin_is_refused(certs):
    async def go():
        b = backend()
        server = await start_server(b, certs)
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                csrf = await logged_in(http, base, "ann")
                url = base + "/api/modules/db/commands/stop"
                async with http.post(url, json={"nodes": "all"}) as r:
                    assert r.status == 403 and "X-CSRF-Token" in (await r.json())["error"]
                async with http.post(url, json={"nodes": "all"},
                                     headers={sessions.CSRF_HEADER: csrf + "x"}) as r:
                    assert r.status == 403
                async with http.post(url, json={"nodes": "all"},
                                     headers={sessions.CSRF_HEADER: csrf,
                                              "Origin": "https://evil.example"}) as r:
                    assert r.status == 403 and "cross-origin" in (await r.json())["error"]
                async with http.put(base + "/api/users/eve", json={"role": "admin",
                                                                   "password": "eve-password"}) as r:
                    assert r.status == 403
                assert b.commands == [] and "eve" not in b.users
                async with http.post(url, json={"nodes": "all"},
                                     headers={sessions.CSRF_HEADER: csrf, "Origin": base}) as r:
                    assert r.status == 200
                assert b.commands == [("db", "stop", None)]
                async with http.post(base + "/api/login", json={"user": "ann", "password": "x"},
                                     headers={"Origin": "https://evil.example"}) as r:
                    assert r.status == 403
        finally:
            await server.close()
    run(go())


def test_failed_logins_are_limited_per_user_with_a_clear_429(certs, tmp_path):
    async def go():
        b = backend()
        server = await start_server(b, certs, tmp_path / "audit.log")
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                limit = server.state.limit.limits["user"]
                for _ in range(limit):
                    assert (await login(http, base, "carl", "not-the-password"))[0] == 401
                async with http.post(base + "/api/login",
                                     json={"user": "carl", "password": "control-password"}) as r:
                    assert r.status == 429
                    assert int(r.headers["Retry-After"]) >= 1
                    assert "too many failed logins" in (await r.json())["error"]
                # another user from the same address is not locked out by carl's count
                assert (await login(http, base, "mona", "monitor-password"))[0] == 200
        finally:
            await server.close()
        results = [json.loads(line)["result"] for line in (tmp_path / "audit.log").read_text().splitlines()]
        assert results == ["failed"] * limit + ["limited", "ok"]
    run(go())


def test_a_session_made_on_one_server_is_accepted_by_another_with_the_same_secret(certs):
    async def go():
        b1, b2, other = backend(), backend(), backend()
        b2.users = b1.users                 # the replicated user table
        other.users = b1.users
        other.secret = "another-cluster-secret-" + "y" * 40
        servers = [await start_server(b, certs) for b in (b1, b2, other)]
        bases = [f"https://127.0.0.1:{s.port}" for s in servers]
        try:
            async with client(certs[2]) as http:
                await logged_in(http, bases[0], "mona")
                cookie = next(c.value for c in http.cookie_jar if c.key == sessions.COOKIE)
            for base, expected in ((bases[1], 200), (bases[2], 401)):
                async with client(certs[2]) as http:
                    async with http.get(base + "/api/session",
                                        headers={"Cookie": f"{sessions.COOKIE}={cookie}"}) as r:
                        assert r.status == expected, await r.text()
                        if expected == 200:
                            assert (await r.json())["user"] == "mona"
            # a password changed elsewhere ends the session on every node
            b1.add("mona", "monitor", "a-new-password")
            async with client(certs[2]) as http:
                async with http.get(bases[1] + "/api/session",
                                    headers={"Cookie": f"{sessions.COOKIE}={cookie}"}) as r:
                    assert r.status == 401 and "password changed" in (await r.json())["error"]
        finally:
            for s in servers:
                await s.close()
    run(go())


def test_the_command_guards_of_the_cli(certs):
    async def go():
        b = backend()
        b.refuse["n2"] = "n2 is not in sync"
        server = await start_server(b, certs)
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                csrf = await logged_in(http, base, "carl")
                h = {sessions.CSRF_HEADER: csrf}

                async def post(command, body):
                    async with http.post(base + f"/api/modules/db/commands/{command}", json=body,
                                         headers=h) as r:
                        return r.status, await r.json()
                status, body = await post("primforce", {"nodes": ["n1"]})
                assert status == 400 and '"force": true' in body["error"]
                status, body = await post("primforce", {"nodes": "all", "force": True})
                assert status == 400 and "exactly one node" in body["error"]
                status, body = await post("primforce", {"nodes": ["n1", "n2"], "force": True})
                assert status == 400
                assert (await post("swap", {"nodes": ["n1"], "force": True}))[0] == 400
                assert (await post("stop", {"nodes": []}))[0] == 400
                assert (await post("stop", {}))[0] == 400
                assert (await post("stop", {"nodes": ["n1"], "extra": 1}))[0] == 400
                assert (await post("reboot", {"nodes": ["n1"]}))[0] == 404
                assert b.commands == []
                assert (await post("primforce", {"nodes": ["n1"], "force": True}))[0] == 200
                assert (await post("second", {"nodes": ["n1"], "fullsync": True}))[0] == 200
                assert (await post("second", {"nodes": ["n1"], "force": True}))[0] == 200
                status, body = await post("start", {"nodes": "all"})
                assert status == 409 and body["ok"] is False
                assert body["nodes"][1] == {"node": "n2", "ok": False, "error": "n2 is not in sync"}
                async with http.post(base + "/api/modules/other/commands/start",
                                     json={"nodes": "all"}, headers=h) as r:
                    assert r.status == 404
            assert b.commands == [("db", "primforce_force", ["n1"]),
                                  ("db", "second_fullsync", ["n1"]),
                                  ("db", "second_force", ["n1"]), ("db", "start", None)]
        finally:
            await server.close()
    run(go())


def test_admin_manages_users_but_never_removes_the_last_admin(certs, tmp_path):
    async def go():
        b = backend()
        server = await start_server(b, certs, tmp_path / "audit.log")
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                h = {sessions.CSRF_HEADER: await logged_in(http, base, "ann")}
                async with http.put(base + "/api/users/zoe", json={"role": "control"},
                                    headers=h) as r:
                    assert r.status == 400 and "needs a password" in (await r.json())["error"]
                async with http.put(base + "/api/users/zoe", json={"role": "control",
                                                                   "password": "short"},
                                    headers=h) as r:
                    assert r.status == 400 and "at least 8" in (await r.json())["error"]
                async with http.put(base + "/api/users/zoe", json={"role": "control",
                                                                   "password": "zoe-password"},
                                    headers=h) as r:
                    assert r.status == 200 and (await r.json())["created"] is True
                assert "zoe-password" not in json.dumps(b.users)
                async with http.delete(base + "/api/users/ann", headers=h) as r:
                    assert r.status == 409 and "last admin" in (await r.json())["error"]
                async with http.put(base + "/api/users/ann", json={"role": "monitor"},
                                    headers=h) as r:
                    assert r.status == 409
                async with http.delete(base + "/api/users/mona", headers=h) as r:
                    assert r.status == 200
                async with http.get(base + "/api/users") as r:
                    assert [u["name"] for u in (await r.json())["users"]] == ["ann", "carl", "zoe"]
                async with http.get(base + "/api/audit") as r:
                    actions = [(e["action"], e["target"], e["result"]) for e in (await r.json())["entries"]]
                assert ("user_set", "zoe", "ok") in actions and ("user_remove", "mona", "ok") in actions
            async with client(certs[2]) as http:
                assert (await login(http, base, "zoe", "zoe-password"))[0] == 200
        finally:
            await server.close()
    run(go())


def test_a_member_without_the_cluster_secret_refuses_logins(certs):
    async def go():
        b = backend()
        b.secret = None
        server = await start_server(b, certs)
        try:
            async with client(certs[2]) as http:
                status, body = await login(http, f"https://127.0.0.1:{server.port}", "ann",
                                           "admin-password")
                assert status == 503 and "witness" in body["error"]
        finally:
            await server.close()
    run(go())


def test_the_api_is_https_only_and_its_certificate_is_the_members(certs, tmp_path):
    async def go():
        server = await start_server(backend(), certs)
        try:
            # a client that does not trust the cluster CA refuses the server
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    ssl=ssl.create_default_context())) as http:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await http.get(f"https://127.0.0.1:{server.port}/api/openapi.json")
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.ClientError):
                    await http.get(f"http://127.0.0.1:{server.port}/api/openapi.json")
            async with client(certs[2]) as http:
                async with http.get(f"https://127.0.0.1:{server.port}/api/openapi.json") as r:
                    assert r.status == 200 and (await r.json())["openapi"].startswith("3.")
        finally:
            await server.close()
    run(go())
