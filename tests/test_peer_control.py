"""The authenticated node-to-node control channel (``hacluster -H``), with real
sockets on loopback."""
from __future__ import annotations

import asyncio
import json
import struct

import pytest

from hacluster.peer_control import (MAX_BODY_BYTES, NONCE_BYTES, PeerControlError,
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
    from hacluster.peer_control import REQUEST_CONTEXT, _frame

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


def test_twenty_silent_connections_from_one_host_do_not_lock_out_the_members():
    """Was: 16 silent connections took every slot and ``-H`` said "wrong cluster
    secret?". One address now gets a few slots; a member from another address is
    served while they sit there, and the refusals are logged once, not per try."""
    async def go():
        calls: list = []
        server = await _server(calls)
        silent = []
        try:
            for _ in range(20):
                silent.append(await asyncio.open_connection("127.0.0.1", server.port,
                                                            local_addr=("127.0.0.2", 0)))
            await asyncio.sleep(0.1)
            reply = await call_peer("127.0.0.1", server.port, SECRET, {"cmd": "status"},
                                    timeout=3)
        finally:
            for _, w in silent:
                w.close()
            await server.close()
        return calls, reply
    calls, reply = _run(go())
    assert reply["ok"] is True and calls == [{"cmd": "status"}]


def test_refusals_are_logged_once_per_address_and_reason(caplog):
    async def go():
        server = await _server([])
        conns = []
        try:
            for _ in range(12):
                conns.append(await asyncio.open_connection("127.0.0.1", server.port,
                                                           local_addr=("127.0.0.2", 0)))
            await asyncio.sleep(0.2)
        finally:
            for _, w in conns:
                w.close()
            await server.close()
    with caplog.at_level("WARNING"):
        _run(go())
    refusals = [r for r in caplog.records if "_refused" in r.getMessage()]
    assert len(refusals) == 1 and "127.0.0.2" in refusals[0].getMessage()
