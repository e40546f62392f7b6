"""splitbrain/witness: reachability of one or more witness addresses (SafeKit
``<splitbrain ident= exec="ping" arg=ADDR>``).

What actually prevents split brain here is Raft quorum, not this checker: a node that
cannot prove it is in the majority loses its lease and stops acting within one lease,
whatever this resource says, and a minority can never commit a new primary. This
resource only reports, for sites whose procedures expect SafeKit's splitbrain checker
(e.g. to ``wait`` on a node that lost its witness, or to alert).

Decision (pure): up when at least ``need`` of the addresses answered.
Probe: ``ping.ping_once`` per address (ICMP: see checkers.ping for what it needs) or
``tcp.probe_tcp`` to the witness's Raft port.
"""
from __future__ import annotations

from typing import Mapping

from .resource import DOWN, UP, Debounce


def witness_value(reachable: Mapping[str, bool] | None, need: int = 1) -> str:
    if not reachable:
        return DOWN
    return UP if sum(1 for ok in reachable.values() if ok) >= need else DOWN


class WitnessDecision(Debounce):
    def __init__(self, need: int = 1, fail_count: int = 1, ok_count: int = 1) -> None:
        super().__init__(fail_count, ok_count)
        if need < 1:
            raise ValueError("need must be at least 1")
        self.need = need

    def observe_reachable(self, reachable: Mapping[str, bool] | None) -> str:
        return self.observe(witness_value(reachable, self.need) == UP)
