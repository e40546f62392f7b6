"""The renewal latency histogram (hacluster/http/histogram.py)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.http.histogram import Histogram


@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False)))
def test_cumulative_counts_are_what_falls_at_or_below_each_bound(values):
    h = Histogram((0.001, 0.01, 0.1, 1.0))
    for v in values:
        h.observe(v)
    snap = h.snapshot()
    assert snap.count == len(values)
    assert snap.cumulative == tuple(sum(1 for v in values if v <= b) for b in snap.bounds)
    assert snap.total == pytest.approx(sum(values))


def test_bounds_must_increase():
    with pytest.raises(ValueError):
        Histogram((0.1, 0.01))
    with pytest.raises(ValueError):
        Histogram(())
