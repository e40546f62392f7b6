"""The action loop: which action a failure really gets, and the maintenance flags.

Pure (time passed in). ``maxloop`` restart/stopstart actions are allowed within
``loop_interval``; the next one inside that window becomes ``stop`` instead (the module
stops on this node and stays stopped until an administrator starts it or runs
``resetloop``). ``stop``, ``wait`` and ``swap`` are not counted: they do not loop.
When several rules fire at once the strongest action wins:
stop > wait > stopstart > swap > restart (wait and stopstart both stop the module here;
wait also holds it in WAIT until its resource is back).

Maintenance: ``errd off`` suppresses actions from errd.* resources, ``checker off``
from every other checker; the checkers keep reporting values (the resources view stays
live), only the actions are held.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable

from .failover_rules import ACTIONS

COUNTED = ("restart", "stopstart")
STRENGTH = ("stop", "wait", "stopstart", "swap", "restart")  # strongest first


def strongest(actions: Iterable[str]) -> str | None:
    present = set(actions)
    return next((a for a in STRENGTH if a in present), None)


@dataclass(frozen=True)
class ActionDecision:
    action: str          # what to run
    requested: str       # what the rule asked for
    log_line: str        # "event=... key=value ..." for log.info


class ActionLoop:
    """Counts looping actions over a sliding window of ``loop_interval_s``."""

    def __init__(self, maxloop: int, loop_interval_s: float, module: str = "") -> None:
        if maxloop < 0 or loop_interval_s < 0:
            raise ValueError("maxloop and loop_interval must not be negative")
        self.maxloop = maxloop
        self.loop_interval_s = loop_interval_s
        self.module = module
        self._times: deque[float] = deque()

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.loop_interval_s:
            self._times.popleft()

    def decide(self, action: str, cause: str, now: float) -> ActionDecision:
        """The action to run for ``action`` requested by rule/resource ``cause``."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} must be one of {', '.join(ACTIONS)}")
        head = f"module={self.module} cause={cause}"
        if action not in COUNTED:
            return ActionDecision(action, action, f"event=action {head} action={action}")
        self._expire(now)
        if len(self._times) >= self.maxloop:
            return ActionDecision("stop", action, (
                f"event=maxloop_reached {head} requested={action} action=stop "
                f"count={len(self._times)} maxloop={self.maxloop} loop_interval_s={self.loop_interval_s:g}"))
        self._times.append(now)
        return ActionDecision(action, action, (
            f"event=action {head} action={action} count={len(self._times)} maxloop={self.maxloop}"))

    def resetloop(self) -> None:
        """Forget the counted actions (``hacluster -m MOD resetloop``)."""
        self._times.clear()


@dataclass
class MaintenanceFlags:
    """``errd on|off`` and ``checker on|off``."""
    errd: bool = True
    checker: bool = True

    def allows(self, resource: str) -> bool:
        """May a change of ``resource`` trigger an action?"""
        return self.errd if resource.startswith("errd.") else self.checker

    def set(self, which: str, on: bool) -> None:
        if which not in ("errd", "checker"):
            raise ValueError(f"maintenance flag {which!r} must be errd or checker")
        setattr(self, which, on)
