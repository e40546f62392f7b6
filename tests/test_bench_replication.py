"""The replication bench's sequential and failover-resync parts: their
arithmetic and results file (pure), and a run of each with tiny sizes on
real lab hosts (real mount, receivers, SIGKILL, verify). No timing asserted."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import replication_failover, replication_seq
from bench.replication_bench import run_small_files_only, write_results
from bench.stats import alternating_rounds
from chaos.replication_pair import ReplicationPair
from replication.mount import mount_in_process
from tests.conftest import needs_root


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
    assert "goal >= 0.7 not met" in lines[-1]


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


@needs_root
@pytest.mark.lab
def test_small_files_part_writes_the_three_figures_and_the_ratio(tmp_path):
    """The small-files part in a reduced run (its own lab, real mounts): mirrored, the
    FUSE layer alone (no replication), local; positive figures in the results file."""
    write_results(tmp_path, {"seq_write_MBps": 1.0}, keep_others=False)
    run_small_files_only(n=20, rounds=2, out_dir=tmp_path)
    saved = json.loads((tmp_path / "replication.json").read_text())
    assert saved["seq_write_MBps"] == 1.0      # a part run alone keeps the others
    for key in ("local_small_files_per_s", "fuse_only_small_files_per_s", "small_files_per_s",
                "small_files_ratio_to_fuse_only"):
        assert saved[key] > 0, key
    assert (saved["small_files_n"], saved["small_files_rounds"]) == (20, 2)
    assert saved["small_files_ratio_to_fuse_only"] == pytest.approx(
        saved["small_files_per_s"] / saved["fuse_only_small_files_per_s"])


@needs_root
@pytest.mark.lab
def test_seq_rounds_run_through_a_real_mount(make_lab, tmp_path):
    lab = make_lab(["prim", "sec"])
    local = tmp_path / "local"
    local.mkdir()
    passthrough = tmp_path / "passthrough"
    passthrough.mkdir()
    pair = ReplicationPair(lab, tmp_path / "pair")
    ceiling = mount_in_process(str(passthrough), replication_seq.acknowledge_at_once)
    try:
        pair.start_receiver()
        pair.start_mount()
        rounds = replication_seq.measure_rounds(lab, local, pair.prim, seq_mb=4, tcp_mb=8,
                                                rounds=2, passthrough=passthrough)
    finally:
        pair.close()
        ceiling.unmount()
    assert len(rounds) == 2
    assert all(r.local_MBps > 0 and r.mirrored_MBps > 0 and r.tcp_MBps > 0 and r.passthrough_MBps > 0
               for r in rounds)
    # no run leaves its file behind, on any copy (the unlink was replicated too)
    for d in (local, pair.prim_real, pair.sec, passthrough):
        assert not (d / replication_seq.SEQ_FILE).exists(), d


@needs_root
@pytest.mark.lab
def test_failover_resync_runs_both_kinds_and_verifies(make_lab, tmp_path):
    lab = make_lab(["a", "b"])
    trials = replication_failover.measure_failover_resync(
        lab, tmp_path / "bench", trials=1, working_set_mb=8, file_mb=4, writer_s=0.3)
    assert [t.activity_log for t in trials] == [True, False]
    assert all(t.writes_before_kill > 0 and t.bytes_sent > 0 for t in trials)
    # the fallback compared every block of the working set and the journal
    assert trials[1].bytes_read >= 8 << 20
    logs = "".join((lab.workdir / h / "mount.log").read_text() for h in ("a", "b"))
    assert "event=activity_log_used" in logs and "event=activity_log_refused" in logs
    r = replication_failover.summarize(trials, working_set_mb=8, file_mb=4)
    write_results(tmp_path, r, keep_others=True)
    saved = json.loads((tmp_path / "replication.json").read_text())
    assert saved["failover_trials"] == 1 and len(saved["failover_per_trial"]) == 2
