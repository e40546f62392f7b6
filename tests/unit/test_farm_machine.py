"""The pure farm state machine, driven by a simulated three-node farm.

The simulation plays Raft (farm members with power, the bucket table from the
real allocator, intents, liveness and cut-offs) and carries out every plan at
once; events to each machine go through one queue, so a machine may act on a
view that is already stale, as a real one does. Hypothesis throws random
commands, cut-offs, expiries, checker reports and daemon crashes at it and
checks, whenever the queue is empty, that no node serves buckets it does not
own in the committed table."""
from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from hacluster.farm.machine import (
    CheckerDown,
    CheckerUp,
    Command,
    CommitFarmJoin,
    CommitFarmLeave,
    CommitIntent,
    DropVip,
    FarmMachine,
    PlanDone,
    RaiseVip,
    Restarted,
    RunScript,
    SetBuckets,
    State,
    View,
    ViewChanged,
)
from raft.bucket_allocator import BUCKETS, allocate

NODES = ("a", "b", "c")
POWER = {"a": 1, "b": 2, "c": 1}


class Sim:
    def __init__(self, fail_scripts: frozenset[tuple[str, str]] = frozenset(),
                 views_late: bool = False) -> None:
        # views_late: a plan's PlanDone reaches the machine before the views its
        # commits produced (the driver's order is not guaranteed).
        self.views_late = views_late
        self.members: dict[str, int] = {}
        self.table: list[str | None] = [None] * BUCKETS
        self.version = 0
        self.intent: dict[str, str] = {}
        self.live = {n: True for n in NODES}     # holds its liveness lease
        self.cut = {n: False for n in NODES}
        self.m = {n: FarmMachine(n) for n in NODES}
        self.vip: dict[str, frozenset[int] | None] = {n: None for n in NODES}
        self.app = {n: False for n in NODES}
        self.fail_scripts = fail_scripts
        self.scripts: list[tuple[str, str, str]] = []
        self.refusals: list[str] = []
        self.queue: deque = deque()
        self.sent: dict[str, View | None] = {n: None for n in NODES}
        self.current_plan = {n: 0 for n in NODES}
        self.plan_ids = 0
        self.busy = False

    # ---- Raft ----------------------------------------------------------------------
    def connected(self, n: str) -> bool:
        return self.live[n] and not self.cut[n]

    def owned(self, n: str) -> frozenset[int]:
        return frozenset(i for i, o in enumerate(self.table) if o == n)

    def view(self, n: str) -> View:
        return View(version=self.version, buckets=self.owned(n), joined=n in self.members,
                    connected=self.connected(n), intent=self.intent.get(n))

    def set_members(self, members: dict[str, int]) -> None:
        table = allocate(self.table, members)
        self.members = members
        if table != self.table:
            self.table = table
            self.version += 1

    def broadcast(self) -> None:
        for n in NODES:
            v = self.view(n)
            if v != self.sent[n]:
                self.sent[n] = v
                self.queue.append((n, ViewChanged(v), None))

    # ---- the driver -------------------------------------------------------------------
    def feed(self, n: str, event) -> None:
        self.queue.append((n, event, None))
        self.drain()

    def drain(self) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            steps = 0
            while self.queue:
                steps += 1
                assert steps < 10_000, "the machines never settle"
                n, event, plan_id = self.queue.popleft()
                if plan_id is not None and plan_id != self.current_plan[n]:
                    continue        # the plan was cancelled by an urgent one
                out = self.m[n].handle(event)
                if out.refused:
                    self.refusals.append(out.refused)
                for plan in out.plans:
                    self.run_plan(n, plan)
        finally:
            self.busy = False

    def run_plan(self, n: str, plan) -> None:
        self.plan_ids += 1
        self.current_plan[n] = self.plan_ids
        ok, error = True, None
        for action in plan.actions:
            if isinstance(action, RunScript):
                self.scripts.append((n, action.script, action.action))
                if (n, action.script) in self.fail_scripts:
                    ok, error = False, f"{action.script} exit 1"
                    if not action.stop:
                        break
                if action.script == "start_both":
                    if ok:
                        self.app[n] = True
                elif action.script == "stop_both":
                    self.app[n] = False     # the forced retry kills it, whatever the exit code
            elif isinstance(action, CommitIntent):
                if self.connected(n):
                    self.intent[n] = action.intent
            elif isinstance(action, CommitFarmJoin):
                if not self.connected(n):
                    ok, error = False, "farm_join not committed: no quorum"
                    break
                self.set_members({**self.members, n: POWER[n]})
            elif isinstance(action, CommitFarmLeave):
                if self.connected(n) and n in self.members:
                    self.set_members({k: p for k, p in self.members.items() if k != n})
            elif isinstance(action, RaiseVip):
                assert self.vip[n] is None, "VIP raised twice"
                assert self.connected(n), "VIP raised by a node that cannot commit"
                assert n in self.members, "VIP raised by a node that is not a committed member"
                assert action.version <= self.version
                self.vip[n] = action.buckets
            elif isinstance(action, SetBuckets):
                assert self.vip[n] is not None, "buckets set without the VIP"
                assert n in self.members, "buckets set by a node that is not a committed member"
                self.vip[n] = action.buckets
            elif isinstance(action, DropVip):
                self.vip[n] = None
            else:
                raise TypeError(f"unknown action {action!r}")
            if not self.views_late:
                self.broadcast()
        self.queue.append((n, PlanDone(ok, error), self.current_plan[n]))
        self.broadcast()

    # ---- the world ------------------------------------------------------------------------
    def cut_off(self, n: str) -> None:
        self.cut[n] = True
        self.broadcast()
        self.drain()

    def heal(self, n: str) -> None:
        self.cut[n] = False
        self.live[n] = True         # the daemon acquires its liveness lease again
        self.broadcast()
        self.drain()

    def expire(self, n: str) -> None:
        """The leader saw no renewal: n leaves the farm in the same op. A node that
        is not cut off (it was paused, say) acquires its liveness again."""
        self.live[n] = False
        self.set_members({k: p for k, p in self.members.items() if k != n})
        self.broadcast()
        self.drain()
        if not self.cut[n]:
            self.heal(n)

    def crash(self, n: str) -> None:
        """The daemon dies and restarts; the VIP and the application stay behind."""
        self.queue = deque(e for e in self.queue if e[0] != n)
        self.m[n] = FarmMachine(n)
        self.sent[n] = None
        self.feed(n, Restarted())
        self.broadcast()
        self.drain()

    def settle(self) -> None:
        self.broadcast()
        self.drain()

    # ---- checks ---------------------------------------------------------------------------
    def check_safe(self) -> None:
        assert not self.queue
        served: set[int] = set()
        for n in NODES:
            m = self.m[n]
            if self.vip[n] is not None:
                assert self.connected(n), f"{n} holds the VIP while cut off"
                assert n in self.members, f"{n} holds the VIP without being a farm member"
                assert self.vip[n] == self.owned(n), f"{n} serves buckets it does not own"
                assert not served & self.vip[n], "a bucket served by two nodes"
                served |= self.vip[n]
            if m.state in (State.STOP, State.WAIT) and m.running is None:
                assert self.vip[n] is None, f"{n} holds the VIP in {m.state.value}"
                assert not self.app[n], f"{n} runs the application in {m.state.value}"
                if self.connected(n):
                    assert n not in self.members, f"{n} is a farm member in {m.state.value}"

    def check_serving(self, nodes=NODES) -> None:
        """Every connected, started node is UP, Ready, serving exactly its buckets."""
        for n in nodes:
            assert self.m[n].display == (State.UP, "Ready"), (n, self.m[n].display)
            assert self.vip[n] == self.owned(n) and self.app[n]


def _started(nodes=NODES, **kw) -> Sim:
    sim = Sim(**kw)
    sim.settle()
    for n in nodes:
        sim.feed(n, Command("start"))
    return sim


def test_start_runs_prestart_start_both_joins_then_raises_the_vip_with_its_buckets():
    sim = _started()
    sim.check_safe()
    sim.check_serving()
    assert set().union(*(sim.vip[n] for n in NODES)) == set(range(BUCKETS))
    assert [len(sim.vip[n]) for n in NODES] == [64, 128, 64]
    assert [s for n, s, _ in sim.scripts if n == "a"] == ["prestart", "transition", "start_both",
                                                          "transition"]
    assert sim.intent == {n: "start" for n in NODES}


def test_the_vip_is_raised_only_after_the_join_is_committed():
    m = FarmMachine("a")
    m.handle(ViewChanged(View(connected=True)))
    plans = [p for p in m.handle(Command("start")).plans]
    for expected in (("prestart", "transition"), ("start_both", "transition")):
        assert tuple(a.script for a in plans[0].actions if isinstance(a, RunScript)) == expected
        plans = m.handle(PlanDone(True)).plans
    assert plans[0].actions == (CommitFarmJoin(),)
    assert m.handle(PlanDone(True)).plans == (), "no VIP before the view shows the join"
    plans = m.handle(ViewChanged(View(version=1, buckets=frozenset({1, 2}), joined=True,
                                      connected=True, intent="start"))).plans
    assert plans[0].actions == (RaiseVip(1, frozenset({1, 2})),)
    assert m.display == (State.UP, "Transient")
    m.handle(PlanDone(True))
    assert m.display == (State.UP, "Ready")


def test_a_table_change_replaces_the_buckets_and_the_others_are_undisturbed():
    sim = _started(("a", "b"))
    before = dict(sim.vip)
    sim.feed("c", Command("start"))
    sim.check_safe()
    sim.check_serving()
    for n in ("a", "b"):
        assert sim.vip[n] <= before[n], "a joining node only takes buckets"


def test_stop_drops_the_vip_then_leaves_before_stop_both():
    sim = _started()
    sim.scripts.clear()
    m = sim.m["b"]
    out = m.handle(Command("stop"))
    actions = out.plans[0].actions
    assert actions[:3] == (DropVip(), CommitFarmLeave(), CommitIntent("stop"))
    assert [a.script for a in actions[3:]] == ["stop_both", "poststop", "transition"]
    sim.run_plan("b", out.plans[0])
    sim.drain()
    sim.check_safe()
    assert m.display == (State.STOP, "Ready") and "b" not in sim.members
    sim.check_serving(("a", "c"))
    assert set().union(sim.vip["a"], sim.vip["c"]) == set(range(BUCKETS))


def test_forcestop_runs_the_stop_scripts_with_force():
    sim = _started()
    sim.feed("a", Command("forcestop"))
    assert ("a", "stop_both", "force") in sim.scripts and ("a", "poststop", "force") in sim.scripts
    assert sim.m["a"].display == (State.STOP, "Ready")


def _serving(m: FarmMachine, view: View) -> None:
    """Drive a lone machine from STOP to UP Ready on ``view`` (already joined)."""
    m.handle(ViewChanged(view))
    for _ in range(4):      # prestart, start_both, (joined already) raise VIP
        if m.running is None:
            break
        m.handle(PlanDone(True))
    assert m.display == (State.UP, "Ready") and m.vip == view.buckets


def test_cut_off_drops_the_vip_at_once_even_during_a_plan_and_keeps_the_application():
    m = FarmMachine("a")
    _serving(m, View(version=1, buckets=frozenset({7}), joined=True, connected=True,
                     intent="start"))
    m.handle(ViewChanged(View(version=2, buckets=frozenset({7, 8}), joined=True, connected=True,
                              intent="start")))
    assert isinstance(m.running.actions[0], SetBuckets)
    out = m.handle(ViewChanged(View(version=2, buckets=frozenset({7, 8}), joined=True,
                                    connected=False, intent="start")))
    plan = out.plans[0]
    assert plan.urgent and plan.actions == (DropVip(),) and plan.next_state is State.UP
    assert any("interrupted" in line for line in out.log)
    assert any("application keeps running" in line for line in out.log)
    m.handle(PlanDone(True))
    assert m.display == (State.UP, "Transient") and m.vip is None, "UP, serving nothing"
    # Back in the cluster, still a member: the VIP at once, no script.
    out = m.handle(ViewChanged(View(version=2, buckets=frozenset({7, 8}), joined=True,
                                    connected=True, intent="start")))
    assert out.plans[0].actions == (RaiseVip(2, frozenset({7, 8})),)
    m.handle(PlanDone(True))
    assert m.display == (State.UP, "Ready")


def test_a_cut_off_node_is_not_ready_even_when_it_owns_no_bucket():
    m = FarmMachine("a")
    _serving(m, View(version=1, buckets=frozenset(), joined=True, connected=True,
                     intent="start"))
    out = m.handle(ViewChanged(View(version=1, buckets=frozenset(), joined=True,
                                    connected=False, intent="start")))
    assert out.plans[0].actions == (DropVip(),)
    m.handle(PlanDone(True))
    assert m.display == (State.UP, "Transient")


def test_cut_off_while_the_application_starts_lets_it_start_and_serves_once_connected():
    m = FarmMachine("a")
    view = View(version=1, buckets=frozenset({7}), joined=True, connected=True, intent="start")
    m.handle(ViewChanged(view))
    m.handle(PlanDone(True))                # prestart
    assert [a.script for a in m.running.actions] == ["start_both", "transition"]
    cut = View(version=1, buckets=frozenset({7}), joined=True, connected=False, intent="start")
    assert m.handle(ViewChanged(cut)).plans == (), "no VIP is up: nothing urgent"
    assert m.handle(PlanDone(True)).plans == (), "no VIP while cut off"
    assert m.display == (State.UP, "Transient")
    assert m.handle(ViewChanged(view)).plans[0].actions == (RaiseVip(1, frozenset({7})),)


def test_a_node_not_started_yet_waits_for_the_cluster_before_starting_it():
    m = FarmMachine("a")
    m.handle(ViewChanged(View(connected=False, intent="start")))
    m.handle(PlanDone(True))                # prestart
    assert m.running is None and m.display == (State.WAIT, "Ready")
    assert [a.script for a in m.handle(ViewChanged(View(connected=True, intent="start")))
            .plans[0].actions] == ["start_both", "transition"]


def test_expiry_of_a_cut_off_node_moves_its_buckets_and_it_rejoins_without_restarting():
    sim = _started()
    share = sim.vip["b"]
    sim.scripts.clear()
    sim.cut_off("b")
    sim.check_safe()
    assert sim.m["b"].display == (State.UP, "Transient") and sim.vip["b"] is None
    assert sim.app["b"], "a cut-off node keeps its application running"
    sim.expire("b")
    sim.check_safe()
    sim.check_serving(("a", "c"))
    assert set().union(sim.vip["a"], sim.vip["c"]) == set(range(BUCKETS))
    sim.heal("b")
    sim.check_safe()
    sim.check_serving()
    assert len(sim.vip["b"]) == len(share)
    assert sim.scripts == [], "neither stop_both nor start_both ran for a cut-off"


def test_stop_and_checker_actions_while_cut_off_stop_the_application():
    sim = _started()
    sim.cut_off("a")
    sim.cut_off("b")
    sim.scripts.clear()
    sim.feed("a", Command("stop"))
    assert sim.m["a"].display == (State.STOP, "Ready") and not sim.app["a"]
    assert ("a", "stop_both", "stop") in sim.scripts and ("a", "poststop", "stop") in sim.scripts
    sim.feed("b", CheckerDown("app.proc", "wait"))
    assert sim.m["b"].display == (State.WAIT, "Ready") and not sim.app["b"]
    sim.check_safe()
    for n in ("a", "b"):
        sim.heal(n)
    sim.feed("a", Command("start"))
    sim.feed("b", CheckerUp("app.proc"))
    sim.check_safe()
    sim.check_serving()


def test_checker_wait_holds_wait_until_the_resource_is_back():
    sim = _started()
    sim.feed("a", CheckerDown("app.tcp", "wait"))
    sim.check_safe()
    assert sim.m["a"].display == (State.WAIT, "Ready") and "a" not in sim.members
    sim.feed("a", CheckerDown("app.proc", "wait"))
    sim.feed("a", CheckerUp("app.tcp"))
    assert sim.m["a"].state is State.WAIT, "still waiting for app.proc"
    sim.feed("a", CheckerUp("app.proc"))
    sim.check_safe()
    sim.check_serving()


def test_checker_restart_restarts_locally_while_the_others_serve_its_buckets():
    sim = _started()
    sim.scripts.clear()
    out = sim.m["c"].handle(CheckerDown("app.proc", "restart"))
    assert out.plans[0].actions[:2] == (DropVip(), CommitFarmLeave())
    sim.run_plan("c", out.plans[0])
    sim.drain()
    sim.check_safe()
    sim.check_serving()
    assert [(s, a) for n, s, a in sim.scripts if n == "c"] == [("stop_both", "restart"),
                                                               ("start_both", "restart")]


def test_checker_stopstart_and_stop():
    sim = _started()
    sim.feed("a", CheckerDown("app.proc", "stopstart"))
    sim.check_safe()
    sim.check_serving()
    assert ("a", "poststop", "stop") in sim.scripts
    sim.feed("a", CheckerDown("app.proc", "stop"))
    assert sim.m["a"].display == (State.STOP, "Ready")
    assert sim.intent["a"] == "start", "a checker stop is local, not the administrator's intent"
    assert sim.m["a"].handle(CheckerDown("x", "swap")).refused.startswith("checker x: unknown action")


def test_a_failing_start_both_stops_the_module():
    sim = _started(("a",), fail_scripts=frozenset({("a", "start_both")}))
    sim.check_safe()
    assert sim.m["a"].display == (State.STOP, "Ready") and not sim.app["a"]


def test_a_join_without_quorum_is_retried_on_the_next_view():
    m = FarmMachine("a")
    m.handle(ViewChanged(View(connected=True, intent="start")))
    m.handle(PlanDone(True))
    m.handle(PlanDone(True))
    assert m.running.actions == (CommitFarmJoin(),)
    out = m.handle(PlanDone(False, "farm_join not committed: leader changed"))
    assert out.plans == () and "failed" in out.log[0]
    out = m.handle(ViewChanged(View(version=0, connected=True, intent="start")))
    assert out.plans[0].actions == (CommitFarmJoin(),)


def test_a_restarted_daemon_cleans_up_before_following_the_cluster():
    sim = _started()
    sim.crash("b")      # the VIP and the application are still there
    sim.check_safe()
    sim.check_serving()
    assert ("b", "stop_both", "force") in sim.scripts
    assert sim.m["b"].handle(Restarted()).refused == "Restarted must be the first event"


def test_commands_refused_where_they_make_no_sense():
    m = FarmMachine("a")
    assert m.handle(Command("stopstart")).refused == "the module is stopped; use start"
    assert m.handle(Command("restart")).refused == "restart needs UP (state STOP)"
    assert "unknown command 'swap'" in m.handle(Command("swap")).refused
    assert State.UP.exit_code == 2 and State.WAIT.exit_code == 1 and State.STOP.exit_code == 0


# ---- properties ----------------------------------------------------------------------------
_RESOURCES = st.sampled_from(["app.proc", "app.tcp"])
_STEPS = st.one_of(
    st.tuples(st.just("cmd"), st.sampled_from(NODES),
              st.sampled_from(["start", "stop", "forcestop", "restart", "stopstart"])),
    st.tuples(st.just("cut"), st.sampled_from(NODES)),
    st.tuples(st.just("heal"), st.sampled_from(NODES)),
    st.tuples(st.just("expire"), st.sampled_from(NODES)),
    st.tuples(st.just("crash"), st.sampled_from(NODES)),
    st.tuples(st.just("down"), st.sampled_from(NODES), _RESOURCES,
              st.sampled_from(["restart", "stopstart", "stop", "wait"])),
    st.tuples(st.just("up"), st.sampled_from(NODES), _RESOURCES),
)


def _play(sim: Sim, steps) -> None:
    for step in steps:
        kind, n = step[0], step[1]
        if kind == "cmd":
            sim.feed(n, Command(step[2]))
        elif kind == "cut":
            sim.cut_off(n)
        elif kind == "heal":
            sim.heal(n)
        elif kind == "expire":
            sim.expire(n)
        elif kind == "crash":
            sim.crash(n)
        elif kind == "down":
            sim.feed(n, CheckerDown(step[2], step[3]))
        else:
            sim.feed(n, CheckerUp(step[2]))
        sim.check_safe()


@given(st.lists(_STEPS, max_size=40), st.booleans())
@settings(max_examples=150, deadline=None)
def test_no_node_ever_serves_buckets_it_does_not_own_and_all_recover(steps, views_late):
    sim = _started(views_late=views_late)
    _play(sim, steps)
    # Heal everything, clear the checkers, start everywhere: the farm serves every bucket once.
    for n in NODES:
        sim.heal(n)
        for r in ("app.proc", "app.tcp"):
            sim.feed(n, CheckerUp(r))
        sim.feed(n, Command("start"))
        sim.check_safe()
    sim.check_serving()
    assert sorted(b for n in NODES for b in sim.vip[n]) == list(range(BUCKETS))
    # After stop everything is released.
    for n in NODES:
        sim.feed(n, Command("stop"))
        sim.check_safe()
    assert all(sim.m[n].display == (State.STOP, "Ready") for n in NODES)
    assert not any(sim.vip.values()) and not any(sim.app.values()) and not sim.members


@given(st.lists(_STEPS, max_size=30),
       st.frozensets(st.tuples(st.sampled_from(NODES),
                               st.sampled_from(["prestart", "start_both", "stop_both", "poststop"])),
                     max_size=3), st.booleans())
@settings(max_examples=100, deadline=None)
def test_failing_scripts_never_leave_a_vip_outside_the_committed_table(steps, fail, views_late):
    sim = _started(fail_scripts=fail, views_late=views_late)
    sim.check_safe()
    _play(sim, steps)


_FLAPS = st.lists(st.tuples(st.sampled_from(["cut", "heal", "expire"]), st.sampled_from(NODES)),
                 max_size=40)


@given(_FLAPS, st.booleans())
@settings(max_examples=80, deadline=None)
def test_flapping_links_never_restart_the_application_and_all_serve_after(steps, views_late):
    """Cut-offs, heals and expiries only (no command, checker or crash): the VIP goes
    and comes back, the application is never stopped or started again."""
    sim = _started(views_late=views_late)
    sim.scripts.clear()
    _play(sim, steps)
    assert all(sim.app.values())
    for n in NODES:
        sim.heal(n)
        sim.check_safe()
    sim.check_serving()
    assert sorted(b for n in NODES for b in sim.vip[n]) == list(range(BUCKETS))
    assert sim.scripts == []


@given(st.lists(_STEPS, max_size=25))
@settings(max_examples=50, deadline=None)
def test_deterministic(steps):
    a, b = _started(), _started()
    _play(a, steps)
    _play(b, steps)
    assert a.scripts == b.scripts and a.vip == b.vip and a.table == b.table


def test_an_adopted_node_serves_on_and_decides_only_on_the_first_view():
    """A daemon restarted in maintenance adopts what its node served: UP at once with
    those buckets, no script, nothing decided on the empty view; the first view keeps
    it serving (or swaps to the committed buckets)."""
    from hacluster.farm.machine import Adopted, FarmMachine, State, View
    from hacluster.modules.machine import ViewChanged
    m = FarmMachine("a")
    out = m.handle(Adopted(frozenset({1, 2, 3})))
    assert not out.plans and m.state is State.UP
    same = View(version=4, buckets=frozenset({1, 2, 3}), joined=True, connected=True, intent="start")
    assert not m.handle(ViewChanged(same)).plans and m.display == (State.UP, "Ready")
    more = View(version=5, buckets=frozenset({1, 2, 3, 4}), joined=True, connected=True, intent="start")
    plans = m.handle(ViewChanged(more)).plans
    assert [type(a).__name__ for p in plans for a in p.actions] == ["SetBuckets"]
