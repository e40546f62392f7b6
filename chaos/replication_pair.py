"""A replication pair on two lab hosts: ``python -m replication receive`` on
'sec', ``python -m replication mount`` on 'prim' (sharing the caller's mount
namespace, so the caller reads and writes through the FUSE mount). Used by the
lab tests and ``python -m bench replication``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .lab import wait_until

PORT = 7610
SECRET = "replication-lab-secret-0123456789abcdef01"


class ReplicationPair:
    """Receiver on host 'sec', mount (primary) on host 'prim'."""

    def __init__(self, lab, tmp: Path) -> None:
        self.lab = lab
        self.prim = tmp / "prim"
        self.sec = tmp / "sec"
        self.state = tmp / "state"
        for d in (self.prim, self.sec, self.state):
            d.mkdir(parents=True)
        # The real directory, opened before the mount covers it. Through the mount,
        # a hard link's other names may show kernel-cached attributes for up to
        # 1 s (libfuse's high-level API gives each name its own kernel inode).
        self._prim_fd = os.open(self.prim, os.O_PATH | os.O_DIRECTORY)
        self.prim_real = Path(f"/proc/self/fd/{self._prim_fd}")
        self.secret_file = tmp / "secret"
        self.secret_file.write_text(SECRET)
        self.secret_file.chmod(0o600)
        self.receiver = None
        self.mount = None

    def start_receiver(self):
        self.receiver = self.lab.spawn("sec", [
            sys.executable, "-m", "replication", "receive", "--root", str(self.sec),
            "--listen", f"{self.lab.addr('sec')}:{PORT}", "--secret-file", str(self.secret_file),
            "--status-interval", "0"], name="receiver")
        wait_until("receiver listening", lambda: "event=listening" in self.receiver.log_path.read_text())

    def start_mount(self, wait_in_sync=True):
        before = self._count("event=in_sync")
        self.mount = self.lab.spawn("prim", [
            sys.executable, "-m", "replication", "mount", "--root", str(self.prim),
            "--peer", f"{self.lab.addr('sec')}:{PORT}", "--secret-file", str(self.secret_file),
            "--state", str(self.state), "--ack-timeout", "1", "--status-interval", "0"],
            name="mount", share_mounts=True)
        wait_until("mounted", lambda: self._count("event=mounted") > self._mounts_seen)
        self._mounts_seen += 1
        if wait_in_sync:
            self.wait_in_sync(before)

    _mounts_seen = 0

    def _count(self, marker: str) -> int:
        path = self.lab.workdir / "prim" / "mount.log"
        if not path.exists():
            return 0
        return sum(1 for line in path.read_text().splitlines() if line.startswith(marker))

    def wait_in_sync(self, before: int, timeout: float = 30.0) -> None:
        wait_until("in sync", lambda: self._count("event=in_sync") > before, timeout)

    def in_sync_count(self) -> int:
        return self._count("event=in_sync")

    def stop_mount(self) -> int:
        """Clean stop (SIGTERM): unmount, and the change store is closed trusted."""
        rc = self.mount.stop(timeout=30)
        self.unmount()
        return rc

    def unmount(self):
        subprocess.run(["fusermount3", "-u", "-z", str(self.prim)], capture_output=True)

    def close(self):
        if self.mount is not None and self.mount.alive():
            self.mount.stop()
        self.unmount()
        os.close(self._prim_fd)


class ReplicationNode:
    """One lab host's side of a pair whose roles swap at failovers: a data root
    (opened before any mount covers it, so ``real`` reads the copy itself) and a
    state directory, used by its mount or its receiver. Every process it starts
    is stopped by ``close``."""

    def __init__(self, lab, host: str, base: Path, secret: Path, port: int) -> None:
        self.lab, self.host, self.secret, self.port = lab, host, secret, port
        self.root = base / host / "data"
        self.state = base / host / "state"
        self.root.mkdir(parents=True)
        self.state.mkdir(parents=True)
        self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY)
        self.real = Path(f"/proc/self/fd/{self._fd}")
        self.procs: list = []
        self.mount_proc = None        # the latest of each
        self.receiver_proc = None

    def log(self, name: str) -> str:
        path = self.lab.host_dir(self.host) / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def receive(self, min_epoch: int):
        seen = self.log("receiver").count("event=listening")   # the lab's logs outlive a process
        self.receiver_proc = self.lab.spawn(self.host, [
            sys.executable, "-m", "replication", "receive", "--root", str(self.root),
            "--state", str(self.state), "--listen", f"{self.lab.addr(self.host)}:{self.port}",
            "--secret-file", str(self.secret), "--min-epoch", str(min_epoch),
            "--status-interval", "0"], name="receiver")
        self.procs.append(self.receiver_proc)
        wait_until(f"receiver listening on {self.host}",
                   lambda: self.log("receiver").count("event=listening") > seen, timeout=30)
        return self.receiver_proc

    def mount(self, peer: str, epoch: int, alone: bool, extra: tuple[str, ...] = ()):
        """Mount as primary at ``epoch``, replicating to the receiver on host ``peer``;
        ``extra``: more ``python -m replication mount`` options (e.g. --bandwidth)."""
        seen = self.log("mount").count("event=mounted")
        self.mount_proc = self.lab.spawn(self.host, [
            sys.executable, "-m", "replication", "mount", "--root", str(self.root),
            "--peer", f"{self.lab.addr(peer)}:{self.port}", "--secret-file", str(self.secret),
            "--state", str(self.state), "--epoch", str(epoch), "--ack-timeout", "1",
            "--status-interval", "0", *(["--alone"] if alone else []), *extra],
            name="mount", share_mounts=True)
        self.procs.append(self.mount_proc)
        wait_until(f"mounted on {self.host}",
                   lambda: self.log("mount").count("event=mounted") > seen, timeout=30)
        return self.mount_proc

    def in_sync_lines(self) -> list[str]:
        text = self.log("mount")
        text = text[:text.rfind("\n") + 1]      # a line still being written is not one yet
        return [line for line in text.splitlines() if "event=in_sync peer" in line]

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.root)], capture_output=True, check=False)

    def close(self) -> None:
        for p in self.procs:
            if p.alive():
                p.stop()
        self.unmount()
        os.close(self._fd)


def node_pair(lab, base: Path, secret: str, port: int) -> tuple[ReplicationNode, ReplicationNode]:
    """Lab hosts "a" and "b" as the two sides of a role-swapping pair sharing one
    secret file (mode 0600) under ``base``; close both when done."""
    path = base / "secret"
    path.write_text(secret)
    path.chmod(0o600)
    return ReplicationNode(lab, "a", base, path, port), ReplicationNode(lab, "b", base, path, port)
