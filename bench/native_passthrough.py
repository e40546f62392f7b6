"""Issue 19 item 3, a first measured step: how much of the FUSE layer's cost is
Python. The same workloads on three directories of the same disk, alternating in
rounds (medians reported):

  local           the directory itself (the disk's baseline)
  python_fuse     replication/fuse_fs.py mounted as the product mounts it, with a
                  replicator that answers at once (no replication): the figure
                  called fuse_only / fuse_passthrough in ``python -m bench replication``
  native_fuse     bench/native/passthrough.c: the same pass-through (over the
                  directory, through a descriptor opened before the mount,
                  multithreaded, kernel_cache) in C on libfuse 3, built here with
                  the system's cc (needs libfuse3-dev)

Workloads: ``seq`` 1 MiB writes over a preallocated file + fsync (as
bench/replication_seq.py), ``small_files`` create + 4 KiB write + close (as
``python -m bench replication``), ``sync_4k`` pwrite 4 KiB + fsync (p50).
Investigation only: nothing here is wired into the product.
``python -m bench native-passthrough`` (root: it mounts); writes
bench/results/native_passthrough.json.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from replication.fuse_fs import fuse_mount_at
from replication.mount import unmount

from .replication_bench import mount_fuse_only, small_files, sync_4k
from .replication_seq import preallocate, seq_write
from .stats import alternating_rounds

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).resolve().parent / "native" / "passthrough.c"
SIDES = ("local", "python_fuse", "native_fuse")


def build(out_dir: Path) -> Path:
    """Compile passthrough.c; raises RuntimeError naming what is missing."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which("pkg-config") is None:
        raise RuntimeError("native passthrough: needs cc and pkg-config (apt-get install gcc pkg-config)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
    if flags.returncode != 0:
        raise RuntimeError("native passthrough: pkg-config knows no fuse3 (apt-get install libfuse3-dev)")
    binary = out_dir / "passthrough"
    res = subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(SOURCE), *flags.stdout.split()],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"native passthrough: {SOURCE} does not build: {res.stderr.strip()}")
    return binary


class NativeMount:
    def __init__(self, binary: Path, root: Path, timeout: float = 10.0) -> None:
        self.root = root
        self.proc = subprocess.Popen([str(binary), str(root)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while not fuse_mount_at(str(root)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"native passthrough exited: {self.proc.stderr.read().strip()}")
            if time.monotonic() > deadline:
                self.unmount()
                raise TimeoutError(f"native passthrough not mounted on {root} after {timeout} s")
            time.sleep(0.02)

    def unmount(self) -> None:
        try:
            unmount(str(self.root))
        finally:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def measure(seq_mb: int = 256, files: int = 1000, sync_n: int = 200, rounds: int = 5) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="hcnative-", dir="/var/tmp"))   # the disk, not tmpfs
    try:
        binary = build(base)
        dirs = {side: base / side for side in SIDES}
        for d in dirs.values():
            d.mkdir()
        python_mount = mount_fuse_only(dirs["python_fuse"])
        try:
            native_mount = NativeMount(binary, dirs["native_fuse"])
            try:
                for d in dirs.values():
                    preallocate(d, seq_mb)
                seq = alternating_rounds({s: (lambda d=d: seq_write(d, seq_mb, in_place=True))
                                          for s, d in dirs.items()}, rounds)
                for d in dirs.values():
                    (d / "seq.bin").unlink()
                small = alternating_rounds({s: (lambda d=d: small_files(d, files))
                                            for s, d in dirs.items()}, rounds)
                sync = alternating_rounds({s: (lambda d=d: sync_4k(d, sync_n // rounds))
                                           for s, d in dirs.items()}, rounds)
            finally:
                native_mount.unmount()
        finally:
            python_mount.unmount()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    r: dict[str, Any] = {"seq_mb": seq_mb, "small_files_n": files, "sync_4k_n": sync_n, "rounds": rounds,
                         "method": "local, python_fuse and native_fuse alternate within each round "
                                   "(order reversed every other round); medians over rounds"}
    for side in SIDES:
        r[f"{side}_seq_MBps"] = statistics.median(seq[side])
        r[f"{side}_small_files_per_s"] = statistics.median(small[side])
        r[f"{side}_sync_4k_p50_ms"] = statistics.median([ms for run in sync[side] for ms in run])
    return r


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    for what, unit, key, better_high in (("seq", "MB/s", "seq_MBps", True),
                                         ("small_files", "/s", "small_files_per_s", True),
                                         ("sync_4k_p50", "ms", "sync_4k_p50_ms", False)):
        local = r[f"local_{key}"]
        lines.append(f"local_{key}: {local:.3f} {unit} (baseline)" if not better_high
                     else f"local_{key}: {local:.0f} {unit} (baseline)")
        for side in ("python_fuse", "native_fuse"):
            v = r[f"{side}_{key}"]
            shown = f"{v:.3f}" if not better_high else f"{v:.0f}"
            lines.append(f"{side}_{key}: {shown} {unit} ({v / local:.2f} x vs local_{key})")
        lines.append(f"  native/python for {what}: "
                     f"{r[f'native_fuse_{key}'] / r[f'python_fuse_{key}']:.2f} x")
    return lines


def run(out_dir: Path = ROOT / "bench" / "results") -> dict[str, Any]:
    r = measure()
    print("\n".join(report_lines(r)))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "native_passthrough.json"
    path.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {path}")
    return r


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("native-passthrough: needs root (it mounts)", file=sys.stderr)
        sys.exit(1)
    run()
