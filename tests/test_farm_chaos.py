"""The farm chaos checks fed synthetic histories that must fail (and one that must
pass), then one short sweep on the real lab: every farm nemesis once, 0 violations."""
from __future__ import annotations

import json

import pytest

from chaos.farm_chaos import (FARM_NEMESES, Conn, FarmObservation, SteadyWindow, check_episode,
                              main, owner_table, raft_settled, render_farm_summary,
                              run_farm_chaos, table_problems, write_farm_report)
from tests.conftest import needs_root
from vip.farm_ruleset import bucket_of

SEED = 12345
NODES = ["f1", "f2", "f3"]
TABLE = {"f1": frozenset(range(0, 128)), "f2": frozenset(range(128, 192)),
         "f3": frozenset(range(192, 256))}


def _answer(src: str, sport: int, table=TABLE) -> str:
    return owner_table(table)[bucket_of(src, sport, "on_port", SEED)]


def _conns(start: float, n: int, table=TABLE) -> list[Conn]:
    return [Conn(start + i * 0.01, start + i * 0.01 + 0.005, _answer("10.0.0.9", 40000 + i, table),
                 "10.0.0.9", 40000 + i) for i in range(n)]


def _obs(conns=None, windows=None, **kw) -> FarmObservation:
    windows = windows if windows is not None else [
        SteadyWindow("before", 0.0, 1.0, dict(TABLE), dict(TABLE)),
        SteadyWindow("after", 10.0, 11.0, dict(TABLE), dict(TABLE))]
    conns = conns if conns is not None else _conns(0.0, 90) + _conns(10.0, 90)
    base = dict(t_fault=2.0, t_heal=5.0, t_rebalanced=3.5, t_recovered=8.0,
                rebalance_required=True)
    base.update(kw)
    return FarmObservation(NODES, conns, windows, SEED, **base)


def test_a_clean_episode_has_no_violation():
    assert check_episode(_obs()) == []


def test_unanswered_connection_in_a_steady_period_is_a_violation():
    conns = _conns(0.0, 90) + _conns(10.0, 90)
    conns[100] = Conn(conns[100].t_sent, conns[100].t_done, None, conns[100].src, conns[100].sport)
    v = check_episode(_obs(conns))
    assert len(v) == 1 and "after steady period: 1 of 90 connection(s) unanswered" in v[0], v


def test_failures_during_the_fault_are_not_judged():
    during = [Conn(3.0 + i * 0.01, 3.005 + i * 0.01, None, "10.0.0.9", 50000 + i) for i in range(20)]
    assert check_episode(_obs(_conns(0.0, 90) + during + _conns(10.0, 90))) == []


def test_answer_from_the_wrong_owner_is_a_violation():
    conns = _conns(0.0, 90) + _conns(10.0, 90)
    c = conns[5]
    other = next(n for n in NODES if n != c.node)
    conns[5] = Conn(c.t_sent, c.t_done, other, c.src, c.sport)
    v = check_episode(_obs(conns))
    assert len(v) == 1 and "before steady period: 1 connection(s) answered by a node that " \
        f"does not own the bucket" in v[0] and f"answered by {other}" in v[0], v


def test_incomplete_table_after_recovery_is_a_violation():
    holed = {**TABLE, "f3": frozenset(range(193, 256))}
    windows = [SteadyWindow("before", 0.0, 1.0, dict(TABLE), dict(TABLE)),
               SteadyWindow("after", 10.0, 11.0, holed, holed)]
    conns = _conns(0.0, 90) + [c for c in _conns(10.0, 90, holed)]
    v = check_episode(_obs(conns, windows))
    assert any("after steady period, table at its start: 1 bucket(s) accepted by no node" in x
               for x in v), v


def test_bucket_owned_twice_and_missing_ruleset_are_table_problems():
    assert table_problems(TABLE) == []
    twice = table_problems({**TABLE, "f2": frozenset(range(127, 192))})
    assert twice == ["1 bucket(s) accepted by more than one node (bucket 127 by f1,f2)"]
    gone = table_problems({**TABLE, "f3": None})
    assert gone[0] == "f3 has no farm ruleset loaded" and "64 bucket(s) accepted by no node" in gone[1]


def test_no_recovery_within_the_bound_is_a_violation():
    v = check_episode(_obs(_conns(0.0, 90), windows=[
        SteadyWindow("before", 0.0, 1.0, dict(TABLE), dict(TABLE))], t_recovered=None))
    assert v == ["not every node UP with a complete table within 60 s of the heal"]
    late = check_episode(_obs(t_recovered=5.0 + 61))
    assert late == ["not every node UP with a complete table within 60 s of the heal"]


def test_no_rebalance_when_a_node_is_out_is_a_violation_only_when_required():
    assert check_episode(_obs(t_rebalanced=None)) == [
        "no complete table on the live nodes within 10 s of the fault"]
    assert check_episode(_obs(t_rebalanced=None, rebalance_required=False)) == []


def test_table_changing_during_a_steady_period_is_a_violation():
    moved = {"f1": frozenset(range(0, 127)), "f2": frozenset(range(127, 192)),
             "f3": frozenset(range(192, 256))}
    windows = [SteadyWindow("before", 0.0, 1.0, dict(TABLE), moved),
               SteadyWindow("after", 10.0, 11.0, dict(TABLE), dict(TABLE))]
    assert check_episode(_obs(windows=windows)) == [
        "before steady period: the bucket table changed during it"]


def _status(term=7, leader="f1", last_applied=120) -> dict:
    return {"term": term, "leader": leader, "last_applied": last_applied, "role": "follower"}


def test_the_cluster_is_settled_only_in_one_term_under_one_leader_past_the_floor():
    settled = {n: _status() for n in NODES}
    assert raft_settled(settled, applied_floor=100)
    # The flapped node still stands for election in a term of its own: it will depose
    # the leader when it gets through.
    assert not raft_settled({**settled, "f3": _status(term=12, leader=None)}, 100)
    assert not raft_settled({**settled, "f3": _status(leader="f3")}, 100)
    # It has not taken an entry from the leader since the heal (its link not back yet).
    assert not raft_settled({**settled, "f3": _status(last_applied=100)}, 100)
    assert not raft_settled({**settled, "f2": None}, 100), "a node that does not answer"
    assert not raft_settled({}, 100)


# ---- fenced faults (daemon killed or paused): the kernel must stop the victim ----------

def _fenced(**kw) -> FarmObservation:
    base = dict(fence_target="f3", fence_bound_s=1.5, t_target_silent=3.0)   # fault at 2.0
    base.update(kw)
    return _obs(**base)


def test_a_victim_silent_within_the_lease_and_before_the_rebalance_is_clean():
    assert check_episode(_fenced()) == []


def test_a_victim_still_accepting_past_the_lease_is_a_violation():
    late = check_episode(_fenced(t_target_silent=3.6))
    assert len(late) == 1 and "f3 still accepted buckets 1.60 s after" in late[0], late
    never = check_episode(_fenced(t_target_silent=None))
    assert len(never) == 1 and "through the hold" in never[0], never


def test_a_victim_accepting_after_the_survivors_took_its_buckets_is_a_violation():
    out = check_episode(_fenced(t_target_silent=3.4, t_rebalanced=3.3))
    assert len(out) == 1 and "accepted by two nodes" in out[0], out


def test_answers_from_the_victim_past_the_lease_and_before_the_heal_are_violations():
    hold = [Conn(t, t + 0.01, "f3", "10.0.0.9", 50000 + i)
            for i, t in enumerate((2.2, 3.49, 3.6, 4.9, 5.2))]
    out = check_episode(_fenced(conns=_conns(0.0, 90) + hold + _conns(10.0, 90)))
    # 2.2 and 3.49 are within the lease of the fault at 2.0; 5.2 comes after the heal
    assert len(out) == 1 and out[0].startswith("2 connection(s) opened more than 1.5 s after f3"), out
    assert "first at +1.60 s" in out[0]
    # not judged for a fault that is not fenced (the same answers, no fence target)
    assert check_episode(_obs(conns=_conns(0.0, 90) + hold + _conns(10.0, 90))) == []


def test_daemon_kill_and_pause_are_the_fenced_nemeses():
    assert {n for n, cls in FARM_NEMESES.items() if cls.fenced} == {"kill-daemon", "pause-daemon"}


def test_cli_refuses_an_unknown_nemesis(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--nemesis", "nope"])
    assert exc.value.code == 2
    assert "unknown farm nemesis 'nope'" in capsys.readouterr().err


@needs_root
@pytest.mark.lab
def test_every_farm_nemesis_once_on_the_lab_has_no_violation(make_lab, tmp_path):
    lab = make_lab(["f1", "f2", "f3", "c"])
    names = list(FARM_NEMESES)
    history = run_farm_chaos(lab, names, 1, seed=7, hold_range_s=(2.0, 3.0), steady_s=1.2)
    paths = write_farm_report(history, tmp_path)
    eps = history["episodes"]
    assert [e["nemesis"] for e in eps] == names
    bad = {e["nemesis"]: e["violations"] for e in eps if e["violations"]}
    assert not bad, json.dumps(bad, indent=1)
    assert all(e["recovery_s"] is not None for e in eps)
    assert all(e["rebalance_s"] is not None for e in eps if FARM_NEMESES[e["nemesis"]].out)
    assert sum(c[3] is not None for c in history["connections"]) > 500
    summary = paths["summary"].read_text()
    assert "**0 violation(s)**" in summary and summary == render_farm_summary(history)
    assert json.loads(paths["history"].read_text())["seed"] == 7
    assert paths["timeline"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
