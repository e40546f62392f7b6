"""The replication bench's sequential and failover-resync parts: their arithmetic and
results file (pure). Runs with tiny sizes on real lab hosts: tests/lab/test_bench_replication.py."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import replication_failover, replication_seq
from bench.replication_bench import write_results
from bench.stats import alternating_rounds


def test_limit_and_ratio_are_per_round():
    disk_bound = replication_seq.SeqRound(local_MBps=800, mirrored_MBps=200, tcp_MBps=1000)
    net_bound = replication_seq.SeqRound(local_MBps=800, mirrored_MBps=200, tcp_MBps=250)
    assert disk_bound.limit_MBps == 400 and disk_bound.ratio == 0.5
    assert net_bound.limit_MBps == 250 and net_bound.ratio == 0.8


def test_summary_takes_medians_and_the_median_of_round_ratios():
    rounds = [replication_seq.SeqRound(400, 100, 1000),    # ratio 0.5
              replication_seq.SeqRound(1600, 200, 1000),   # ratio 0.25
              replication_seq.SeqRound(800, 300, 1000)]    # ratio 0.75
    r = replication_seq.summarize(rounds, seq_mb=64)
    assert r["local_seq_write_MBps"] == 800 and r["seq_write_MBps"] == 200
    assert r["limit_MBps"] == 400 and r["tcp_MBps"] == 1000
    assert r["seq_ratio_to_limit"] == 0.5
    assert (r["seq_ratio_min"], r["seq_ratio_max"]) == (0.25, 0.75)
    assert [x["ratio"] for x in r["seq_per_round"]] == [0.5, 0.25, 0.75]
    lines = replication_seq.report_lines(r)
    assert lines[-1].startswith("seq_write_MBps: 200 MB/s (0.50 x vs limit_MBps")
    assert "goal >= 0.8 not met" in lines[-1]


def test_the_fuse_ceiling_is_summarized_only_when_every_round_has_it():
    rounds = [replication_seq.SeqRound(800, 100, 1000, passthrough_MBps=300),   # 0.75 of 400
              replication_seq.SeqRound(800, 100, 1000, passthrough_MBps=200)]   # 0.5
    r = replication_seq.summarize(rounds, seq_mb=64)
    assert r["fuse_passthrough_MBps"] == 250 and r["fuse_passthrough_ratio_to_limit"] == 0.625
    assert replication_seq.report_lines(r)[-1].startswith(
        "fuse_passthrough_MBps: 250 MB/s (0.62 x vs limit_MBps; the FUSE layer alone")
    partial = replication_seq.summarize(rounds + [replication_seq.SeqRound(800, 100, 1000)], 64)
    assert "fuse_passthrough_MBps" not in partial
    assert not any(l.startswith("fuse_passthrough") for l in replication_seq.report_lines(partial))


RATE = st.floats(1, 1e5, allow_nan=False)


@given(st.lists(st.tuples(RATE, RATE, RATE), min_size=1, max_size=9))
def test_summary_ratio_lies_within_its_rounds_and_limits_bound_both_baselines(figures):
    rounds = [replication_seq.SeqRound(*f) for f in figures]
    r = replication_seq.summarize(rounds, seq_mb=1)
    assert r["seq_ratio_min"] <= r["seq_ratio_to_limit"] <= r["seq_ratio_max"]
    for x in r["seq_per_round"]:
        assert x["limit_MBps"] <= x["local_MBps"] / 2 and x["limit_MBps"] <= x["tcp_MBps"]
        assert x["limit_MBps"] in (x["local_MBps"] / 2, x["tcp_MBps"])
    assert r["seq_rounds"] == len(rounds)


def test_failover_summary_splits_the_two_kinds():
    def trial(al: bool, seconds: float, sent: int, read: int):
        return replication_failover.FailoverTrial(al, seconds, seconds + 1, sent, read, 100, 0)
    trials = [trial(True, 0.2, 10, 20), trial(False, 2.0, 5, 200),
              trial(True, 0.4, 30, 40), trial(False, 4.0, 7, 220)]
    r = replication_failover.summarize(trials, working_set_mb=200, file_mb=4)
    assert r["failover_trials"] == 2
    assert r["failover_resync_s"] == pytest.approx(0.3)
    assert r["failover_resync_full_s"] == pytest.approx(3.0)
    assert r["failover_resync_ratio"] == pytest.approx(0.1)
    assert (r["failover_resync_bytes_sent"], r["failover_resync_full_bytes_sent"]) == (20, 6)
    assert (r["failover_resync_bytes_read"], r["failover_resync_full_bytes_read"]) == (30, 210)
    assert replication_failover.report_lines(r)[1].startswith(
        "failover_resync_s: 0.300 s (0.100 x vs failover_resync_full_s")


def test_a_part_run_alone_replaces_only_its_keys(tmp_path):
    write_results(tmp_path, {"resync_1pct_s": 0.1, "seq_write_MBps": 1.0}, keep_others=False)
    write_results(tmp_path, {"seq_write_MBps": 2.0, "seq_rounds": 5}, keep_others=True)
    assert json.loads((tmp_path / "replication.json").read_text()) == {
        "resync_1pct_s": 0.1, "seq_write_MBps": 2.0, "seq_rounds": 5}
    write_results(tmp_path, {"seq_rounds": 3}, keep_others=False)
    assert json.loads((tmp_path / "replication.json").read_text()) == {"seq_rounds": 3}


def test_a_damaged_results_file_is_named_not_overwritten(tmp_path):
    (tmp_path / "replication.json").write_text("{half")
    with pytest.raises(ValueError, match=r"replication\.json: not JSON"):
        write_results(tmp_path, {"seq_rounds": 3}, keep_others=True)
    assert (tmp_path / "replication.json").read_text() == "{half"


def test_bad_sizes_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="seq rounds: .* got 0, 8, 2"):
        replication_seq.measure_rounds(None, tmp_path, tmp_path, seq_mb=0, tcp_mb=8, rounds=2)
    with pytest.raises(ValueError, match="failover bench: need trials >= 1"):
        replication_failover.measure_failover_resync(None, tmp_path, trials=0)
    assert list(tmp_path.iterdir()) == []


def test_rounds_alternate_which_side_goes_first():
    calls: list[str] = []

    def step(name: str):
        return lambda: calls.append(name) or len(calls)
    got = alternating_rounds({"a": step("a"), "b": step("b"), "c": step("c")}, rounds=3)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert got == {"a": [1, 6, 7], "b": [2, 5, 8], "c": [3, 4, 9]}
    with pytest.raises(ValueError, match="need rounds >= 1, got 0"):
        alternating_rounds({"a": step("a")}, rounds=0)
