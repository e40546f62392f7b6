"""The authenticated node-to-node control channel (``hacluster -H``), with real
sockets on loopback."""
from __future__ import annotations

import asyncio
import json
import struct

import pytest

from hacluster.node.peer_control import (MAX_BODY_BYTES, NONCE_BYTES, PeerControlError,
                                    PeerControlServer, call_peer, peer_control_address)

SECRET = "s3cret-of-the-cluster"


def _run(coro):
    return asyncio.run(coro)


async def _server(calls: list, secret: str = SECRET) -> PeerControlServer:
    async def dispatch(request: dict) -> dict:
        calls.append(request)
        return {"ok": True, "result": {"echo": request.get("module")}}
    server = PeerControlServer("127.0.0.1", 0, secret, dispatch)
    await server.start()
    return server


def test_address_is_raft_port_plus_three():
    assert peer_control_address("10.0.0.1:7000") == ("10.0.0.1", 7003)


def test_request_with_the_secret_is_dispatched_and_answered():
    async def go():
        calls: list = []
        server = await _server(calls)
        try:
            reply = await call_peer("127.0.0.1", server.port, SECRET,
                                    {"cmd": "module_state", "module": "db"})
        finally:
            await server.close()
        return calls, reply
    calls, reply = _run(go())
    assert calls == [{"cmd": "module_state", "module": "db"}]
    assert reply == {"ok": True, "result": {"echo": "db"}}


def test_wrong_secret_is_not_dispatched_and_gets_no_answer():
    async def go():
        calls: list = []
        server = await _server(calls)
        try:
            with pytest.raises(PeerControlError, match="wrong cluster secret"):
                await call_peer("127.0.0.1", server.port, "another", {"cmd": "module_cmd",
                                                                      "module": "db", "cmd_name": "stop"})
        finally:
            await server.close()
        return calls
    assert _run(go()) == []


def test_an_answer_from_a_server_without_the_secret_is_rejected():
    async def go():
        calls: list = []
        server = await _server(calls, secret="impostor")
        try:
            with pytest.raises(PeerControlError):
                await call_peer("127.0.0.1", server.port, SECRET, {"cmd": "status"})
        finally:
            await server.close()
        return calls
    # the impostor cannot read the request either: nothing reached its dispatch
    assert _run(go()) == []


def test_local_only_commands_are_refused_remotely():
    async def go():
        calls: list = []
        server = await _server(calls)
        try:
            replies = [await call_peer("127.0.0.1", server.port, SECRET, {"cmd": cmd})
                       for cmd in ("replication_peer_lost", "module_install", "forward")]
        finally:
            await server.close()
        return calls, replies
    calls, replies = _run(go())
    assert calls == []
    for reply in replies:
        assert reply["ok"] is False and "cannot be run from another node" in reply["error"]


def test_oversize_and_garbage_requests_are_dropped_and_the_server_keeps_serving():
    async def go():
        calls: list = []
        server = await _server(calls)
        try:
            for payload in (struct.pack(">I", MAX_BODY_BYTES + 1), b"\x00\x00\x00\x05abc"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                await reader.readexactly(NONCE_BYTES)
                writer.write(payload)
                writer.write_eof()
                assert await reader.read() == b""        # closed without an answer
                writer.close()
            reply = await call_peer("127.0.0.1", server.port, SECRET, {"cmd": "status"})
        finally:
            await server.close()
        return calls, reply
    calls, reply = _run(go())
    assert calls == [{"cmd": "status"}] and reply["ok"] is True


def test_unreachable_peer_is_one_line_naming_it():
    async def go():
        with pytest.raises(PeerControlError, match=r"node at 127\.0\.0\.1:1: ") as e:
            await call_peer("127.0.0.1", 1, SECRET, {"cmd": "status"}, timeout=2)
        return str(e.value)
    assert "\n" not in _run(go())


def test_non_json_body_with_a_valid_mac_is_refused_clearly():
    from hacluster.node.peer_control import REQUEST_CONTEXT, _frame

    async def go():
        calls: list = []
        server = await _server(calls)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            nonce = await reader.readexactly(NONCE_BYTES)
            writer.write(_frame(SECRET, REQUEST_CONTEXT, nonce, b"{not json"))
            await writer.drain()
            (length,) = struct.unpack(">I", await reader.readexactly(4))
            body = json.loads(await reader.readexactly(length))
            writer.close()
        finally:
            await server.close()
        return calls, body
    calls, body = _run(go())
    assert calls == [] and body["ok"] is False and "bad peer control request" in body["error"]


# ---- before authentication (issue 17, item 3) ---------------------------------------------
async def _silent(port: int, source: str):
    """A connection from ``source`` (any 127/8 address is local) that says nothing."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (whatever it sent before)."""
    try:
        while await asyncio.wait_for(reader.read(4096), 10):
            pass
        return True
    except ConnectionError:
        return True
    except asyncio.TimeoutError:
        return False


def test_silent_connections_do_not_lock_out_requests():
    """Before: 16 silent connections took every slot for 5 s each and -H was refused
    ("wrong cluster secret?")."""
    async def go():
        calls: list = []
        server = await _server(calls)
        try:
            silent = [await _silent(server.port, f"127.0.0.{i}") for i in range(2, 22)]
            for reader, _ in silent:
                await reader.readexactly(NONCE_BYTES)  # each is in its handshake
            replies = [await call_peer("127.0.0.1", server.port, SECRET, {"cmd": "status"})
                       for _ in range(20)]
            for _, writer in silent:
                writer.close()
        finally:
            await server.close()
        return replies
    assert all(r["ok"] for r in _run(go()))


def test_handshakes_are_capped_per_address_and_refusals_logged_once(caplog):
    import logging

    async def go():
        server = await _server([])
        try:
            held = [await _silent(server.port, "127.0.0.9") for _ in range(4)]
            for reader, _ in held:
                await reader.readexactly(NONCE_BYTES)
            over = [await _silent(server.port, "127.0.0.9") for _ in range(30)]
            closed = [await _closed(reader) for reader, _ in over]
            reply = await call_peer("127.0.0.1", server.port, SECRET, {"cmd": "status"})
            for _, writer in held + over:
                writer.close()
        finally:
            await server.close()
        return closed, reply
    with caplog.at_level(logging.INFO, logger="hacluster.peer_control"):
        closed, reply = _run(go())
    assert all(closed) and reply["ok"]
    lines = [r.getMessage() for r in caplog.records if "event=peer_control_refused" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "127.0.0.9" in lines[0] and "(limit 4)" in lines[0]


def test_a_flood_from_non_members_cannot_lock_members_out():
    from hacluster.node.tcp_service import HandshakeLimits

    async def go():
        async def dispatch(request):
            return {"ok": True}
        server = PeerControlServer("127.0.0.1", 0, SECRET, dispatch,
                                   handshake=HandshakeLimits(per_address=4, total=8, deadline_s=60),
                                   member_hosts=lambda: {"127.0.0.1"})
        await server.start()
        try:
            flood = [await _silent(server.port, f"127.0.0.{i}") for i in range(2, 10)]
            for reader, _ in flood:
                await reader.readexactly(NONCE_BYTES)
            outsider, w = await _silent(server.port, "127.0.0.10")
            refused = await _closed(outsider)
            w.close()
            reply = await call_peer("127.0.0.1", server.port, SECRET, {"cmd": "status"})
            for _, writer in flood:
                writer.close()
        finally:
            await server.close()
        return refused, reply
    refused, reply = _run(go())
    assert refused and reply["ok"]


def test_a_request_bigger_than_the_handshake_cap_is_dropped_before_it_is_read():
    from hacluster.node.peer_control import MAX_REQUEST_BYTES

    async def go():
        calls: list = []

        async def dispatch(request):
            calls.append(request)
            return {"ok": True}
        # A far deadline: the connection must be closed for its size, not its silence.
        server = PeerControlServer("127.0.0.1", 0, SECRET, dispatch, request_timeout=600)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await reader.readexactly(NONCE_BYTES)
            writer.write(struct.pack(">I", MAX_REQUEST_BYTES + 1))
            await writer.drain()
            closed = await _closed(reader)
            writer.close()
        finally:
            await server.close()
        return closed, calls
    closed, calls = _run(go())
    assert closed and calls == []


def test_a_member_is_reached_over_its_next_network_when_the_first_refuses():
    """call_member: the Raft host's port is closed (nothing sent there), the link
    answers; with every network refusing, one line names each."""
    from hacluster.node.peer_control import PeerUnreachable, call_member

    async def go():
        calls: list = []
        server = PeerControlServer("127.0.0.2", 0, SECRET, _dispatch(calls))
        await server.start()
        raft_port = server.port - 3         # the member's Raft port, as peer control derives it
        member = {"address": f"127.0.0.1:{raft_port}", "role": "node", "links": ["127.0.0.2"]}
        try:
            reply = await call_member(member, SECRET, {"cmd": "module_state", "module": "db"},
                                      timeout=5)
        finally:
            await server.close()
        with pytest.raises(PeerUnreachable) as e:
            await call_member(member, SECRET, {"cmd": "status"}, timeout=5)
        return calls, reply, str(e.value)
    calls, reply, error = _run(go())
    assert calls == [{"cmd": "module_state", "module": "db"}]       # sent once, over the link
    assert reply == {"ok": True, "result": {"echo": "db"}}
    assert "127.0.0.1:" in error and "127.0.0.2:" in error and "\n" not in error


def _dispatch(calls: list):
    async def dispatch(request: dict) -> dict:
        calls.append(request)
        return {"ok": True, "result": {"echo": request.get("module")}}
    return dispatch
