"""python -m bench failover: primary host killed → first acknowledged write
through the VIP from the new primary, against keepalived on the same lab.

Each trial kills the current primary's host (every process SIGKILLed, its
network cut) while the client writes, measures until the first write that the
new primary acknowledges, checks every acknowledged record on the new
primary's real copy, then brings the old host back and waits for PRIM/SECOND
in sync. ``app_start_p50_s`` is the new primary's start_prim duration (from
its log), part of the failover time. The baseline is keepalived with its
default timers (bench/keepalived_baseline.py), measured in the same run.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from chaos.history_check import lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import Lab, wait_until
from chaos.lab_mirror import MirrorLab

from .keepalived_baseline import measure_keepalived_failover
from .stats import pct

ROOT = Path(__file__).resolve().parent.parent
PHASE_S = 1.0   # kills spread over a second: our renewal cycle (lease/4) and keepalived's advert


def _start_prim_seconds(m: MirrorLab, node: str, after_mono: float) -> float | None:
    for e in m.cluster.events(node, "script_done"):
        if e.get("script") == "start_prim" and float(e.get("mono", 0)) > after_mono:
            return float(e["seconds"])
    return None


def measure_failover(trials: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    failovers, app_starts, lost_total, acked_total = [], [], 0, 0
    with Lab(["n1", "n2", "w", "c"]) as lab:
        m = MirrorLab(lab).start(prim="n1")
        prim = "n1"
        for i in range(trials):
            sec = m.other(prim)
            # A short client timeout, like the keepalived poller's: the figure is the
            # cluster's, not the client's retry period.
            writer = m.start_writer(prefix=f"t{i:02d}", timeout_s=0.25)
            m.wait_acks(20)
            # At a random moment of the lease renewal cycle: a trial loop is periodic
            # enough to hit the same phase every time, which is luck, not a measure.
            time.sleep(rng.uniform(0.0, PHASE_S))
            t_kill = m.kill_host(prim)
            wait_until(f"trial {i}: writes from {sec}", lambda: any(
                a["node"] == sec for a in m.acks(writer)), 30)
            first = min(a["t_acked"] for a in m.acks(writer) if a["node"] == sec)
            failovers.append(first - t_kill)
            started = _start_prim_seconds(m, sec, t_kill)
            if started is not None:
                app_starts.append(started)
            writer.stop()
            acks = m.acks(writer)
            acked_total += len(acks)
            lost_total += len(lost_acked_writes([Ack(**a) for a in acks], m.log_records(sec)))
            m.restart_node(prim)
            m.wait_pair(sec, timeout=90)
            print(f"failover trial {i + 1}/{trials}: {failovers[-1]:.3f} s "
                  f"({prim} killed, {sec} primary)", flush=True)
            prim = sec
    return {"trials": trials, "failover_s": failovers, "app_start_s": app_starts,
            "lost_acked_records": lost_total, "acked_records": acked_total}


def run(trials: int = 20, out_dir: Path = ROOT / "bench" / "results") -> dict:
    ours = measure_failover(trials)
    keep = measure_keepalived_failover(trials)
    f = ours["failover_s"]
    results = {
        "trials": trials,
        "failover_p50_s": round(pct(f, 50), 3), "failover_p99_s": round(pct(f, 99), 3),
        "failover_max_s": round(max(f), 3),
        "app_start_p50_s": round(pct(ours["app_start_s"], 50), 3) if ours["app_start_s"] else None,
        "lost_acked_records": ours["lost_acked_records"], "acked_records": ours["acked_records"],
        "keepalived_failover_p50_s": round(keep["p50"], 3),
        "keepalived_failover_p99_s": round(keep["p99"], 3),
        "failover_s": [round(x, 3) for x in f],
        "keepalived_failover_s": [round(x, 3) for x in keep["failover_s"]],
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "failover.json").write_text(json.dumps(results, indent=2) + "\n")
    kp = results["keepalived_failover_p50_s"]
    print(f"failover_p50_s: {results['failover_p50_s']:.3f} s "
          f"({results['failover_p50_s'] / kp:.2f} x vs keepalived)")
    print(f"failover_p99_s: {results['failover_p99_s']:.3f} s "
          f"({results['failover_p99_s'] / results['keepalived_failover_p99_s']:.2f} x vs keepalived p99)")
    print(f"app_start_p50_s: {results['app_start_p50_s']} s (part of the failover)")
    print(f"lost_acked_records: {results['lost_acked_records']} of {results['acked_records']} acknowledged")
    print(f"keepalived_failover_p50_s: {kp:.3f} s (baseline, default timers)")
    return results
