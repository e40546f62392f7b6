"""Small statistics shared by the benchmarks, and the alternation of a figure with
its baselines (so that a shared machine's load falls on both alike)."""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def alternating_rounds(steps: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run every step once per round, in the given order in even rounds and reversed in
    odd ones (neither side always runs first, right after the other); each step's
    results in round order."""
    if rounds < 1:
        raise ValueError(f"need rounds >= 1, got {rounds}")
    out: dict[str, list[T]] = {name: [] for name in steps}
    for i in range(rounds):
        for name in (list(steps) if i % 2 == 0 else list(reversed(steps))):
            out[name].append(steps[name]())
    return out
