"""One Raft entry renews every lease of a node: ``renew_many`` (pure) and
``RenewalBatch`` with real LeaseHolders on a real (single-voter) RaftMember."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

from hacluster.node.lease_holder import RETRIES_PER_INTERVAL, LeaseHolder
from raft.cluster_state import ClusterState, liveness_resource
from raft.lease import LeaseTiming
from raft.member import RaftCommandError, RaftMember
from raft.settings import RaftSettings
from tests.conftest import free_ports


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


def test_a_nodes_leases_renew_in_one_commit_each_interval(tmp_path):
    applied: list[tuple[str, tuple]] = []
    address = f"127.0.0.1:{free_ports(1)[0]}"
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


def test_a_renewal_that_fails_fast_is_retried_at_a_bounded_pace(tmp_path):
    """A member cut off from Raft gets its renewals refused at once: the holder
    tries again a few times per interval until its deadline, not in a busy loop."""
    address = f"127.0.0.1:{free_ports(1)[0]}"
    member = RaftMember(address, [address], tmp_path, "secret", RaftSettings())
    timing = LeaseTiming(1.0, 0.2)          # renewals every 0.25 s, deadline 0.8 s after one
    attempts: list[float] = []
    real_submit = member.submit

    def refusing_submit(op, *args):
        if op != "renew_many":
            return real_submit(op, *args)
        attempts.append(time.monotonic())
        fut: concurrent.futures.Future = concurrent.futures.Future()
        fut.set_exception(RaftCommandError("no Raft leader known (nothing sent)"))
        return fut

    async def scenario() -> tuple[float, bool]:
        deadline = time.monotonic() + 10
        while not member.is_leader():
            assert time.monotonic() < deadline, "a single voter never became leader"
            await asyncio.sleep(0.02)
        assert (await asyncio.wrap_future(member.submit(
            "bootstrap", {"a": {"address": address, "role": "node"}})))["ok"]
        holder = LeaseHolder(member, liveness_resource("a"), "a", timing)
        task = asyncio.create_task(holder.run())
        while not holder.holding():
            assert time.monotonic() < deadline, "the lease was never acquired"
            await asyncio.sleep(0.02)
        member.submit = refusing_submit
        started = time.monotonic()
        while holder.holding():
            await asyncio.sleep(0.01)
        window = time.monotonic() - started
        member.submit = real_submit
        await holder.stop(release=False)
        await task
        return window, holder.holding()

    try:
        window, still_holding = asyncio.run(scenario())
    finally:
        member.destroy()
    assert not still_holding                                   # lost at its deadline, as it must
    gap = timing.renew_interval_s / RETRIES_PER_INTERVAL
    assert len(attempts) >= 2, attempts                        # it did keep trying
    assert len(attempts) <= window / gap + 2, (len(attempts), window)
    assert all(b - a >= gap * 0.9 for a, b in zip(attempts, attempts[1:])), attempts
