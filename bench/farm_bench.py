"""python -m bench farm: connections through the farm VIP against the same client
connecting to one node's own address, and the time a killed node's buckets take
to move to the live nodes.

* ``conn_per_s_vip`` / ``conn_per_s_direct``: new TCP connections per second
  (connect, read the node's name, close), one client thread on the client host;
  rounds alternate between the VIP and f1's own address so that noise hits both.
* ``rebalance_s``: a node's host killed (SIGKILL of every process + cut) → every
  bucket accepted by exactly one live node in the rulesets loaded on the live
  nodes (read back with nft), median over the trials.
* ``failed_conns_after_rebalance``: connections through the VIP right after each
  rebalance that got no answer (goal 0).
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from chaos.farm_client import ask, in_netns
from chaos.lab import Lab, wait_until
from chaos.lab_farm import PORT_ON_PORT, FarmLab

from .stats import pct

ROOT = Path(__file__).resolve().parent.parent


def _rate(addr: str, port: int, count: int) -> tuple[float, int]:
    """Connections per second and failures, ``count`` sequential connections."""
    failed = 0
    t0 = time.perf_counter()
    for _ in range(count):
        if ask(addr, port, timeout=2.0)[0] is None:
            failed += 1
    return count / (time.perf_counter() - t0), failed


def measure_rates(farm: FarmLab, rounds: int = 6, per_round: int = 500) -> dict:
    netns = farm.lab.hosts[farm.client].netns
    direct_addr = farm.lab.addr(farm.nodes[0])
    vip, direct, failed = [], [], 0
    for _ in range(rounds):
        r, f = in_netns(netns, _rate, farm.vip, PORT_ON_PORT, per_round)
        vip.append(r)
        failed += f
        r, f = in_netns(netns, _rate, direct_addr, PORT_ON_PORT, per_round)
        direct.append(r)
        failed += f
    return {"conn_per_s_vip": statistics.median(vip), "conn_per_s_direct": statistics.median(direct),
            "rate_failures": failed, "conn_per_s_vip_rounds": vip, "conn_per_s_direct_rounds": direct}


def measure_rebalance(farm: FarmLab, trials: int, seed: int = 1) -> dict:
    rng = random.Random(seed)
    times, failed_after = [], 0
    for i in range(trials):
        victim = farm.nodes[1 + i % (len(farm.nodes) - 1)]   # f1 keeps serving the rates
        live = [n for n in farm.nodes if n != victim]
        time.sleep(rng.uniform(0.0, 1.0))      # a random phase of the liveness renewals
        t_kill = farm.kill_host(victim)
        wait_until(f"trial {i}: buckets on {','.join(live)}", lambda: farm.complete_on(live), 30,
                   interval=0.01)
        times.append(time.monotonic() - t_kill)
        answers = farm.ask_many(PORT_ON_PORT, 200)
        failed_after += sum(1 for a in answers if a[0] is None)
        print(f"rebalance trial {i + 1}/{trials}: {times[-1]:.3f} s ({victim} killed)", flush=True)
        farm.restart_node(victim)
        farm.wait_farm(farm.nodes, timeout=60)
    return {"rebalance_s": times, "failed_conns_after_rebalance": failed_after}


def run(trials: int = 10, out_dir: Path = ROOT / "bench" / "results") -> dict:
    with Lab(["f1", "f2", "f3", "c"]) as lab:
        farm = FarmLab(lab).start()
        rates = measure_rates(farm)
        rebalance = measure_rebalance(farm, max(trials, 10))
    r = rebalance["rebalance_s"]
    results = {
        "conn_per_s_vip": round(rates["conn_per_s_vip"], 1),
        "conn_per_s_direct": round(rates["conn_per_s_direct"], 1),
        "vip_ratio": round(rates["conn_per_s_vip"] / rates["conn_per_s_direct"], 3),
        "rate_failures": rates["rate_failures"],
        "rebalance_s": round(statistics.median(r), 3),
        "rebalance_p99_s": round(pct(r, 99), 3),
        "rebalance_trials": len(r),
        "failed_conns_after_rebalance": rebalance["failed_conns_after_rebalance"],
        "rebalance_all_s": [round(x, 3) for x in r],
        "conn_per_s_vip_rounds": [round(x, 1) for x in rates["conn_per_s_vip_rounds"]],
        "conn_per_s_direct_rounds": [round(x, 1) for x in rates["conn_per_s_direct_rounds"]],
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "farm.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"conn_per_s_vip: {results['conn_per_s_vip']:.0f} conn/s "
          f"({results['vip_ratio']:.2f} x vs conn_per_s_direct {results['conn_per_s_direct']:.0f})")
    print(f"rebalance_s: {results['rebalance_s']:.3f} s median of {len(r)} "
          f"(p99 {results['rebalance_p99_s']:.3f} s; goal <= 2 s)")
    print(f"failed_conns_after_rebalance: {results['failed_conns_after_rebalance']} "
          f"(of {200 * len(r)})")
    return results
