"""What an idle Raft member costs before any module or checker runs:
``python -m bench idle-floor``.

Issue 6 asks for an idle daemon at <= 1 % of a core with 10 checkers. This bench
measures the floor under that figure on a bare cluster (nodes n1, n2 and the
witness w, no module), all in the same run, each variant on a fresh lab:

* ``shipped``: the default timers (heartbeat 50 ms, election 0.3-0.6 s, leases of
  1.5 s renewed every lease/4: one Raft commit per member every 0.375 s). The
  baseline.
* ``no_renewals``: the same heartbeat, leases of 60 s (a renewal every 15 s): what
  the heartbeats alone cost, i.e. what would remain if leases rode on them.
* ``hb_100ms`` / ``hb_200ms``: no renewals either, heartbeats every 100 / 200 ms with
  the election timeouts that Raft needs above them (0.35-0.7 s / 0.65-1.3 s): the
  price in leader-failover time of a lower floor.
* ``quiet_200ms``: what a site could configure today for a lower floor with leases
  kept: heartbeats every 200 ms (elections 0.65-1.3 s) and leases of 3 s renewed
  every 0.75 s (margin 0.6 s), so that a renewal still outlives a leader-death
  election. A mirror failover then waits out a 3 s lease instead of 1.5 s.

Each line: ``idle_floor_<variant>_<role>: CPU % (ratio x vs shipped)``, role
follower (mean of the two followers) or leader; JSON in
bench/results/idle_floor.json.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any


from chaos.lab import Lab
from chaos.lab_cluster import LabCluster

ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 3.0

NO_RENEWALS = {"lease_s": 60.0, "lease_margin_s": 1.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "no_renewals": dict(NO_RENEWALS),
    "hb_100ms": dict(NO_RENEWALS, append_entries_period_s=0.1, election_timeout_min_s=0.35,
                     election_timeout_max_s=0.7),
    "hb_200ms": dict(NO_RENEWALS, append_entries_period_s=0.2, election_timeout_min_s=0.65,
                     election_timeout_max_s=1.3, connection_timeout_s=1.5),
    "quiet_200ms": {"append_entries_period_s": 0.2, "election_timeout_min_s": 0.65,
                    "election_timeout_max_s": 1.3, "connection_timeout_s": 1.5,
                    "lease_s": 3.0, "lease_margin_s": 0.6},
}


def measure(settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """CPU % of each member's daemon over ``seconds`` of an idle, settled cluster."""
    with Lab(["n1", "n2", "w"]) as lab:
        cluster = LabCluster(lab, ["n1", "n2"], ["w"], raft_settings=settings)
        cluster.init()
        cluster.start_all()
        try:
            cluster.wait_leader(timeout=30)
            time.sleep(SETTLE_S)
            before = cluster.status("n1")
            t0 = time.monotonic()
            cpu = cluster.cpu_percent(seconds)
            after = cluster.status("n1")
            elapsed = time.monotonic() - t0
        finally:
            cluster.stop_all()
    leader = after["leader"]
    if before["leader"] != leader or before["term"] != after["term"]:
        raise RuntimeError(f"the leader changed during the window ({before['leader']} -> {leader}): "
                           f"not an idle cluster, measure again")
    return {
        "settings": settings,
        "leader": leader,
        "cpu_percent": cpu,
        "leader_cpu_percent": cpu[leader],
        "follower_cpu_percent": statistics.mean(v for m, v in cpu.items() if m != leader),
        "commits_per_s": (after["commit_index"] - before["commit_index"]) / elapsed,
    }


def run(seconds: float = 15.0, out_dir: Path = ROOT / "bench" / "results") -> dict[str, Any]:
    results: dict[str, Any] = {"seconds": seconds, "variants": {}}
    for name, settings in VARIANTS.items():
        results["variants"][name] = r = measure(settings, seconds)
        print(f"{name}: leader {r['leader']}, commits {r['commits_per_s']:.1f}/s, "
              f"cpu {r['cpu_percent']}", flush=True)
    base = results["variants"]["shipped"]
    for name, r in results["variants"].items():
        for role in ("follower", "leader"):
            v, b = r[f"{role}_cpu_percent"], base[f"{role}_cpu_percent"]
            print(f"idle_floor_{name}_{role}: {v:.2f} % ({v / b if b else float('inf'):.2f} x vs shipped "
                  f"{b:.2f} %)")
    results["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "idle_floor.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
