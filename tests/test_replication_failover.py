"""Change of primary with the activity log, end to end: real mounts and
receivers on two lab hosts, the old primary's mount SIGKILLed mid-stream, the
other side promoted (``prepare_promotion``, as the mirror module does), more
writes there, then the old primary returns as a receiver."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.lab import wait_until
from replication import activity_log
from tests.conftest import needs_root
from tests.test_replication_lab import Writer, assert_records, assert_same

pytestmark = [needs_root, pytest.mark.lab]

PORT = 7620
SECRET = "failover-lab-secret-0123456789abcdef0123"
FILES = 40
FILE_SIZE = 1 << 20


class Node:
    def __init__(self, lab, host: str, tmp: Path, secret: Path) -> None:
        self.lab, self.host, self.secret = lab, host, secret
        self.root = tmp / host / "data"
        self.state = tmp / host / "state"
        self.root.mkdir(parents=True)
        self.state.mkdir(parents=True)
        self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY)
        self.real = Path(f"/proc/self/fd/{self._fd}")
        self.procs: list = []

    def log(self, name: str) -> str:
        path = self.lab.host_dir(self.host) / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def receive(self, min_epoch: int):
        p = self.lab.spawn(self.host, [
            sys.executable, "-m", "replication", "receive", "--root", str(self.root),
            "--state", str(self.state), "--listen", f"{self.lab.addr(self.host)}:{PORT}",
            "--secret-file", str(self.secret), "--min-epoch", str(min_epoch),
            "--status-interval", "0"], name="receiver")
        wait_until("receiver listening", lambda: "event=listening" in self.log("receiver"))
        self.procs.append(p)
        return p

    def mount(self, peer: str, epoch: int, alone: bool):
        seen = self.log("mount").count("event=mounted")
        p = self.lab.spawn(self.host, [
            sys.executable, "-m", "replication", "mount", "--root", str(self.root),
            "--peer", f"{self.lab.addr(peer)}:{PORT}", "--secret-file", str(self.secret),
            "--state", str(self.state), "--epoch", str(epoch), "--ack-timeout", "1",
            "--status-interval", "0", *(["--alone"] if alone else [])],
            name="mount", share_mounts=True)
        wait_until("mounted", lambda: self.log("mount").count("event=mounted") > seen)
        self.procs.append(p)
        return p

    def in_sync_lines(self) -> list[str]:
        return [line for line in self.log("mount").splitlines() if "event=in_sync peer" in line]

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.root)], capture_output=True)

    def close(self) -> None:
        for p in self.procs:
            if p.alive():
                p.stop()
        self.unmount()
        os.close(self._fd)


@pytest.fixture
def nodes(make_lab, tmp_path):
    lab = make_lab(["a", "b"])
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    a, b = Node(lab, "a", tmp_path, secret), Node(lab, "b", tmp_path, secret)
    yield a, b
    a.close()
    b.close()


def crash_a_then_promote_b(a: Node, b: Node):
    """a primary (epoch 1) in sync with b; a's mount killed while a stream of
    writes runs; b promoted (epoch 2) and written to; returns the acked records."""
    for i in range(FILES):
        (a.root / f"f{i:02d}").write_bytes(os.urandom(FILE_SIZE))
    b.receive(min_epoch=1)
    a.mount(peer="b", epoch=1, alone=False)
    wait_until("a in sync", lambda: a.in_sync_lines(), timeout=60)
    writer = Writer(a.root / "stream")
    writer.start()
    wait_until("writes", lambda: len(writer.acked) > 300, timeout=30)
    a.procs[-1].kill()                       # the old primary's mount dies mid-stream
    writer.join(10)
    assert writer.error is not None
    acked = list(writer.acked)
    a.unmount()
    b.procs[0].stop()                        # b stops receiving, to become primary
    assert activity_log.prepare_promotion(str(b.state)) == 1
    b.mount(peer="a", epoch=2, alone=True)
    with open(b.root / "f07", "r+b") as f:   # the new primary writes before a returns
        f.seek(300_000)
        f.write(b"new primary " * 1000)
    (b.root / "made-on-b").write_bytes(b"hello")
    return acked


def in_sync_figures(node: Node) -> dict[str, str]:
    line = node.in_sync_lines()[-1]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_failover_resyncs_only_activity_regions_and_dirty_marks(nodes):
    a, b = nodes
    acked = crash_a_then_promote_b(a, b)
    a.receive(min_epoch=2)                   # the old primary returns as secondary
    wait_until("b in sync with a", lambda: b.in_sync_lines(), timeout=60)
    assert "event=activity_log_used" in b.log("mount"), b.log("mount")
    figures = in_sync_figures(b)
    tree_size = FILES * FILE_SIZE + (a.real / "stream").stat().st_size
    assert figures["force_digests"] == "False"
    assert int(figures["bytes_read"]) < tree_size / 4, (figures, tree_size)
    assert_same(b.real, a.real)
    assert_records(b.real / "stream", acked)
    assert (a.real / "made-on-b").read_bytes() == b"hello"


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_failover_falls_back_to_full_digest_without_a_trustworthy_log(nodes, damage):
    a, b = nodes
    acked = crash_a_then_promote_b(a, b)
    path = a.state / activity_log.AL_FILE
    if damage == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x55
        path.write_bytes(bytes(data))
    a.receive(min_epoch=2)
    wait_until("b in sync with a", lambda: b.in_sync_lines(), timeout=90)
    assert "event=activity_log_refused" in b.log("mount")
    figures = in_sync_figures(b)
    assert figures["force_digests"] == "True"
    assert int(figures["bytes_read"]) >= FILES * FILE_SIZE
    assert_same(b.real, a.real)
    assert_records(b.real / "stream", acked)
