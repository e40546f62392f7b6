"""Pure checkers over a recorded client history (no I/O, no clocks).

- ``lost_acked_writes``: every acknowledged write is still readable with its value.
- ``epoch_violations``: epochs never go back, and one epoch has one primary.

Acks are anything with ``key, value, t_sent, t_acked`` (chaos.kv_workload.Ack);
answers are ``(t, node, epoch)`` tuples.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class AckLike(Protocol):
    key: str
    value: str
    t_sent: float
    t_acked: float


@dataclass(frozen=True)
class LostWrite:
    key: str
    expected: tuple[str, ...]  # values any one of which would be correct
    found: str | None  # None: the key is gone

    def __str__(self) -> str:
        what = "missing" if self.found is None else f"stale value {self.found!r}"
        return f"acknowledged key {self.key!r} {what}; expected {' or '.join(map(repr, self.expected))}"


def acceptable_values(acks: Iterable[AckLike]) -> dict[str, tuple[str, ...]]:
    """Per key, the acknowledged values that may legitimately be the current one.

    A value is superseded when another acknowledged write to the key was *sent after*
    it was acknowledged; writes that overlapped in time may land in either order, so
    every not-superseded value is acceptable (one writer per key: just the last)."""
    by_key: dict[str, list[AckLike]] = {}
    for ack in acks:
        by_key.setdefault(ack.key, []).append(ack)
    result = {}
    for key, group in by_key.items():
        latest_start = max(a.t_sent for a in group)
        values = sorted({a.value for a in group if a.t_acked >= latest_start})
        result[key] = tuple(values)
    return result


def lost_acked_writes(acks: Iterable[AckLike], read_back: Mapping[str, str | None]) -> list[LostWrite]:
    """Every acknowledged key whose read-back value is absent or not an acceptable one."""
    lost = []
    for key, expected in sorted(acceptable_values(acks).items()):
        found = read_back.get(key)
        if found not in expected:
            lost.append(LostWrite(key, expected, found))
    return lost


def epoch_violations(answers: Iterable[tuple[float, str, int]]) -> list[str]:
    """Violations in answers taken in time order: an epoch answered by two nodes (two
    primaries), or an answer with an older epoch after a newer one was seen."""
    violations = []
    owner: dict[int, tuple[str, float]] = {}
    reported: set[tuple[int, str]] = set()
    newest: tuple[int, float] | None = None
    for t, node, epoch in sorted(answers, key=lambda a: a[0]):
        first = owner.setdefault(epoch, (node, t))
        if first[0] != node and (epoch, node) not in reported:
            reported.add((epoch, node))
            violations.append(f"two primaries in epoch {epoch}: {first[0]!r} (t={first[1]:.3f}) "
                              f"and {node!r} (t={t:.3f})")
        if newest is not None and epoch < newest[0]:
            violations.append(f"epoch went back: {node!r} answered epoch {epoch} at t={t:.3f} "
                              f"after epoch {newest[0]} was seen at t={newest[1]:.3f}")
        if newest is None or epoch > newest[0]:
            newest = (epoch, t)
    return violations
