"""Where an idle cluster's CPU goes: ``python -m bench idle-profile``.

Builds the checkers bench's cluster (two nodes, a witness, one kv mirror module,
10 checkers; ``--no-checkers`` for none), lets it settle, then for each daemon
(n1 = primary, n2 = secondary, w = witness) measures over the same window:
CPU % (psutil), wakeups/s (voluntary + involuntary context switches, all threads),
a py-spy profile (own-time and inclusive-time hot spots, per thread) and, with
``--strace``, a syscall count (``strace -c -f``; strace slows what it traces, so
that run is separate from the CPU figure).
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from chaos.lab import Lab
from chaos.lab_mirror import MirrorLab

from .checkers_bench import ten_checkers

PY_SPY = Path(sys.executable).with_name("py-spy")
RATE_HZ = 250


def daemon_process(m: MirrorLab, member: str) -> psutil.Process:
    # `ip netns exec` execs the daemon: the lab's Popen pid is the daemon itself
    return psutil.Process(m.cluster.procs[member].pid)


def context_switches(pid: int) -> int:
    """Voluntary + involuntary switches summed over every thread of ``pid``."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def thread_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """(utime, stime) in clock ticks of every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]), int(fields[12]))
    return out


def thread_names(raw: Path) -> dict[int, str]:
    """Native thread id → Python thread name, from py-spy's "thread (TID): NAME" frames."""
    names = {}
    if raw.exists():
        for line in raw.read_text().splitlines():
            first = line.split(";", 1)[0]
            if first.startswith("thread (") and "): " in first:
                tid, _, name = first[len("thread ("):].partition("): ")
                if tid.isdigit():
                    names[int(tid)] = name.rsplit(" ", 1)[0] if name.endswith(tuple("0123456789")) and " " in name else name
    return names


def summarize(raw: Path, top: int, seconds: float) -> list[str]:
    """Own and inclusive time of the busy samples (py-spy leaves out threads that the
    OS shows blocked), as % of one core: comparable with the process's CPU %."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.strip() for f in stack.split(";")]
        if not frames:
            continue
        # py-spy --threads puts the thread first: "thread (0x..)" or "process ..."
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        leaf = frames[-1]
        busy += n
        threads[thread] += n
        own[_short(leaf)] += n
        for f in {_short(f) for f in frames}:
            incl[f] += n
    if busy == 0:
        return ["  (no busy samples)"]
    core = RATE_HZ * seconds / 100.0   # samples per percent of one core
    out = [f"  busy: {busy / core:.2f} % of a core ({busy} samples)"]
    out += [f"  thread {n / core:5.2f}%  {t}" for t, n in threads.most_common(8)]
    out += [f"  own    {n / core:5.2f}%  {f}" for f, n in own.most_common(top)]
    out += [f"  incl   {n / core:5.2f}%  {f}" for f, n in incl.most_common(2 * top)
            if not f.startswith(("thread (", "process "))]
    return out


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def strace_counts(pid: int, seconds: float, out: Path) -> list[str]:
    if shutil.which("strace") is None:
        return ["  (strace not installed)"]
    proc = subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(2)
    proc.wait(10)
    lines = out.read_text().splitlines() if out.exists() else []
    return ["  " + ln for ln in lines[:16]] + (["  " + lines[-1]] if len(lines) > 16 else [])


def profile(m: MirrorLab, members: list[str], seconds: float, top: int, strace: bool,
            base: Path) -> None:
    procs = {name: daemon_process(m, name) for name in members}
    time.sleep(3.0)  # let the start settle
    spies = {}
    for name, p in procs.items():
        p.cpu_percent(None)
        spies[name] = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(p.pid), "--duration", str(int(seconds)),
             "--rate", str(RATE_HZ), "--format", "raw", "--output", str(base / f"{name}.raw"),
             "--threads", "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    switches0 = {name: context_switches(p.pid) for name, p in procs.items()}
    ticks0 = {name: thread_ticks(p.pid) for name, p in procs.items()}
    t0 = time.monotonic()
    for spy in spies.values():
        spy.communicate()
    elapsed = time.monotonic() - t0
    for name, p in procs.items():
        cpu = p.cpu_percent(None)
        rate = (context_switches(p.pid) - switches0[name]) / elapsed
        print(f"{name} (pid {p.pid}, {len(p.threads())} threads): cpu {cpu:.2f} % "
              f"(py-spy attached, a little higher than unprofiled), wakeups {rate:.0f}/s", flush=True)
        raw = base / f"{name}.raw"
        hz = os.sysconf("SC_CLK_TCK")
        names = thread_names(raw)
        ticks = thread_ticks(p.pid)
        per = sorted(((u - ticks0[name].get(tid, (0, 0))[0], k - ticks0[name].get(tid, (0, 0))[1], tid)
                      for tid, (u, k) in ticks.items()), key=lambda x: -(x[0] + x[1]))
        print("  per thread (/proc, % of a core, user+sys): " + ", ".join(
            f"{names.get(tid, tid)} {100 * u / hz / elapsed:.2f}+{100 * k / hz / elapsed:.2f}"
            for u, k, tid in per if u + k > 0))
        print("  py-spy --gil (samples holding the GIL, % of a core):")
        print("\n".join(summarize(raw, top, seconds)) if raw.exists() else "  (py-spy recorded nothing)")
    # CPU without a profiler attached, the bench's figure
    cpu = m.cluster.cpu_percent(seconds, members)
    print("unprofiled cpu: " + ", ".join(f"{n} {v:.2f} %" for n, v in cpu.items()))
    if strace:
        for name, p in procs.items():
            print(f"{name}: syscalls over {seconds / 2:.0f} s (strace -c -f)")
            print("\n".join(strace_counts(p.pid, seconds / 2, base / f"{name}.strace")), flush=True)


def run(seconds: float = 10.0, checkers: bool = True, top: int = 15, strace: bool = False) -> None:
    base = Path(tempfile.mkdtemp(prefix="hcidle-", dir="/var/tmp"))
    try:
        with Lab(["n1", "n2", "w", "c"]) as lab:
            m = MirrorLab(lab, datadir=f"/srv/kvidle{os.getpid()}")
            if checkers:
                m.extra_sections = ten_checkers(m)
            m.start()
            try:
                profile(m, ["n1", "n2", "w"], seconds, top, strace, base)
            finally:
                m.cluster.stop_all()
    finally:
        shutil.rmtree(base, ignore_errors=True)


