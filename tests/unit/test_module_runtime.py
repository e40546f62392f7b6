"""modules/runtime.ModuleRuntime, the loop every module kind shares: it feeds its
machine the view of the committed state (only when it changed), runs the machine's
plans one at a time (an urgent one cancels the running one), reports each plan's
end with the view its own commits made, retries commits that were not committed
and feeds the view again after a plan that could not begin. The machine is a small
pure one driven by the test (``module_world.ToyMachine``); the node is a FakeHost
over a real ClusterState; scripts are real scripts."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hacluster.modules import runtime
from hacluster.modules.host import ModuleSlice
from hacluster.modules.machine import Command, PlanDone, RunScript, ViewChanged
from hacluster.modules.runtime import Placement
from hacluster.modules.userconfig import parse_userconfig
from raft.cluster_state import ClusterState
from tests.conftest import loop_until
from tests.unit.module_world import (MIRROR_USERCONFIG, CommitIntentAction, FakeHost, Fail,
                                     NotYet, Step, ToyRuntime, ToyState, members, plan)

MEMBERS = members({"n1": 7400, "n2": 7401, "w": 7402})


def make_runtime(tmp_path: Path, scripts: dict[str, str] | None = None) -> ToyRuntime:
    state = ClusterState()
    state.bootstrap(MEMBERS)
    assert state.install_module("web", "a" * 64, "mirror", 10, "n1", 1.5)["ok"]
    host = FakeHost(tmp_path / "nodes", "n1", state, MEMBERS)
    module_dir = tmp_path / "web"
    (module_dir / "bin").mkdir(parents=True)
    for name, body in (scripts or {}).items():
        (module_dir / "bin" / name).write_text(body)
        (module_dir / "bin" / name).chmod(0o755)
    config = parse_userconfig(MIRROR_USERCONFIG, "userconfig.xml", "web")
    return ToyRuntime(Placement(host, "web", module_dir, config, ("n1", "n2")))


async def started(rt: ToyRuntime) -> ToyRuntime:
    await rt.start()
    return rt


def test_the_view_is_fed_at_start_and_again_only_when_it_changes(tmp_path):
    async def go():
        rt = await started(make_runtime(tmp_path))
        assert rt.machine.views() == [(None, None)]
        same = ModuleSlice.of(rt.host.cluster_state(), "web", rt.leases_read)
        rt.state_changed(same)
        rt.state_changed(same)
        assert rt.machine.views() == [(None, None)]
        rt.host.state.set_intent("web", "n1", "start")
        rt.host.state.acquire("node/n2", "n2", 1.5)
        rt.state_changed(ModuleSlice.of(rt.host.cluster_state(), "web", rt.leases_read))
        assert rt.machine.views() == [(None, None), ("start", "n2")]
        await rt.close()
        rt.refresh()
        rt.state_changed(ModuleSlice(None, {}))
        assert len(rt.machine.views()) == 2                  # closed: nothing more is fed
    asyncio.run(go())


def test_nothing_is_fed_before_the_runtime_starts(tmp_path):
    rt = make_runtime(tmp_path)
    rt.refresh()
    rt.state_changed(ModuleSlice(None, {}))
    assert rt.machine.events == []


def test_plans_run_one_at_a_time_in_order(tmp_path):
    async def go():
        rt = await started(make_runtime(tmp_path))
        gate = asyncio.Event()
        rt.machine.plans.update(a=plan("a", Step("a1", gate), Step("a2")), b=plan("b", Step("b1")))
        rt.feed(Command("a"))
        rt.feed(Command("b"))
        await loop_until("a1 ran", lambda: rt.done == ["a1"])
        for _ in range(20):
            await asyncio.sleep(0)
        assert rt.done == ["a1"]                             # b waits for a
        gate.set()
        await loop_until("both plans ended", lambda: len(rt.machine.done()) == 2)
        assert rt.done == ["a1", "a2", "b1"]
        assert [d.ok for d in rt.machine.done()] == [True, True]
        assert rt.machine.display == (ToyState.UP, "Ready")
        await rt.close()
    asyncio.run(go())


def test_an_urgent_plan_cancels_the_running_one_and_runs_at_once(tmp_path):
    async def go():
        rt = await started(make_runtime(tmp_path))
        held = asyncio.Event()
        rt.machine.plans.update(slow=plan("slow", Step("s1", held), Step("s2")),
                                now=plan("now", Step("n1"), to=ToyState.STOP, urgent=True))
        rt.feed(Command("slow"))
        await loop_until("s1 ran", lambda: rt.done == ["s1"])
        rt.feed(Command("now"))
        await loop_until("the urgent plan ended", lambda: rt.machine.done())
        held.set()                      # would let the slow plan go on, had it not been cancelled
        for _ in range(20):
            await asyncio.sleep(0)
        assert rt.done == ["s1", "n1"]                       # s2 never ran
        assert rt.machine.done() == [PlanDone(True, None, not_yet=False, at=rt.machine.done()[0].at)]
        assert rt.machine.display == (ToyState.STOP, "Ready")
        await rt.close()
    asyncio.run(go())


def test_a_failed_action_ends_the_plan_with_its_error_after_the_view_it_made(tmp_path):
    async def go():
        rt = await started(make_runtime(tmp_path))
        rt.machine.plans["go"] = plan("go", CommitIntentAction("start"), Fail("disk on fire"),
                                      Step("never"))
        rt.feed(Command("go"))
        await loop_until("the plan ended", lambda: rt.machine.done())
        done = rt.machine.done()[0]
        assert (done.ok, done.error, done.not_yet) == (False, "disk on fire", False)
        assert rt.done == []
        # the plan's own commit is in the view the machine decides on, fed before PlanDone
        events = rt.machine.events
        i = events.index(done)
        assert events[i - 1] == ViewChanged(("start", None))
        assert rt.machine.display == (ToyState.STOP, "Ready")
        assert "plan go" in rt.module_log.read_text()
        await rt.close()
    asyncio.run(go())


@pytest.mark.parametrize("action, not_yet", [(NotYet("the peer is starting"), True),
                                             (Fail("disk on fire"), False)])
def test_the_view_is_fed_again_after_a_plan_that_could_not_begin_or_failed(
        tmp_path, monkeypatch, action, not_yet):
    """Not yet: always, shortly. Failed: when the kind asks for it (a machine that
    retries failed commits on the next view)."""
    monkeypatch.setattr(runtime, "NOT_YET_RETRY_S", 0.01)

    async def go():
        rt = await started(make_runtime(tmp_path))
        rt.retry_view_after_failure_s = None if not_yet else 0.01
        rt.machine.plans["go"] = plan("go", action)
        rt.feed(Command("go"))
        await loop_until("the plan ended", lambda: rt.machine.done())
        done = rt.machine.done()[0]
        assert (done.ok, done.error, done.not_yet) == (False, action.why, not_yet)
        # counted from the PlanDone itself: on a loaded machine the refeed (10 ms later)
        # may come before this coroutine looks again
        after = next(i for i, e in enumerate(rt.machine.events) if e is done) + 1
        await loop_until("the view is fed again", lambda: len(rt.machine.events) > after)
        assert isinstance(rt.machine.events[after], ViewChanged)
        await rt.close()
    asyncio.run(go())


def test_a_commit_not_committed_in_time_is_retried_and_lands_once(tmp_path):
    async def go():
        rt = await started(make_runtime(tmp_path))
        rt.host.refuse_commits = 2
        rt.machine.plans["go"] = plan("go", CommitIntentAction("start"), Step("after"))
        rt.feed(Command("go"))
        await loop_until("the plan ended", lambda: rt.machine.done())
        assert rt.machine.done()[0].ok and rt.done == ["after"]
        assert rt.host.commits == [("set_intent", ("web", "n1", "start"))]
        assert rt.host.state.to_dict()["modules"]["web"]["intent"] == {"n1": "start"}
        await rt.close()
    asyncio.run(go())


@pytest.mark.parametrize("refusals, intent, error", [
    (0, "sideways", "set_intent: invalid intent 'sideways'"),         # refused: final at once
    (10_000, "start", "set_intent: set_intent was not committed in time (no quorum?)"),
])
def test_a_refused_or_never_committed_commit_fails_the_plan(tmp_path, refusals, intent, error):
    async def go():
        rt = await started(make_runtime(tmp_path))
        rt.host.refuse_commits = refusals
        rt.machine.plans["go"] = plan("go", CommitIntentAction(intent), Step("never"))
        rt.feed(Command("go"))
        await loop_until("the plan ended", lambda: rt.machine.done())
        done = rt.machine.done()[0]
        assert (done.ok, done.error) == (False, error) and rt.done == []
        await rt.close()
    asyncio.run(go())


def test_a_failing_script_fails_the_plan_and_a_failing_stop_script_is_forced(tmp_path):
    record = tmp_path / "calls"
    body = f'#!/bin/sh\necho "$0 $*" >> {record}\necho "cannot bind port 80"\nexit 3\n'

    async def go():
        rt = await started(make_runtime(tmp_path, {"start_prim": body, "stop_prim": body}))
        rt.machine.plans["start"] = plan("start", RunScript("start_prim", "STOP", "UP", "start"))
        rt.machine.plans["stop"] = plan("stop", RunScript("stop_prim", "UP", "STOP", "stop", stop=True),
                                        to=ToyState.STOP)
        rt.feed(Command("start"))
        await loop_until("start ended", lambda: len(rt.machine.done()) == 1)
        assert rt.machine.done()[0].error == "start_prim STOP UP start: exit 3: cannot bind port 80"
        rt.feed(Command("stop"))
        await loop_until("stop ended", lambda: len(rt.machine.done()) == 2)
        assert rt.machine.done()[1].ok          # a stop script's failure is logged, not fatal
        calls = [line.split(" ", 1)[1] for line in record.read_text().splitlines()]
        assert calls == ["STOP UP start", "UP STOP stop", "UP STOP force"]
        await rt.close()
    asyncio.run(go())


def test_wait_state_answers_once_the_state_is_ready_or_at_its_timeout(tmp_path):
    async def go():
        rt = await started(make_runtime(tmp_path))
        gate = asyncio.Event()
        rt.machine.plans["go"] = plan("go", Step("s", gate))
        assert await rt.wait_state("STOP", 5.0)                      # already there
        rt.feed(Command("go"))
        waiter = asyncio.ensure_future(rt.wait_state("UP", 60.0))
        assert not await rt.wait_state("UP", 0.01)                   # transient meanwhile
        gate.set()
        assert await waiter
        assert rt._state_waiters == []
        await rt.close()
    asyncio.run(go())
