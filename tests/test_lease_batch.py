"""One Raft entry renews every lease of a node: ``renew_many`` (pure) and
``RenewalBatch`` with real LeaseHolders on a real (single-voter) RaftMember."""
from __future__ import annotations

import asyncio
import socket
import time

from raft.cluster_state import ClusterState, liveness_resource
from raft.lease import LeaseTiming
from raft.member import RaftMember
from raft.settings import RaftSettings

from hacluster.lease_holder import LeaseHolder


def two_holder_state() -> ClusterState:
    s = ClusterState()
    assert s.bootstrap({"a": {"address": "10.0.0.1:7400", "role": "node"},
                        "b": {"address": "10.0.0.2:7400", "role": "node"},
                        "w": {"address": "10.0.0.3:7400", "role": "witness"}})["ok"]
    assert s.acquire("node/a", "a", 1.5)["ok"] and s.acquire("vip", "a", 1.5)["ok"]
    return s


def test_renew_many_renews_each_lease_as_renew_would():
    s = two_holder_state()
    seq = {r: s.leases[r]["seq"] for r in ("node/a", "vip")}
    r = s.renew_many("a", [["node/a", 1], ["vip", 1], ["nothing", 3]])
    assert r["ok"]
    assert r["results"]["node/a"] == {"ok": True, "epoch": 1}
    assert r["results"]["vip"]["ok"] and s.leases["vip"]["seq"] == seq["vip"] + 1
    assert s.leases["node/a"]["seq"] == seq["node/a"] + 1
    assert not r["results"]["nothing"]["ok"] and "no longer holds nothing" in r["results"]["nothing"]["error"]
    # another holder's lease or an old epoch: refused one by one, the rest renewed
    r = s.renew_many("b", [["vip", 1]])
    assert not r["results"]["vip"]["ok"] and s.leases["vip"]["holder"] == "a"


def test_malformed_renew_many_changes_nothing():
    s = two_holder_state()
    before = s.to_dict()
    for bad in ([], None, "vip", [["vip"]], [["vip", "1"]], [["vip", True]], [[1, 1]],
                [["vip", 1], ["vip", 1]]):
        r = s.renew_many("a", bad)
        assert not r["ok"] and r["error"].startswith("renew_many:"), bad
    assert s.to_dict() == before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_nodes_leases_renew_in_one_commit_each_interval(tmp_path):
    applied: list[tuple[str, tuple]] = []
    address = f"127.0.0.1:{free_port()}"
    member = RaftMember(address, [address], tmp_path, "secret", RaftSettings(),
                        on_applied=lambda op, args, result: applied.append((op, args)))
    timing = LeaseTiming(1.0, 0.2)          # renewals every 0.25 s

    async def scenario() -> tuple[list[LeaseHolder], float]:
        deadline = time.monotonic() + 10
        while not member.is_leader():
            assert time.monotonic() < deadline, "a single voter never became leader"
            await asyncio.sleep(0.02)
        result = await asyncio.wrap_future(member.submit(
            "bootstrap", {"a": {"address": address, "role": "node"}}))
        assert result["ok"]
        holders = [LeaseHolder(member, liveness_resource("a"), "a", timing)]
        tasks = [asyncio.create_task(holders[0].run())]
        await asyncio.sleep(0.1)             # out of phase with the first one
        holders.append(LeaseHolder(member, "mod", "a", timing))
        tasks.append(asyncio.create_task(holders[1].run()))
        await asyncio.sleep(1.0)             # a few intervals: both converge on one batch
        applied.clear()
        window_started = time.monotonic()
        await asyncio.sleep(1.0)
        window = time.monotonic() - window_started
        assert all(h.holding() for h in holders)
        for h in holders:
            await h.stop()
        await asyncio.gather(*tasks)
        return holders, window

    try:
        holders, window = asyncio.run(scenario())
    finally:
        member.destroy()
    renewals = [(op, args) for op, args in applied if op in ("renew", "renew_many")]
    renew_ops = [args for op, args in renewals if op == "renew_many"]
    assert renew_ops and all(op == "renew_many" for op, _ in renewals)
    # in step: every commit of the window renews both leases, about one per interval
    assert all(sorted(r for r, _ in leases) == ["mod", "node/a"] for _node, leases in renew_ops)
    assert len(renew_ops) <= window / timing.renew_interval_s + 1
    # and stop released both
    assert sorted(args[0] for op, args in applied if op == "release") == sorted(
        h.resource for h in holders)
