"""The pure mirror state machine, driven by a simulated cluster of two nodes.

The simulation plays Raft (one lease with epoch and in-sync set, intents) and
carries out every plan at once; hypothesis throws random commands, crashes,
lease losses and replication events at it and checks the safety rules after
every step."""
from __future__ import annotations

from dataclasses import replace

from hypothesis import example, given, settings, strategies as st

from hacluster.mirror.machine import (
    CheckerDown, CheckerUp, CommitGoodCopy, CommitInSyncSelf, CommitIntent, CommitLeaveInSync, Command, DropVip,
    LeaseAcquired, LeaseLost, LeaseReleased, MirrorMachine, Pause, PlanDone, RaiseVip, ReleaseLease, ReplicationDied,
    RunScript, StartMount, StartReceiver, State, StopMount, StopReceiver, View, ViewChanged)


class Sim:
    def __init__(self, fail_scripts: frozenset[str] = frozenset(), maxloop: int = 3,
                 loop_interval_s: float = 24 * 3600.0) -> None:
        self.maxloop, self.loop_interval_s = maxloop, loop_interval_s
        self.now = 0.0          # the drivers' monotonic clock
        self.pauses: list[tuple[str, float]] = []
        # script -> how many more times it fails (a stale pid file, say)
        self.fail_times: dict[tuple[str, str], int] = {}
        self.holder: str | None = None
        self.epoch = 0
        self.in_sync: list[str] = []
        self.intent: dict[str, str] = {}
        self.failover = True
        self.live = {"a": True, "b": True}
        self.cut = {"a": False, "b": False}     # cut off from the Raft majority
        self.m = {"a": self.machine("a"), "b": self.machine("b")}
        self.contending = {"a": False, "b": False}
        self.vip = {"a": False, "b": False}
        self.mount = {"a": False, "b": False}
        self.receiver = {"a": False, "b": False}
        self.receiver_epoch = {"a": 0, "b": 0}
        self.app = {"a": False, "b": False}
        self.fail_scripts = fail_scripts
        # disk replaced / not mounted: the copy does not match what Raft committed
        self.wiped = {"a": False, "b": False}
        self.promoted_unmatched: list[str] = []
        self.scripts: list[tuple[str, str]] = []
        self.refusals: list[str] = []
        self.notes: dict[str, list[str]] = {}      # the module log, per node

    def machine(self, n: str) -> MirrorMachine:
        return MirrorMachine(n, self.peer(n), self.maxloop, self.loop_interval_s)

    def peer(self, n: str) -> str:
        return "b" if n == "a" else "a"

    def view(self, n: str) -> View:
        return View(holder=self.holder, epoch=self.epoch, in_sync=frozenset(self.in_sync),
                    peer_live=self.live[self.peer(n)], failover=self.failover,
                    intent=self.intent.get(n),
                    copy_problem=f"copy on {n} has no identity record" if self.wiped[n] else None)

    # ---- the driver -------------------------------------------------------------
    def feed(self, n: str, event) -> None:
        out = self.m[n].handle(event)
        self.notes.setdefault(n, []).extend(out.log)
        if out.refused:
            self.refusals.append(out.refused)
        if out.contend is not None:
            self.contending[n] = out.contend
        for plan in out.plans:
            self.run_plan(n, plan)

    def run_plan(self, n: str, plan) -> None:
        ok, error = True, None
        for action in plan.actions:
            if isinstance(action, StartMount):
                assert self.holder == n and self.epoch == action.epoch, "mount without the lease"
                assert not self.receiver[n], "mount while the receiver still runs"
                assert self.in_sync == [n], "mount before in-sync = me was committed"
                self.mount[n] = True
            elif isinstance(action, StopMount):
                self.mount[n] = False
            elif isinstance(action, RaiseVip):
                assert self.holder == n and self.m[n].epoch == self.epoch, "VIP without the lease"
                self.vip[n] = True
            elif isinstance(action, DropVip):
                self.vip[n] = False
            elif isinstance(action, StartReceiver):
                assert not self.mount[n]
                self.receiver[n] = True
                self.receiver_epoch[n] = action.epoch
            elif isinstance(action, StopReceiver):
                self.receiver[n] = False
            elif isinstance(action, CommitInSyncSelf):
                if self.wiped[n] and not action.forced:
                    # the driver's own check would refuse it; the machine must never ask
                    self.promoted_unmatched.append(n)
                    ok, error = False, "copy problem"
                    break
                if self.holder == n and self.epoch == action.epoch:
                    self.in_sync = [n]
                    self.wiped[n] = False      # stamped: primforce made it the truth
                else:
                    ok, error = False, "fenced"
                    break
            elif isinstance(action, CommitIntent):
                self.intent[n] = action.intent
            elif isinstance(action, CommitGoodCopy):
                if self.holder not in (None, n) or (self.in_sync and n not in self.in_sync
                                                    and not action.force):
                    ok, error = False, "refused"
                    break
                self.in_sync = [n]
            elif isinstance(action, CommitLeaveInSync):
                if self.holder == n or (self.in_sync == [n] and not action.force):
                    ok, error = False, "holder"
                    break
                self.in_sync = [x for x in self.in_sync if x != n]
            elif isinstance(action, ReleaseLease):
                assert not self.vip[n] and not self.mount[n], "released while still acting"
                if self.holder == n:
                    self.holder = None
                self.contending[n] = False
                if self.m[n].epoch is not None:
                    out = self.m[n].handle(LeaseReleased(self.m[n].epoch))
                    if out.contend is not None:
                        self.contending[n] = out.contend
            elif isinstance(action, Pause):
                self.pauses.append((n, action.seconds))
                self.now += action.seconds
            elif isinstance(action, RunScript):
                self.scripts.append((n, action.script))
                if action.script in ("start_prim", "start_second"):
                    if action.script in self.fail_scripts:
                        ok, error = False, f"{action.script} exit 1"
                        break
                    if self.fail_times.get((n, action.script), 0) > 0:
                        self.fail_times[(n, action.script)] -= 1
                        ok, error = False, f"{action.script}: exit 1: stale postmaster.pid"
                        break
                    if action.script == "start_prim":
                        assert self.holder == n
                        self.app[n] = True
                elif action.script == "stop_prim":
                    self.app[n] = False
        self.feed(n, ViewChanged(self.view(n)))
        self.feed(n, PlanDone(ok, error, at=self.now))

    # ---- the world -------------------------------------------------------------------
    def broadcast(self) -> None:
        for n in "ab":
            if self.live[n]:
                self.feed(n, ViewChanged(self.view(n)))

    def tick(self) -> None:
        """Lease arbitration: a free lease goes to a contending eligible node."""
        self.broadcast()
        if self.holder is None:
            for n in "ab":
                if self.live[n] and not self.cut[n] and self.contending[n] and n in self.in_sync:
                    self.holder = n
                    self.epoch += 1
                    self.feed(n, LeaseAcquired(self.epoch))
                    break
        self.broadcast()
        # The primary's replication: a live, running SECOND catches up.
        h = self.holder
        if h and self.mount[h]:
            p = self.peer(h)
            if self.live[p] and self.receiver[p] and p not in self.in_sync:
                self.in_sync = sorted(self.in_sync + [p])
                self.wiped[p] = False           # a full resync, then stamped
            elif not (self.live[p] and self.receiver[p]) and p in self.in_sync:
                self.in_sync = [h]
        self.broadcast()

    def crash(self, n: str) -> None:
        """The node dies: its processes are gone, its lease expires in Raft."""
        self.live[n] = False
        self.vip[n] = self.mount[n] = self.receiver[n] = self.app[n] = False
        if self.holder == n:
            self.holder = None
        self.m[n] = self.machine(n)
        self.contending[n] = False

    def revive(self, n: str) -> None:
        self.live[n] = True
        self.cut[n] = False
        self.feed(n, ViewChanged(self.view(n)))

    def expire(self, n: str) -> None:
        """n is cut off: its lease runs out locally and in Raft."""
        self.cut[n] = True
        if self.holder == n:
            epoch = self.epoch
            self.holder = None
            self.feed(n, LeaseLost(epoch, "deadline"))

    def check(self) -> None:
        assert not self.promoted_unmatched, f"promotion asked for unmatched copies {self.promoted_unmatched}"
        acting = [n for n in "ab" if self.vip[n] or self.mount[n] or self.app[n]]
        assert len(acting) <= 1, f"two primaries acting: {acting}"
        for n in acting:
            assert self.holder == n, f"{n} acts without holding the lease"


def test_first_start_waits_until_prim_names_the_good_copy():
    sim = Sim()
    for n in "ab":
        sim.feed(n, Command("start"))
    for _ in range(3):
        sim.tick()
    assert {sim.m[n].display[0] for n in "ab"} == {State.WAIT}
    sim.feed("a", Command("prim"))
    for _ in range(4):
        sim.tick()
    assert sim.m["a"].display == (State.PRIM, "Ready")
    assert sim.m["b"].display == (State.SECOND, "Ready")
    assert sim.vip["a"] and sim.mount["a"] and sim.receiver["b"]
    assert ("a", "start_prim") in sim.scripts and ("b", "start_second") in sim.scripts


def _running_pair() -> Sim:
    sim = Sim()
    for n in "ab":
        sim.feed(n, Command("start"))
    sim.feed("a", Command("prim"))
    for _ in range(4):
        sim.tick()
    return sim


def test_primary_crash_fails_over_to_the_in_sync_secondary():
    sim = _running_pair()
    sim.crash("a")
    for _ in range(3):
        sim.tick()
    assert sim.holder == "b" and sim.epoch == 2
    assert sim.m["b"].display == (State.ALONE, "Ready")
    assert sim.in_sync == ["b"] and not sim.receiver["b"] and sim.mount["b"]
    sim.revive("a")
    for _ in range(3):
        sim.tick()
    assert sim.m["a"].display == (State.SECOND, "Ready")
    assert sim.m["b"].display == (State.PRIM, "Ready")


def test_lost_lease_fences_first():
    sim = _running_pair()
    out = sim.m["a"].handle(LeaseLost(sim.epoch, "deadline"))
    plan = out.plans[0]
    assert plan.urgent
    assert isinstance(plan.actions[0], DropVip) and plan.actions[1] == StopMount(kill=True)


def test_stale_secondary_is_not_promoted_and_primforce_overrides():
    sim = _running_pair()
    sim.crash("b")                      # the secondary goes away; a runs ALONE
    sim.tick()
    assert sim.in_sync == ["a"]
    sim.crash("a")                      # then the primary dies too
    sim.revive("b")
    sim.feed("b", Command("start"))
    for _ in range(3):
        sim.tick()
    assert sim.holder is None and sim.m["b"].display[0] is State.WAIT
    sim.feed("b", Command("prim"))
    for _ in range(2):
        sim.tick()
    assert sim.holder is None, "prim must not promote a stale copy"
    sim.feed("b", Command("primforce"))
    for _ in range(3):
        sim.tick()
    assert sim.holder == "b" and sim.m["b"].display[0] is State.ALONE


def test_swap_hands_over_without_overlap():
    sim = _running_pair()
    sim.feed("a", Command("swap"))
    for _ in range(5):
        sim.tick()
        sim.check()
    assert sim.holder == "b"
    assert sim.m["b"].display == (State.PRIM, "Ready")
    assert sim.m["a"].display == (State.SECOND, "Ready")


def test_swap_refused_without_an_in_sync_peer():
    sim = _running_pair()
    sim.crash("b")
    sim.tick()
    out = sim.m["a"].handle(Command("swap"))
    assert out.refused and "not an in-sync" in out.refused


def _notes(sim: Sim, n: str) -> list[str]:
    return sim.notes.get(n, [])


def test_failed_start_prim_is_retried_maxloop_times_then_stops_the_module_and_releases():
    sim = Sim(fail_scripts=frozenset({"start_prim"}), maxloop=3)
    sim.feed("a", Command("start"))
    sim.feed("a", Command("prim"))
    for _ in range(12):
        sim.tick()
    assert sim.m["a"].display[0] is State.STOP
    assert sim.holder is None and not sim.vip["a"] and not sim.mount["a"]
    assert sim.scripts.count(("a", "start_prim")) == 4, "the first start and maxloop=3 retries"
    assert sim.pauses == [("a", 1.0)] * 3, "each retry waits a moment first"
    retries = [line for line in _notes(sim, "a") if line.startswith("start retry")]
    assert [r.split(" within")[0] for r in retries] == [f"start retry {i} of 3" for i in (1, 2, 3)]
    failures = [line for line in _notes(sim, "a") if "failed: start_prim exit 1" in line]
    assert len(failures) == 4, "each attempt's reason is logged"
    assert "start it again by hand" in _notes(sim, "a")[-1]


def test_maxloop_zero_stops_at_the_first_failed_start():
    sim = Sim(fail_scripts=frozenset({"start_prim"}), maxloop=0)
    sim.feed("a", Command("start"))
    sim.feed("a", Command("prim"))
    for _ in range(6):
        sim.tick()
    assert sim.m["a"].display[0] is State.STOP
    assert sim.scripts.count(("a", "start_prim")) == 1 and sim.pauses == []


def test_a_start_prim_that_fails_once_at_a_failover_is_retried_and_takes_over():
    """issue 15: the failover's start_prim met the dead primary's postmaster.pid once
    and the module stayed in STOP."""
    sim = _running_pair()
    sim.fail_times[("b", "start_prim")] = 1
    sim.crash("a")
    for _ in range(6):
        sim.tick()
        sim.check()
    assert sim.scripts.count(("b", "start_prim")) == 2
    assert sim.holder == "b" and sim.m["b"].display == (State.ALONE, "Ready")
    assert sim.app["b"] and sim.vip["b"] and sim.mount["b"]
    assert any(line.startswith("start retry 1 of 3") for line in _notes(sim, "b"))
    assert any("stale postmaster.pid" in line for line in _notes(sim, "b"))
    sim.revive("a")
    sim.feed("a", Command("start"))
    for _ in range(4):
        sim.tick()
    assert sim.m["b"].display == (State.PRIM, "Ready")
    assert sim.m["a"].display == (State.SECOND, "Ready")


def test_a_failed_start_second_is_retried_too():
    sim = _running_pair()
    sim.crash("b")
    sim.tick()
    before = sim.scripts.count(("b", "start_second"))
    sim.fail_times[("b", "start_second")] = 2
    sim.revive("b")         # its intent is still start
    for _ in range(8):
        sim.tick()
    assert sim.scripts.count(("b", "start_second")) - before == 3, "2 failed attempts, then one that works"
    assert [line.split(" within")[0] for line in _notes(sim, "b") if line.startswith("start retry")] \
        == ["start retry 1 of 3", "start retry 2 of 3"]
    assert sim.m["b"].display == (State.SECOND, "Ready")


def test_failed_starts_count_only_within_loop_interval():
    sim = Sim(maxloop=1, loop_interval_s=60.0)
    sim.fail_times[("a", "start_prim")] = 1
    sim.feed("a", Command("start"))
    sim.feed("a", Command("prim"))
    for _ in range(6):
        sim.tick()
    assert sim.m["a"].display[0] is State.ALONE, "one retry allowed"
    for failed_again_after, expect in ((30.0, State.STOP), (61.0, State.ALONE)):
        sim2 = Sim(maxloop=1, loop_interval_s=60.0)
        sim2.fail_times[("a", "start_prim")] = 1
        sim2.feed("a", Command("start"))
        sim2.feed("a", Command("prim"))
        for _ in range(6):
            sim2.tick()
        assert sim2.m["a"].display[0] is State.ALONE
        # later, a checker's restart of the application fails to start it again
        sim2.now += failed_again_after
        sim2.fail_times[("a", "start_prim")] = 1
        sim2.feed("a", CheckerDown("errd.app", "stopstart"))
        for _ in range(8):
            sim2.tick()
        assert sim2.m["a"].display[0] is expect, (failed_again_after, _notes(sim2, "a"))


def test_an_administrators_start_resets_the_count():
    sim = Sim(maxloop=1)
    sim.fail_times[("a", "start_prim")] = 2
    sim.feed("a", Command("start"))
    sim.feed("a", Command("prim"))
    for _ in range(6):
        sim.tick()
    assert sim.m["a"].display[0] is State.STOP, "two failures with maxloop 1"
    sim.fail_times[("a", "start_prim")] = 1
    sim.feed("a", Command("start"))
    for _ in range(6):
        sim.tick()
    assert sim.m["a"].display[0] is State.ALONE, "a fresh count: one retry again"
    assert sim.scripts.count(("a", "start_prim")) == 4


def test_exit_codes_are_safekits():
    assert [s.exit_code for s in State] == [0, 1, 2, 3, 4]


def test_checker_wait_on_the_primary_hands_over_then_returns_as_secondary():
    sim = _running_pair()
    sim.feed("a", CheckerDown("intf_eth0", "wait"))
    for _ in range(4):
        sim.tick()
        sim.check()
    assert sim.m["a"].display[0] is State.WAIT and not sim.contending["a"]
    assert sim.holder == "b" and sim.m["b"].display[0] is State.ALONE
    for _ in range(3):      # still held: a does not come back while the resource is down
        sim.tick()
    assert sim.m["a"].display[0] is State.WAIT
    sim.feed("a", CheckerUp("intf_eth0"))
    for _ in range(4):
        sim.tick()
        sim.check()
    assert sim.m["a"].display == (State.SECOND, "Ready")
    assert sim.m["b"].display == (State.PRIM, "Ready")


def test_checker_wait_ends_only_for_its_own_cause():
    m = MirrorMachine("a", "b")
    m.handle(CheckerDown("ping_gw", "wait"))
    m.handle(CheckerDown("intf_eth0", "wait"))
    m.handle(CheckerUp("ping_gw"))
    assert m.waiting == {"intf_eth0"} and not m._wants_lease()
    assert m.handle(CheckerUp("unknown")).plans == ()


def test_checker_restart_runs_stop_then_start_scripts_in_the_same_role():
    sim = _running_pair()
    before = len(sim.scripts)
    sim.feed("a", CheckerDown("errd_kvapp", "restart"))
    assert sim.scripts[before:] == [("a", "stop_prim"), ("a", "start_prim")]
    assert sim.m["a"].display == (State.PRIM, "Ready") and sim.holder == "a"


def test_checker_restart_while_busy_or_stopped_is_ignored_with_a_note():
    m = MirrorMachine("a", "b")
    out = m.handle(CheckerDown("errd_kvapp", "restart"))
    assert not out.plans and not out.refused and "ignored" in out.log[0]


def test_checker_stopstart_fails_over_and_starts_again():
    sim = _running_pair()
    sim.feed("a", CheckerDown("ip_vip", "stopstart"))
    for _ in range(6):
        sim.tick()
        sim.check()
    assert sim.epoch == 2, "the module stopped and the lease was handed out again"
    assert ("a", "poststop") in sim.scripts and ("a", "prestart") in sim.scripts[-8:]
    assert sorted(sim.m[n].display[0].value for n in "ab") == ["PRIM", "SECOND"]


def test_checker_stop_holds_stop_until_an_administrator_starts():
    sim = _running_pair()
    sim.feed("a", CheckerDown("errd_kvapp", "stop"))
    for _ in range(5):
        sim.tick()
        sim.check()
    assert sim.m["a"].display[0] is State.STOP and sim.holder == "b"
    assert sim.intent["a"] == "start"       # a local hold: nothing committed
    sim.feed("a", Command("start"))
    for _ in range(5):
        sim.tick()
    assert sim.m["a"].display == (State.SECOND, "Ready")


def test_checker_swap_hands_over():
    sim = _running_pair()
    sim.feed("a", CheckerDown("tcp_db", "swap"))
    for _ in range(5):
        sim.tick()
        sim.check()
    assert sim.holder == "b" and sim.m["a"].display == (State.SECOND, "Ready")


def test_unknown_checker_action_is_refused():
    out = MirrorMachine("a", "b").handle(CheckerDown("x", "reboot"))
    assert out.refused and "reboot" in out.refused


ACTIONS = st.sampled_from([
    ("down", "a", "wait"), ("down", "b", "wait"), ("down", "a", "restart"), ("down", "b", "stopstart"),
    ("down", "a", "stop"), ("down", "b", "swap"), ("down", "a", "swap"), ("up", "a", None), ("up", "b", None),
    ("cmd", "a", "start"), ("cmd", "b", "start"), ("cmd", "a", "stop"), ("cmd", "b", "stop"),
    ("cmd", "a", "prim"), ("cmd", "b", "prim"), ("cmd", "a", "swap"), ("cmd", "b", "swap"),
    ("cmd", "a", "stopstart"), ("cmd", "b", "second"), ("cmd", "a", "primforce"),
    ("cmd", "b", "restart"), ("cmd", "a", "forcestop"),
    ("crash", "a", None), ("crash", "b", None), ("revive", "a", None), ("revive", "b", None),
    ("expire", "a", None), ("expire", "b", None), ("repl", "a", None), ("repl", "b", None),
    ("failover", None, None), ("heal", None, None), ("tick", None, None), ("tick", None, None),
    ("wipe", "a", None), ("wipe", "b", None), ("cmd", "b", "second_force"),
    ("flaky", "a", "start_prim"), ("flaky", "b", "start_prim"), ("flaky", "b", "start_second"),
    ("later", None, None)])


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTIONS, max_size=60))
# found by hypothesis in a chaos-suite run: a swap to a peer that then left the in-sync
# set (second) left both nodes waiting, the old primary for a takeover that could not come
@example([("cmd", "b", "prim"), ("expire", "b", None), ("cmd", "a", "primforce"),
          ("cmd", "a", "swap"), ("cmd", "b", "second")])
def test_random_histories_never_have_two_acting_primaries(steps):
    sim = Sim()
    for kind, n, arg in steps:
        if kind == "cmd" and sim.live[n]:
            sim.feed(n, Command(arg))
        elif kind == "crash":
            sim.crash(n)
        elif kind == "wipe" and not sim.live[n]:
            sim.wiped[n] = True
        elif kind == "revive" and not sim.live[n]:
            sim.revive(n)
        elif kind == "expire":
            sim.expire(n)
        elif kind == "repl" and sim.live[n]:
            sim.feed(n, ReplicationDied("test"))
        elif kind == "down" and sim.live[n]:
            sim.feed(n, CheckerDown("res", arg))
        elif kind == "up" and sim.live[n]:
            sim.feed(n, CheckerUp("res"))
        elif kind == "failover":
            sim.failover = not sim.failover
        elif kind == "heal":
            sim.cut = {"a": False, "b": False}
        elif kind == "flaky":
            sim.fail_times[(n, arg)] = sim.fail_times.get((n, arg), 0) + 1
        elif kind == "later":
            sim.now += 3600.0
        sim.check()
        sim.tick()
        sim.check()
    # Once left alone with both nodes started and alive, the pair settles.
    sim.fail_times.clear()
    for n in "ab":
        if not sim.live[n]:
            sim.revive(n)
        sim.feed(n, CheckerUp("res"))
        sim.feed(n, Command("start"))
    sim.failover = True
    sim.cut = {"a": False, "b": False}
    for _ in range(12):
        sim.tick()
        sim.check()
    states = sorted(sim.m[n].display[0].value for n in "ab")
    if any(not sim.wiped[n] for n in sim.in_sync):
        assert states in (["PRIM", "SECOND"], ["ALONE", "WAIT"], ["ALONE", "SECOND"]), states
        assert sim.holder is not None
    else:
        assert states == ["WAIT", "WAIT"]


# ---- regressions found by the chaos suite ------------------------------------------
def _settle(m, out):
    while out.plans:
        out = m.handle(PlanDone(True))
    return out


def test_a_lease_regained_after_an_interrupted_stop_is_released_and_start_restarts():
    """chaos episode 11/11/flap: the promotion failed (GARP ENOBUFS), the stop plan that
    would release the lease was cut short by a lease loss, a late renewal gave the lease
    back: the node sat in STOP holding it (the peer could never take over) and a
    `start` command did nothing. (maxloop 0: the failed promotion stops the module at
    once, as it did then; with retries the same holds, see the hypothesis test.)"""
    m = MirrorMachine("n2", "n1", maxloop=0)
    view = View(holder=None, epoch=5, in_sync=frozenset({"n1", "n2"}), peer_live=True,
                intent="start")
    _settle(m, m.handle(ViewChanged(view)))
    m.handle(LeaseAcquired(6))                                   # the promotion plan runs
    m.handle(ViewChanged(replace(view, holder="n2", epoch=6)))
    m.handle(PlanDone(False, "cannot send gratuitous ARP: No buffer space available"))
    _settle(m, m.handle(LeaseLost(6, "deadline")))               # the fence replaces it
    assert m.state is State.STOP
    out = m.handle(LeaseAcquired(6))
    assert any(isinstance(a, ReleaseLease) for p in out.plans for a in p.actions)
    _settle(m, out)
    m.handle(LeaseReleased(6))
    _settle(m, m.handle(Command("start")))
    assert m.state is State.WAIT and m.contending


def test_a_command_queued_during_a_promotion_does_not_rewind_the_state():
    """chaos episode 13/79: `start` typed while the node was being promoted ran after
    the promotion with the state it was queued in (WAIT): the machine promoted a
    second time over the running app (start_prim failed: port in use) and stopped."""
    m = MirrorMachine("n1", "n2")
    view = View(holder=None, epoch=38, in_sync=frozenset({"n1", "n2"}), peer_live=True,
                intent="start")
    out = m.handle(ViewChanged(view))
    while out.plans:
        out = m.handle(PlanDone(True))
    assert m.state is State.WAIT
    promotion = m.handle(LeaseAcquired(39)).plans
    assert promotion and promotion[0].next_state is State.ALONE
    assert m.handle(Command("start")).plans == ()        # queued behind the promotion
    out = m.handle(PlanDone(True))                        # promotion done: ALONE
    assert out.plans and out.plans[0].reason == "start command"
    out = m.handle(PlanDone(True))                        # the queued commit done
    assert m.state is State.ALONE, m.state
    assert not any(p.reason.startswith("primary at epoch") for p in out.plans)


# ---- copy identity (DESIGN rule 6) ---------------------------------------------------------
def test_an_in_sync_node_with_a_replaced_disk_waits_and_the_peer_takes_over():
    sim = _running_pair()
    sim.crash("a")
    sim.crash("b")
    sim.wiped["a"] = True               # a's disk replaced while both were down
    sim.revive("a")
    sim.feed("a", Command("start"))
    for _ in range(4):
        sim.tick()
        sim.check()
    assert sim.holder is None and sim.m["a"].display[0] is State.WAIT
    assert not sim.contending["a"]
    out = sim.m["a"].handle(Command("prim"))
    assert out.refused and "no identity record" in out.refused and "primforce" in out.refused
    sim.revive("b")
    sim.feed("b", Command("start"))
    for _ in range(6):
        sim.tick()
        sim.check()
    assert sim.holder == "b"
    assert sim.m["a"].display == (State.SECOND, "Ready") and not sim.wiped["a"]


def test_a_lease_granted_to_an_unmatched_copy_is_handed_back():
    m = MirrorMachine("a", "b")
    m.handle(ViewChanged(View(intent="start", in_sync=frozenset("ab"))))
    m.handle(PlanDone(True))                       # prestart: now WAIT
    m.handle(ViewChanged(View(intent="start", in_sync=frozenset("ab"), copy_problem="no record")))
    out = m.handle(LeaseAcquired(3))
    assert [type(a) for p in out.plans for a in p.actions] == [ReleaseLease]


def test_primforce_promotes_an_unmatched_copy_and_says_so():
    sim = _running_pair()
    sim.crash("a")
    sim.crash("b")
    sim.wiped["a"] = True
    sim.revive("a")
    sim.feed("a", Command("primforce"))
    for _ in range(4):
        sim.tick()
        sim.check()
    assert sim.holder == "a" and sim.m["a"].display[0] in (State.ALONE, State.PRIM)
    assert not sim.wiped["a"]


def test_a_plan_that_could_not_begin_keeps_the_state_and_is_tried_again():
    """The secondary's first action (the primary must forget its sync point for an
    unknown copy) found the primary still starting: nothing was done, WAIT stays,
    the next view plans it again (was: half started, stopped until a manual start)."""
    m = MirrorMachine("b", "a")
    view = View(holder="a", epoch=4, intent="start", in_sync=frozenset("a"))
    m.handle(ViewChanged(view))
    out = m.handle(PlanDone(True))                  # prestart done: WAIT, then SECOND planned
    assert m.state is State.WAIT
    assert out.plans and isinstance(out.plans[0].actions[0], StartReceiver)
    out = m.handle(PlanDone(False, "primary starting", not_yet=True))
    assert m.state is State.WAIT and not m.hold_stop and not out.plans
    out = m.handle(ViewChanged(replace(view, peer_live=True)))
    assert out.plans and isinstance(out.plans[0].actions[0], StartReceiver)


def test_why_says_what_holds_the_module_where_it_is():
    sim = Sim()
    assert sim.m["a"].why() == [
        "STOP (Ready), heading for STOP", "the committed intent of a is none: 'start' starts it",
        "nobody holds the module lease", "current copies (in sync): none; the copy on a is not current",
        "b is not live; not asking for the module lease"]
    sim = _running_pair()
    assert sim.m["b"].why() == [
        "SECOND (Ready), heading for SECOND", "a holds the module lease, epoch 1",
        "current copies (in sync): a, b", "a is live; asking Raft for the module lease"]
    assert sim.m["a"].why()[:2] == ["PRIM (Ready), heading for PRIM", "a holds the module lease, epoch 1"]
    sim.feed("a", CheckerDown("app.tcp", "wait"))
    assert "waiting until checker(s) app.tcp are up again" in sim.m["a"].why()
    before = sim.m["a"].display
    sim.m["a"].why()
    assert sim.m["a"].display == before
