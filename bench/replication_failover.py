"""Resync after a failover, with the activity log and without it (issue 3,
DESIGN.md "In-flight writes"): ``failover_resync_s`` vs ``failover_resync_full_s``.

Only the replication package, on two lab hosts (no Raft). One pair, the
roles swapping at every failover:

1. the primary (``python -m replication mount``) is in sync with the other
   host's receiver, over a working set of files; a writer runs through the
   mount: a circular journal of 4 KiB records plus random 4 KiB updates in a
   few hot files (locality, as a database has);
2. the primary's mount is SIGKILLed mid-writes; the receiver is stopped and
   its side promoted (``activity_log.prepare_promotion``, then a mount with
   the next epoch, ``--alone``), as the mirror module does;
3. the new primary writes some more (random 64 KiB updates, a new file);
4. page caches of both copies are dropped (fdatasync + POSIX_FADV_DONTNEED
   per file: as after a restart, and as for a data set larger than memory);
5. the old primary returns as receiver (``--state``: it reports its activity
   log), and the new primary's resync to identical copies is timed: the
   ``seconds`` of its ``event=in_sync`` line (reintegration proper, as
   ``resync_1pct_s``), and from the receiver's start (``wall``);
6. ``python -m replication verify`` must find the copies identical.

Trials alternate: with the activity log, then without it (the returning
node's log removed first: the new primary refuses to trust it and compares
every block by digest, the fallback); each pair of trials on a fresh pair
(``measure_failover_resync`` says why). Medians per kind; bytes sent and
read are the reintegration's own figures.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chaos.lab import Lab, wait_until
from chaos.replication_pair import ReplicationNode
from replication import activity_log

MiB = 1 << 20
PORT = 7630
SECRET = "failover-bench-secret-0123456789abcdef0123"
JOURNAL = "journal"
JOURNAL_RECORDS = 4096          # 16 MiB of 4 KiB records, written round and round
HOT_FILES = 4
DEFAULT_FILE_MB = 4                # as the activity log's region: one region a file

log = logging.getLogger("hacluster.bench.replication_failover")


class HotWriter(threading.Thread):
    """Through the primary's mount until it fails: 4 KiB journal records
    (circular) and, every fourth write, 4 KiB at a random offset of a hot file."""

    def __init__(self, root: Path, hot: list[str], file_size: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.root, self.hot, self.file_size = root, hot, file_size
        self.rng = random.Random(seed)
        self.writes = 0
        self.error: OSError | None = None

    def run(self) -> None:
        data = os.urandom(4096)
        fds: dict[str, int] = {}
        try:
            for name in [JOURNAL, *self.hot]:
                fds[name] = os.open(self.root / name, os.O_WRONLY)
            i = 0
            while True:
                os.pwrite(fds[JOURNAL], data, (i % JOURNAL_RECORDS) * 4096)
                if i % 4 == 3:
                    name = self.rng.choice(self.hot)
                    os.pwrite(fds[name], data, self.rng.randrange(self.file_size // 4096) * 4096)
                i += 1
                self.writes = i
        except OSError as e:           # the mount died: what the bench waits for
            self.error = e
        finally:
            for fd in fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass


def make_working_set(root: Path, total_mb: int, file_mb: int) -> list[str]:
    """``total_mb`` of random data in files of ``file_mb``, plus the journal;
    returns the working-set file names."""
    names = []
    (root / "ws").mkdir()
    for i in range(max(1, total_mb // file_mb)):
        name = f"ws/f{i:03d}.bin"
        with open(root / name, "wb") as f:
            f.writelines(os.urandom(MiB) for _ in range(file_mb))
        names.append(name)
    with open(root / JOURNAL, "wb") as f:
        f.truncate(JOURNAL_RECORDS * 4096)
    return names


def write_on_new_primary(root: Path, names: list[str], file_size: int, tag: str,
                         rng: random.Random) -> int:
    """What the new primary writes before the old one returns; bytes written."""
    written = 0
    for _ in range(16):
        with open(root / rng.choice(names), "r+b") as f:
            f.seek(rng.randrange(0, file_size - 65536))
            f.write(os.urandom(65536))
            os.fsync(f.fileno())
        written += 65536
    with open(root / f"made-on-{tag}", "wb") as f:
        f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    return written + MiB


def drop_page_cache(root: Path) -> None:
    """Make every file of ``root`` cold: its pages written back, then dropped."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def in_sync_figures(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def verify(lab: Lab, primary: ReplicationNode, receiver: ReplicationNode, epoch: int) -> str:
    """The package's verify, run on the primary's host; raises unless identical."""
    res = lab.run(primary.host, [
        sys.executable, "-m", "replication", "verify", "--root", str(primary.root),
        "--peer", f"{lab.addr(receiver.host)}:{PORT}", "--secret-file", str(primary.secret),
        "--epoch", str(epoch)], check=False, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"failover bench: verify after resync at epoch {epoch} found the "
                           f"copies different (rc {res.returncode}): "
                           f"{(res.stdout + res.stderr).strip()[-2000:]}")
    return res.stdout.strip()


@dataclass
class FailoverTrial:
    activity_log: bool
    resync_s: float
    wall_s: float
    bytes_sent: int
    bytes_read: int
    writes_before_kill: int
    new_primary_bytes: int


class FailoverBench:
    """Two nodes and the state of the running pair between failovers."""

    def __init__(self, lab: Lab, base: Path, working_set_mb: int, file_mb: int,
                 writer_s: float, seed: int = 11) -> None:
        secret = base / "secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        hosts = list(lab.hosts)[:2]
        self.lab = lab
        self.primary = ReplicationNode(lab, hosts[0], base, secret, PORT)
        self.secondary = ReplicationNode(lab, hosts[1], base, secret, PORT)
        self.file_size = file_mb * MiB
        self.writer_s = writer_s
        self.rng = random.Random(seed)
        self.epoch = 1
        self.names = make_working_set(self.primary.root, working_set_mb, file_mb)
        self.hot = self.names[:HOT_FILES]

    def start(self) -> None:
        """First sync of the working set (a full copy; not measured)."""
        seen = len(self.primary.in_sync_lines())   # the lab's logs outlive a pair
        self.secondary.receive(min_epoch=self.epoch)
        self.primary.mount(self.secondary.host, self.epoch, alone=False)
        wait_until("first sync", lambda: len(self.primary.in_sync_lines()) > seen, timeout=300)

    def failover(self, use_activity_log: bool) -> FailoverTrial:
        old, new = self.primary, self.secondary
        writer = HotWriter(old.root, self.hot, self.file_size, self.rng.randrange(1 << 30))
        writer.start()
        time.sleep(self.writer_s)
        if writer.writes == 0:
            raise RuntimeError(f"failover bench: no write through {old.host}'s mount "
                               f"in {self.writer_s} s")
        old.mount_proc.kill()                     # SIGKILL mid-writes
        writer.join(30)
        if writer.is_alive() or writer.error is None:
            raise RuntimeError("failover bench: the writer did not fail when the mount died")
        old.unmount()
        new.receiver_proc.stop()                  # to become primary
        after = activity_log.prepare_promotion(str(new.state))
        if after != self.epoch:
            raise RuntimeError(f"failover bench: {new.host} was not an in-sync receiver of "
                               f"epoch {self.epoch} (prepare_promotion gave {after})")
        self.epoch += 1
        new.mount(old.host, self.epoch, alone=True)
        new_bytes = write_on_new_primary(new.root, self.names, self.file_size,
                                         f"{new.host}-{self.epoch}", self.rng)
        if not use_activity_log:
            (old.state / activity_log.AL_FILE).unlink()
        drop_page_cache(old.real)
        drop_page_cache(new.real)
        seen = len(new.in_sync_lines())
        started = time.monotonic()
        old.receive(min_epoch=self.epoch)
        wait_until(f"{new.host} in sync with {old.host}",
                   lambda: len(new.in_sync_lines()) > seen, timeout=600, interval=0.005)
        wall = time.monotonic() - started
        figures = in_sync_figures(new.in_sync_lines()[-1])
        expected = "False" if use_activity_log else "True"
        if figures.get("force_digests") != expected:
            raise RuntimeError(f"failover bench: resync at epoch {self.epoch} had "
                               f"force_digests={figures.get('force_digests')}, expected {expected} "
                               f"(activity log {'used' if use_activity_log else 'removed'})")
        verify(self.lab, new, old, self.epoch)
        self.primary, self.secondary = new, old
        trial = FailoverTrial(use_activity_log, float(figures["seconds"]), wall,
                              int(figures["bytes_sent"]), int(figures["bytes_read"]),
                              writer.writes, new_bytes)
        log.info("event=failover_trial epoch=%d activity_log=%s resync_s=%.3f wall_s=%.3f "
                 "bytes_sent=%d bytes_read=%d writes=%d", self.epoch, use_activity_log,
                 trial.resync_s, wall, trial.bytes_sent, trial.bytes_read, writer.writes)
        return trial

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()


def measure_failover_resync(lab: Lab, base: Path, *, trials: int = 3, working_set_mb: int = 200,
                            file_mb: int = DEFAULT_FILE_MB, writer_s: float = 1.5) -> list[FailoverTrial]:
    """``trials`` failovers of each kind, alternating: each trial is a fresh
    pair failed over twice, first with the activity log, then (back the other
    way) without it. Fresh, because a node that crashed as primary keeps its
    change store untrusted (sticky, dirty_bitmap.py) through its time as an
    in-sync receiver: promoted again, it compares every block by digest even
    with the activity log merged; a first failover measures the log itself."""
    if trials < 1 or file_mb < 1 or working_set_mb < file_mb or writer_s <= 0:
        raise ValueError(f"failover bench: need trials >= 1, file_mb >= 1, working_set_mb >= "
                         f"file_mb, writer_s > 0; got {trials}, {file_mb}, {working_set_mb}, "
                         f"{writer_s}")
    out: list[FailoverTrial] = []
    for i in range(trials):
        where = base / f"pair{i}"
        where.mkdir(parents=True)
        bench = FailoverBench(lab, where, working_set_mb, file_mb, writer_s, seed=11 + i)
        try:
            bench.start()
            out.append(bench.failover(use_activity_log=True))
            out.append(bench.failover(use_activity_log=False))
        finally:
            bench.close()
        shutil.rmtree(where, ignore_errors=True)
    return out


def summarize(trials: list[FailoverTrial], working_set_mb: int, file_mb: int) -> dict[str, Any]:
    med = statistics.median
    al = [t for t in trials if t.activity_log]
    full = [t for t in trials if not t.activity_log]
    r: dict[str, Any] = {
        "failover_working_set_mb": working_set_mb,
        "failover_file_mb": file_mb,
        "failover_trials": len(al),
        "failover_resync_s": med(t.resync_s for t in al),
        "failover_resync_full_s": med(t.resync_s for t in full),
        "failover_resync_wall_s": med(t.wall_s for t in al),
        "failover_resync_full_wall_s": med(t.wall_s for t in full),
        "failover_resync_bytes_sent": med(t.bytes_sent for t in al),
        "failover_resync_full_bytes_sent": med(t.bytes_sent for t in full),
        "failover_resync_bytes_read": med(t.bytes_read for t in al),
        "failover_resync_full_bytes_read": med(t.bytes_read for t in full),
    }
    r["failover_resync_ratio"] = r["failover_resync_s"] / r["failover_resync_full_s"]
    r["failover_per_trial"] = [asdict(t) for t in trials]
    return r


def report_lines(r: dict[str, Any]) -> list[str]:
    def mb(n: float) -> str:
        return f"{n / 1e6:.1f} MB"

    full_s, al_s = r["failover_resync_full_s"], r["failover_resync_s"]
    sent, full_sent = r["failover_resync_bytes_sent"], r["failover_resync_full_bytes_sent"]
    read, full_read = r["failover_resync_bytes_read"], r["failover_resync_full_bytes_read"]
    of = f"{r['failover_working_set_mb']} MiB, median of {r['failover_trials']}"
    return [
        f"failover_resync_full_s: {full_s:.3f} s (baseline: full digest compare; {of}; "
        + f"wall {r['failover_resync_full_wall_s']:.3f} s)",
        f"failover_resync_s: {al_s:.3f} s ({r['failover_resync_ratio']:.3f} x vs "
        + f"failover_resync_full_s; wall {r['failover_resync_wall_s']:.3f} s)",
        f"failover_resync_bytes_sent: {mb(sent)} ({sent / max(1, full_sent):.2f} x vs full "
        + f"{mb(full_sent)})",
        f"failover_resync_bytes_read: {mb(read)} ({read / max(1, full_read):.3f} x vs full "
        + f"{mb(full_read)})",
    ]
