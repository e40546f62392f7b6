"""The farm module's state machine, pure: events in, plans out.

No I/O, no clock, no threads. The driver feeds it events — administrator
commands, the committed Raft view of the farm, checker reports, the outcome of
the plan it last handed out — and carries out the plans it returns, one at a
time, reporting ``PlanDone``. While a plan runs the module is *Transient*;
otherwise *Ready* (UP is Ready once its VIP accepts exactly the buckets the
committed table gives this node).

States (SafeKit's): STOP (application stopped), WAIT (prestart done,
application stopped, waiting for the cluster or a resource), UP (start_both
done). An UP node that is cut off from the cluster stays UP (Transient): it
serves nothing, but its application keeps running, so that it serves again
(farm_join if the leader took it out, then the VIP) as soon as it can commit;
only a stop command or a checker action stops the application.
Safety lives in the order of each plan:
  * the VIP is raised only with the buckets of a committed table in which
    this node is a member, and only while the node can commit (``connected``);
  * every plan that leaves UP drops the VIP first and then commits the leave,
    so the other nodes take the buckets over before the application stops;
  * losing the cluster is urgent: the VIP is dropped at once, whatever plan
    was running, because the leader will soon give this node's buckets away;
  * plans that run while the VIP is up are single VIP actions (or start with
    dropping it), so a table change is never stuck behind a slow script.
A plan that fails on a commit (no quorum, refused) is retried on the next
``ViewChanged``: the driver re-sends the view after a back-off.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hacluster.modules.machine import (CheckerDown, CheckerUp, Command, CommitIntent, DropVip, Output,
                                       Plan, PlanDone, RunScript, ViewChanged, merge)

CHECKER_ACTIONS = ("restart", "stopstart", "stop", "wait")
COMMANDS = ("start", "stop", "forcestop", "restart", "stopstart")


class State(str, enum.Enum):
    STOP = "STOP"
    WAIT = "WAIT"
    UP = "UP"

    @property
    def exit_code(self) -> int:
        """SafeKit's ``state -lq`` codes."""
        return {"STOP": 0, "WAIT": 1, "UP": 2}[self.value]


# ---- events (and those of every kind: hacluster.modules.machine) ----------------------
@dataclass(frozen=True)
class View:
    """The committed Raft state of this farm, seen from this node.

    ``connected``: this node is a live Raft member able to commit (the driver
    turns it false as soon as its own liveness lease can no longer be proven,
    i.e. before the leader could expire it and give its buckets away)."""
    version: int = 0
    buckets: frozenset[int] = frozenset()    # buckets the committed table gives this node
    joined: bool = False                     # this node is in the committed farm members
    connected: bool = False
    intent: str | None = None                # this node's committed intent: start | stop | None


@dataclass(frozen=True)
class Restarted:
    """The daemon starts (after a crash, possibly): a VIP and the application
    may have been left behind by its previous life. The first event."""


@dataclass(frozen=True)
class Adopted:
    """The daemon starts in maintenance and took over what the one before it left
    serving (hacluster.farm.driver): the application runs, the VIP accepts ``buckets``.
    The first event, instead of Restarted: no script runs."""
    buckets: frozenset[int]


Event = Command | ViewChanged | PlanDone | CheckerDown | CheckerUp | Restarted | Adopted


# ---- actions (and RunScript, CommitIntent, DropVip of every kind) ---------------------
@dataclass(frozen=True)
class CommitFarmJoin:
    """Commit ``farm_join`` with this node's power; a refusal fails the plan."""


@dataclass(frozen=True)
class CommitFarmLeave:
    """Best effort: when it cannot be committed the leader's expiry of this
    node's liveness lease takes it out, or the machine asks again."""


@dataclass(frozen=True)
class RaiseVip:
    """Add the VIP and load a ruleset accepting exactly ``buckets``."""
    version: int
    buckets: frozenset[int]


@dataclass(frozen=True)
class SetBuckets:
    """Replace the ruleset atomically: accept exactly ``buckets``."""
    version: int
    buckets: frozenset[int]


Action = RunScript | CommitIntent | CommitFarmJoin | CommitFarmLeave | RaiseVip | SetBuckets | DropVip
_VIP_ACTIONS = (RaiseVip, SetBuckets)


class _Unknown:
    """The VIP may be up with any buckets (a VIP action failed): drop it."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


@dataclass
class _Holds:
    """Local reasons to keep the module down, on top of the committed intent."""
    stop: bool = False                   # stopstart / checker stop / failed start: reach STOP
    restart_after_stop: bool = False
    waiting: set[str] = field(default_factory=set)   # checker `wait`: causes still down


class FarmMachine:
    def __init__(self, node: str) -> None:
        self.node = node
        self.state = State.STOP
        self.view = View()
        # What the VIP accepts once the running plan is done: None (no VIP),
        # the buckets, or UNKNOWN.
        self.vip: frozenset[int] | _Unknown | None = None
        self.running: Plan | None = None
        self.holds = _Holds()
        self.local_intent: str | None = None     # the last command's, until the daemon restarts
        self.force_stop = False
        self._pending_intent: str | None = None  # to commit with the next plan
        # Decide nothing about membership until the next view: a join or leave
        # was just committed (the view may not show it yet), or a join failed.
        self._await_view = False

    # ---- queries ------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        if self.running is not None:
            return False
        if self.state is State.UP:
            return self.view.connected and self.view.joined and self.vip == self.view.buckets
        return True

    @property
    def display(self) -> tuple[State, str]:
        return self.state, "Ready" if self.ready else "Transient"

    @property
    def intent(self) -> str | None:
        return self.local_intent or self.view.intent

    # ---- the one entry point --------------------------------------------------------
    def handle(self, event: Event) -> Output:
        if isinstance(event, Command):
            return self._command(event.name)
        if isinstance(event, ViewChanged):
            self.view = event.view
            self._await_view = False
            if not event.view.connected and self._vip_may_be_up():
                return self._cut_off()
            return self._reconcile()
        if isinstance(event, PlanDone):
            return self._plan_done(event)
        if isinstance(event, CheckerDown):
            return self._checker_down(event)
        if isinstance(event, CheckerUp):
            self.holds.waiting.discard(event.cause)
            return self._reconcile()
        if isinstance(event, Restarted):
            return self._restarted()
        if isinstance(event, Adopted):
            if self.state is not State.STOP or self.running is not None:
                return Output(refused="Adopted must be the first event")
            self.state = State.UP
            self.vip = frozenset(event.buckets)
            # No decision before the first view: the committed intent and membership
            # come with it (deciding on the empty view would stop what was adopted).
            self._await_view = True
            note = f"daemon restarted in maintenance: serving on with {len(event.buckets)} buckets"
            return Output(log=(note,))
        raise TypeError(f"unknown event {event!r}")

    # ---- commands and checkers --------------------------------------------------------
    def _command(self, name: str) -> Output:
        if name == "start":
            self.local_intent = self._pending_intent = "start"
            self.holds.stop = self.holds.restart_after_stop = False
            return self._reconcile()
        if name in ("stop", "forcestop"):
            self.local_intent = self._pending_intent = "stop"
            self.force_stop = self.force_stop or name == "forcestop"
            self.holds.restart_after_stop = False
            return self._reconcile()
        if name == "stopstart":
            if self.state is State.STOP:
                return Output(refused="the module is stopped; use start")
            self.holds.stop = self.holds.restart_after_stop = True
            return self._reconcile()
        if name == "restart":
            return self._restart("restart command")
        return Output(refused=f"unknown command {name!r} (farm commands: {', '.join(COMMANDS)})")

    def _restart(self, reason: str) -> Output:
        """Stop and start the application here without leaving UP; the other
        nodes serve this node's buckets meanwhile."""
        if self.running is not None:
            return Output(refused=f"a transition is in progress ({self.running.reason})")
        if self.state is not State.UP:
            return Output(refused=f"restart needs UP (state {self.state.value})")
        return self._start(Plan(self._release() + (
            RunScript("stop_both", "UP", "UP", "restart", stop=True),
            RunScript("start_both", "UP", "UP", "restart")), State.UP, reason))

    def _checker_down(self, event: CheckerDown) -> Output:
        why = f"checker {event.cause}: {event.action}"
        if event.action == "restart":
            out = self._restart(why)
            if out.refused:     # not UP, or busy: nothing to restart now
                return Output(log=(f"{why} ignored: {out.refused}",))
            return merge(Output(log=(why,)), out)
        if event.action == "stopstart":
            if self.state is State.STOP:
                return Output(log=(f"{why} ignored: the module is stopped",))
            self.holds.stop = self.holds.restart_after_stop = True
        elif event.action == "stop":
            self.holds.stop = True
            self.holds.restart_after_stop = False
        elif event.action == "wait":
            self.holds.waiting.add(event.cause)
        else:
            return Output(refused=f"checker {event.cause}: unknown action {event.action!r} "
                                  f"(one of {', '.join(CHECKER_ACTIONS)})")
        return merge(Output(log=(why,)), self._reconcile())

    def _restarted(self) -> Output:
        if self.state is not State.STOP or self.running is not None:
            return Output(refused="Restarted must be the first event")
        self.vip = UNKNOWN
        plan = Plan((DropVip(), CommitFarmLeave(),
                     RunScript("stop_both", "STOP", "STOP", "force", stop=True)),
                    State.STOP, "daemon restarted: clean what its previous life left")
        log = ("daemon restarted: dropping any VIP and stopping the application before "
               "following the cluster"),
        return merge(Output(log=log), self._start(plan))

    # ---- deciding where to go -----------------------------------------------------------
    def _target(self) -> State:
        if self.intent != "start" or self.holds.stop:
            return State.STOP
        if self.holds.waiting:
            return State.WAIT
        if not self.view.connected:
            # Cut off: an UP node keeps its application (it only stops serving); a node
            # not started yet waits for the cluster before it starts it.
            return State.UP if self.state is State.UP else State.WAIT
        return State.UP

    def _vip_may_be_up(self) -> bool:
        running_raises = self.running is not None and any(
            isinstance(a, _VIP_ACTIONS) for a in self.running.actions)
        return self.vip is not None or running_raises

    def _release(self) -> tuple[Action, ...]:
        """Leave the farm's traffic: VIP first, then the committed leave."""
        actions: tuple[Action, ...] = (DropVip(),) if self.vip is not None else ()
        if self.view.joined and self.view.connected:
            actions += (CommitFarmLeave(),)
        return actions

    def _reconcile(self) -> Output:
        if self.running is not None:
            return Output()
        plan = self._plan_towards(self._target())
        if plan is None:
            if self.state is State.STOP and self.holds.stop and self.holds.restart_after_stop:
                self.holds.stop = self.holds.restart_after_stop = False
                return self._reconcile()
            if self._pending_intent is None:
                return Output()
            plan = Plan((), self.state, f"{self._pending_intent} command")
        if self._pending_intent is not None:
            plan = _with_intent(plan, self._pending_intent)
            self._pending_intent = None
        return self._start(plan)

    def _plan_towards(self, target: State) -> Plan | None:
        s, v = self.state, self.view
        force = "force" if self.force_stop else "stop"
        if s is State.STOP:
            if target is State.STOP:
                if self.vip is not None:
                    return Plan((DropVip(),), State.STOP, "VIP left up")
                if v.joined and v.connected and not self._await_view:
                    return Plan((CommitFarmLeave(),), State.STOP, "still a farm member while stopped")
                return None
            return Plan((RunScript("prestart", "STOP", "WAIT", "start"),
                         RunScript("transition", "STOP", "WAIT", "start")), State.WAIT, "starting")
        if s is State.WAIT:
            if target is State.STOP:
                return Plan(self._release() + (RunScript("poststop", "WAIT", "STOP", force, stop=True),
                                               RunScript("transition", "WAIT", "STOP", "stop")),
                            State.STOP, "to STOP")
            if target is State.UP:
                return Plan((RunScript("start_both", "WAIT", "UP", "start"),
                             RunScript("transition", "WAIT", "UP", "start")), State.UP, "to UP")
            if self.vip is not None or (v.joined and v.connected and not self._await_view):
                return Plan(self._release(), State.WAIT, "a waiting node serves no buckets")
            return None
        # UP
        if target is not State.UP:
            tail: tuple[Action, ...] = (RunScript("poststop", "UP", "STOP", force, stop=True),) \
                if target is State.STOP else ()
            return Plan(self._release() + (RunScript("stop_both", "UP", target.value, force, stop=True),)
                        + tail + (RunScript("transition", "UP", target.value, "stop"),),
                        target, f"to {target.value}")
        if not v.connected:
            if self.vip is not None:
                return Plan((DropVip(),), State.UP, "cut off from the cluster: no buckets")
            return None
        if self._await_view and self.vip is None:
            return None
        if not v.joined:
            if self.vip is not None:
                return Plan((DropVip(),), State.UP, "not a farm member: no buckets")
            if self._await_view:
                return None
            return Plan((CommitFarmJoin(),), State.UP, "joining the farm")
        if self.vip is UNKNOWN:
            return Plan((DropVip(),), State.UP, "VIP in an unknown state")
        if self.vip is None:
            return Plan((RaiseVip(v.version, v.buckets),), State.UP,
                        f"serving {len(v.buckets)} buckets (table version {v.version})")
        if self.vip != v.buckets:
            return Plan((SetBuckets(v.version, v.buckets),), State.UP,
                        f"table version {v.version}: {len(v.buckets)} buckets")
        return None

    # ---- plan bookkeeping ------------------------------------------------------------------
    def _start(self, plan: Plan) -> Output:
        self.running = plan
        return Output(plans=(plan,))

    @staticmethod
    def _vip_after(plan: Plan, vip: frozenset[int] | _Unknown | None) -> frozenset[int] | _Unknown | None:
        for a in plan.actions:
            if isinstance(a, DropVip):
                vip = None
            elif isinstance(a, _VIP_ACTIONS):
                vip = a.buckets
        return vip

    def _plan_done(self, event: PlanDone) -> Output:
        plan = self.running
        if plan is None:
            return Output()
        self.running = None
        if event.ok:
            self.state = plan.next_state
            self.vip = self._vip_after(plan, self.vip)
            if ((CommitFarmJoin() in plan.actions and not self.view.joined)
                    or (CommitFarmLeave() in plan.actions and self.view.joined)):
                self._await_view = True
            if self.state is State.STOP:
                self.force_stop = False
            return self._reconcile()
        log = (f"{plan.reason} failed: {event.error}",)
        actions = plan.actions
        if any(isinstance(a, _VIP_ACTIONS) for a in actions):
            # The ruleset may be half loaded: never trust it, stop the module.
            self.vip = UNKNOWN
            self.holds.stop, self.holds.restart_after_stop = True, False
            return merge(Output(log=log + ("stopping the module; start it again by hand",)),
                          self._reconcile())
        if any(isinstance(a, DropVip) for a in actions):
            self.vip = None      # the first action, idempotent: done before anything failed
        scripts = {a.script for a in actions if isinstance(a, RunScript)}
        if "start_both" in scripts or "prestart" in scripts:
            # Half started: the stop path runs from where it was going.
            self.state = State.UP if "start_both" in scripts else State.WAIT
            self.holds.stop, self.holds.restart_after_stop = True, False
            return merge(Output(log=log + ("stopping the module; start it again by hand",)),
                          self._reconcile())
        if "stop_both" in scripts or "poststop" in scripts:
            # Stop scripts already had their forced retry: count the module as stopped.
            self.state = plan.next_state
            return merge(Output(log=log), self._reconcile())
        # A commit that did not go through (no quorum, refused): the next view retries.
        self._await_view = True
        return merge(Output(log=log), self._reconcile())

    def _cut_off(self) -> Output:
        """This node can no longer prove it is in the majority: drop the VIP now.

        An UP node keeps its application running (its buckets may be given away,
        its process is not in anyone's way): it serves again as soon as it is
        connected. Only when the interrupted plan was starting or stopping the
        application is it stopped, to leave it in a known state."""
        was = self.running
        cur = self.state
        scripts = {a.script for a in (was.actions if was else ()) if isinstance(a, RunScript)}
        interrupted = (f"interrupted: {was.reason}",) if was is not None else ()
        if cur is State.UP and not scripts & {"start_both", "stop_both"}:
            plan: Plan[State, Action] = Plan((DropVip(),), State.UP, "cut off from the cluster", urgent=True)
            self.running = plan
            return Output(plans=(plan,), log=(("cut off from the cluster: VIP dropped, the "
                                               "application keeps running"),) + interrupted)
        nxt = State.STOP if cur is State.STOP else State.WAIT
        actions: tuple[Action, ...] = (DropVip(),)
        if cur is State.UP or scripts & {"start_both", "stop_both"}:
            # The application may be running (or half stopped by the interrupted plan).
            actions += (RunScript("stop_both", cur.value, nxt.value, "stop", stop=True),)
        if nxt is not cur:
            actions += (RunScript("transition", cur.value, nxt.value, "stop"),)
        plan = Plan(actions, nxt, "cut off from the cluster", urgent=True)
        self.running = plan
        return Output(plans=(plan,), log=("cut off from the cluster: VIP dropped",) + interrupted)


def _with_intent(plan: Plan, intent: str) -> Plan:
    """Commit the administrator's intent in ``plan``, but never before the VIP
    is dropped and the farm left, nor before a VIP change: a commit can wait."""
    actions = plan.actions
    if any(isinstance(a, _VIP_ACTIONS) for a in actions):
        at = len(actions)
    else:
        at = 0
        while at < len(actions) and isinstance(actions[at], (DropVip, CommitFarmLeave)):
            at += 1
    return Plan(actions[:at] + (CommitIntent(intent),) + actions[at:], plan.next_state,
                plan.reason, plan.urgent)
