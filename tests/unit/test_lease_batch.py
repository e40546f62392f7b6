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


async def bootstrapped(member: RaftMember, address: str) -> None:
    """A single voter that leads, with member "a" at ``address`` bootstrapped."""
    deadline = time.monotonic() + 10
    while not member.is_leader():
        assert time.monotonic() < deadline, "a single voter never became leader"
        await asyncio.sleep(0.02)
    assert (await asyncio.wrap_future(member.submit(
        "bootstrap", {"a": {"address": address, "role": "node"}})))["ok"]


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
        await bootstrapped(member, address)
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
        await bootstrapped(member, address)
        deadline = time.monotonic() + 10
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


def test_a_maintenance_hold_is_asked_kept_while_a_fence_reaches_it_and_dropped(tmp_path):
    """Real single-voter Raft: in maintenance the renewals ask for and get the hold;
    after it, the holder drops its extension (and stops at the nearer deadline), asks on
    while a fence still reaches beyond a plain lease (Raft keeps the hold), and renews
    plainly once it does not (Raft drops it)."""
    address = f"127.0.0.1:{free_ports(1)[0]}"
    member = RaftMember(address, [address], tmp_path, "secret", RaftSettings())
    timing = LeaseTiming(1.0, 0.2)
    lost: list[str] = []

    async def scenario() -> None:
        await bootstrapped(member, address)
        assert (await asyncio.wrap_future(member.submit("raise_feature_level", 1)))["ok"]
        holder = LeaseHolder(member, liveness_resource("a"), "a", timing,
                             on_lost=lambda epoch, why: lost.append(why))
        maintenance = {"on": True}
        fence = {"until": None}
        holder.wants_hold = lambda: maintenance["on"]
        holder.add_fence(lambda: fence["until"])
        holder.batch.extensions_allowed = lambda: True
        task = asyncio.create_task(holder.run())
        assert (await asyncio.wrap_future(member.submit("set_maintenance", None, 30.0)))["ok"]
        for _ in range(100):
            if holder.lease.extended():
                break
            await asyncio.sleep(0.05)
        assert holder.lease.extended()
        assert member.snapshot()["leases"]["node/a"]["hold_s"] == 30.0
        # maintenance over, but a fence (a mount's hold) still reaches far
        fence["until"] = time.monotonic() + 60
        maintenance["on"] = False
        assert (await asyncio.wrap_future(member.submit("set_maintenance", None, None)))["ok"]
        await asyncio.sleep(4 * timing.renew_interval_s)
        assert not holder.lease.extended()                  # dropped at once
        assert member.snapshot()["leases"]["node/a"]["hold_s"] == 30.0   # kept for the fence
        fence["until"] = None
        await asyncio.sleep(4 * timing.renew_interval_s)
        assert "hold_s" not in member.snapshot()["leases"]["node/a"]
        assert holder.holding() and not lost
        # maintenance again; then it ends just as renewals stop getting through: the
        # holder stops at a plain lease's deadline, not at the hold's (30 s)
        maintenance["on"] = True
        assert (await asyncio.wrap_future(member.submit("set_maintenance", None, 30.0)))["ok"]
        for _ in range(100):
            if holder.lease.extended():
                break
            await asyncio.sleep(0.05)
        assert holder.lease.extended()
        real_submit = member.submit

        def refusing(op, *args):
            if op != "renew_many":
                return real_submit(op, *args)
            fut: concurrent.futures.Future = concurrent.futures.Future()
            fut.set_exception(RaftCommandError("no Raft leader known (nothing sent)"))
            return fut
        member.submit = refusing
        maintenance["on"] = False
        stopped_at = time.monotonic()
        for _ in range(200):
            if lost:
                break
            await asyncio.sleep(0.05)
        assert lost, "the holder still acted 10 s after its plain deadline"
        assert time.monotonic() - stopped_at < 10.0     # a plain lease (1 s), far from 30 s
        holder.stopping = True
        holder.wake()
        await asyncio.wait_for(task, 5)

    try:
        asyncio.run(scenario())
    finally:
        member.destroy()
