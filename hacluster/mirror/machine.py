"""The mirror module's state machine, pure: events in, plans out.

No I/O, no clock, no threads. The driver (``driver.py``) feeds it
events — administrator commands, the committed Raft view, lease gains and
losses, replication events, the outcome of the plan it last handed out — and
carries out the plans it returns, one at a time, reporting ``PlanDone``.
While a plan runs the module is *Transient*; otherwise *Ready* (a SECOND is
Ready once it is in the in-sync set).

Safety lives in the order of each plan (DESIGN rules 1–3):
  * a node becomes primary only on a lease the Raft log granted it, and its
    first act is to commit "in sync = me" under that epoch, so the old
    primary's copy is never trusted again before it has been resynchronised;
  * the receiver is stopped before the mount starts, so no frame of an older
    epoch can land after this node accepts writes;
  * on a lost lease the fence comes first: VIP dropped and mount killed (writes
    blocked) before any script runs;
  * a clean stop drops the VIP and stops the application before the lease is
    released, so the successor never overlaps.

Checker actions (``CheckerDown``) only ever make this node give up or redo
its role locally: restart/swap are the commands, stopstart/stop hold STOP,
wait holds WAIT (no lease contended) until ``CheckerUp`` for every cause.

A start that fails (a promotion at a failover or a start, or a start as
secondary: a script, a commit, a process) is retried like a checker's
stopstart: the stop path runs, a ``Pause``, then the module starts again, at
most ``maxloop`` times within ``loop_interval`` (time comes in with
``PlanDone.at``); the next failure in that window stops the module. Each
attempt and its reason go to the module log; an administrator's start resets
the count.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Union

from hacluster.modules.machine import (CheckerDown, CheckerUp, Command, CommitIntent, DropVip, Output,
                                       Plan, PlanDone, RunScript, ViewChanged, merge)


class State(str, enum.Enum):
    STOP = "STOP"
    WAIT = "WAIT"
    ALONE = "ALONE"
    PRIM = "PRIM"
    SECOND = "SECOND"

    @property
    def exit_code(self) -> int:
        """SafeKit's ``state -lq`` codes."""
        return {"STOP": 0, "WAIT": 1, "ALONE": 2, "PRIM": 3, "SECOND": 4}[self.value]


PRIMARY = (State.ALONE, State.PRIM)


# ---- events (and those of every kind: hacluster.modules.machine) ----------------------
@dataclass(frozen=True)
class View:
    """What the committed Raft state says about this module, seen from this node."""
    holder: str | None = None
    epoch: int = 0
    in_sync: frozenset[str] = frozenset()
    peer_live: bool = False
    failover: bool = True
    intent: str | None = None          # this node's committed intent: start | stop | None
    # Why this node's copy may not become primary by itself (DESIGN rule 6: its
    # on-disk identity does not match what Raft committed for it); None: it may.
    copy_problem: str | None = None
    # The module (or the cluster) is in maintenance: nothing starts or fails over by
    # itself; a primary keeps its role, and its lease is held beyond the lease.
    maintenance: bool = False


@dataclass(frozen=True)
class LeaseAcquired:
    epoch: int


@dataclass(frozen=True)
class LeaseLost:
    epoch: int
    reason: str


@dataclass(frozen=True)
class LeaseReleased:
    """This node handed its lease back (a clean stop or swap): no fence needed,
    the plan that released it already stopped everything."""
    epoch: int


@dataclass(frozen=True)
class Adopted:
    """This node's daemon started again in maintenance and found its primary session
    still running (the mounts, the application, the VIP: left by the daemon before it,
    hacluster.mirror.driver): its first renewal of lease ``epoch`` was granted, so the
    session goes on — no script runs, no new generation (the copy's writer never
    stopped)."""
    epoch: int


@dataclass(frozen=True)
class ReplicationDied:
    """The mount process (primary) or the receiver (secondary) ended on its own."""
    reason: str


CHECKER_ACTIONS = ("restart", "stopstart", "stop", "wait", "swap")

Event = Union[Command, ViewChanged, LeaseAcquired, LeaseLost, LeaseReleased, PlanDone, ReplicationDied,
              CheckerDown, CheckerUp, Adopted]


# ---- actions (and RunScript, CommitIntent, DropVip of every kind) ---------------------
@dataclass(frozen=True)
class CommitGoodCopy:
    force: bool


@dataclass(frozen=True)
class CommitLeaveInSync:
    force: bool = False


@dataclass(frozen=True)
class CommitInSyncSelf:
    """Start this primary session's generation: check the copy's identity (unless
    ``forced`` by primforce), stamp it, commit "in sync = me" with it."""
    epoch: int
    forced: bool = False


@dataclass(frozen=True)
class ReleaseLease:
    pass


@dataclass(frozen=True)
class StartReceiver:
    epoch: int


@dataclass(frozen=True)
class StopReceiver:
    pass


@dataclass(frozen=True)
class StartMount:
    epoch: int


@dataclass(frozen=True)
class StopMount:
    kill: bool


@dataclass(frozen=True)
class RaiseVip:
    pass


@dataclass(frozen=True)
class Pause:
    """Wait before going on (a retried start: what made it fail, e.g. a process of
    the dead primary not yet reaped, gets a moment to go away)."""
    seconds: float


Action = Union[RunScript, CommitIntent, CommitGoodCopy, CommitLeaveInSync, CommitInSyncSelf,
               ReleaseLease, StartReceiver, StopReceiver, StartMount, StopMount,
               RaiseVip, DropVip, Pause]

START_RETRY_PAUSE_S = 1.0


class MirrorMachine:
    def __init__(self, node: str, peer: str, maxloop: int = 3,
                 loop_interval_s: float = 24 * 3600.0) -> None:
        if maxloop < 0 or loop_interval_s < 0:
            raise ValueError("maxloop and loop_interval must not be negative")
        self.node = node
        self.peer = peer
        self.maxloop = maxloop
        self.loop_interval_s = loop_interval_s
        self.start_failures: list[float | None] = []    # retried start failures, in the window
        self.retry_pending = False          # the next start plan begins with a Pause
        self.state = State.STOP
        self.view = View()
        self.epoch: int | None = None        # the lease epoch this node holds, if any
        self.running: Plan | None = None
        self.hold_stop = False               # stopstart / failed start: reach STOP first
        self.restart_after_stop = False
        self.swap_pending = False            # after a swap: do not contend until the peer holds
        self.force_stop = False
        self.waiting: set[str] = set()       # checker `wait`: causes still down (hold WAIT)
        self.forced_copy = False             # primforce: this copy is the truth, whatever it is
        self._contend = False
        self._queued: list[Plan] = []        # plans decided while another ran (commands)

    # ---- queries --------------------------------------------------------------
    @property
    def ready(self) -> bool:
        if self.running is not None:
            return False
        if self.state is State.SECOND:
            return self.node in self.view.in_sync
        return True

    @property
    def display(self) -> tuple[State, str]:
        state = self._primary_state() if self.state in PRIMARY else self.state
        return state, "Ready" if self.ready else "Transient"

    def _primary_state(self) -> State:
        return State.PRIM if self.peer in self.view.in_sync else State.ALONE

    # ---- the one entry point ----------------------------------------------------
    def handle(self, event: Event) -> Output:
        if isinstance(event, Command):
            return self._command(event.name)
        if isinstance(event, ViewChanged):
            before = self.display
            problem_before = self.view.copy_problem
            self.view = event.view
            out = self._reconcile()
            if event.view.copy_problem != problem_before and event.view.copy_problem \
                    and self.state not in PRIMARY and self.node in event.view.in_sync:
                out = merge(Output(log=(f"not promoted automatically: {event.view.copy_problem}",)),
                             out)
            if self.state in PRIMARY and self.running is None and self.display[0] != before[0]:
                out = merge(out, Output(plans=(Plan((RunScript("transition", before[0].value,
                                                                self.display[0].value, "sync"),),
                                                     self.state, "in-sync set changed"),)))
            return out
        if isinstance(event, LeaseAcquired):
            self.epoch = event.epoch
            if not self._wants_lease() and self.running is None and self.state not in PRIMARY:
                # Regained by a renewal that was in flight when a stop plan (and its
                # ReleaseLease) was cut short: holding it would block the peer forever.
                return self._start(Plan((ReleaseLease(),), self.state, "lease not wanted"))
            return self._reconcile()
        if isinstance(event, LeaseLost):
            return self._lease_lost(event)
        if isinstance(event, Adopted):
            if self.state is not State.STOP or self.running is not None:
                return Output(refused=f"adopting a running primary session needs a module that has "
                                      f"not started here yet (state {self.state.value})")
            self.epoch = event.epoch
            self.state = State.ALONE
            # The VIP is still held, with the old daemon's lifetime: raised again, it
            # follows this daemon's renewals (and its burst refreshes the clients' ARP).
            note = (f"primary session of epoch {event.epoch} adopted after a daemon restart "
                    "in maintenance")
            return merge(Output(log=(note,)),
                         self._start(Plan((RaiseVip(),), State.ALONE, "adopted")))
        if isinstance(event, LeaseReleased):
            if self.epoch is not None and event.epoch == self.epoch:
                self.epoch = None
            return self._reconcile()
        if isinstance(event, PlanDone):
            return self._plan_done(event)
        if isinstance(event, CheckerDown):
            return self._checker_down(event)
        if isinstance(event, CheckerUp):
            if event.cause not in self.waiting:
                return Output()
            self.waiting.discard(event.cause)
            return merge(Output(log=(f"checker {event.cause}: up again, wait over",)), self._reconcile())
        if isinstance(event, ReplicationDied):
            if self.state in PRIMARY and self.epoch is not None:
                # Writes cannot be replicated any more: stop and start again; the
                # secondary, if in sync, takes over meanwhile.
                self.hold_stop = self.restart_after_stop = True
                return merge(Output(log=(f"replication ended on the primary: {event.reason}",)),
                              self._reconcile())
            if self.state is State.SECOND and self.running is None:
                plan = Plan((StopReceiver(), StartReceiver(self.view.epoch)), State.SECOND,
                            f"receiver ended: {event.reason}")
                return self._start(plan)
            return Output()
        raise TypeError(f"unknown event {event!r}")

    # ---- checkers -------------------------------------------------------------------
    def _checker_down(self, event: CheckerDown) -> Output:
        why = f"checker {event.cause}: {event.action}"
        if event.action in ("restart", "swap"):
            out = self._command(event.action, reason=why)
            if out.refused:     # not in a role it applies to, or busy: nothing to do now
                return Output(log=(f"{why} ignored: {out.refused}",))
            return merge(Output(log=(why,)), out)
        if event.action == "stopstart":
            if self.state is State.STOP:
                return Output(log=(f"{why} ignored: the module is stopped",))
            self.hold_stop = self.restart_after_stop = True
        elif event.action == "stop":
            # a local hold, not a committed intent: `start` (or a daemon restart) lifts it
            self.hold_stop = True
            self.restart_after_stop = False
        elif event.action == "wait":
            self.waiting.add(event.cause)
        else:
            return Output(refused=f"checker {event.cause}: unknown action {event.action!r} "
                                  f"(one of {', '.join(CHECKER_ACTIONS)})")
        return merge(Output(log=(why,)), self._reconcile())

    # ---- commands -------------------------------------------------------------------
    def _command(self, name: str, reason: str | None = None) -> Output:
        st = self.display[0]
        if name in ("start", "prim", "second", "primforce"):
            # an administrator's start lifts a checker's stop (and a failed start's hold)
            # and gives failed starts a new count
            if self.hold_stop and not self.restart_after_stop:
                self.hold_stop = False
            self.start_failures.clear()
        if name == "start":
            return self._queue(Plan((CommitIntent("start"),), self.state, "start command"))
        if name in ("stop", "forcestop"):
            self.force_stop = name == "forcestop"
            self.restart_after_stop = False
            self.retry_pending = False
            return self._queue(Plan((CommitIntent("stop"),), self.state, f"{name} command"))
        if name == "stopstart":
            if self.state is State.STOP:
                return Output(refused="the module is stopped; use start")
            self.hold_stop = self.restart_after_stop = True
            return self._reconcile()
        if name == "restart":
            if self.running is not None:
                return Output(refused=f"a transition is in progress ({self.running.reason})")
            if self.state in PRIMARY:
                return self._start(Plan((RunScript("stop_prim", st.value, st.value, "restart", stop=True),
                                         RunScript("start_prim", st.value, st.value, "restart")),
                                        self.state, reason or "restart command"))
            if self.state is State.SECOND:
                return self._start(Plan((RunScript("stop_second", "SECOND", "SECOND", "restart", stop=True),
                                         RunScript("start_second", "SECOND", "SECOND", "restart")),
                                        self.state, reason or "restart command"))
            return Output(refused=f"restart needs PRIM, ALONE or SECOND (state {st.value})")
        if name == "swap":
            if self.state not in PRIMARY or self.running is not None:
                return Output(refused=f"swap must be run on the primary (state {st.value})")
            if self.peer not in self.view.in_sync or not self.view.peer_live:
                return Output(refused=f"swap refused: {self.peer} is not an in-sync, live secondary")
            self.swap_pending = True
            return self._reconcile()
        if name in ("prim", "primforce"):
            if self.state in PRIMARY:
                return Output(refused=f"already primary ({st.value})")
            if self.view.holder not in (None, self.node):
                return Output(refused=f"{self.view.holder} is primary; stop it there or use swap")
            force = name == "primforce"
            if not force and self.view.copy_problem:
                return Output(refused=f"{self.view.copy_problem}; use primforce to make this copy "
                                      "the truth anyway")
            if force:
                self.forced_copy = True
            log = ((f"PRIMFORCE: making the copy on {self.node} the truth; changes only on "
                    f"{self.peer} since they were last in sync will be overwritten"),) if force else ()
            return merge(Output(log=log), self._queue(
                Plan((CommitGoodCopy(force), CommitIntent("start")), self.state, f"{name} command")))
        if name in ("second", "second_force"):
            if self.state in PRIMARY:
                return Output(refused="this node is primary; use swap or stop it first")
            return self._queue(Plan((CommitLeaveInSync(force=name == "second_force"),
                                     CommitIntent("start")), self.state, f"{name} command"))
        return Output(refused=f"unknown command {name!r}")

    def why(self) -> list[str]:
        """Why the module is where it is and where it is going, in words, from what
        this machine knows (``hacluster -m M why``); changes nothing."""
        v, (state, ready) = self.view, self.display
        target = self._target()
        # as it will be shown: a primary is PRIM with its peer in sync, ALONE without
        heading = self._primary_state() if target in PRIMARY else target
        lines = [f"{state.value} ({ready}), heading for {heading.value}"]
        if self.running is not None:
            lines.append(f"in transition: {self.running.reason}")
        if v.intent != "start":
            lines.append(f"the committed intent of {self.node} is {v.intent or 'none'}: "
                         "'start' starts it")
        if self.hold_stop:
            lines.append("stopping here to start again" if self.restart_after_stop else
                         "held stopped here (a checker's stop, or failed starts beyond maxloop): "
                         "'start' lifts it")
        if self.waiting:
            lines.append(f"waiting until checker(s) {', '.join(sorted(self.waiting))} are up again")
        if self.epoch is not None:
            lines.append(f"{self.node} holds the module lease, epoch {self.epoch}")
        else:
            lines.append(f"{v.holder} holds the module lease, epoch {v.epoch}" if v.holder
                         else "nobody holds the module lease")
        current = ", ".join(sorted(v.in_sync)) or "none"
        lines.append(f"current copies (in sync): {current}" + (
            "" if self.node in v.in_sync else f"; the copy on {self.node} is not current"))
        if v.copy_problem and state not in PRIMARY:
            lines.append(f"the copy on {self.node} may not become primary by itself: "
                         f"{v.copy_problem} ('primforce' overrides)")
        if not v.failover:
            lines.append("automatic failover is off")
        if v.maintenance:
            lines.append("in maintenance: nothing starts or fails over by itself "
                         "('hacluster maintenance off' ends it)")
        if self.swap_pending:
            lines.append(f"swap: waiting for {self.peer} to take the lease")
        lines.append(f"{self.peer} is {'live' if v.peer_live else 'not live'}; "
                     + ("asking Raft for the module lease" if self._contend
                        else "not asking for the module lease"))
        if self.start_failures:
            lines.append(f"{len(self.start_failures)} failed start(s) counted against "
                         f"maxloop {self.maxloop}")
        return lines

    # ---- deciding where to go ----------------------------------------------------------
    def _target(self) -> State:
        v = self.view
        if v.intent != "start" or self.hold_stop:
            return State.STOP
        if self.waiting:
            return State.WAIT
        if self.epoch is not None and not self.swap_pending:
            return State.ALONE
        if v.holder == self.peer:
            return State.SECOND
        if (self.state is State.SECOND and v.holder is None and self.node in v.in_sync and v.failover
                and not v.copy_problem):
            return State.SECOND     # the primary is gone and this node is about to take over
        return State.WAIT

    def _wants_lease(self) -> bool:
        v = self.view
        if v.intent != "start" or self.hold_stop or self.swap_pending or self.waiting:
            return False
        promoting = self.running is not None and self.running.next_state in PRIMARY
        if v.copy_problem and not self.forced_copy and self.state not in PRIMARY and not promoting:
            return False        # rule 6: only a copy that proves it is the current one
        if self.state in PRIMARY or self.epoch is not None:
            return True
        if v.maintenance and not promoting:
            return False        # maintenance: nothing starts or fails over by itself
        # Automatic failover only when on; a waiting node still starts as primary
        # when Raft lets it (it is in the in-sync set, e.g. named with prim).
        return v.failover or self.state is State.WAIT

    @property
    def contending(self) -> bool:
        """The last contend decision given to the driver."""
        return self._contend

    def _contend_change(self) -> Output:
        want = self._wants_lease()
        if want == self._contend:
            return Output()
        self._contend = want
        return Output(contend=want)

    def _reconcile(self) -> Output:
        # The swap is over once the peer holds the lease, or void once the peer can no
        # longer take it (it left the in-sync set): then this node may contend again.
        if self.swap_pending and (self.view.holder == self.peer
                                  or (self.view.holder is None
                                      and self.peer not in self.view.in_sync)):
            self.swap_pending = False
        out = self._contend_change()
        if self.running is not None:
            return out
        if self._queued:
            # A queued command changes no state: it leads to the state *now*, not the
            # one it was queued in (else it would rewind a promotion that ran meanwhile).
            return merge(out, self._start(replace(self._queued.pop(0), next_state=self.state)))
        plan = self._plan_towards(self._target())
        if plan is None:
            if self.state is State.STOP and self.hold_stop and self.restart_after_stop:
                self.hold_stop = self.restart_after_stop = False
                return merge(out, self._reconcile())
            return out
        return merge(out, self._start(plan))

    def _plan_towards(self, target: State) -> Plan | None:
        s = self.state
        if s is target or (s in PRIMARY and target in PRIMARY):
            return None
        if s is State.STOP:
            pause: tuple[Action, ...] = ()
            if self.retry_pending:
                self.retry_pending = False
                pause = (Pause(START_RETRY_PAUSE_S),)
            return Plan(pause + (RunScript("prestart", "STOP", "WAIT", "start"),
                                 RunScript("transition", "STOP", "WAIT", "start")), State.WAIT,
                        "starting again" if pause else "starting")
        if s in PRIMARY:
            cur = self._primary_state().value
            force = self.force_stop
            if self.epoch is None:      # lease gone: the urgent fence already ran; again, idempotent
                return self._fence(cur, "lease lost", urgent=False)
            nxt = State.STOP if target is State.STOP else State.WAIT
            actions: tuple[Action, ...] = (DropVip(), RunScript("stop_prim", cur, nxt.value, "force" if force else "stop",
                                            stop=True),
                       StopMount(kill=force), ReleaseLease())
            return Plan(actions + self._stop_tail(cur, nxt), nxt,
                        "swap" if self.swap_pending else f"to {nxt.value}")
        if s is State.SECOND:
            if target in PRIMARY:
                return self._promotion("SECOND", (RunScript("stop_second", "SECOND", "ALONE", "stop", stop=True),
                                                  StopReceiver()))
            nxt = State.STOP if target is State.STOP else State.WAIT
            action = "force" if self.force_stop else "stop"
            actions = (RunScript("stop_second", "SECOND", nxt.value, action, stop=True), StopReceiver())
            return Plan(actions + self._stop_tail("SECOND", nxt), nxt, f"to {nxt.value}")
        # WAIT
        if target is State.STOP:
            return Plan(self._stop_tail("WAIT", State.STOP), State.STOP, "to STOP")
        if target in PRIMARY:
            return self._promotion("WAIT", ())
        if target is State.SECOND:
            return Plan((StartReceiver(self.view.epoch),
                         RunScript("start_second", "WAIT", "SECOND", "start"),
                         RunScript("transition", "WAIT", "SECOND", "start")), State.SECOND,
                        f"secondary of {self.peer}")
        return None

    def _stop_tail(self, cur: str, nxt: State) -> tuple[Action, ...]:
        """What ends every stop plan: poststop when the module stops, transition."""
        action = "force" if self.force_stop else "stop"
        tail: tuple[Action, ...] = ()
        if nxt is State.STOP:
            tail = (RunScript("poststop", cur, "STOP", action, stop=True),)
        return tail + (RunScript("transition", cur, nxt.value, "stop"),)

    def _fence(self, cur: str, reason: str, urgent: bool) -> Plan:
        """The lease is gone: drop the VIP and kill the mount (writes blocked) before anything else."""
        return Plan((DropVip(), StopMount(kill=True),
                     RunScript("stop_prim", cur, "WAIT", "force", stop=True),
                     RunScript("transition", cur, "WAIT", "stop")),
                    State.WAIT, reason, urgent=urgent)

    def _promotion(self, frm: str, before: tuple[Action, ...]) -> Plan:
        assert self.epoch is not None
        return Plan(before + (CommitInSyncSelf(self.epoch, forced=self.forced_copy), StartMount(self.epoch),
                              RunScript("start_prim", frm, "ALONE", "start"), RaiseVip(),
                              RunScript("transition", frm, "ALONE", "start")),
                    State.ALONE, f"primary at epoch {self.epoch}")

    # ---- plan bookkeeping ---------------------------------------------------------------
    def _queue(self, plan: Plan) -> Output:
        if self.running is None:
            return self._start(plan)
        self._queued.append(plan)
        return Output()

    def _start(self, plan: Plan) -> Output:
        self.running = plan
        return Output(plans=(plan,))

    def _plan_done(self, event: PlanDone) -> Output:
        plan = self.running
        if plan is None:
            return Output()
        self.running = None
        if event.ok:
            self.state = plan.next_state
            if self.state is State.STOP:
                self.force_stop = False
            if self.state in (State.STOP,) or self.state in PRIMARY:
                self.forced_copy = False        # used, or given up
            return self._reconcile()
        log = (f"{plan.reason} failed: {event.error}",)
        if event.not_yet and plan.next_state is not self.state:
            return Output(log=(f"{plan.reason}: not yet: {event.error}",))
        if plan.next_state in PRIMARY or plan.next_state is State.SECOND:
            # Half started: the stop path runs from the state it was going to, then,
            # within maxloop, the module starts again.
            self.state = plan.next_state
            self.hold_stop = True
            retry = self._count_start_failure(event.at)
            self.restart_after_stop = retry is not None
            self.retry_pending = retry is not None
            if retry is not None:
                note = (f"start retry {retry} of {self.maxloop} within {_span(self.loop_interval_s)}: "
                        f"stopping, then starting again in {START_RETRY_PAUSE_S:g} s")
            else:
                note = (f"start failed {self.maxloop + 1} times within {_span(self.loop_interval_s)} "
                        f"(maxloop {self.maxloop}): stopping the module; start it again by hand")
            return merge(Output(log=log + (note,)), self._reconcile())
        # Nothing moved (a commit without quorum, say): the next change of the
        # committed view retries, rather than spinning here.
        return Output(log=log)

    def _count_start_failure(self, at: float | None) -> int | None:
        """A failed start: the number of this retry (1..maxloop), or None when
        ``maxloop`` retries already happened within ``loop_interval``."""
        if at is not None:
            self.start_failures = [t for t in self.start_failures
                                   if t is None or at - t < self.loop_interval_s]
        if len(self.start_failures) >= self.maxloop:
            self.start_failures.clear()     # the module stops; a start counts afresh
            return None
        self.start_failures.append(at)
        return len(self.start_failures)

    def _lease_lost(self, event: LeaseLost) -> Output:
        if self.epoch is None or event.epoch != self.epoch:
            return Output()
        self.epoch = None
        if self.state not in PRIMARY and (self.running is None or self.running.next_state not in PRIMARY):
            return self._reconcile()
        was_running = self.running
        cur = self._primary_state().value if self.state in PRIMARY else self.state.value
        fence = self._fence(cur, f"lease lost: {event.reason}", urgent=True)
        self.running = fence
        log: tuple[str, ...] = (f"lease epoch {event.epoch} lost ({event.reason}): writes blocked, VIP dropped",)
        if was_running is not None:
            log += (f"interrupted: {was_running.reason}",)
        return merge(self._contend_change(), Output(plans=(fence,), log=log))


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"
