"""python -m bench checkers: how fast errd notices a dead application, and what the
checkers cost an idle daemon.

* ``detect_p50_s``: the kv demo's process SIGKILLed on the primary → the daemon logs
  the restart action (``event=action ... action=restart``), median over the trials
  (``resetloop`` between trials so that maxloop never stops the module). Baseline:
  the errd poll interval; goal: within one poll interval + 0.5 s.
* ``daemon_cpu_percent_idle``: psutil cpu_percent of the primary's daemon over
  ~20 s idle with 10 checkers configured (2 errd, 2 tcp, 2 ping, 2 intf, 1 ip,
  1 splitbrain, every one polling each second). Baseline: the same daemon and module
  with no checkers, measured in the same run; goal: <= 1 %. In both runs the witness
  is made the Raft leader before the module starts, so the primary is a follower
  each time: a leader's daemon costs ~2 points more (it sends every heartbeat), and
  a comparison across roles measured the roles, not the checkers. Every member's
  figure and role go to the JSON.
* ``daemon_cpu_percent_idle_quiet_timing``: the same 10 checkers on a cluster with
  the slower timers of ``bench.idle_floor``'s ``quiet_200ms`` (heartbeats every
  200 ms, leases of 3 s): how far configuration alone goes toward the goal, at
  the price of slower elections and failovers.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import time
from pathlib import Path


from chaos.lab import Lab, wait_until
from chaos.lab_cluster import LabCluster
from chaos.lab_mirror import MirrorLab
from chaos.lab_module import start_cluster

from .idle_floor import VARIANTS as IDLE_FLOOR_VARIANTS
from .stats import pct

QUIET_TIMING = IDLE_FLOOR_VARIANTS["quiet_200ms"]

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 1.0
IDLE_S = 20.0


def ten_checkers(m: MirrorLab, poll_s: float = POLL_S) -> str:
    n2, w = m.lab.addr("n2"), m.lab.addr("w")
    iv = f'interval="{poll_s:g}s"'
    return f"""<errd polltimer="{poll_s:g}s">
  <proc nameregex="python.*" argregex="-m chaos\\.kvapp --data \\S*{m.datadir} .*" atleast="1" action="restart" class="prim"/>
  <proc nameregex="nothing-runs-as-this.*" atleast="0" atmax="0" action="none" class="both"/>
</errd>
<check>
  <tcp ident="kv"><to addr="127.0.0.1" port="{m.port}" {iv} timeout="500ms"/></tcp>
  <tcp ident="peer" when="both" action="none"><to addr="{n2}" port="7600" {iv} timeout="500ms"/></tcp>
  <ping ident="peer" when="both" action="none"><to addr="{n2}" {iv} timeout="500ms"/></ping>
  <ping ident="witness" when="both" action="none"><to addr="{w}" {iv} timeout="500ms"/></ping>
  <intf ident="lan" when="both" action="none"><to name="eth0" {iv}/></intf>
  <intf ident="lo" when="both" action="none"><to name="lo" {iv}/></intf>
  <ip ident="vip" action="none"><to addr="{m.vip}" {iv} timeout="300ms"/></ip>
  <splitbrain ident="w" exec="ping" arg="{w}"/>
</check>"""


def lead_from(cluster: LabCluster, want: str, attempts: int = 8) -> None:
    """Make ``want`` the Raft leader (before any module runs): restart whoever else
    leads until ``want`` wins an election; pre-vote keeps it leader afterwards."""
    for _ in range(attempts):
        leader = cluster.wait_leader(timeout=30)
        if leader == want:
            return
        cluster.stop(leader)
        cluster.wait_leader(among=[m for m in cluster.members if m != leader], exclude=leader,
                            timeout=30)
        cluster.start(leader)
    raise RuntimeError(f"{want} did not become the Raft leader in {attempts} elections")


def mirror_lab(lab: Lab, datadir: str, checkers: bool,
               raft_settings: dict | None = None) -> MirrorLab:
    """The kv mirror module on n1 (primary) and n2, the witness leading Raft."""
    m = MirrorLab(lab, datadir=datadir,
                  cluster=LabCluster(lab, ["n1", "n2"], ["w"], raft_settings=raft_settings))
    if checkers:
        m.extra_sections = ten_checkers(m)
    start_cluster(m.cluster, m.root)
    lead_from(m.cluster, "w")
    return m.start()


def idle_cpu_percent(m: MirrorLab, node: str = "n1", seconds: float = IDLE_S) -> dict:
    """CPU % of every member's daemon over ``seconds``; ``node``'s must be a follower."""
    time.sleep(2.0)                     # let the start settle
    cpu = m.cluster.cpu_percent(seconds)
    leader = m.cluster.status(node)["leader"]
    if leader == node:
        raise RuntimeError(f"{node} became the Raft leader during the window: measure again")
    return {"cpu_percent": cpu, "leader": leader, "measured": cpu[node]}


def _pid(m: MirrorLab, node: str) -> int | None:
    try:
        return int((m.root(node) / "run" / m.module / "kvapp.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def measure_detection(m: MirrorLab, trials: int, node: str = "n1") -> list[float]:
    log_path = m.lab.workdir / node / "hacluster.log"
    times = []
    for i in range(trials):
        m.cli(node, "-m", m.module, "resetloop", check=True)
        m.wait_state(node, "PRIM", 30)
        wait_until("errd up", lambda: all(
            r["value"] == "up" for r in json.loads(m.cli(node, "-m", m.module, "resources", "--json").stdout)[
                "resources"] if r["resource"].startswith("errd.")), 20)
        pid = _pid(m, node)
        # a random phase against the poll timer, as a real failure would have
        time.sleep((i * 0.37) % POLL_S)
        offset = _log_size(log_path)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def seen() -> float | None:
            with open(log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            return time.monotonic() if "event=action " in text and "action=restart" in text else None
        t1 = wait_until("the restart action in the daemon log", seen, 20, interval=0.005)
        times.append(t1 - t0)
        print(f"detect trial {i + 1}/{trials}: {times[-1]:.3f} s", flush=True)
        wait_until("a new kvapp", lambda: (lambda p: p if p and p != pid else None)(_pid(m, node)), 20)
    return times


def run(trials: int = 10, out_dir: Path = ROOT / "bench" / "results") -> dict:
    datadir = f"/srv/kvbench{os.getpid()}"
    with Lab(["n1", "n2", "w", "c"]) as lab:
        base = mirror_lab(lab, datadir, checkers=False)
        idle_base = idle_cpu_percent(base)
        base.cluster.stop_all()
    with Lab(["n1", "n2", "w", "c"]) as lab:
        m = mirror_lab(lab, datadir + "c", checkers=True)
        resources = json.loads(m.cli("n1", "-m", m.module, "resources", "--json", check=True).stdout)
        idle_checks = idle_cpu_percent(m)
        times = measure_detection(m, max(trials, 10))
        m.cluster.stop_all()
    with Lab(["n1", "n2", "w", "c"]) as lab:
        q = mirror_lab(lab, datadir + "q", checkers=True, raft_settings=QUIET_TIMING)
        idle_quiet = idle_cpu_percent(q)
        q.cluster.stop_all()
    cpu_base, cpu_checks = idle_base["measured"], idle_checks["measured"]
    results = {
        "detect_p50_s": round(statistics.median(times), 3),
        "detect_p99_s": round(pct(times, 99), 3),
        "detect_trials": len(times),
        "poll_interval_s": POLL_S,
        "detect_all_s": [round(t, 3) for t in times],
        "daemon_cpu_percent_idle": round(cpu_checks, 2),
        "daemon_cpu_percent_idle_no_checkers": round(cpu_base, 2),
        # what the checkers add (the rest is the daemon itself: Raft ticks, leases)
        "checkers_cpu_percent_added": round(cpu_checks - cpu_base, 2),
        "checkers": len(resources["resources"]),
        "measured_daemon": "n1 (the primary; a Raft follower, the witness leading)",
        "members_cpu_percent_idle": idle_checks["cpu_percent"],
        "members_cpu_percent_idle_no_checkers": idle_base["cpu_percent"],
        "daemon_cpu_percent_idle_quiet_timing": round(idle_quiet["measured"], 2),
        "quiet_timing": QUIET_TIMING,
        "members_cpu_percent_idle_quiet_timing": idle_quiet["cpu_percent"],
        "idle_s": IDLE_S,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkers.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"detect_p50_s: {results['detect_p50_s']:.3f} s ({results['detect_p50_s'] / POLL_S:.2f} x vs "
          f"poll interval {POLL_S:g} s; p99 {results['detect_p99_s']:.3f} s; goal <= {POLL_S + 0.5:g} s)")
    ratio = cpu_checks / cpu_base if cpu_base > 0 else float("inf")
    print(f"daemon_cpu_percent_idle: {results['daemon_cpu_percent_idle']:.2f} % ({ratio:.2f} x vs "
          f"{results['daemon_cpu_percent_idle_no_checkers']:.2f} % with no checkers; "
          f"{results['checkers']} checkers; goal <= 1 %; the checkers add "
          f"{results['checkers_cpu_percent_added']:.2f} points)")
    quiet = results["daemon_cpu_percent_idle_quiet_timing"]
    print(f"daemon_cpu_percent_idle_quiet_timing: {quiet:.2f} % "
          f"({quiet / cpu_checks if cpu_checks > 0 else float('inf'):.2f} x vs shipped timers; "
          f"heartbeats 200 ms, leases 3 s; goal <= 1 %)")
    return results
