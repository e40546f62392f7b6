"""One short farm chaos sweep on the real lab: every farm nemesis once, 0 violations.
The checks on synthetic histories: tests/unit/test_farm_chaos.py."""
from __future__ import annotations

import json

import pytest

from chaos.farm_chaos import (FARM_NEMESES, render_farm_summary,
                              run_farm_chaos, write_farm_report)
from tests.conftest import needs_root


@needs_root
@pytest.mark.lab
def test_every_farm_nemesis_once_on_the_lab_has_no_violation(make_lab, tmp_path):
    lab = make_lab(["f1", "f2", "f3", "c"])
    names = list(FARM_NEMESES)
    history = run_farm_chaos(lab, names, 1, seed=7, hold_range_s=(2.0, 3.0), steady_s=1.2)
    paths = write_farm_report(history, tmp_path)
    eps = history["episodes"]
    assert [e["nemesis"] for e in eps] == names
    # every violation fails it, resets of the survivors' connections at a rebalance too
    bad = {e["nemesis"]: e["violations"] for e in eps if e["violations"]}
    assert not bad, json.dumps(bad, indent=1)
    assert all(e["recovery_s"] is not None for e in eps)
    assert all(e["rebalance_s"] is not None for e in eps if FARM_NEMESES[e["nemesis"]].out)
    assert sum(c[3] is not None for c in history["connections"]) > 500
    summary = paths["summary"].read_text()
    assert summary == render_farm_summary(history)
    assert json.loads(paths["history"].read_text())["seed"] == 7
    assert paths["timeline"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the keep-alive connections exercised the nodes not faulted in every episode
    assert all(e["held_on_survivors"] > 0 for e in eps), [e["held_on_survivors"] for e in eps]
    assert "**0 violation(s)**" in summary
