"""python -m bench failover --workload pg: PostgreSQL's failover, the primary host
killed → the first commit acknowledged through the VIP by the new primary.

Each trial loads the database for LOAD_S (pgbench, and numbered autocommit inserts
from four sessions, all from the client host through the VIP), kills the primary's
host at a random moment of the lease cycle, measures until the first insert the new
primary acknowledges, checks every acknowledged commit on it, then brings the old host
back and waits for PRIM/SECOND in sync (the writes stopped: see issue 15 items 1-2).
``pg_start_s`` is the new primary's start_prim (pg_ctl start -w: crash recovery and
start), part of the failover. The baseline, measured in the same run with the same
load on the same machine: the same crash recovery on a plain directory (no FUSE, no
replication, no cluster) — postgres SIGKILLed under load, then ``pg_ctl start -w``.
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from chaos.history_check import lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import Lab, wait_until
from chaos.pg_module import PgMirrorLab, PlainPostgres, pg_client_argv

from .stats import pct

ROOT = Path(__file__).resolve().parent.parent
LOAD_S = 4.0
PHASE_S = 1.0
PLAIN_PORT = 5440


def _start_prim_seconds(m: PgMirrorLab, node: str, after_mono: float) -> float | None:
    for e in m.cluster.events(node, "script_done"):
        if e.get("script") == "start_prim" and float(e.get("mono", 0)) > after_mono:
            return float(e["seconds"])
    return None


def measure_cluster(lab: Lab, trials: int, rng: random.Random) -> dict[str, Any]:
    failovers, starts, lost_total, acked_total = [], [], 0, 0
    m = PgMirrorLab(lab).start(prim="n1")
    m.init_pgbench(scale=2)
    prim = "n1"
    for i in range(trials):
        sec = m.other(prim)
        bench = m.start_pgbench(f"pgbench-t{i:02d}", clients=2)
        writer = m.start_writer(prefix=f"t{i:02d}")
        m.wait_acks(20, timeout=60)
        time.sleep(LOAD_S + rng.uniform(0.0, PHASE_S))
        t_kill = m.kill_host(prim)
        wait_until(f"trial {i}: commits from {sec}", lambda: any(
            a["node"] == sec for a in m.acks(writer)), 90)
        first = min(a["t_acked"] for a in m.acks(writer) if a["node"] == sec)
        failovers.append(first - t_kill)
        started = _start_prim_seconds(m, sec, t_kill)
        if started is not None:
            starts.append(started)
        writer.stop()
        bench.stop()
        acks = [Ack(**a) for a in m.acks(writer)]
        acked_total += len(acks)
        lost_total += len(lost_acked_writes(acks, m.rows() or {}))
        m.restart_node(prim)
        m.wait_pair(sec, timeout=120)
        print(f"pg failover trial {i + 1}/{trials}: {failovers[-1]:.3f} s, PostgreSQL start "
              f"{starts[-1] if starts else float('nan'):.3f} s ({prim} killed, {sec} primary)",
              flush=True)
        prim = sec
    return {"failover_s": failovers, "pg_start_s": starts, "lost": lost_total, "acked": acked_total}


def measure_plain(lab: Lab, trials: int, rng: random.Random, host: str = "c") -> list[float]:
    """The same load and crash recovery on a plain directory on ``host``: no FUSE, no
    replication. Every server it starts is stopped by its PID; the directory removed."""
    pg = PlainPostgres(lab, host, port=PLAIN_PORT)
    addr = pg.listen
    times: list[float] = []
    try:
        pg.init().start()
        lab.run(host, pg_client_argv(addr, PLAIN_PORT, "pgbench", "-i", "-q", "-s", "2", "postgres"),
                timeout=300)
        lab.run(host, [sys.executable, "-m", "chaos.pg_wire", "--host", addr, "--port",
                       str(PLAIN_PORT), "CREATE TABLE acks (k text PRIMARY KEY, v text NOT NULL)"])
        for i in range(trials):
            bench = lab.spawn(host, pg_client_argv(addr, PLAIN_PORT, "pgbench", "-n", "-c", "2", "-j",
                                                   "2", "-T", "600", "postgres"),
                              name=f"plain-pgbench-{i}")
            writer = lab.spawn(host, [sys.executable, "-m", "chaos.pg_writer_proc", "--host", addr,
                                      "--port", str(PLAIN_PORT), "--prefix", f"p{i:02d}"],
                               name=f"plain-writer-{i}")
            time.sleep(LOAD_S + rng.uniform(0.0, PHASE_S))
            pg.crash()
            writer.stop()
            bench.stop()
            times.append(pg.start())
            print(f"plain crash recovery {i + 1}/{trials}: {times[-1]:.3f} s", flush=True)
    finally:
        pg.close()
    return times


def run(trials: int = 10, out_dir: Path = ROOT / "bench" / "results", seed: int = 1) -> dict:
    rng = random.Random(seed)
    with Lab(["n1", "n2", "w", "c"]) as lab:
        plain = measure_plain(lab, trials, rng)
        ours = measure_cluster(lab, trials, rng)
    f, s = ours["failover_s"], ours["pg_start_s"]
    plain_p50 = pct(plain, 50)
    results = {
        "trials": trials, "load_s": LOAD_S,
        "pg_failover_p50_s": round(pct(f, 50), 3), "pg_failover_p99_s": round(pct(f, 99), 3),
        "pg_failover_max_s": round(max(f), 3),
        "pg_start_in_failover_p50_s": round(pct(s, 50), 3) if s else None,
        "pg_start_in_failover_p99_s": round(pct(s, 99), 3) if s else None,
        "plain_crash_recovery_p50_s": round(plain_p50, 3),
        "plain_crash_recovery_p99_s": round(pct(plain, 99), 3),
        "lost_acked_commits": ours["lost"], "acked_commits": ours["acked"],
        "failover_s": [round(x, 3) for x in f], "pg_start_s": [round(x, 3) for x in s],
        "plain_crash_recovery_s": [round(x, 3) for x in plain],
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "failover_pg.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"pg_failover_p50_s: {results['pg_failover_p50_s']:.3f} s "
          f"({results['pg_failover_p50_s'] / plain_p50:.2f} x vs plain crash recovery)")
    print(f"pg_failover_p99_s: {results['pg_failover_p99_s']:.3f} s "
          f"({results['pg_failover_p99_s'] / results['plain_crash_recovery_p99_s']:.2f} x vs plain p99)")
    if s:
        print(f"pg_start_in_failover_p50_s: {results['pg_start_in_failover_p50_s']:.3f} s "
              f"({results['pg_start_in_failover_p50_s'] / plain_p50:.2f} x vs plain crash recovery)")
    print(f"plain_crash_recovery_p50_s: {plain_p50:.3f} s (baseline: pg_ctl start -w after "
          f"SIGKILL under the same load, plain directory)")
    print(f"lost_acked_commits: {results['lost_acked_commits']} of {results['acked_commits']} acknowledged")
    return results
