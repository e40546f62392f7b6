"""hacluster/http/openapi.py against the server: every route the API registers is
declared in the document and every declared operation is registered, and answers of a
real server (HTTPS on 127.0.0.1, fake backend) validate against the declared schemas
(a small validator of the JSON Schema subset the document uses)."""
from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from hacluster.http import sessions
from hacluster.http.api import Api, ApiState, make_api_app, routes
from hacluster.http.audit import AuditLog
from hacluster.http.openapi import DOCUMENT
from tests.unit.http_api_fakes import FakeBackend, client, make_certs, start_server

TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
         "boolean": bool, "null": type(None)}


def errors(schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (type, enum, const, required, properties,
    additionalProperties, items, minItems, oneOf, $ref into the document)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return errors(DOCUMENT["components"]["schemas"][name], value, where)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not errors(s, value, where)]
        return [] if len(matching) == 1 else [f"{where}: matches {len(matching)} of oneOf"]
    out = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, TYPES[n]) and not (isinstance(value, bool) and n in
                                                        ("integer", "number")) for n in names)
        if not ok:
            return [f"{where}: {value!r} is not {schema['type']}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} is not {schema['const']!r}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                out.append(f"{where}: missing {name}")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                out += errors(properties[name], item, f"{where}.{name}")
            elif schema.get("additionalProperties", True) is False:
                out.append(f"{where}: unexpected {name}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append(f"{where}: fewer than {schema['minItems']} items")
        for i, item in enumerate(value):
            out += errors(schema.get("items", {}), item, f"{where}[{i}]")
    return out


def test_the_validator_fails_what_it_should():
    assert errors({"$ref": "#/components/schemas/Session"}, {"user": "a"})
    assert errors({"$ref": "#/components/schemas/User"}, {"name": "a", "role": "root"})
    assert errors({"$ref": "#/components/schemas/User"}, {"name": "a", "role": "admin", "x": 1})
    assert errors({"type": "integer"}, True)
    assert not errors({"$ref": "#/components/schemas/User"}, {"name": "a", "role": "admin"})


def test_every_registered_route_is_declared_and_every_declared_one_registered():
    app = make_api_app(ApiState(FakeBackend(), AuditLog(None)))
    # the console's static files (/, /console/...) are pages, not the API
    registered = {(r.method, r.resource.canonical) for r in app.router.routes()
                  if r.method != "HEAD" and r.resource.canonical.startswith("/api/")}
    declared = {(method.upper(), path) for path, item in DOCUMENT["paths"].items()
                for method in item}
    assert registered == declared
    assert registered == {(m, p) for m, p, _ in routes(Api(ApiState(FakeBackend(), AuditLog(None))))}
    # every path parameter is declared on its operation
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"{(\w+)}", path)), path
            for response in operation["responses"].values():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is not None:
                    assert not errors({"type": "object"}, schema)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_answers_validate_against_the_declared_schemas(certs):
    calls = [("POST", "/api/login", {"user": "ann", "password": "admin-password"}),
             ("GET", "/api/session", None), ("GET", "/api/cluster", None),
             ("GET", "/api/modules", None), ("GET", "/api/modules/db", None),
             ("GET", "/api/modules/nope", None),
             ("GET", "/api/modules/db/resources?nodes=n1", None),
             ("GET", "/api/modules/db/log?node=n1&lines=2", None),
             ("GET", "/api/modules/db/log?node=n1&kind=x", None),
             ("POST", "/api/modules/db/commands/swap", {"nodes": ["n1"]}),
             ("POST", "/api/modules/db/commands/start", {"nodes": "all"}),
             ("POST", "/api/modules/db/commands/primforce", {"nodes": ["n1"]}),
             ("PUT", "/api/users/bob", {"role": "monitor", "password": "bob-password"}),
             ("GET", "/api/users", None), ("DELETE", "/api/users/bob", None),
             ("DELETE", "/api/users/nobody", None), ("GET", "/api/audit", None),
             ("GET", "/api/modules/db/why?nodes=n1", None),
             ("POST", "/api/modules/db/commands/errd_off", {"nodes": ["n1"]}),
             ("PUT", "/api/modules/web/package?check=true", b"PK bad"),
             ("PUT", "/api/modules/web/package", b"PK good"),
             ("PUT", "/api/modules/web/package", b"PK started"),
             ("GET", "/api/modules/db/userconfig", None),
             ("GET", "/api/modules/nope/userconfig", None),
             ("PUT", "/api/modules/db/userconfig", {"userconfig": "<safe/>", "check_only": True}),
             ("PUT", "/api/modules/db/userconfig", {"userconfig": "bad"}),
             ("DELETE", "/api/modules/web", None), ("DELETE", "/api/modules/web", None),
             ("POST", "/api/handoff", {"token": "forged.token"}),
             ("POST", "/api/logout", None), ("GET", "/api/cluster", None)]

    async def go():
        backend = FakeBackend()
        backend.add("ann", "admin", "admin-password")
        backend.refuse["n2"] = "not in sync"
        server = await start_server(backend, certs)
        base = f"https://127.0.0.1:{server.port}"
        seen = []
        try:
            async with client(certs[2]) as http:
                csrf = ""
                for method, path, body in calls:
                    kw = {"data": body} if isinstance(body, bytes) else {"json": body}
                    async with http.request(method, base + path, **kw,
                                            headers={sessions.CSRF_HEADER: csrf}) as r:
                        answer = await r.json()
                        seen.append((method, path, r.status, answer))
                    if path == "/api/login":
                        csrf = answer["csrf"]
        finally:
            await server.close()
        return seen

    seen = asyncio.run(go())
    statuses = [status for _, _, status, _ in seen]
    assert statuses == [200, 200, 200, 200, 200, 404, 200, 200, 400, 200, 409, 400, 200, 200,
                        200, 404, 200, 200, 200, 400, 200, 409, 200, 404, 200, 400, 200, 404,
                        401, 200, 401]
    for method, path, status, answer in seen:
        template = next(p for p in DOCUMENT["paths"] if re.fullmatch(
            re.sub(r"{\w+}", r"[^/]+", p), path.split("?")[0]))
        declared = DOCUMENT["paths"][template][method.lower()]["responses"]
        assert str(status) in declared, (method, path, status)
        schema = declared[str(status)]["content"]["application/json"]["schema"]
        assert errors(schema, answer) == [], (method, path, answer)


# a request each operation accepts (so that 401/403 come from the session, the token
# or the role, not from bad input)
SAMPLES = {"{module}": "db", "{command}": "swap", "{name}": "bob"}
BODIES = {("post", "/api/modules/{module}/commands/{command}"): {"nodes": ["n1"]},
          ("put", "/api/modules/{module}/package"): b"PK good",
          ("put", "/api/modules/{module}/userconfig"): {"userconfig": "<safe/>"},
          ("put", "/api/users/{name}"): {"role": "monitor", "password": "bob-password"}}
QUERIES = {"/api/modules/{module}/log": "?node=n1", "/api/modules/{module}/log/stream": "?node=n1"}
USERS = {"monitor": ("mona", "monitor-password"), "control": ("carl", "control-password"),
         "admin": ("ann", "admin-password")}
RANK = ["monitor", "control", "admin"]


def operations():
    """Every operation of the document, the logout last (it ends the session)."""
    found = [(m, p, o) for p, item in DOCUMENT["paths"].items() for m, o in item.items()]
    return sorted(found, key=lambda x: x[1] == "/api/logout")


def test_every_operation_refuses_no_session_a_missing_csrf_token_and_a_lower_role(certs):
    """Driven by the document: every operation that declares a role (x-role) answers
    401 without a session, 403 without the CSRF token when it changes state, 403 to
    each role below its own, and not 401/403 to its own role; each of those answers
    is declared and valid against its schema."""
    async def go():
        backend = FakeBackend()
        for role, (user, password) in USERS.items():
            backend.add(user, role, password)
        server = await start_server(backend, certs)
        base = f"https://127.0.0.1:{server.port}"
        seen = []
        try:
            sessions_by_role = {}
            for role, (user, password) in USERS.items():
                http = client(certs[2])
                async with http.post(base + "/api/login", json={"user": user,
                                                                "password": password}) as r:
                    sessions_by_role[role] = (http, (await r.json())["csrf"])
            anonymous = client(certs[2])
            for method, path, operation in operations():
                role = operation.get("x-role")
                if role is None:
                    continue
                url = base + re.sub(r"{\w+}", lambda m: SAMPLES[m.group(0)], path) + QUERIES.get(path, "")
                body = BODIES.get((method, path))
                kw = {"data": body} if isinstance(body, bytes) else {"json": body}

                async def call(http, csrf, method=method, url=url, kw=kw):
                    headers = {sessions.CSRF_HEADER: csrf} if csrf else {}
                    async with http.request(method.upper(), url, headers=headers, **kw) as r:
                        if r.headers.get("Content-Type", "").startswith("text/event-stream"):
                            return r.status, None
                        return r.status, await r.json()
                status, answer = await call(anonymous, None)
                seen.append((method, path, status, answer, 401))
                for other in RANK:
                    http, csrf = sessions_by_role[other]
                    if method != "get":
                        status, answer = await call(http, None)
                        seen.append((method, path, status, answer, 403))
                    status, answer = await call(http, csrf)
                    below = RANK.index(other) < RANK.index(role)
                    seen.append((method, path, status, answer, 403 if below else "ok"))
                    if not below:
                        break       # one call with the needed role (it may change state)
        finally:
            for http, _ in sessions_by_role.values():
                await http.close()
            await anonymous.close()
            await server.close()
        return seen

    seen = asyncio.run(go())
    checked = set()
    for method, path, status, answer, expected in seen:
        if expected == "ok":
            assert status not in (401, 403), (method, path, status, answer)
        else:
            assert status == expected, (method, path, status, answer)
        declared = DOCUMENT["paths"][path][method]["responses"]
        assert str(status) in declared, (method, path, status)
        if answer is not None:
            schema = declared[str(status)]["content"]["application/json"]["schema"]
            assert errors(schema, answer) == [], (method, path, answer)
        checked.add((method, path))
    assert checked == {(m, p) for m, p, o in operations() if "x-role" in o}
