"""module: another module's state (SafeKit ``<module name=>``), local or on a peer.

The daemon gives a callable returning ``(state, incarnation)`` of the other module, or
None when it cannot be reached; ``incarnation`` changes each time that module starts
(e.g. a start counter or its epoch). Decision (pure): up while the state is one of
``ready_states``; a new incarnation while up reports one ``down`` observation, so that
the dependant's failover rule restarts it when its dependency restarted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Hashable, Union

from .resource import DOWN, INIT, UP

READY_STATES = frozenset({"PRIM", "ALONE", "SECOND", "UP"})
ModuleStateSource = Callable[[], Union[tuple[str, Hashable] | None, Awaitable[tuple[str, Hashable] | None]]]


@dataclass
class ModuleWatch:
    ready_states: frozenset[str] = READY_STATES
    value: str = INIT
    _incarnation: Hashable = field(default=None, repr=False)

    def observe(self, observation: tuple[str, Hashable] | None) -> str:
        if observation is None:
            self.value = DOWN
            return self.value
        state, incarnation = observation
        if state not in self.ready_states:
            self.value = DOWN
        elif self.value == UP and incarnation != self._incarnation:
            self.value = DOWN  # restarted between two polls: up -> down -> up
        else:
            self.value = UP
        self._incarnation = incarnation
        return self.value
