"""Credentials per role (issue 17): a witness made by ``cluster init`` holds only the
Raft credential, derived one way from the cluster secret. With it, nothing that
drives modules, serves packages or replicates lets it in — real servers on loopback,
the witness's real credential from a real ``cluster init``."""
from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from hacluster import cli
from hacluster.node.cluster_config import load
from hacluster.modules.fetch import ModuleFetchError, ModuleFetchServer, fetch_module
from hacluster.node.peer_control import PeerControlError, PeerControlServer, call_peer
from raft.cluster_state import ClusterState
from replication.channel import AuthError, ChannelClient
from replication.ops import Op, OpKind
from replication.receiver import Receiver


@pytest.fixture
def creds(tmp_path: Path) -> tuple[str, str]:
    """(a data node's cluster secret, the witness's credential)."""
    assert cli.main(["cluster", "init", "--name", "prod", "--node", "a=10.0.0.1",
                     "--node", "b=10.0.0.2", "--witness", "w=10.0.0.9",
                     "--out", str(tmp_path / "cfg")]) == 0
    return (load(tmp_path / "cfg" / "a").read_secret(),
            load(tmp_path / "cfg" / "w").read_raft_secret())


def test_the_witness_cannot_drive_a_node_through_peer_control(creds):
    secret, witness = creds
    calls: list = []

    async def go() -> None:
        async def dispatch(request: dict) -> dict:
            calls.append(request)
            return {"ok": True, "result": {}}
        server = PeerControlServer("127.0.0.1", 0, secret, dispatch)
        await server.start()
        try:
            with pytest.raises(PeerControlError, match="wrong cluster secret"):
                await call_peer("127.0.0.1", server.port, witness,
                                {"cmd": "module_cmd", "module": "db", "cmd_name": "stop"})
            # a data node's own secret is served
            assert (await call_peer("127.0.0.1", server.port, secret, {"cmd": "status"}))["ok"]
        finally:
            await server.close()
    asyncio.run(go())
    assert calls == [{"cmd": "status"}]


def test_the_witness_cannot_open_a_replication_session(creds, tmp_path):
    secret, witness = creds
    root = tmp_path / "copy"
    root.mkdir()
    receiver = Receiver(str(root), secret, "127.0.0.1", 0).start()
    try:
        client = ChannelClient(*receiver.address, witness, 1, "apply", timeout=3)
        with pytest.raises(AuthError):
            client.connect()
        client.close()
    finally:
        receiver.stop()
    assert os.listdir(root) == []


def test_the_witness_can_neither_fetch_nor_serve_a_package(creds):
    secret, witness = creds
    content = os.urandom(10_000)
    digest = hashlib.sha256(content).hexdigest()

    async def go() -> None:
        server = ModuleFetchServer("127.0.0.1", 0, secret, {digest: content}.get)
        await server.start()
        fake = ModuleFetchServer("127.0.0.1", 0, witness, {digest: content}.get)
        await fake.start()
        try:
            with pytest.raises(ModuleFetchError, match="refused"):
                await fetch_module("127.0.0.1", server.port, witness, digest)
            with pytest.raises(ModuleFetchError):       # a data node does not trust it
                await fetch_module("127.0.0.1", fake.port, secret, digest)
            assert await fetch_module("127.0.0.1", server.port, secret, digest) == content
        finally:
            await server.close()
            await fake.close()
    asyncio.run(go())


def test_a_package_is_committed_from_a_data_node_only():
    s = ClusterState()
    assert s.bootstrap({"a": {"address": "10.0.0.1:7400", "role": "node"},
                        "b": {"address": "10.0.0.2:7400", "role": "node"},
                        "w": {"address": "10.0.0.9:7400", "role": "witness"}})["ok"]
    r = s.install_module("app", "ab" * 32, "mirror", 100, "w", 1.5)
    assert not r["ok"] and "data nodes only" in r["error"]
    assert s.install_module("app", "ab" * 32, "mirror", 100, "a", 1.5)["ok"]
