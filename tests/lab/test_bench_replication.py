"""The replication bench's sequential, small-file and failover-resync parts, each run with
tiny sizes on real lab hosts (real mount, receivers, SIGKILL, verify). No timing asserted.
Their arithmetic and results file: tests/unit/test_bench_replication.py."""
from __future__ import annotations

import json

import pytest

from bench import replication_failover, replication_seq
from bench.replication_bench import run_small_files_only, write_results
from chaos.replication_pair import ReplicationPair
from replication.mount import mount_in_process
from tests.conftest import needs_root


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
