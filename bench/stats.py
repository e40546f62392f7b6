"""Small statistics shared by the benchmarks."""
from __future__ import annotations


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
