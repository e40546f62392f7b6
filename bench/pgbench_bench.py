"""python -m bench pgbench: PostgreSQL 15 through the mirror against the same PostgreSQL
on a plain directory, both measured in the same run on the same machine.

The mirror: the modules/postgresql template in a two-node lab (``PgMirrorLab``): its
data directory in the replicated directory, the module primary on n1 with n2 in
sync, the clients on host c through the VIP. The plain side: the same binaries and
settings (``PlainPostgres``) on a plain directory of lab host p, the clients on host c
through the lab network as well; its directory is under the lab's work folder like the
mirror's two copies, so both sides' files land on the same file system (the results
file names it for each side, and the bench stops when the kinds differ).

  pgbench_tps             pgbench's TPC-B-like script, ``--clients`` clients for
                          ``--duration`` s (pgbench's tps, without connection time)
  pgbench_latency_*_ms    average, p50 and p99 of every transaction's latency, from
                          pgbench's per-transaction log (-l)
  pgbench_load_s          ``pgbench -i -s SCALE`` (pgbench's own "done in": drop,
                          create, generate, vacuum, primary keys)
  pg_crash_recovery_s     the server SIGKILLed (its whole process group) right after a
                          burst of a fixed number of transactions that followed a
                          CHECKPOINT (the same WAL to replay on both sides), then
                          ``pg_ctl start -w`` until it accepts connections; on the
                          mirror by hand on the primary, through its mount, with the
                          module's options (the cluster is not involved)

A third side, ``fuse_floor``, measures what the FUSE API the mirror is built on allows on
this machine: the same PostgreSQL (lab host f) with its data directory behind
bench/native/passthrough.c, a pass-through written in C on libfuse 3's high-level API and
mounted as the mirror's layer is (multithreaded, kernel_cache, default_permissions), that
replicates nothing. Its ratios to plain bound what any layer on that API reaches here; the
mirror's ratios to it are what replication and our layer add. (Measured first by hand in
stop 19: 0.70-0.72 x plain TPS and 1.9-2.4 x plain crash recovery.)

Each round loads the tables afresh and runs pgbench on every side, the order reversed
every other round; the crash trials alternate the same way. Ratios are mirror / plain
(``ratios``), fuse_floor / plain (``floor_ratios``) and mirror / fuse_floor
(``mirror_vs_floor``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from chaos.lab import Lab
from chaos.pg_module import PgMirrorLab, PlainPostgres, pg_client_argv

from .native_passthrough import NativeMount, build
from .stats import alternating_rounds, pct

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = "pgbench.json"
PLAIN_HOST, CLIENT_HOST, PRIMARY, SECONDARY, FLOOR_HOST = "p", "c", "n1", "n2", "f"
THREADS = 2                     # pgbench -j: the machine has two cores

TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M)
LOAD_DONE = re.compile(r"^done in ([\d.]+) s \((.*)\)\.?$", re.M)


# ---- pgbench's output (pure) --------------------------------------------------------------
def parse_tps(output: str) -> float:
    m = TPS.search(output)
    if m is None:
        raise ValueError(f"no 'tps = ...' line in pgbench's output: {output.strip()[-500:]!r}")
    return float(m.group(1))


def parse_load(output: str) -> tuple[float, str]:
    """pgbench -i's "done in X s (steps)": seconds and the steps' breakdown."""
    m = LOAD_DONE.search(output)
    if m is None:
        raise ValueError(f"no 'done in ... s' line in pgbench -i's output: {output.strip()[-500:]!r}")
    return float(m.group(1)), m.group(2)


def transaction_latencies_ms(lines: list[str]) -> list[float]:
    """Every completed transaction's latency from pgbench's per-transaction log lines
    (client_id transaction_no time_us script_no epoch epoch_us ...); failed ones
    (no number in the time field) are left out."""
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            out.append(int(fields[2]) / 1000.0)
    return out


@dataclass
class BenchRun:
    """One pgbench run: its tps and every transaction's latency."""
    tps: float
    latencies_ms: list[float]


def summarize_side(loads: list[tuple[float, str]], runs: list[BenchRun], recoveries: list[float],
                   storage: dict[str, Any]) -> dict[str, Any]:
    """One side's figures: medians over rounds and trials, latency percentiles over
    every transaction of every round."""
    lat = [x for r in runs for x in r.latencies_ms]
    if not lat:
        raise ValueError("pgbench logged no completed transaction")
    return {
        "storage": storage,
        "pgbench_tps": statistics.median(r.tps for r in runs),
        "pgbench_latency_avg_ms": statistics.fmean(lat),
        "pgbench_latency_p50_ms": pct(lat, 50),
        "pgbench_latency_p99_ms": pct(lat, 99),
        "pgbench_transactions": len(lat),
        "pgbench_load_s": statistics.median(s for s, _ in loads),
        "pg_crash_recovery_s": statistics.median(recoveries),
        "tps_per_round": [r.tps for r in runs],
        "load_per_round": [{"seconds": s, "steps": steps} for s, steps in loads],
        "crash_recovery_per_trial_s": recoveries,
    }


FIGURES = (  # name, unit, format, goal on the mirror/plain ratio (None: none set)
    ("pgbench_tps", "tps", ".0f", ">= 0.7"),
    ("pgbench_latency_avg_ms", "ms", ".2f", None),
    ("pgbench_latency_p50_ms", "ms", ".2f", None),
    ("pgbench_latency_p99_ms", "ms", ".2f", None),
    ("pgbench_load_s", "s", ".2f", None),
    ("pg_crash_recovery_s", "s", ".3f", "<= 1.5"),
)


def ratios(mirror: dict[str, Any], plain: dict[str, Any]) -> dict[str, float]:
    return {name: mirror[name] / plain[name] for name, *_ in FIGURES}


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    for name, unit, fmt, goal in FIGURES:
        ratio = r["ratios"][name]
        met = ""
        if goal is not None:
            op, bound = goal.split()
            ok = ratio >= float(bound) if op == ">=" else ratio <= float(bound)
            met = f"; goal {goal} {'met' if ok else 'not met'}"
        lines.append(f"{name}: {r['mirror'][name]:{fmt}} {unit} ({ratio:.2f} x vs plain "
                     f"{r['plain'][name]:{fmt}}{met})")
    if "fuse_floor" in r:
        for name, unit, fmt, _ in FIGURES:
            lines.append(f"fuse_floor_{name}: {r['fuse_floor'][name]:{fmt}} {unit} "
                         f"({r['floor_ratios'][name]:.2f} x vs plain; the mirror "
                         f"{r['mirror_vs_floor'][name]:.2f} x of it)")
    if not r["in_sync_throughout"]:
        lines.append(f"WARNING: the secondary was not in sync at: {r['not_in_sync_at']}")
    return lines


# ---- what each side's files are on ---------------------------------------------------------
def file_system_of(path: Path, argv_prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """The mount holding ``path`` (findmnt -T), as seen by whatever ``argv_prefix``
    enters (a node's mount namespace) or by this process."""
    res = subprocess.run([*argv_prefix, "findmnt", "-n", "-o", "FSTYPE,SOURCE,TARGET", "-T", str(path)],
                         capture_output=True, text=True, check=True, timeout=30)
    fstype, source, target = res.stdout.split(None, 2)
    return {"fstype": fstype, "source": source, "mountpoint": target.strip()}


def storage_of(m: PgMirrorLab, plain: PlainPostgres,
               floor: "FuseFloorPostgres") -> dict[str, dict[str, Any]]:
    """Each side's storage; raises when the mirror's copies, the floor's backing directory
    and the plain directory are not on the same kind of file system (the comparison would
    not be fair)."""
    backing = file_system_of(m.pg_data(PRIMARY))
    served = file_system_of(m.pg_data(PRIMARY), tuple(m.in_node_mounts(PRIMARY, [])))
    copy = file_system_of(m.pg_data(SECONDARY))
    plain_fs = file_system_of(plain.data)
    floor_served, floor_backing = file_system_of(floor.data), file_system_of(floor.base)
    kinds = {backing["fstype"], copy["fstype"], plain_fs["fstype"], floor_backing["fstype"]}
    if len(kinds) != 1 or not served["fstype"].startswith("fuse") \
            or not floor_served["fstype"].startswith("fuse"):
        raise RuntimeError(f"unfair comparison: primary's copy on {backing}, secondary's on {copy}, "
                           f"plain on {plain_fs}, the floor's on {floor_backing}; served to "
                           f"PostgreSQL as {served} and {floor_served}")
    return {
        "fuse_floor": {"path": str(floor.data), "served_as": floor_served, "backing": floor_backing,
                       "what": f"bench/native/passthrough.c (C, libfuse 3 high-level API, no "
                               f"replication) over {floor_backing['fstype']} "
                               f"({floor_backing['source']}) on lab host {FLOOR_HOST}; the "
                               f"clients on {CLIENT_HOST} through the lab network"},
        "mirror": {"path": str(m.pg_data(PRIMARY)), "served_as": served, "backing": backing,
                   "secondary_copy": {"path": str(m.pg_data(SECONDARY)), **copy},
                   "what": f"hacluster mirror module: PostgreSQL's data directory in the "
                           f"replicated directory, served by the FUSE mount on {PRIMARY} over "
                           f"{backing['fstype']} ({backing['source']}), replicated to "
                           f"{SECONDARY}'s copy on {copy['fstype']} ({copy['source']}); the "
                           f"clients on {CLIENT_HOST} through the VIP"},
        "plain": {"path": str(plain.data), **plain_fs,
                  "what": f"a plain directory on {plain_fs['fstype']} ({plain_fs['source']}) of "
                          f"lab host {PLAIN_HOST}: no FUSE, no replication, no cluster; the "
                          f"clients on {CLIENT_HOST} through the lab network"},
    }


# ---- the bench ------------------------------------------------------------------------------
class FuseFloorPostgres(PlainPostgres):
    """PlainPostgres whose data directory is a mount of bench/native/passthrough.c
    (``binary``): made before initdb, removed (by its PID) at ``close``."""

    def __init__(self, lab: Lab, host: str, binary: Path, **kw: Any) -> None:
        super().__init__(lab, host, **kw)
        self.binary = binary
        self.mount: NativeMount | None = None

    def init(self) -> "FuseFloorPostgres":
        self.base.mkdir(parents=True, exist_ok=True)
        self.data.mkdir()
        shutil.chown(self.data, "postgres")
        os.chmod(self.data, 0o700)
        self.mount = NativeMount(self.binary, self.data)
        super().init()
        return self

    def close(self) -> None:
        try:
            self.crash()
        finally:
            if self.mount is not None:
                self.mount.unmount()
                self.mount = None
            super().close()


@dataclass
class Side:
    """One database under test, as the client host reaches it."""
    name: str
    addr: str
    port: int
    crash: Callable[[], Any]
    restart: Callable[[Any], float]
    server_log: Path
    not_in_sync: Callable[[], str | None] = lambda: None    # the mirror: why not, if not


def mirror_not_in_sync(m: PgMirrorLab) -> str | None:
    """None when the primary is PRIM with both nodes in sync; else its state (a figure
    taken then would be the primary's alone)."""
    st = m.state(PRIMARY)
    if st and st["state"] == "PRIM" and sorted(st.get("in_sync", [])) == sorted(m.nodes):
        return None
    return f"{PRIMARY}: {st}"


RECOVERY_MARK = "automatic recovery in progress"    # PostgreSQL's log line at a crash recovery


def recoveries_logged(log: Path) -> int:
    return log.read_text(errors="replace").count(RECOVERY_MARK) if log.exists() else 0


class Runner:
    """The steps of the bench, each on one side, run from the client host; ``problems``
    collects the times the mirror was found out of sync after one."""

    def __init__(self, lab: Lab, logs: Path, *, scale: int, clients: int, duration: int,
                 burst: int) -> None:
        self.lab, self.logs = lab, logs
        self.scale, self.clients, self.duration, self.burst = scale, clients, duration, burst
        self.rounds_done: dict[str, int] = {}
        self.problems: list[str] = []

    def _checked(self, side: Side, what: str) -> None:
        why = side.not_in_sync()
        if why is not None:
            self.problems.append(f"after {what} on {side.name}: {why}")

    def one_round(self, side: Side) -> tuple[tuple[float, str], BenchRun]:
        """Fresh tables (timed), then a pgbench run."""
        n = self.rounds_done[side.name] = self.rounds_done.get(side.name, 0) + 1
        load = self.load(side)
        bench = self.run_bench(side, f"r{n}")
        self._checked(side, f"round {n}")
        print(f"{side.name}: load {load[0]:.2f} s, {bench.tps:.0f} tps", flush=True)
        return load, bench

    def one_crash(self, side: Side) -> float:
        took = self.crash_recovery(side)
        self._checked(side, "a crash recovery")
        print(f"{side.name}: crash recovery {took:.3f} s", flush=True)
        return took

    def pgbench(self, side: Side, *args: str, timeout: float) -> str:
        res = self.lab.run(CLIENT_HOST, pg_client_argv(side.addr, side.port, "pgbench", *args),
                           check=False, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"pgbench {' '.join(args)} on {side.name} failed ({res.returncode}): "
                               f"{res.stderr.strip()[-2000:]}")
        return res.stdout + res.stderr

    def sql(self, side: Side, statement: str) -> None:
        self.lab.run(CLIENT_HOST, [sys.executable, "-m", "chaos.pg_wire", "--host", side.addr,
                                   "--port", str(side.port), "--timeout", "120", statement],
                     timeout=150)

    def load(self, side: Side) -> tuple[float, str]:
        return parse_load(self.pgbench(side, "-i", "-s", str(self.scale), "postgres", timeout=1800))

    def run_bench(self, side: Side, tag: str) -> BenchRun:
        prefix = self.logs / f"{side.name}-{tag}"
        out = self.pgbench(side, "-c", str(self.clients), "-j", str(min(THREADS, self.clients)),
                           "-T", str(self.duration), "-l", f"--log-prefix={prefix}", "postgres",
                           timeout=self.duration + 600)
        lines = []
        for f in sorted(self.logs.glob(f"{prefix.name}.*")):
            lines += f.read_text().splitlines()
            f.unlink()
        return BenchRun(parse_tps(out), transaction_latencies_ms(lines))

    def crash_recovery(self, side: Side) -> float:
        self.sql(side, "CHECKPOINT")
        self.pgbench(side, "-n", "-c", str(self.clients), "-j", str(min(THREADS, self.clients)),
                     "-t", str(self.burst), "postgres", timeout=1800)
        before = recoveries_logged(side.server_log)
        took = side.restart(side.crash())
        if recoveries_logged(side.server_log) <= before:
            raise RuntimeError(f"{side.name}: no crash recovery in {side.server_log} after the "
                               f"kill ({RECOVERY_MARK!r} not logged): the figure would not be one")
        return took


def _commit() -> str:
    res = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def run(*, scale: int = 10, clients: int = 4, duration: int = 20, rounds: int = 2,
        recovery_trials: int = 3, burst: int = 500,
        out_dir: Path = ROOT / "bench" / "results") -> dict[str, Any]:
    """``burst``: transactions per client between the CHECKPOINT and the crash."""
    for name, value in (("scale", scale), ("clients", clients), ("duration", duration),
                        ("rounds", rounds), ("recovery_trials", recovery_trials), ("burst", burst)):
        if value < 1:
            raise ValueError(f"pgbench bench: {name.replace('_', ' ')} must be >= 1, got {value}")
    load_before = os.getloadavg()
    with Lab([PRIMARY, SECONDARY, "w", CLIENT_HOST, PLAIN_HOST, FLOOR_HOST]) as lab:
        m = PgMirrorLab(lab, nodes=(PRIMARY, SECONDARY), client=CLIENT_HOST).start(prim=PRIMARY)
        net = ipaddress.ip_network(f"{lab.addr(CLIENT_HOST)}/24", strict=False)
        plain = PlainPostgres(lab, PLAIN_HOST, port=m.port, listen=lab.addr(PLAIN_HOST),
                              clients=str(net), name="bench")
        floor = FuseFloorPostgres(lab, FLOOR_HOST, build(lab.host_dir(FLOOR_HOST)), port=m.port,
                                  listen=lab.addr(FLOOR_HOST), clients=str(net), name="floor")
        try:
            plain.init().start()
            floor.init().start()
            storage = storage_of(m, plain, floor)
            sides = {"plain": Side("plain", plain.listen, plain.port, plain.crash,
                                   lambda _: plain.start(), plain.log),
                     "fuse_floor": Side("fuse_floor", floor.listen, floor.port, floor.crash,
                                        lambda _: floor.start(), floor.log),
                     "mirror": Side("mirror", m.vip, m.port, lambda: m.crash_postgres(PRIMARY),
                                    lambda options: m.restart_postgres(PRIMARY, options),
                                    m.server_log(PRIMARY), lambda: mirror_not_in_sync(m))}
            logs = lab.host_dir(CLIENT_HOST) / "pgbench-logs"
            logs.mkdir()
            runner = Runner(lab, logs, scale=scale, clients=clients, duration=duration, burst=burst)
            got = alternating_rounds({n: lambda x=x: runner.one_round(x) for n, x in sides.items()},
                                     rounds)
            rec = alternating_rounds({n: lambda x=x: runner.one_crash(x) for n, x in sides.items()},
                                     recovery_trials)
        finally:
            try:
                floor.close()
            finally:
                plain.close()
    per_side = {n: summarize_side([load for load, _ in got[n]], [b for _, b in got[n]], rec[n],
                                  storage[n]) for n in sides}
    results: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": _commit(),
        "params": {"scale": scale, "clients": clients, "threads": min(THREADS, clients),
                   "duration_s": duration, "rounds": rounds, "recovery_trials": recovery_trials,
                   "burst_transactions_per_client": burst,
                   "method": "rounds of (load, pgbench) on each side, the order reversed every "
                             "other round; tps and load: medians over rounds; latencies: every "
                             "transaction of every round (pgbench -l); crash recovery: median "
                             "over trials, alternating"},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "in_sync_throughout": not runner.problems, "not_in_sync_at": runner.problems,
        "mirror": per_side["mirror"], "plain": per_side["plain"],
        "fuse_floor": per_side["fuse_floor"],
    }
    results["ratios"] = ratios(results["mirror"], results["plain"])
    results["floor_ratios"] = ratios(results["fuse_floor"], results["plain"])
    results["mirror_vs_floor"] = ratios(results["mirror"], results["fuse_floor"])
    print("\n".join(report_lines(results)))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return results
