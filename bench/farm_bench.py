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
* ``survivor_resets_on_rejoin``: a node's host killed (``kill_host``) and booted again
  (``restart_node``) under load — keep-alive connections held through the VIP, a line
  every 100 ms each (chaos.farm_chaos.FarmWorkload) — counting the connections
  established on the surviving nodes, still open when the returning node got buckets
  again, that were then reset or dropped (must be 0: DESIGN.md, Networking); the
  baseline is how many such connections were exercised across the rejoin.
* ``double_accept_s_after_daemon_kill``: a node's daemon SIGKILLed (the app alive, no
  cut), the three nodes' loaded ``owned`` sets read back together every few tens of ms:
  how long any bucket was in two of them (first to last read that saw it; 0 when never
  seen), worst over the trials; must be <= the lease (the baseline).
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

from chaos.farm_chaos import FarmWorkload, _lease_s
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


def measure_rejoin(farm: FarmLab, trials: int, seed: int = 1, keepalive: int = 24,
                   hold_s: float = 2.0) -> dict:
    """survivor_resets_on_rejoin trials (see the module docstring)."""
    rng = random.Random(seed)
    exercised = failed = failed_at_kill = 0
    kinds: dict[str, int] = {}
    for i in range(trials):
        victim = farm.nodes[1 + i % (len(farm.nodes) - 1)]
        live = [n for n in farm.nodes if n != victim]
        work = FarmWorkload(farm, workers=1, keepalive=keepalive, seed=f"bench/{seed}/{i}").start()
        try:
            time.sleep(1.0 + rng.uniform(0.0, 1.0))
            t_kill = farm.kill_host(victim)
            wait_until(f"rejoin trial {i}: buckets on {','.join(live)}",
                       lambda: farm.complete_on(live), 30, interval=0.05)
            time.sleep(hold_s)        # connections opened on the survivors meanwhile
            t_restart = time.monotonic()
            farm.restart_node(victim)
            wait_until(f"rejoin trial {i}: {victim} holds buckets again",
                       lambda: bool(farm.ruleset_buckets(victim)), 60, interval=0.02)
            t_back = time.monotonic()
            farm.wait_farm(farm.nodes, timeout=60)
            time.sleep(2.0)           # keep-alives after the rebalance
        finally:
            work.stop()
        on_live = [c for c in work.conns if c.keepalive and c.node in live]
        across = [c for c in on_live if c.t_done < t_back and (c.t_end or 0) >= t_back]
        bad = [c for c in across if c.error is not None]
        at_kill = [c for c in on_live if c.error is not None and t_kill <= (c.t_end or 0) < t_back]
        exercised, failed, failed_at_kill = (exercised + len(across), failed + len(bad),
                                             failed_at_kill + len(at_kill))
        for c in bad:
            kinds[c.error] = kinds.get(c.error, 0) + 1
        print(f"rejoin trial {i + 1}/{trials}: {victim} killed and back "
              f"({t_back - t_restart:.2f} s to its first buckets); {len(bad)} of {len(across)} "
              f"survivor connections held across the rejoin failed", flush=True)
    return {"survivor_resets_on_rejoin": failed, "survivor_conns_across_rejoin": exercised,
            "survivor_failures_on_rejoin_by_kind": kinds,
            "survivor_failures_during_outage": failed_at_kill, "rejoin_trials": trials}


def _sets(farm: FarmLab, pool: ThreadPoolExecutor) -> dict:
    return dict(zip(farm.nodes, pool.map(farm.ruleset_buckets, farm.nodes)))


def _twice(sets: dict) -> bool:
    seen: set[int] = set()
    for owned in sets.values():
        if owned and seen & owned:
            return True
        seen |= owned or set()
    return False


def measure_double_accept(farm: FarmLab, trials: int, seed: int = 1) -> dict:
    """double_accept_s_after_daemon_kill trials (see the module docstring)."""
    rng = random.Random(seed)
    lease = _lease_s(farm)
    doubles, silent, rebalanced, gaps = [], [], [], []
    with ThreadPoolExecutor(len(farm.nodes)) as pool:
        for i in range(trials):
            victim = farm.nodes[1 + i % (len(farm.nodes) - 1)]
            live = [n for n in farm.nodes if n != victim]
            time.sleep(rng.uniform(0.0, 1.0))      # a random phase of the lease renewals
            t_kill = time.monotonic()
            farm.cluster.kill(victim)
            first = last = t_silent = t_reb = None
            prev = t_kill
            while time.monotonic() < t_kill + 3 * lease + 10:
                t0 = time.monotonic()
                sets = _sets(farm, pool)
                t1 = time.monotonic()
                gaps.append(t1 - prev)
                prev = t1
                if _twice(sets):
                    first = t0 if first is None else first
                    last = t1
                if t_silent is None and not sets[victim]:
                    t_silent = t1
                counts = [b for n in live for b in (sets[n] or ())]
                if t_reb is None and len(counts) == 256 and len(set(counts)) == 256:
                    t_reb = t1
                if t_silent is not None and t_reb is not None and t1 > max(t_silent, t_reb) + lease:
                    break
            doubles.append(0.0 if first is None else last - first)
            silent.append(None if t_silent is None else t_silent - t_kill)
            rebalanced.append(None if t_reb is None else t_reb - t_kill)
            print(f"daemon kill trial {i + 1}/{trials}: {victim}: bucket in two sets for "
                  f"{doubles[-1]:.3f} s; its set empty after {_f(silent[-1])} s, the live nodes "
                  f"complete after {_f(rebalanced[-1])} s (lease {lease:g} s)", flush=True)
            farm.cluster.start(victim)
            farm.wait_farm(farm.nodes, timeout=60)
    return {"double_accept_s_after_daemon_kill": max(doubles), "double_accept_all_s": doubles,
            "victim_silent_s": silent, "rebalance_after_daemon_kill_s": rebalanced,
            "lease_s": lease, "sample_interval_max_s": max(gaps) if gaps else None,
            "daemon_kill_trials": trials}


def _f(x: float | None) -> str:
    return "never" if x is None else f"{x:.3f}"


def run(trials: int = 10, out_dir: Path = ROOT / "bench" / "results") -> dict:
    with Lab(["f1", "f2", "f3", "c"]) as lab:
        farm = FarmLab(lab).start()
        rates = measure_rates(farm)
        rebalance = measure_rebalance(farm, max(trials, 10))
        rejoin = measure_rejoin(farm, max(trials // 2, 5))
        double = measure_double_accept(farm, max(trials // 2, 5))
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
        **rejoin,
        "double_accept_s_after_daemon_kill": round(double["double_accept_s_after_daemon_kill"], 3),
        "double_accept_all_s": [round(x, 3) for x in double["double_accept_all_s"]],
        "victim_silent_s": [None if x is None else round(x, 3) for x in double["victim_silent_s"]],
        "rebalance_after_daemon_kill_s": [None if x is None else round(x, 3)
                                          for x in double["rebalance_after_daemon_kill_s"]],
        "lease_s": double["lease_s"],
        "double_accept_sample_interval_max_s": round(double["sample_interval_max_s"] or 0, 3),
        "daemon_kill_trials": double["daemon_kill_trials"],
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
    ex = results["survivor_conns_across_rejoin"]
    print(f"survivor_resets_on_rejoin: {results['survivor_resets_on_rejoin']} conn "
          f"({results['survivor_resets_on_rejoin'] / ex if ex else 0:.2f} x vs "
          f"survivor_conns_across_rejoin {ex} conn; goal 0)")
    lease = results["lease_s"]
    print(f"double_accept_s_after_daemon_kill: {results['double_accept_s_after_daemon_kill']:.3f} s "
          f"({results['double_accept_s_after_daemon_kill'] / lease:.2f} x vs lease {lease:g} s; "
          f"goal <= 1 x)")
    return results
