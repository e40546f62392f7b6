"""python -m bench pgbench: reading pgbench's output and per-transaction log, the
summary and its report (pure). The reduced run on real lab hosts: tests/lab/test_bench_pgbench.py."""
from __future__ import annotations


import pytest

from bench import pgbench_bench as pb

BENCH_OUT = """pgbench (15.14 (Debian 15.14-0+deb12u1))
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 10
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 20 s
number of transactions actually processed: 4156
number of failed transactions: 0 (0.000%)
latency average = 19.166 ms
initial connection time = 12.345 ms
tps = 207.844048 (without initial connection time)
"""
LOAD_OUT = """dropping old tables...
creating tables...
generating data (client-side)...
100000 of 1000000 tuples (10%) done (elapsed 0.10 s, remaining 0.90 s)
vacuuming...
creating primary keys...
done in 4.57 s (drop tables 0.00 s, create tables 0.06 s, client-side generate 3.61 s, vacuum 0.25 s, primary keys 0.64 s).
"""


def test_tps_and_load_are_read_from_pgbench_output():
    assert pb.parse_tps(BENCH_OUT) == pytest.approx(207.844048)
    seconds, steps = pb.parse_load(LOAD_OUT)
    assert seconds == pytest.approx(4.57) and steps.startswith("drop tables 0.00 s")
    with pytest.raises(ValueError, match="no 'tps = ...' line"):
        pb.parse_tps("pgbench: error: connection refused")
    with pytest.raises(ValueError, match="no 'done in ... s' line"):
        pb.parse_load(BENCH_OUT)


def test_latencies_come_from_the_time_field_and_failed_transactions_are_left_out():
    lines = ["0 1 2241 0 1175850568 995598", "1 1 15000 0 1175850568 999000",
             "2 7 failed 0 1175850569 1000", "", "3 2 800 0 1175850569 2000 12"]
    assert pb.transaction_latencies_ms(lines) == [2.241, 15.0, 0.8]


def _side(tps: list[float], lat: list[float], load: float, recoveries: list[float]) -> dict:
    runs = [pb.BenchRun(t, lat) for t in tps]
    return pb.summarize_side([(load, "steps")] * len(tps), runs, recoveries, {"fstype": "ext4"})


def test_summary_takes_medians_and_pools_latencies_and_the_report_names_each_ratio():
    mirror = _side([100, 300, 200], [1.0, 2.0, 3.0, 100.0], 20.0, [3.0, 1.0, 2.0])
    assert mirror["pgbench_tps"] == 200 and mirror["pg_crash_recovery_s"] == 2.0
    assert mirror["pgbench_transactions"] == 12 and mirror["pgbench_latency_avg_ms"] == 26.5
    assert (mirror["pgbench_latency_p50_ms"], mirror["pgbench_latency_p99_ms"]) == (3.0, 100.0)
    plain = _side([400], [1.0], 1.0, [1.0])
    r = {"mirror": mirror, "plain": plain, "ratios": pb.ratios(mirror, plain),
         "in_sync_throughout": False, "not_in_sync_at": ["after load + pgbench: None"]}
    assert r["ratios"]["pgbench_tps"] == 0.5 and r["ratios"]["pg_crash_recovery_s"] == 2.0
    lines = pb.report_lines(r)
    assert lines[0] == "pgbench_tps: 200 tps (0.50 x vs plain 400; goal >= 0.7 not met)"
    assert "pgbench_load_s: 20.00 s (20.00 x vs plain 1.00)" in lines
    assert "pg_crash_recovery_s: 2.000 s (2.00 x vs plain 1.000; goal <= 1.5 not met)" in lines
    assert lines[-1].startswith("WARNING: the secondary was not in sync")
    assert not any(line.startswith("fuse_floor_") for line in lines)   # a result without one
    floor = _side([320], [1.0], 2.0, [1.5])
    r.update(fuse_floor=floor, floor_ratios=pb.ratios(floor, plain),
             mirror_vs_floor=pb.ratios(mirror, floor))
    lines = pb.report_lines(r)
    assert "fuse_floor_pgbench_tps: 320 tps (0.80 x vs plain; the mirror 0.62 x of it)" in lines
    assert "fuse_floor_pg_crash_recovery_s: 1.500 s (1.50 x vs plain; the mirror 1.33 x of it)" \
        in lines
    with pytest.raises(ValueError, match="no completed transaction"):
        _side([1.0], [], 1.0, [1.0])


def test_bad_parameters_are_refused_before_any_lab_starts(tmp_path):
    with pytest.raises(ValueError, match="duration must be >= 1, got 0"):
        pb.run(duration=0, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
