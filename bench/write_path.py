"""python -m bench write-path: a database's write patterns through the mirror, with the
mount's writes served in C (replication/native_fuse.py) and in Python, against the same
patterns on the disk and on the FUSE layer alone, all in the same run (issue 19).

  random_pages_s   16,000 random 8 KiB page writes over 4 x 64 MiB files, then an
                   fsync of each (a checkpoint, or the end of crash recovery)
  commits_per_s    4 threads, each 500 x (8 KiB write + fdatasync) on its own file
                   (a WAL's commits)

Sides: ``local`` (the directory on the disk), ``fuse_only`` (the FUSE layer with a
replicator that answers at once: no replication), ``mirror_python`` and
``mirror_c`` (a replication pair in a lab, the receiver on another host; the mount
restarted with HACLUSTER_FUSE_NATIVE=0 / 1). Rounds alternate the order; medians.
Also the CPU seconds of the mount and receiver processes during each mirror pattern.
Writes bench/results/write_path.json. Root (a lab, mounts).
"""
from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .replication_bench import _pair_lab
from .stats import alternating_rounds

ROOT = Path(__file__).resolve().parent.parent
PAGE = 8192
FILES, FILE_MB, PAGES = 4, 64, 16000
CLIENTS, COMMITS = 4, 500


def prepare(d: Path) -> None:
    for i in range(FILES):
        with open(d / f"rel{i}", "wb") as f:
            f.write(b"\1" * FILE_MB * 2**20)
            os.fsync(f.fileno())


def random_pages(d: Path, seed: int = 1) -> float:
    rng = random.Random(seed)
    fds = [os.open(d / f"rel{i}", os.O_RDWR) for i in range(FILES)]
    buf = os.urandom(PAGE)
    t = time.perf_counter()
    for _ in range(PAGES):
        os.pwrite(fds[rng.randrange(FILES)], buf, rng.randrange(FILE_MB * 2**20 // PAGE) * PAGE)
    for fd in fds:
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t


def commits(d: Path) -> float:
    def one(i: int) -> None:
        fd = os.open(d / f"wal{i}", os.O_RDWR | os.O_CREAT, 0o644)
        buf = os.urandom(PAGE)
        try:
            for k in range(COMMITS):
                os.pwrite(fd, buf, k * PAGE)
                os.fdatasync(fd)
        finally:
            os.close(fd)
    t = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return CLIENTS * COMMITS / (time.perf_counter() - t)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(rounds: int = 3) -> dict[str, Any]:
    with _pair_lab() as (_, local, fuse_only, pair):   # its mount serves writes in C
        for d in (local, fuse_only, pair.prim):
            prepare(d)
        native_now = ["1"]

        def mirror(native: str) -> Callable[[], dict[str, float]]:
            def run() -> dict[str, float]:
                if native_now[0] != native:     # the mount restarted as asked
                    pair.stop_mount()
                    os.environ["HACLUSTER_FUSE_NATIVE"] = native
                    try:
                        pair.start_mount()
                    finally:
                        os.environ.pop("HACLUSTER_FUSE_NATIVE", None)
                    native_now[0] = native
                return side(pair.prim, pair.mount.pid, pair.receiver.pid)
            return run

        got = alternating_rounds({
            "local": lambda: side(local),
            "fuse_only": lambda: side(fuse_only),
            "mirror_python": mirror("0"),
            "mirror_c": mirror("1"),
        }, rounds)
    out: dict[str, Any] = {"rounds": rounds, "pages": PAGES, "clients": CLIENTS, "commits": COMMITS,
                           "per_round": got}
    for name, runs in got.items():
        for key in runs[0]:
            out[f"{name}_{key}"] = statistics.median(r[key] for r in runs)
    return out


def side(d: Path, mount_pid: int | None = None, receiver_pid: int | None = None) -> dict[str, float]:
    pids = [p for p in (mount_pid, receiver_pid) if p is not None]
    c0 = [cpu_s(p) for p in pids]
    rp = random_pages(d)
    c1 = [cpu_s(p) for p in pids]
    cps = commits(d)
    r: dict[str, float] = {"random_pages_s": rp, "commits_per_s": cps}
    if pids:
        r["random_pages_mount_cpu_s"] = c1[0] - c0[0]
        r["random_pages_receiver_cpu_s"] = c1[1] - c0[1]
    return r


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    for side_name in ("fuse_only", "mirror_python", "mirror_c"):
        rp, base_rp = r[f"{side_name}_random_pages_s"], r["local_random_pages_s"]
        lines.append(f"{side_name}_random_pages_s: {rp:.2f} s ({base_rp / rp:.2f} x vs local "
                     f"{base_rp:.2f} s)")
        c, base_c = r[f"{side_name}_commits_per_s"], r["local_commits_per_s"]
        lines.append(f"{side_name}_commits_per_s: {c:.0f} /s ({c / base_c:.2f} x vs local "
                     f"{base_c:.0f} /s)")
    lines.append(f"mirror_c_random_pages_s: {r['mirror_c_random_pages_s']:.2f} s "
                 f"({r['mirror_python_random_pages_s'] / r['mirror_c_random_pages_s']:.2f} x faster "
                 f"than mirror_python)")
    lines.append(f"mirror_c_commits_per_s: {r['mirror_c_commits_per_s']:.0f} /s "
                 f"({r['mirror_c_commits_per_s'] / r['mirror_python_commits_per_s']:.2f} x vs "
                 f"mirror_python)")
    for s in ("mirror_python", "mirror_c"):
        lines.append(f"{s}_mount_cpu_s: {r[f'{s}_random_pages_mount_cpu_s']:.2f} s, receiver "
                     f"{r[f'{s}_random_pages_receiver_cpu_s']:.2f} s (random pages)")
    return lines


def run(rounds: int = 3, out_dir: Path = ROOT / "bench" / "results") -> dict[str, Any]:
    r = measure(rounds)
    r["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    r["loadavg"] = os.getloadavg()
    for line in report_lines(r):
        print(line)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "write_path.json").write_text(json.dumps(r, indent=2) + "\n")
    return r
