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


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[tuple[str, dict]]:
    """The next ``count`` server-sent events (kind, data) of a stream; comments skipped."""
    out: list[tuple[str, dict]] = []
    kind, data = None, None
    while len(out) < count:
        line = (await asyncio.wait_for(response.content.readline(), 10)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and kind is not None:
            out.append((kind, data))
            kind, data = None, None
    return out


def test_live_events_show_a_state_change_on_any_node_to_every_role(certs):
    async def go():
        b = backend()
        server = await start_server(b, certs)
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                async with http.get(base + "/api/events") as r:
                    assert r.status == 401          # no session, no stream
                await logged_in(http, base, "mona")
                async with http.get(base + "/api/events") as r:
                    assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
                    (kind, snap), = await read_events(r, 1)
                    assert kind == "snapshot" and snap["cluster"]["cluster"] == "prod"
                    assert snap["modules"][0]["nodes"][0]["result"]["state"] == "PRIM"
                    b.module_states = {"n1": None, "n2": "ALONE"}      # n1 died, n2 took over
                    events = await read_events(r, 3)
                    assert [k for k, _ in events] == ["module", "module", "snapshot"]
                    assert {(e["node"], e["from"], e["to"]) for _, e in events[:2]} == {
                        ("n1", "PRIM", "UNKNOWN"), ("n2", "UNKNOWN", "ALONE")}
                assert server.state.hub is not None
                for _ in range(100):                # the page left: the poller stops
                    if server.state.hub.listeners == 0:
                        break
                    await asyncio.sleep(0.02)
                assert server.state.hub.listeners == 0
        finally:
            await server.close()
    run(go())


def test_a_module_log_is_bounded_filtered_and_streamed(certs):
    async def go():
        b = backend()
        server = await start_server(b, certs)
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                await logged_in(http, base, "mona")
                async with http.get(base + "/api/modules/db/log?node=n1&filter=LINE 4") as r:
                    assert (await r.json())["lines"] == ["module line 4"]
                for bad in ("lines=0", "lines=2001", "lines=x", "kind=kernel", ""):
                    async with http.get(base + f"/api/modules/db/log/stream?{bad}&node=n1"
                                        if bad else base + "/api/modules/db/log/stream") as r:
                        assert r.status == 400, bad
                async with http.get(base + "/api/modules/db/log/stream?node=n1&kind=script") as r:
                    assert r.status == 200
                    (kind, first), = await read_events(r, 1)
                    assert kind == "lines" and first["lines"][-1] == "script line 4"
                    b.log += ["line 5", "line 6"]           # the node writes two lines
                    (kind, more), = await read_events(r, 1)
                    assert more["lines"] == ["script line 5", "script line 6"]
                async with http.get(base + "/api/modules/db/log/stream?node=gone") as r:
                    assert r.status == 409      # the first answer fails: a plain error
        finally:
            await server.close()
    run(go())


def test_module_install_check_and_userconfig_edit_for_admins_only(certs, tmp_path):
    async def go():
        b = backend()
        server = await start_server(b, certs, tmp_path / "audit.log")
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                csrf = await logged_in(http, base, "carl")
                h = {sessions.CSRF_HEADER: csrf}
                async with http.put(base + "/api/modules/web/package", data=b"PK good", headers=h) as r:
                    assert r.status == 403 and "admin role" in (await r.json())["error"]
                async with http.get(base + "/api/modules/db/userconfig") as r:
                    assert r.status == 403          # it may hold credentials
                csrf = await logged_in(http, base, "ann")
                h = {sessions.CSRF_HEADER: csrf}
                async with http.put(base + "/api/modules/web/package", data=b"PK good") as r:
                    assert r.status == 403 and "X-CSRF-Token" in (await r.json())["error"]
                async with http.put(base + "/api/modules/web/package?check=true", data=b"PK bad",
                                    headers=h) as r:
                    body = await r.json()
                    assert r.status == 400 and body["installed"] is False
                    assert body["errors"] == ["web.safe:conf/userconfig.xml:3: <service>: bad element"]
                    assert body["error"].startswith("1 error(s), nothing installed: web.safe:conf")
                async with http.put(base + "/api/modules/web/package", data=b"PK bad", headers=h) as r:
                    assert r.status == 400
                assert "web" not in b.installed     # nothing half-applied
                async with http.put(base + "/api/modules/web/package?check=true", data=b"PK good",
                                    headers=h) as r:
                    assert r.status == 200 and (await r.json())["installed"] is False
                assert "web" not in b.installed
                async with http.put(base + "/api/modules/web/package", data=b"PK good", headers=h) as r:
                    body = await r.json()
                    assert r.status == 200 and body["installed"] and body["replication_ports"] == [7500]
                assert b.installed["web"] == b"PK good"
                async with http.put(base + "/api/modules/web/package", data=b"PK started",
                                    headers=h) as r:
                    assert r.status == 409 and "stop it on every node" in (await r.json())["error"]
                assert b.installed["web"] == b"PK good"
                for name, data, status in (("9bad", b"PK", 400), ("web", b"", 400)):
                    async with http.put(base + f"/api/modules/{name}/package", data=data,
                                        headers=h) as r:
                        assert r.status == status, name
                async with http.put(base + "/api/modules/web/package?check=maybe", data=b"PK",
                                    headers=h) as r:
                    assert r.status == 400
                # userconfig: read, a refused edit (errors at file:line, nothing changed), an edit
                async with http.get(base + "/api/modules/db/userconfig") as r:
                    assert (await r.json())["userconfig"].startswith("<safe>")
                before = b.userconfigs["db"]
                async with http.put(base + "/api/modules/db/userconfig", json={
                        "userconfig": "<safe>bad</safe>"}, headers=h) as r:
                    assert r.status == 400 and ":3: " in (await r.json())["errors"][0]
                assert b.userconfigs["db"] == before
                for body in ({}, {"userconfig": 1}, {"userconfig": "x", "check_only": "yes"},
                             {"userconfig": "x", "other": 1}):
                    async with http.put(base + "/api/modules/db/userconfig", json=body, headers=h) as r:
                        assert r.status == 400, body
                async with http.put(base + "/api/modules/db/userconfig", json={
                        "userconfig": "<safe/>", "check_only": True}, headers=h) as r:
                    assert r.status == 200
                assert b.userconfigs["db"] == before
                async with http.put(base + "/api/modules/db/userconfig", json={
                        "userconfig": "<safe/>"}, headers=h) as r:
                    assert r.status == 200 and (await r.json())["installed"]
                assert b.userconfigs["db"] == "<safe/>"
                async with http.delete(base + "/api/modules/web", headers=h) as r:
                    assert r.status == 200
                async with http.delete(base + "/api/modules/web", headers=h) as r:
                    assert r.status == 404
        finally:
            await server.close()
        audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
        acts = [(e["action"], e["target"], e["result"]) for e in audit if e["action"] != "login"]
        assert acts == [("module_install", "web", "refused"), ("module_install", "web", "ok"),
                        ("module_install", "web", "refused"), ("module_userconfig", "db", "refused"),
                        ("module_userconfig", "db", "ok"), ("module_uninstall", "web", "ok"),
                        ("module_uninstall", "web", "refused")]
    run(go())


def test_a_package_over_the_limit_is_refused_before_it_is_read(certs, monkeypatch):
    from hacluster.http import api
    monkeypatch.setattr(api, "MAX_PACKAGE", 1000)

    async def go():
        b = backend()
        server = await start_server(b, certs)
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                h = {sessions.CSRF_HEADER: await logged_in(http, base, "ann")}
                async with http.put(base + "/api/modules/web/package", data=b"PK" * 600,
                                    headers=h) as r:
                    assert r.status == 413 and "over 1000 bytes" in (await r.json())["error"]
            assert "web" not in b.installed
        finally:
            await server.close()
    run(go())


def test_a_handoff_token_opens_a_session_on_another_member_only(certs):
    async def go():
        b1, b2 = backend(), backend()
        b2.users = b1.users
        s1, s2 = await start_server(b1, certs), await start_server(b2, certs)
        base1, base2 = f"https://127.0.0.1:{s1.port}", f"https://127.0.0.1:{s2.port}"
        try:
            async with client(certs[2]) as http:
                await logged_in(http, base1, "carl")
                async with http.get(base1 + "/api/session") as r:
                    token = (await r.json())["handoff"]
            async with client(certs[2]) as http:
                # a token is not a session cookie
                async with http.get(base2 + "/api/session",
                                    headers={"Cookie": f"{sessions.COOKIE}={token}"}) as r:
                    assert r.status == 401
                for bad in ({"token": token + "x"}, {"token": 5}, {}):
                    async with http.post(base2 + "/api/handoff", json=bad) as r:
                        assert r.status in (400, 401), bad
                async with http.post(base2 + "/api/handoff", json={"token": token},
                                     headers={"Origin": "https://evil.example"}) as r:
                    assert r.status == 403
                async with http.post(base2 + "/api/handoff", json={"token": token}) as r:
                    assert r.status == 200 and (await r.json())["role"] == "control"
                async with http.get(base2 + "/api/session") as r:
                    assert (await r.json())["user"] == "carl"
            b1.add("carl", "control", "changed-password")    # the token dies with the password
            async with client(certs[2]) as http:
                async with http.post(base2 + "/api/handoff", json={"token": token}) as r:
                    assert r.status == 401
        finally:
            await s1.close()
            await s2.close()
    run(go())


def test_the_console_is_served_from_the_package_with_a_strict_policy(certs):
    async def go():
        server = await start_server(backend(), certs)
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                async with http.get(base + "/", allow_redirects=False) as r:
                    assert r.status == 302 and r.headers["Location"] == "/console/"
                async with http.get(base + "/console/") as r:
                    page = await r.text()
                    assert r.status == 200 and "console.js" in page
                    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                    assert r.headers["X-Frame-Options"] == "DENY"
                    # nothing from elsewhere: every src/href is this server's
                    import re
                    assert all(u.startswith(("/", "data:")) for u in re.findall(r'(?:src|href)="([^"]+)"', page))
                for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
                    async with http.get(base + "/console/" + name) as r:
                        assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
                for name in ("../api.py", "nope.js", "%2e%2e%2fapi.py"):
                    async with http.get(base + "/console/" + name) as r:
                        assert r.status == 404, name
        finally:
            await server.close()
    run(go())


def test_second_on_the_only_current_copy_needs_force_as_at_the_cli(certs, tmp_path):
    async def go():
        b = backend()
        rows = [{"node": "n1", "ok": True, "result": {"state": "STOP", "primary": None,
                                                       "in_sync": ["n1"]}},
                {"node": "n2", "ok": True, "result": {"state": "STOP", "primary": None,
                                                       "in_sync": ["n1"]}}]

        async def modules():
            return [{"name": "db", "mode": "mirror", "failover": True, "nodes": rows}]
        b.api_modules = modules         # type: ignore[method-assign]
        server = await start_server(b, certs, tmp_path / "audit.log")
        base = f"https://127.0.0.1:{server.port}"
        try:
            async with client(certs[2]) as http:
                h = {sessions.CSRF_HEADER: await logged_in(http, base, "carl")}
                url = base + "/api/modules/db/commands/second"
                async with http.post(url, json={"nodes": ["n1"]}, headers=h) as r:
                    body = await r.json()
                    assert r.status == 409 and "only current copy" in body["error"]
                    assert '"force": true' in body["error"]
                assert b.commands == []
                async with http.post(url, json={"nodes": ["n2"]}, headers=h) as r:
                    assert r.status == 200          # n2's copy is not the current one
                async with http.post(url, json={"nodes": ["n1"], "force": True}, headers=h) as r:
                    assert r.status == 200
                assert b.commands == [("db", "second", ["n2"]), ("db", "second_force", ["n1"])]
        finally:
            await server.close()
        audit = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
        assert [(e["action"], e["result"]) for e in audit if e["action"] != "login"] == [
            ("second", "refused"), ("second", "ok"), ("second_force", "ok")]
    run(go())
