"""Where the time goes in the replicated write path: py-spy samples the mount
(primary) and receiver processes while a workload runs through the mount,
and the hottest functions (own time, and time including callees) are printed
for each: 4 KiB write + fsync, 1 MiB sequential writes, small files (create +
4 KiB write + close). ``python -m bench replication-profile`` (needs py-spy in
the venv: ``pip install py-spy``).
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from chaos.lab import Lab
from chaos.replication_pair import ReplicationPair

from .replication_bench import small_files, sync_4k
from .replication_seq import seq_write

PY_SPY = Path(sys.executable).with_name("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--format", "raw", "--output", str(out), "--threads", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def summarize(raw: Path, top: int = 12) -> list[str]:
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split("/")[-1]
                  if " (" in f else f for f in stack.split(";")]
        samples += n
        if "idle" in frames[-1] or frames[-1].startswith(("wait (threading", "select", "_poll")):
            continue
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    lines = [f"  own   {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += [f"  incl  {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(top)]
    return lines


def run(seconds: float = 8.0) -> None:
    base = Path(tempfile.mkdtemp(prefix="hcprof-", dir="/var/tmp"))
    try:
        with Lab(["prim", "sec"]) as lab:
            pair = ReplicationPair(lab, base / "pair")
            try:
                pair.start_receiver()
                pair.start_mount()
                for name, work in (("sync_4k", lambda: sync_4k(pair.prim, 200)),
                                   ("seq_write", lambda: seq_write(pair.prim, 128)),
                                   ("small_files", lambda: small_files(pair.prim, 300))):
                    outs = {role: base / f"{name}-{role}.raw" for role in ("mount", "receiver")}
                    spies = [record(pair.mount.pid, seconds, outs["mount"]),
                             record(pair.receiver.pid, seconds, outs["receiver"])]
                    stop = time.monotonic() + seconds
                    worker = threading.Thread(target=lambda: [
                        work() for _ in iter(lambda: time.monotonic() < stop, False)])
                    worker.start()
                    for spy in spies:
                        _, err = spy.communicate()
                        if spy.returncode:
                            print(f"py-spy failed: {err.strip()}")
                    worker.join()
                    for role, out in outs.items():
                        print(f"{name} / {role} (py-spy, {seconds:.0f} s, idle threads excluded):")
                        print("\n".join(summarize(out)) if out.exists() else "  (no samples)")
            finally:
                pair.close()   # unmounts also when py-spy or a workload failed
    finally:
        shutil.rmtree(base, ignore_errors=True)
        os.sync()
