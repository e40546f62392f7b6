"""Replication benchmark: a real FUSE mount on lab host 'prim' replicating
synchronously to a receiver on lab host 'sec' (both on this machine's disk),
against the same workloads written directly, measured in the same run.

  seq_write_MBps        1 MiB writes + a final fsync through the mount
  local_seq_write_MBps  the same to the same disk without hacluster
  tcp_MBps              a plain Python TCP stream between the two hosts
  limit_MBps            min(local / 2, tcp): what one machine allows for
                        writing the data twice
  sync_4k_p50/p99_ms    4 KiB pwrite + fsync, vs local_4k_p50_ms
  small_files_per_s     create + write 4 KiB + close, vs local
  resync_1pct_s         a tree of TREE_MB, 1 % of its blocks changed while
                        the receiver was away: our reintegration (bitmaps)
  rsync_1pct_s          rsync -a --inplace of the same change (local)
  resync_nobitmap_s     another 1 % change, bitmaps discarded: digests
  rsync_full_s          rsync -a --inplace --checksum (reads everything)

The 4 KiB latencies are taken in alternating rounds (local, replicated, local,
...) so that both see the same load on a shared machine.
``python -m bench.replication_bench --only sync_4k`` measures just those (a
minute, no results file written).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chaos.lab import Lab
from chaos.replication_pair import ReplicationPair

from .stats import pct

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20

TCP_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7501)); s.listen(1)
c, _ = s.accept()
n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    n += len(d)
c.sendall(str(n).encode())
"""
TCP_CLIENT = r"""
import socket, sys, time
total = int(sys.argv[2]); chunk = b"x" * (1 << 20)
deadline = time.time() + 10
while True:
    try:
        s = socket.create_connection((sys.argv[1], 7501)); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.05)
t = time.perf_counter()
for _ in range(total // len(chunk)):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR); s.recv(64)
print(total / (time.perf_counter() - t) / 1e6)
"""


def seq_write(directory: Path, total_mb: int) -> float:
    block = os.urandom(MiB)
    path = directory / "seq.bin"
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(total_mb):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)
    elapsed = time.perf_counter() - t
    os.unlink(path)
    return total_mb * MiB / elapsed / 1e6


def sync_4k(directory: Path, n: int) -> list[float]:
    path = directory / "sync4k.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = os.urandom(4096)
    out = []
    for i in range(n):
        t = time.perf_counter()
        os.pwrite(fd, data, (i % 256) * 4096)
        os.fsync(fd)
        out.append((time.perf_counter() - t) * 1e3)
    os.close(fd)
    os.unlink(path)
    return out


def sync_4k_rounds(local: Path, replicated: Path, n: int = 500, rounds: int = 5
                   ) -> tuple[list[float], list[float]]:
    """sync_4k on both directories in alternating rounds: (local, replicated)."""
    local_ms: list[float] = []
    replicated_ms: list[float] = []
    for _ in range(rounds):
        local_ms += sync_4k(local, n // rounds)
        replicated_ms += sync_4k(replicated, n // rounds)
    return local_ms, replicated_ms


def small_files(directory: Path, n: int) -> float:
    d = directory / "small"
    d.mkdir()
    data = os.urandom(4096)
    t = time.perf_counter()
    for i in range(n):
        with open(d / f"f{i}", "wb") as f:
            f.write(data)
    rate = n / (time.perf_counter() - t)
    shutil.rmtree(d)
    return rate


def make_tree(directory: Path, total_mb: int, file_mb: int) -> list[Path]:
    files = []
    block = os.urandom(MiB)
    for i in range(total_mb // file_mb):
        sub = directory / "tree" / f"d{i % 8}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"f{i:04d}.bin"
        with open(path, "wb") as f:
            for j in range(file_mb):
                f.write(block[j:] + block[:j])  # distinct blocks
        files.append(path)
    return files


def change_one_percent(files: list[Path], file_mb: int, rng: random.Random) -> int:
    """Overwrite 4 KiB inside 1 % of the 1 MiB blocks; returns blocks changed."""
    blocks = [(f, b) for f in files for b in range(file_mb)]
    chosen = rng.sample(blocks, max(1, len(blocks) // 100))
    for f, b in chosen:
        fd = os.open(f, os.O_WRONLY)
        os.pwrite(fd, os.urandom(4096), b * MiB + rng.randrange(0, MiB - 4096))
        os.close(fd)
    return len(chosen)


def last_resync_seconds(pair: ReplicationPair) -> float:
    text = (pair.lab.workdir / "prim" / "mount.log").read_text()
    return float(re.findall(r"event=in_sync .*seconds=([0-9.]+)", text)[-1])


def rsync(src: Path, dst: Path, *extra: str) -> float:
    t = time.perf_counter()
    subprocess.run(["rsync", "-a", "--inplace", *extra, f"{src}/", f"{dst}/"], check=True)
    return time.perf_counter() - t


def run(seq_mb: int = 512, tree_mb: int = 2048, file_mb: int = 32,
        out_dir: Path = ROOT / "bench" / "results") -> dict[str, Any]:
    rng = random.Random(7)
    results: dict[str, Any] = {"seq_mb": seq_mb, "tree_mb": tree_mb}
    base = Path(tempfile.mkdtemp(prefix="hcbench-", dir="/var/tmp"))
    try:
        local = base / "local"
        local.mkdir()
        results["local_seq_write_MBps"] = seq_write(local, seq_mb)
        results["local_small_files_per_s"] = small_files(local, 2000)
        with Lab(["prim", "sec"]) as lab:
            server = lab.spawn("sec", [sys.executable, "-c", TCP_SERVER, lab.addr("sec")], name="tcp")
            res = lab.run("prim", [sys.executable, "-c", TCP_CLIENT, lab.addr("sec"),
                                   str(2048 * MiB)], timeout=120)
            server.stop()
            results["tcp_MBps"] = float(res.stdout.strip())
            results["limit_MBps"] = min(results["local_seq_write_MBps"] / 2, results["tcp_MBps"])

            pair = ReplicationPair(lab, base / "pair")
            pair.start_receiver()
            pair.start_mount()
            results["seq_write_MBps"] = seq_write(pair.prim, seq_mb)
            results["seq_ratio_to_limit"] = results["seq_write_MBps"] / results["limit_MBps"]
            local_4k, s4k = sync_4k_rounds(local, pair.prim)
            results["local_4k_p50_ms"] = statistics.median(local_4k)
            results["sync_4k_p50_ms"] = statistics.median(s4k)
            results["sync_4k_p99_ms"] = pct(s4k, 99)
            results["small_files_per_s"] = small_files(pair.prim, 2000)

            files = make_tree(pair.prim, tree_mb, file_mb)
            rsync_copy = base / "rsync-copy"
            shutil.copytree(pair.sec, rsync_copy, symlinks=True)  # the receiver's copy, before

            pair.receiver.kill()
            results["blocks_changed"] = change_one_percent(files, file_mb, rng)
            before = pair.in_sync_count()
            pair.start_receiver()
            pair.wait_in_sync(before, timeout=600)
            results["resync_1pct_s"] = last_resync_seconds(pair)
            results["rsync_1pct_s"] = rsync(pair.prim, rsync_copy)

            pair.receiver.kill()
            change_one_percent(files, file_mb, rng)
            pair.stop_mount()
            os.unlink(pair.state / "baseline")  # no bitmaps to trust: digests everywhere
            before = pair.in_sync_count()
            pair.start_receiver()
            pair.start_mount(wait_in_sync=False)
            pair.wait_in_sync(before, timeout=600)
            results["resync_nobitmap_s"] = last_resync_seconds(pair)
            results["rsync_full_s"] = rsync(pair.prim, rsync_copy, "--checksum")
            pair.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    r = results
    lines = [
        f"local_seq_write_MBps: {r['local_seq_write_MBps']:.0f} MB/s (baseline)",
        f"tcp_MBps: {r['tcp_MBps']:.0f} MB/s (baseline)",
        f"limit_MBps: {r['limit_MBps']:.0f} MB/s (min(local/2, tcp))",
        f"seq_write_MBps: {r['seq_write_MBps']:.0f} MB/s ({r['seq_ratio_to_limit']:.2f} x vs limit_MBps)",
        f"sync_4k_p50_ms: {r['sync_4k_p50_ms']:.3f} ms ({r['sync_4k_p50_ms'] / r['local_4k_p50_ms']:.1f} x vs local_4k_p50_ms {r['local_4k_p50_ms']:.3f})",
        f"sync_4k_p99_ms: {r['sync_4k_p99_ms']:.3f} ms",
        f"small_files_per_s: {r['small_files_per_s']:.0f} /s ({r['small_files_per_s'] / r['local_small_files_per_s']:.2f} x vs local {r['local_small_files_per_s']:.0f})",
        f"resync_1pct_s: {r['resync_1pct_s']:.3f} s ({r['resync_1pct_s'] / r['rsync_1pct_s']:.3f} x vs rsync_1pct_s {r['rsync_1pct_s']:.3f})",
        f"resync_nobitmap_s: {r['resync_nobitmap_s']:.3f} s ({r['resync_nobitmap_s'] / r['rsync_full_s']:.3f} x vs rsync_full_s {r['rsync_full_s']:.3f})",
    ]
    print("\n".join(lines))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "replication.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_dir / 'replication.json'}")
    return results


def run_sync_4k_only(n: int = 500, rounds: int = 5) -> dict[str, float]:
    """Just the 4 KiB write+fsync latency, local and replicated in alternating rounds."""
    base = Path(tempfile.mkdtemp(prefix="hcbench-", dir="/var/tmp"))
    try:
        local = base / "local"
        local.mkdir()
        with Lab(["prim", "sec"]) as lab:
            pair = ReplicationPair(lab, base / "pair")
            pair.start_receiver()
            pair.start_mount()
            try:
                local_4k, s4k = sync_4k_rounds(local, pair.prim, n, rounds)
            finally:
                pair.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    r = {"local_4k_p50_ms": statistics.median(local_4k),
         "sync_4k_p50_ms": statistics.median(s4k), "sync_4k_p99_ms": pct(s4k, 99)}
    goal = 3 * r["local_4k_p50_ms"] + 1
    print(f"sync_4k_p50_ms: {r['sync_4k_p50_ms']:.3f} ms "
          f"({r['sync_4k_p50_ms'] / r['local_4k_p50_ms']:.1f} x vs local_4k_p50_ms "
          f"{r['local_4k_p50_ms']:.3f}; goal <= {goal:.3f})")
    print(f"sync_4k_p99_ms: {r['sync_4k_p99_ms']:.3f} ms")
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replication_bench",
                                description="the replication benchmark, or a part of it")
    p.add_argument("--only", choices=("all", "sync_4k"), default="all",
                   help="sync_4k: only the 4 KiB write+fsync latency (writes no results file)")
    p.add_argument("--n", type=int, default=500, help="sync_4k: write+fsync pairs per side")
    p.add_argument("--seq-mb", type=int, default=512, help="all: sequential write size")
    p.add_argument("--tree-mb", type=int, default=2048, help="all: resync tree size")
    args = p.parse_args(argv)
    if args.n < 5 or args.seq_mb < 1 or args.tree_mb < 32:
        p.error("--n must be >= 5, --seq-mb >= 1, --tree-mb >= 32 (one 32 MiB file)")
    if os.geteuid() != 0:
        print("bench: needs root (the lab uses network namespaces)", file=sys.stderr)
        return 1
    if args.only == "sync_4k":
        run_sync_4k_only(args.n)
    else:
        run(seq_mb=args.seq_mb, tree_mb=args.tree_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
