"""What the kernel sends the FUSE layer for the replication benchmark's workloads:
the ops the layer submits (one per change it replicates) and the sizes of the
WRITEs, with a replicator that only counts (no channel, no receiver). Says
whether 1 MiB application writes reach us as 1 MiB requests, and how many ops a
small file costs. ``python -m bench.fuse_requests`` (root: it mounts).

Not a speed benchmark: it prints counts, and the kernel's init offer (max_write,
capabilities) from the layer's ``event=fuse_init`` log line.
"""
from __future__ import annotations

import collections
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from replication.mount import mount_in_thread

from .replication_bench import small_files, sync_4k
from .replication_seq import seq_write

MiB = 1 << 20


class CountingReplicator:
    """Counts the ops submitted, by kind, and the WRITE payload sizes."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self.kinds: collections.Counter = collections.Counter()
        self.write_sizes: list[int] = []

    def submit(self, op: Any) -> None:
        with self._mu:
            self.kinds[op.kind.name] += 1
            if op.kind.name == "WRITE":
                self.write_sizes.append(len(op.data))

    def wait(self, ticket: object) -> None:
        return None

    def take(self) -> tuple[dict[str, int], list[int]]:
        with self._mu:
            got = dict(self.kinds), list(self.write_sizes)
            self.kinds.clear()
            self.write_sizes.clear()
        return got


def describe(name: str, seconds: float, kinds: dict[str, int], sizes: list[int], per: int) -> str:
    ops = " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
    line = f"{name}: {seconds:.2f} s; ops {ops}; per unit {sum(kinds.values()) / per:.1f}"
    if sizes:
        line += (f"; WRITE sizes min {min(sizes)} median {statistics.median(sizes):.0f} "
                 f"max {max(sizes)} (n={len(sizes)})")
    return line


def run() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    logging.getLogger("replication.fuse").setLevel(logging.INFO)
    base = Path(tempfile.mkdtemp(prefix="hcreq-", dir="/var/tmp"))
    counter = CountingReplicator()
    mount = mount_in_thread(str(base), counter)
    try:
        work: list[tuple[str, int, Callable[[], Any]]] = [
            ("seq_write 64 x 1 MiB + fsync", 64, lambda: seq_write(base, 64)),
            ("small_files 200 (create + 4 KiB + close)", 200, lambda: small_files(base, 200)),
            ("sync_4k 50 (pwrite 4 KiB + fsync)", 50, lambda: sync_4k(base, 50)),
        ]
        for name, per, fn in work:
            counter.take()
            t = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t
            kinds, sizes = counter.take()
            print(describe(name, elapsed, kinds, sizes, per), flush=True)
    finally:
        mount.unmount()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("fuse_requests: needs root (it mounts)", file=sys.stderr)
        sys.exit(1)
    run()
