"""What a module's state machine and its driver say to each other, for every kind.

A module's machine is pure (events in, plans out: no I/O, no clock, no threads);
its driver feeds it and carries its plans out one at a time, reporting ``PlanDone``.
Each kind (mirror/, farm/) has its own states, its own view of the committed Raft
state, and events and actions of its own; the ones every kind has are declared
here once, so that ``runtime.ModuleRuntime`` feeds any machine and runs any plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

ViewT = TypeVar("ViewT")
StateT = TypeVar("StateT", bound="ModuleState")
ActionT = TypeVar("ActionT")


class ModuleState(Protocol):
    """A kind's state (a ``str`` enum: STOP, WAIT, ...)."""

    @property
    def value(self) -> str: ...

    @property
    def exit_code(self) -> int:
        """SafeKit's ``state -lq`` code."""
        ...


# ---- events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    name: str       # an administrator's command: start stop forcestop restart stopstart ...


@dataclass(frozen=True)
class ViewChanged(Generic[ViewT]):
    """The committed Raft state, as this kind's view of it, changed."""
    view: ViewT


@dataclass(frozen=True)
class PlanDone:
    ok: bool
    error: str | None = None
    # The plan could not begin and did nothing (its first action said "not yet"):
    # the state stays, the driver feeds the view again shortly.
    not_yet: bool = False
    # When the plan ended, on the driver's monotonic clock (a mirror counts start
    # retries within loop_interval); None: unknown, every failure counts.
    at: float | None = None


@dataclass(frozen=True)
class CheckerDown:
    """A failover rule fired (``cause``: its label) with ``action`` restart |
    stopstart | stop | wait | swap (after the action loop's verdict)."""
    cause: str
    action: str


@dataclass(frozen=True)
class CheckerUp:
    """What a ``wait`` held the module for (``cause``) is up again."""
    cause: str


# ---- actions --------------------------------------------------------------------------
@dataclass(frozen=True)
class RunScript:
    script: str
    state: str
    next_state: str
    action: str
    stop: bool = False      # a stop script: re-run with "force" when it fails


@dataclass(frozen=True)
class CommitIntent:
    intent: str


@dataclass(frozen=True)
class DropVip:
    """Remove the module's VIP (idempotent)."""


# ---- what a machine hands out ------------------------------------------------------------
@dataclass(frozen=True)
class Plan(Generic[StateT, ActionT]):
    """Actions to carry out in order; ``urgent``: cancel whatever plan is running
    and do this now (a lost lease, a node cut off). ``next_state``: where it leads."""
    actions: tuple[ActionT, ...]
    next_state: StateT
    reason: str
    urgent: bool = False


@dataclass(frozen=True)
class Output:
    plans: tuple[Plan[Any, Any], ...] = ()
    contend: bool | None = None     # a change of "keep acquiring the module lease" (mirror)
    refused: str | None = None      # a command that cannot be done now, and why
    log: tuple[str, ...] = ()


def merge(a: Output, b: Output) -> Output:
    """``a`` then ``b``: plans and log lines in order, the later contend decision."""
    return Output(plans=a.plans + b.plans,
                  contend=b.contend if b.contend is not None else a.contend,
                  refused=a.refused or b.refused, log=a.log + b.log)


class Machine(Protocol):
    """What the runtime needs of a kind's machine."""
    running: Plan[Any, Any] | None

    @property
    def display(self) -> tuple[ModuleState, str]:
        """(state, "Ready" | "Transient")."""
        ...

    def handle(self, event: Any) -> Output: ...
