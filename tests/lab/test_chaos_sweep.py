"""A short chaos sweep on real MirrorLabs: every nemesis once, short holds; no
acknowledged write lost, no epoch going back, PRIM+SECOND in sync after every heal.
One lab per lab shape: the standard one (n1, n2, w, c) and one five-voter lab for the
majorities ring and the membership change (about 35 s more).
(About two minutes; the full sweep is ``python -m chaos run --episodes 10``.)"""
from __future__ import annotations

import re

import pytest

from chaos.chaos_report import decode_png, write_report
from chaos.chaos_run import run_chaos   # also registers the flow nemesis
from chaos.nemesis import NEMESES
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def test_every_nemesis_once_without_violation(tmp_path):
    run = run_chaos(list(NEMESES), episodes=1, seed=20261201, hold_range_s=(0.8, 1.2),
                    recovery_bound_s=60.0)
    paths = write_report(run.to_history(), tmp_path)
    bad = [(e.index, e.nemesis, e.seed, e.targets, e.violations)
           for e in run.episodes if e.violations]
    assert not bad, f"violations (report in {paths['summary']}): {bad}"
    assert sorted(e.nemesis for e in run.episodes) == sorted(NEMESES)   # grouped by lab shape
    for e in run.episodes:
        assert e.recovery_s is not None and e.acked > 0, e
        assert {f["action"] for f in e.faults} - {"heal"}, f"{e.nemesis} did nothing: {e.faults}"
    kill_repl = next(e for e in run.episodes if e.nemesis == "kill-replication")
    assert "none found" not in kill_repl.faults[0]["detail"], kill_repl.faults
    # a primary paused beyond its lease is replaced at a newer epoch (shorter faults
    # may end before the lease does: no failover is then the right outcome)
    zombie = next(e for e in run.episodes if e.nemesis == "pause-primary")
    assert zombie.failover_s is not None and zombie.epoch_after > zombie.epoch_before, zombie
    assert zombie.primary_after != zombie.primary_before, zombie
    # a full disk is really filled, on the role it names, and the pair recovers from it
    for name, role in (("disk-full-primary", "primary_before"), ("disk-full-secondary", None)):
        e = next(e for e in run.episodes if e.nemesis == name)
        fill = next(f for f in e.faults if f["action"] == "fill")
        assert "until ENOSPC" in fill["detail"] and (role is None or fill["host"] == e.primary_before), e
    # the primary dies mid-reintegration (the secondary not yet back in sync): the half
    # copy is not promoted; the old primary comes back at a newer epoch
    reint = next(e for e in run.episodes if e.nemesis == "failover-during-reintegration")
    off = next(f for f in reint.faults if f["action"] == "power-off")
    assert f"in_sync=['{reint.primary_before}']" in off["detail"], reint.faults
    assert not any(f["action"] == "violation" for f in reint.faults), reint.faults
    assert reint.primary_after == reint.primary_before and reint.epoch_after > reint.epoch_before
    # five voters: each sees only its ring neighbours; a witness or the secondary cut
    # off while the majority changes the membership, which the minority cannot
    ring = next(e for e in run.episodes if e.nemesis == "majorities-ring")
    assert ring.lab_shape == "five_voters" and [f["action"] for f in ring.faults] == ["ring", "heal"]
    assert len(ring.targets["ring"]) == 5
    member = next(e for e in run.episodes if e.nemesis == "membership-change")
    actions = [f["action"] for f in member.faults]
    assert member.lab_shape == "five_voters" and "majority-remove" in actions, member.faults
    minority = next(f for f in member.faults if f["action"] == "minority-remove")
    # a repr'd one-liner; 75: not committed for lack of quorum (1: refused by a leader)
    assert re.match(r"rc=(75|1) ['\"]hacluster: ", minority["detail"]), minority
    assert actions.count("converged") == 2 and "restore-add" in actions, member.faults
    # the report shows every nemesis, and the timeline is a picture of the whole run
    summary = paths["summary"].read_text()
    assert all(f"| {name} | 1 | 0 |" in summary for name in NEMESES), summary
    width, height, _ = decode_png(paths["timeline"].read_bytes())
    assert width >= 1000 and height > 100
