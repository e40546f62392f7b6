"""The HTTP server (hacluster/http/server.py): real aiohttp on loopback, fed snapshots
by a probe that serves whatever snapshot the test sets (the daemon's part is
Daemon.http_snapshot, run in the lab tests)."""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hacluster.http.server import HttpServer
from hacluster.http.snapshot import NodeSnapshot
from raft.listen import ListenError
from tests.unit.http_snapshots import mirror, node


class Probe:
    def __init__(self, snapshot: NodeSnapshot) -> None:
        self.snapshot = snapshot
        self.calls = 0

    def http_snapshot(self) -> NodeSnapshot:
        self.calls += 1
        return self.snapshot


def fetch(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


async def serve_and_get(probe: Probe, paths: list[str]) -> list[tuple[int, str, str]]:
    server = HttpServer("127.0.0.1", 0, probe)
    await server.start()
    try:
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, fetch, server.port, p) for p in paths]
    finally:
        await server.close()


def test_the_routes_answer_from_the_snapshot():
    probe = Probe(node([mirror("PRIM")], known={"db", "other"}))
    answers = asyncio.run(serve_and_get(probe, ["/metrics", "/primary/db", "/primary/other",
                                                "/primary/nope", "/ready", "/health", "/nothing"]))
    (m_status, m_type, m_body), primary, other, nope, ready, health, missing = answers
    assert m_status == 200 and m_type.startswith("text/plain; version=0.0.4")
    assert any(f.name == "hacluster_module_state" for f in text_string_to_metric_families(m_body))
    assert primary[0] == 200 and json.loads(primary[2])["serving"] is True
    assert primary[1].startswith("application/json")
    assert other[0] == 503 and nope[0] == 404
    assert ready[0] == 200 and json.loads(ready[2])["ready"] is True
    assert health[0] == 200
    assert missing[0] == 404
    assert probe.calls == 6


def test_a_demoting_primary_answers_503():
    probe = Probe(node([mirror("PRIM", lease_held=False)]))
    ((status, _, body),) = asyncio.run(serve_and_get(probe, ["/primary/db"]))
    assert status == 503 and "demoting" in json.loads(body)["reason"]


def test_a_used_port_is_one_line_naming_what_it_is_for():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]

        async def start() -> None:
            await HttpServer("127.0.0.1", port, Probe(node())).start()

        with pytest.raises(ListenError) as e:
            asyncio.run(start())
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(f"cannot listen on 127.0.0.1:{port} for the HTTP endpoints")
