"""``python -m bench vm``: a QEMU guest (the modules/vm template, the lab guest of
chaos.vm_guest) whose disk is in the mirror, against the same guest on a plain
directory of another lab host, in the same run:

- flush latency: the guest writes a 512-byte record and fsyncs its disk (a cache
  flush on the virtual disk: an fdatasync on the image), timed by a client outside
  from its request to the guest's answer; p50 and p99;
- write throughput: the guest writes MiB of random data to its disk in 1 MiB blocks
  and flushes once at the end, timed the same way;
- boot: the plain guest started by hand (vmctl start) until its service answers;
- failover: the mirror's host killed until the guest's service answers through the
  VIP again on the other node, split into until QEMU runs there (the module's
  start_prim done) and the guest's own boot after that.

Both sides run under the same accelerator (software emulation where KVM cannot run
the guest), so ratios compare the disk path, not the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chaos.lab import Lab, wait_until
from chaos.vm_guest import GUEST_PORT, build_guest
from chaos.vm_module import VMCTL, VmMirrorLab

from .stats import alternating_rounds, pct

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = "vm.json"
PLAIN_HOST = "p"
CLIENT_HOST = "c"
FIGURES = (   # name, unit, format, lower is better
    ("flush_latency_p50_ms", "ms", ".2f", True),
    ("flush_latency_p99_ms", "ms", ".2f", True),
    ("write_throughput_mib_s", "MiB/s", ".1f", False),
)


# ---- the client side (run on the client host) -------------------------------------------
def probe(host: str, port: int, records: int, mib: int) -> dict[str, Any]:
    """One round against the guest at host:port: ``records`` flushed records, then
    ``mib`` MiB written and flushed."""
    s = socket.create_connection((host, port), timeout=120)
    f = s.makefile("rwb")

    def ask(line: str) -> tuple[str, float]:
        t = time.perf_counter()
        f.write(line.encode() + b"\n")
        f.flush()
        answer = f.readline().decode().strip()
        took = time.perf_counter() - t
        if not answer.startswith("OK"):
            raise RuntimeError(f"{line!r}: {answer!r}")
        return answer, took
    ask("B 4")     # warm: the guest's random block made, the bulk area touched
    lat = [ask(f"W {5000 + i}")[1] * 1000 for i in range(records)]
    _, took = ask(f"B {mib}")
    s.close()
    return {"lat_ms": lat, "mib_s": mib / took}


# ---- the bench ------------------------------------------------------------------------------
def _probe_from_client(lab: Lab, host: str, records: int, mib: int) -> dict[str, Any]:
    res = lab.run(CLIENT_HOST, [sys.executable, "-m", "bench.vm_bench", "--probe", host,
                                str(GUEST_PORT), str(records), str(mib)], timeout=600)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _answers(lab: Lab, host: str) -> str | None:
    code = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1)\n"
            "s.settimeout(2);s.sendall(b'P\\n');d=s.recv(200).decode()\n"
            "print(d) if d.startswith('PONG') else sys.exit(1)\n")
    res = lab.run(CLIENT_HOST, [sys.executable, "-c", code, host, str(GUEST_PORT)], check=False, timeout=15)
    return res.stdout.strip() if res.returncode == 0 else None


class PlainGuest:
    """The same guest run by hand with the module's vmctl.py on a plain directory of a
    lab host: no FUSE, no replication, no cluster."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab, self.host = lab, host
        self.prefix = lab.host_dir(host) / "root"
        self.env = {**os.environ, "VM_DIR": "/plain-vm", "HACLUSTER_MODULE": "vmplain",
                    "HACLUSTER_ROOT_PREFIX": str(self.prefix), "HACLUSTER_NODE": host,
                    "VM_STOP_TIMEOUT": "5"}

    def vmctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.lab.run(self.host, ["python3", str(VMCTL), *args], env=self.env, check=False,
                            timeout=180)

    def boot(self) -> float:
        """Seconds from vmctl start until the guest's service answers."""
        t = time.monotonic()
        res = self.vmctl("start")
        if res.returncode != 0:
            raise RuntimeError(f"plain guest: vmctl start failed: {res.stdout.strip()} {res.stderr.strip()}")
        wait_until("the plain guest answers", lambda: _answers(self.lab, self.lab.addr(self.host)), 120, 0.1)
        return time.monotonic() - t

    def stop(self) -> None:
        if self.vmctl("stop").returncode != 0:
            self.vmctl("stop", "force")


def _failover(m: VmMirrorLab, prim: str) -> dict[str, float]:
    other = m.other(prim)
    t_kill = m.kill_host(prim)
    st = wait_until(f"{other} ALONE", lambda: (lambda s: s if s and s["state"] == "ALONE"
                                               and s["ready"] == "Ready" else None)(m.state(other)), 120, 0.05)
    t_running = time.monotonic()
    wait_until("the guest answers through the VIP", lambda: (lambda a: a and a.split()[1] == other)(
        _answers(m.lab, m.vip)), 180, 0.05)
    t_answer = time.monotonic()
    del st
    m.restart_node(prim)
    m.wait_pair(other, timeout=180)
    return {"failover_s": t_answer - t_kill, "until_qemu_runs_s": t_running - t_kill,
            "guest_boot_s": t_answer - t_running}


def _side_summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    lat = [x for r in rounds for x in r["lat_ms"]]
    return {"flush_latency_p50_ms": pct(lat, 50), "flush_latency_p99_ms": pct(lat, 99),
            "write_throughput_mib_s": statistics.median(r["mib_s"] for r in rounds),
            "flushes": len(lat)}


def _commit() -> str:
    res = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def run(*, rounds: int = 3, records: int = 200, mib: int = 32, trials: int = 2,
        out_dir: Path = ROOT / "bench" / "results") -> dict[str, Any]:
    for name, value in (("rounds", rounds), ("records", records), ("mib", mib), ("trials", trials)):
        if value < 1:
            raise ValueError(f"vm bench: {name} must be >= 1, got {value}")
    if mib > 48:
        raise ValueError(f"vm bench: mib {mib} must be at most 48 (the guest's bulk area)")
    load_before = os.getloadavg()
    with Lab(["n1", "n2", "w", CLIENT_HOST, PLAIN_HOST]) as lab:
        plain = PlainGuest(lab, PLAIN_HOST)
        build_guest(plain.prefix / "plain-vm", "vmplain", kvm="off")
        m = VmMirrorLab(lab, client=CLIENT_HOST).start(prim="n1")
        try:
            plain_boots = [plain.boot()]
            m.wait_guest()
            got = alternating_rounds({
                "plain": lambda: _probe_from_client(lab, lab.addr(PLAIN_HOST), records, mib),
                "mirror": lambda: _probe_from_client(lab, m.vip, records, mib)}, rounds)
            in_sync = (m.state("n1") or {}).get("in_sync")
            plain.stop()
            for _ in range(trials - 1):     # more plain boots, for the median
                plain_boots.append(plain.boot())
                plain.stop()
            failovers = []
            prim = "n1"
            for _ in range(trials):
                failovers.append(_failover(m, prim))
                print(f"failover: {failovers[-1]}", flush=True)
                prim = m.other(prim)
        finally:
            plain.stop()
    results: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": _commit(),
        "params": {"rounds": rounds, "records_per_round": records, "mib_per_round": mib,
                   "failover_trials": trials, "accel": "tcg (kvm = off: software emulation)",
                   "disk_cache": "writeback, guest flushes passed through as fdatasync",
                   "method": "rounds of (records flushed one by one, then MiB in 1 MiB blocks and "
                             "one flush) on each side, alternating; latencies from the client "
                             "host, request to answer; throughput: median over rounds"},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "mirror_in_sync_after_rounds": in_sync,
        "mirror": _side_summary(got["mirror"]), "plain": _side_summary(got["plain"]),
        "plain_boot_s": plain_boots, "failovers": failovers,
    }
    results["ratios"] = {name: results["mirror"][name] / results["plain"][name] for name, *_ in FIGURES}
    print("\n".join(report_lines(results)))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return results


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"{name}: {r['mirror'][name]:{fmt}} {unit} ({r['ratios'][name]:.2f} x vs plain "
             f"{r['plain'][name]:{fmt}})" for name, unit, fmt, _ in FIGURES]
    boot = statistics.median(r["plain_boot_s"])
    fo = [f["failover_s"] for f in r["failovers"]]
    lines.append(f"guest_boot_plain: {boot:.1f} s (1.00 x vs baseline)")
    lines.append(f"failover_host_killed_to_service: {statistics.median(fo):.1f} s "
                 f"({statistics.median(fo) / boot:.2f} x vs plain guest boot {boot:.1f})")
    lines.append("failover_until_qemu_runs: "
                 f"{statistics.median(f['until_qemu_runs_s'] for f in r['failovers']):.1f} s; "
                 f"guest_boot_after_failover: "
                 f"{statistics.median(f['guest_boot_s'] for f in r['failovers']):.1f} s "
                 f"({statistics.median(f['guest_boot_s'] for f in r['failovers']) / boot:.2f} x vs plain boot)")
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", nargs=4, metavar=("HOST", "PORT", "RECORDS", "MIB"), required=True)
    a = ap.parse_args()
    h, port, n, size = a.probe
    print(json.dumps(probe(h, int(port), int(n), int(size))))
