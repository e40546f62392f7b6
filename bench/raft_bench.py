"""Raft benchmark on a 3-voter lab cluster (two nodes and a witness, each in
its own network namespace).

Measured, each with a baseline from the same run:
  commit_p50_ms / commit_p99_ms   synchronous replicated call (RaftMember,
                                  our default timers)      vs tcp_rtt_p50_ms,
                                  a plain Python TCP round trip between the
                                  same hosts, and vs pysyncobj's own timers
  leader_failover_s               median over N leader kills (SIGKILL of the
                                  hacluster daemon): kill -> a new leader in
                                  its log (its no-op commits with it)
                                  vs the same with pysyncobj's own timers
  lease_handover_s                median over N holder kills: kill -> the new
                                  holder's epoch committed and applied there
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from chaos.lab import Lab
from chaos.lab_cluster import LabCluster

from .stats import pct

ROOT = Path(__file__).resolve().parent.parent
MEMBER_PROC = str(ROOT / "chaos" / "raft_member_proc.py")
SECRET = "bench-secret-0123456789abcdef0123456789"

ECHO_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7500)); s.listen(1)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(64)
    if not d: break
    c.sendall(d)
"""
ECHO_CLIENT = r"""
import json, socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((sys.argv[1], 7500)); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.05)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
out = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); s.sendall(b"x" * 32); s.recv(64); out.append((time.perf_counter() - t) * 1e3)
print(json.dumps(out))
"""


def tcp_rtt_ms(lab: Lab, a: str, b: str, n: int) -> list[float]:
    server = lab.spawn(b, [sys.executable, "-c", ECHO_SERVER, lab.addr(b)], name="echo")
    try:
        res = lab.run(a, [sys.executable, "-c", ECHO_CLIENT, lab.addr(b), str(n)], timeout=60)
        return json.loads(res.stdout)
    finally:
        server.stop()


def bare_members(lab: Lab, hosts: list[str], tag: str, defaults: bool, bench_on: str | None = None,
                 n: int = 0) -> dict:
    peers = ",".join(f"{lab.addr(h)}:7401" for h in hosts)
    procs = {}
    for h in hosts:
        argv = [sys.executable, MEMBER_PROC, "--addr", f"{lab.addr(h)}:7401", "--peers", peers,
                "--data", str(lab.workdir / h / f"raft-{tag}"), "--secret", SECRET]
        if defaults:
            argv.append("--pysyncobj-defaults")
        if h == bench_on:
            argv += ["--bench", str(n)]
        procs[h] = lab.spawn(h, argv, name=f"raft-{tag}")
    return procs


def read_lines(proc, prefix: str) -> list[str]:
    """Lines of a process's log starting with prefix (its header line excluded)."""
    return [l for l in proc.log_path.read_text().splitlines() if l.startswith(prefix)]


def commit_latencies(lab: Lab, hosts: list[str], defaults: bool, n: int) -> list[float]:
    tag = "defaults" if defaults else "ours"
    procs = bare_members(lab, hosts, f"commit-{tag}", defaults, bench_on=hosts[0], n=n)
    try:
        deadline = time.monotonic() + 60 + n * 0.5
        while not read_lines(procs[hosts[0]], "{"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"commit benchmark ({tag}) did not finish")
            time.sleep(0.1)
        return json.loads(read_lines(procs[hosts[0]], "{")[0])["commit_ms"]
    finally:
        for p in procs.values():
            p.stop()


def bare_failover(lab: Lab, hosts: list[str], defaults: bool, trials: int) -> list[float]:
    """Kill the leader of a bare RaftMember cluster; time until a survivor says leader."""
    tag = f"failover-{'defaults' if defaults else 'ours'}"
    procs = bare_members(lab, hosts, tag, defaults)
    data = {h: lab.workdir / h / f"raft-{tag}" for h in hosts}
    out = []
    try:
        for _ in range(trials):
            leader = wait_bare_leader(lab, data, hosts)
            t_kill = time.monotonic()
            procs[leader].kill()
            survivors = [h for h in hosts if h != leader]
            new = wait_bare_leader(lab, data, survivors, exclude=leader)
            since = [float(l.split("mono=")[1]) for l in read_lines(procs[new], "role leader")]
            out.append(max(since) - t_kill)
            procs[leader] = lab.spawn(leader, procs[leader].popen.args[4:], name=f"raft-{tag}")
            wait_bare_leader(lab, data, hosts, timeout=60)
    finally:
        for p in procs.values():
            p.stop()
    return out


def wait_bare_leader(lab: Lab, data: dict, among: list[str], exclude: str | None = None,
                     timeout: float = 60.0) -> str:
    """The host that a majority of ``among`` (and all of them, when all run) name as leader."""
    by_addr = {f"{lab.addr(h)}:7401": h for h in data}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        named = []
        for h in among:
            try:
                named.append(json.loads((data[h] / "state.json").read_text()).get("leader"))
            except (OSError, ValueError):
                named.append(None)
        if named and len(set(named)) == 1 and named[0] in by_addr and by_addr[named[0]] != exclude:
            return by_addr[named[0]]
        time.sleep(0.01)
    raise TimeoutError(f"no leader agreed by {among}")


def daemon_failover(cluster: LabCluster, trials: int) -> list[float]:
    out = []
    for _ in range(trials):
        leader = cluster.wait_leader()
        t_kill = time.monotonic()
        cluster.kill(leader)
        survivors = [m for m in cluster.members if m != leader]
        new = cluster.wait_leader(among=survivors, exclude=leader, timeout=20)
        elected = [float(e["mono"]) for e in cluster.events(new, "raft_role")
                   if e.get("role") == "leader" and float(e["mono"]) > t_kill]
        out.append(min(elected) - t_kill)
        cluster.start(leader)
        cluster.wait_for("all connected", lambda: all(
            r["connected"] for r in (cluster.status(new) or {"members": [{"connected": 0}]})["members"]))
    return out


def agreed_lease(cluster: LabCluster, resource: str) -> tuple[str, int] | None:
    """(holder, epoch) when every running member reports the same holder."""
    seen = set()
    for m in cluster.members:
        lease = cluster.lease(m, resource)
        if lease is None or lease["holder"] is None:
            return None
        seen.add((lease["holder"], lease["epoch"]))
    return seen.pop() if len(seen) == 1 else None


def lease_handover(cluster: LabCluster, trials: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(trials):
        holder, epoch = cluster.wait_for("demo held, all agree",
                                         lambda: agreed_lease(cluster, "demo"), timeout=30)
        other = next(n for n in cluster.nodes if n != holder)
        was_leader = cluster.leader() == holder
        t_kill = time.monotonic()
        cluster.kill(holder)
        cluster.wait_for("new holder", lambda: (lambda l: l and l["holder"] == other)(
            cluster.lease(other, "demo")), timeout=20)
        granted = [float(e["mono"]) for e in cluster.events(other, "lease_granted")
                   if e.get("resource") == "demo" and int(e["epoch"]) > epoch
                   and float(e["mono"]) > t_kill]
        out.append({"seconds": min(granted) - t_kill, "holder_was_leader": was_leader})
        cluster.start(holder)
        cluster.wait_for("restarted holder live", lambda: all(
            r["live"] for r in (cluster.status(other) or {"members": [{"live": 0}]})["members"]),
            timeout=20)
    return out


def run(trials: int = 10, commits: int = 500, out_dir: Path = ROOT / "bench" / "results") -> dict:
    hosts = ["n1", "n2", "w"]
    results: dict[str, Any] = {"trials": trials, "commits": commits}
    with Lab(hosts) as lab:
        rtt = tcp_rtt_ms(lab, "n1", "n2", 2000)
        ours = commit_latencies(lab, hosts, defaults=False, n=commits)
        base = commit_latencies(lab, hosts, defaults=True, n=max(50, commits // 10))
        failover_base = bare_failover(lab, hosts, defaults=True, trials=max(5, trials // 2))
        failover_bare = bare_failover(lab, hosts, defaults=False, trials=max(5, trials // 2))
        cluster = LabCluster(lab, ["n1", "n2"], ["w"], contend={"n1": ["demo"], "n2": ["demo"]})
        cluster.init()
        cluster.start_all()
        cluster.wait_leader()
        failover = daemon_failover(cluster, trials)
        handover = lease_handover(cluster, trials)
        cluster.stop_all()
    lease_s = 1.5
    hs = [h["seconds"] for h in handover]
    hs_leader = [h["seconds"] for h in handover if h["holder_was_leader"]]
    hs_follower = [h["seconds"] for h in handover if not h["holder_was_leader"]]
    results.update({
        "tcp_rtt_p50_ms": statistics.median(rtt),
        "commit_p50_ms": statistics.median(ours),
        "commit_p99_ms": pct(ours, 99),
        "commit_p50_ms_pysyncobj_defaults": statistics.median(base),
        "leader_failover_s": statistics.median(failover),
        "leader_failover_all_s": failover,
        "leader_failover_bare_member_s": statistics.median(failover_bare),
        "leader_failover_s_pysyncobj_defaults": statistics.median(failover_base),
        "lease_handover_s": statistics.median(hs),
        "lease_handover_all": handover,
        "lease_handover_holder_leader_s": statistics.median(hs_leader) if hs_leader else None,
        "lease_handover_holder_follower_s": statistics.median(hs_follower) if hs_follower else None,
        "lease_s": lease_s,
    })
    lines = [
        f"tcp_rtt_p50_ms: {results['tcp_rtt_p50_ms']:.3f} ms (baseline)",
        f"commit_p50_ms: {results['commit_p50_ms']:.3f} ms "
        f"({results['commit_p50_ms'] / results['tcp_rtt_p50_ms']:.1f} x vs tcp_rtt_p50_ms)",
        f"commit_p99_ms: {results['commit_p99_ms']:.3f} ms "
        f"({results['commit_p99_ms'] / results['tcp_rtt_p50_ms']:.1f} x vs tcp_rtt_p50_ms)",
        f"commit_p50_ms_pysyncobj_defaults: {results['commit_p50_ms_pysyncobj_defaults']:.3f} ms "
        f"({results['commit_p50_ms'] / results['commit_p50_ms_pysyncobj_defaults']:.3f} x ours vs this baseline)",
        f"leader_failover_s: {results['leader_failover_s']:.3f} s "
        f"({results['leader_failover_s'] / results['leader_failover_s_pysyncobj_defaults']:.2f} x vs pysyncobj defaults "
        f"{results['leader_failover_s_pysyncobj_defaults']:.3f} s)",
        f"lease_handover_s: {results['lease_handover_s']:.3f} s "
        f"({results['lease_handover_s'] / lease_s:.2f} x vs the lease, {lease_s} s; holder was leader: "
        f"{results['lease_handover_holder_leader_s']}, follower: {results['lease_handover_holder_follower_s']})",
    ]
    print("\n".join(lines))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "raft.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_dir / 'raft.json'}")
    return results
