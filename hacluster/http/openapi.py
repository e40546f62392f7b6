"""The OpenAPI 3.1 document of the API (served at /api/openapi.json), written by hand
rather than generated from the routes, so that the test that compares the two
(tests/unit/test_http_openapi.py: every registered route declared and every declared
path registered, answers valid against their schemas) checks something.
"""
from __future__ import annotations

from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None,
         extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "required": sorted(required),
            "properties": {**required, **(optional or {})}, "additionalProperties": extra}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_NULL_STR = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _STR}),
    "Login": _obj({"user": _STR, "password": _STR}),
    "Session": _obj({"user": _STR, "role": {"enum": ["monitor", "control", "admin"]},
                     "csrf": _STR, "expires": _NUM}, {"handoff": _STR}),
    "Handoff": _obj({"token": _STR}),
    "LoggedOut": _obj({"user": _STR, "logged_out": _BOOL}),
    "Member": _obj({"name": _STR, "role": {"enum": ["node", "witness"]}, "address": _STR,
                    "live": _BOOL, "connected": _BOOL, "leader": _BOOL},
                   {"api": {"type": ["string", "null"], "description": "the member's API "
                            "(https://host:port), where the console reconnects"}}, extra=True),
    "Cluster": _obj({"cluster": _STR, "node": _STR, "leader": _NULL_STR, "term": _INT,
                     "has_quorum": _BOOL, "members": {"type": "array", "items": _ref("Member")}},
                    extra=True),
    "NodeRow": _obj({"node": _STR, "ok": _BOOL}, {"result": {"type": "object"}, "error": _STR},
                    extra=True),
    "Module": _obj({"name": _STR, "mode": {"enum": ["mirror", "farm"]}, "failover": _BOOL,
                    "nodes": {"type": "array", "items": _ref("NodeRow")}}, extra=True),
    "Modules": _obj({"modules": {"type": "array", "items": _ref("Module")}}),
    "Resources": _obj({"module": _STR, "nodes": {"type": "array", "items": _ref("NodeRow")}}),
    "Log": _obj({"module": _STR, "node": _STR, "kind": {"enum": ["module", "script"]},
                 "lines": {"type": "array", "items": _STR}}),
    "Why": _obj({"module": _STR, "nodes": {"type": "array", "items": _ref("NodeRow")}}),
    "PackageReport": _obj({"module": _STR, "ok": _BOOL, "mode": {"enum": ["mirror", "farm", None]},
                           "errors": {"type": "array", "items": _STR},
                           "warnings": {"type": "array", "items": _STR}, "installed": _BOOL},
                          {"error": _STR, "digest": _STR,
                           "replication_ports": {"type": "array", "items": _INT}}),
    "Userconfig": _obj({"module": _STR, "userconfig": _STR}),
    "UserconfigPut": _obj({"userconfig": _STR}, {"check_only": _BOOL}),
    "Uninstalled": _obj({"module": _STR, "uninstalled": _BOOL}),
    "Command": _obj({"nodes": {"oneOf": [{"const": "all"},
                                         {"type": "array", "items": _STR, "minItems": 1}]}},
                    {"force": _BOOL, "fullsync": _BOOL}),
    "CommandResult": _obj({"module": _STR, "command": _STR, "ok": _BOOL,
                           "nodes": {"type": "array", "items": _ref("NodeRow")}}),
    "User": _obj({"name": _STR, "role": {"enum": ["monitor", "control", "admin"]}}),
    "Users": _obj({"users": {"type": "array", "items": _ref("User")}}),
    "UserPut": _obj({"role": {"enum": ["monitor", "control", "admin"]}},
                    {"password": {"type": "string", "minLength": 8}}),
    "UserSet": _obj({"name": _STR, "role": _STR, "created": _BOOL}),
    "UserRemoved": _obj({"name": _STR, "removed": _BOOL}),
    "AuditEntry": _obj({"t": _NUM, "user": _STR, "address": _STR, "action": _STR,
                        "target": _STR, "result": _STR, "detail": _STR}),
    "Audit": _obj({"entries": {"type": "array", "items": _ref("AuditEntry")}}),
}


def _json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _answers(ok: str, *errors: int, ok_status: str = "200") -> dict[str, Any]:
    words = {400: "bad input", 401: "not logged in", 403: "wrong role, CSRF token or origin",
             404: "unknown", 409: "refused by the cluster", 413: "body too large",
             429: "too many failed logins",
             503: "no quorum, or a member without the cluster secret"}
    out: dict[str, Any] = {ok_status: {"description": "done",
                                       "content": {"application/json": {"schema": _ref(ok)}}}}
    for status in errors:
        out[str(status)] = {"description": words[status],
                            "content": {"application/json": {"schema": _ref("Error")}}}
    return out


def _failures(*errors: int) -> dict[str, Any]:
    """The error answers alone (a stream's 200 is not JSON)."""
    return {k: v for k, v in _answers("Error", *errors).items() if k != "200"}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


def _query(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


_READ = (401, 403, 503)
_LOG_QUERY = [_query("node", _STR, required=True), _query("kind", {"enum": ["module", "script"]}),
              _query("lines", {"type": "integer", "minimum": 1, "maximum": 2000}),
              _query("filter", {"type": "string", "description": "only lines holding this text "
                                                                "(any case)"})]
_ACT = (400, 401, 403, 503)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "hacluster HTTP API", "version": "1",
             "description": "Log in with POST /api/login; send the session cookie back and, on "
                            "every POST, PUT and DELETE, the header X-CSRF-Token with the csrf "
                            "value of the login's answer. Roles: monitor reads, control also "
                            "runs module commands, admin also manages users."},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"session": {"type": "apiKey", "in": "cookie",
                                        "name": "hacluster_session"}},
    },
    "security": [{"session": []}],
    "paths": {
        "/api/openapi.json": {"get": {"summary": "this document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/api/login": {"post": {"summary": "log in: sets the session cookie", "security": [],
                                "requestBody": _json_body("Login"),
                                "responses": _answers("Session", 400, 401, 403, 429, 503)}},
        "/api/logout": {"post": {"summary": "log out (monitor)",
                                 "responses": _answers("LoggedOut", *_ACT)}},
        "/api/session": {"get": {"summary": "who is logged in, the CSRF token, and a handoff "
                                            "token (10 min) for POST /api/handoff on another "
                                            "member",
                                 "responses": _answers("Session", *_READ)}},
        "/api/handoff": {"post": {"summary": "a session on this member from another member's "
                                             "handoff token (the console following a failover)",
                                  "security": [], "requestBody": _json_body("Handoff"),
                                  "responses": _answers("Session", 400, 401, 403, 503)}},
        "/api/events": {"get": {
            "summary": "server-sent events of the whole cluster (monitor): snapshot (cluster "
                       "and modules, first and after each change), module, member, raft (what "
                       "changed: before/after), error (a reading failed)",
            "responses": {"200": {"description": "text/event-stream",
                                  "content": {"text/event-stream": {"schema": _STR}}},
                          **_failures(*_READ)}}},
        "/api/cluster": {"get": {"summary": "the cluster: members, leader, leases (monitor)",
                                 "responses": _answers("Cluster", *_READ)}},
        "/api/modules": {"get": {"summary": "every module and its state on every node (monitor)",
                                 "responses": _answers("Modules", *_READ)}},
        "/api/modules/{module}": {
            "get": {"summary": "one module and its state on every node (monitor)",
                    "parameters": [_path_param("module")],
                    "responses": _answers("Module", 404, *_READ)},
            "delete": {"summary": "uninstall the module from every node (admin; refused while "
                                  "it is started)",
                       "parameters": [_path_param("module")],
                       "responses": _answers("Uninstalled", 404, 409, *_ACT)}},
        "/api/modules/{module}/package": {"put": {
            "summary": "install a .safe on every node (admin): the body is the file's bytes; "
                       "checked as hacluster module check does (400: every error at file:line, "
                       "nothing installed); ?check=true only checks",
            "parameters": [_path_param("module"), _query("check", _BOOL)],
            "requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {**_answers("PackageReport", 401, 403, 409, 413, 503),
                          "400": {"description": "an invalid package (nothing installed)",
                                  "content": {"application/json": {"schema": {"oneOf": [
                                      _ref("PackageReport"), _ref("Error")]}}}}}}},
        "/api/modules/{module}/userconfig": {
            "get": {"summary": "the installed conf/userconfig.xml (admin: it may hold "
                               "credentials)",
                    "parameters": [_path_param("module")],
                    "responses": _answers("Userconfig", 404, 409, *_READ)},
            "put": {"summary": "install the module's package with a new userconfig.xml (admin); "
                               "check_only: only check (400: every error at file:line)",
                    "parameters": [_path_param("module")],
                    "requestBody": _json_body("UserconfigPut"),
                    "responses": {**_answers("PackageReport", 401, 403, 404, 409, 503),
                                  "400": {"description": "invalid (nothing installed)",
                                          "content": {"application/json": {"schema": {"oneOf": [
                                              _ref("PackageReport"), _ref("Error")]}}}}}}},
        "/api/modules/{module}/why": {"get": {
            "summary": "why the module is in its state on each node (monitor)",
            "parameters": [_path_param("module"),
                           _query("nodes", {"type": "string", "description": "all, or names "
                                            "separated by commas"})],
            "responses": _answers("Why", 400, 404, *_READ)}},
        "/api/modules/{module}/resources": {"get": {
            "summary": "the module's checker resources on each node (monitor)",
            "parameters": [_path_param("module"),
                           _query("nodes", {"type": "string", "description": "all, or names "
                                            "separated by commas"})],
            "responses": _answers("Resources", 400, *_READ)}},
        "/api/modules/{module}/log": {"get": {
            "summary": "the last lines of a module's log on one node (monitor)",
            "parameters": [_path_param("module"), *_LOG_QUERY],
            "responses": _answers("Log", 400, 404, *_READ)}},
        "/api/modules/{module}/log/stream": {"get": {
            "summary": "server-sent events \"lines\" (monitor): the last lines, then the new "
                       "ones as the node writes them (asked once a second, read bounded in a "
                       "thread on the node); \"error\" while the node does not answer",
            "parameters": [_path_param("module"), *_LOG_QUERY],
            "responses": {"200": {"description": "text/event-stream",
                                  "content": {"text/event-stream": {"schema": _STR}}},
                          **_failures(400, 404, *_READ)}}},
        "/api/modules/{module}/commands/{command}": {"post": {
            "summary": "run a module command on nodes (control); primforce needs force: true "
                       "and one node, second with force overwrites the only current copy",
            "parameters": [_path_param("module"),
                           {"name": "command", "in": "path", "required": True,
                            "schema": {"enum": ["start", "stop", "forcestop", "restart",
                                                "stopstart", "swap", "prim", "second",
                                                "primforce", "failover_on", "failover_off",
                                                "errd_on", "errd_off", "checker_on",
                                                "checker_off", "resetloop"]}}],
            "requestBody": _json_body("Command"),
            "responses": {**_answers("CommandResult", 404, *_ACT),
                          "409": {"description": "a node refused (the rows say why)",
                                  "content": {"application/json": {
                                      "schema": {"oneOf": [_ref("CommandResult"),
                                                           _ref("Error")]}}}}}}},
        "/api/users": {"get": {"summary": "the users and their roles (admin)",
                               "responses": _answers("Users", *_READ)}},
        "/api/users/{name}": {
            "put": {"summary": "add a user or change one's role or password (admin)",
                    "parameters": [_path_param("name")], "requestBody": _json_body("UserPut"),
                    "responses": _answers("UserSet", 409, *_ACT)},
            "delete": {"summary": "remove a user (admin; never the last admin)",
                       "parameters": [_path_param("name")],
                       "responses": _answers("UserRemoved", 404, 409, *_ACT)}},
        "/api/audit": {"get": {"summary": "the audit trail's last entries (admin)",
                               "parameters": [_query("limit", {"type": "integer", "minimum": 1})],
                               "responses": _answers("Audit", 400, *_READ)}},
    },
}


# The role each operation needs (x-role; absent: no login needed). The API decides by
# its handlers' own checks; tests/unit/test_http_openapi.py calls every operation with
# no session, without the CSRF token and with each role below this one, and expects
# 401/403 exactly as declared here.
ROLES = {
    ("get", "/api/session"): "monitor", ("post", "/api/logout"): "monitor",
    ("get", "/api/cluster"): "monitor", ("get", "/api/events"): "monitor",
    ("get", "/api/modules"): "monitor", ("get", "/api/modules/{module}"): "monitor",
    ("get", "/api/modules/{module}/resources"): "monitor",
    ("get", "/api/modules/{module}/why"): "monitor",
    ("get", "/api/modules/{module}/log"): "monitor",
    ("get", "/api/modules/{module}/log/stream"): "monitor",
    ("post", "/api/modules/{module}/commands/{command}"): "control",
    ("delete", "/api/modules/{module}"): "admin",
    ("put", "/api/modules/{module}/package"): "admin",
    ("get", "/api/modules/{module}/userconfig"): "admin",
    ("put", "/api/modules/{module}/userconfig"): "admin",
    ("get", "/api/users"): "admin", ("put", "/api/users/{name}"): "admin",
    ("delete", "/api/users/{name}"): "admin", ("get", "/api/audit"): "admin",
}
for (_method, _path), _role in ROLES.items():
    DOCUMENT["paths"][_path][_method]["x-role"] = _role
