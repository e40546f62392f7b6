"""Durability at barriers through the whole path (issue 19): a FUSE mount over the
primary's directory, the real PrimaryLink with BARRIER durability (the default),
a real Receiver on 127.0.0.1 applying to the secondary's copy.

At every barrier the application makes (fsync of a file or directory, an
O_DSYNC write) the two trees are identical: names, types, content, modes,
owners, times — everything before the barrier in channel order is on the
secondary when the barrier returns. Between barriers nothing is promised, so
nothing is compared."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.lab import wait_until
from replication.fuse_fs import fuse_mount_at
from replication.mount import mount_in_thread, unmount
from replication.primary_link import PrimaryLink
from replication.receiver import Receiver
from replication.sender import Durability, SenderState
from tests.lab.test_fuse_fs import NAMES, assert_same_tree, op_strategy, run_op, tree

pytestmark = [pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
    reason="needs root, /dev/fuse and fusermount3"),
              pytest.mark.usefixtures("fuse_api")]

SECRET = "barrier-durability-secret-0123456789abcdef"


class MirroredMount:
    """The primary's mount with its link in sync with a receiver's copy."""

    def __init__(self, tmp: Path) -> None:
        self.root, self.copy, self.state = tmp / "root", tmp / "copy", tmp / "state"
        for d in (self.root, self.copy):
            d.mkdir()
        self.under_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY)
        self.lost: list[str] = []
        self.in_sync = threading.Event()
        self.receiver = Receiver(str(self.copy), SECRET, "127.0.0.1", 0).start()
        self.link = PrimaryLink(self.under_fd, *self.receiver.address, SECRET, 1, str(self.state),
                                ack_timeout_s=5.0, retry_s=0.05, alone=True,
                                durability=Durability.BARRIER,
                                peer_lost=self.lost.append, on_in_sync=self.in_sync.set)
        self.link.start()
        wait_until("link in sync", self.in_sync.is_set, timeout=30)
        self.mount = mount_in_thread(str(self.root), self.link.sender)

    @property
    def under(self) -> str:
        return f"/proc/self/fd/{self.under_fd}"

    def close(self) -> None:
        self.mount.unmount()
        unmount(str(self.root))
        self.link.stop()
        self.receiver.stop()
        os.close(self.under_fd)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory, fuse_api):   # one mount per API
    m = MirroredMount(tmp_path_factory.mktemp("barrier"))
    try:
        yield m
    finally:
        m.close()
        assert not fuse_mount_at(str(m.root))


def barrier(root: Path, op: tuple) -> bool:
    """The application's barrier; False if its target does not exist."""
    kind, name = op[0], root / op[1]
    try:
        if kind == "fsync":
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif kind == "fsyncdir":
            fd = os.open(name.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:   # an O_DSYNC write: each write is a barrier
            fd = os.open(name, os.O_WRONLY | os.O_DSYNC | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, b"dsync" * 100, op[2])
            finally:
                os.close(fd)
    except OSError as e:
        assert e.errno != errno.EIO, op
        return False
    return True


barrier_strategy = st.one_of(
    st.tuples(st.just("fsync"), st.sampled_from(NAMES)),
    st.tuples(st.just("fsyncdir"), st.sampled_from(NAMES)),
    st.tuples(st.just("dsync"), st.sampled_from(NAMES), st.sampled_from([0, 4096, 70000])))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.one_of(op_strategy, op_strategy, barrier_strategy), min_size=1, max_size=30))
def test_at_every_barrier_both_copies_are_identical(mirrored, ops):
    root = mirrored.root
    for name in os.listdir(root):   # start empty (the removal replicates too)
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    os.makedirs(root / "d" / "f")
    barriers = 0
    for op in ops:
        if op[0] in ("fsync", "fsyncdir", "dsync"):
            if barrier(root, op):
                barriers += 1
                assert_same_tree(tree(mirrored.under), tree(str(mirrored.copy)))
            continue
        try:
            run_op(str(root), op)
        except OSError as e:
            assert e.errno != errno.EIO, op
    # a final barrier of the whole tree (syncfs does not reach a FUSE server:
    # fsync of the root directory is the application's way to ask)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert_same_tree(tree(mirrored.under), tree(str(mirrored.copy)))
    assert mirrored.lost == [] and mirrored.link.sender.state is SenderState.CONNECTED


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_streamed_writes_are_not_waited_for_but_a_barrier_is(tmp_path):
    """The receiver is a process of its own, stopped with SIGSTOP: nothing can
    be acknowledged. The application's writes are answered anyway (streamed);
    its fsync returns only after SIGCONT, once the secondary has every byte."""
    copy, secret_file = tmp_path / "copy", tmp_path / "secret"
    copy.mkdir()
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    port = free_port()
    rx = subprocess.Popen([sys.executable, "-m", "replication", "receive", "--root", str(copy),
                           "--listen", f"127.0.0.1:{port}", "--secret-file", str(secret_file)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    under_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    in_sync, lost = threading.Event(), []
    link = mount = None
    try:
        wait_until("receiver listening", lambda: "event=listening" in rx.stdout.readline(),
                   timeout=30)
        link = PrimaryLink(under_fd, "127.0.0.1", port, SECRET, 1, str(state), ack_timeout_s=30.0,
                           retry_s=0.05, alone=True, durability=Durability.BARRIER,
                           peer_lost=lost.append, on_in_sync=in_sync.set)
        link.start()
        wait_until("link in sync", in_sync.is_set, timeout=30)
        mount = mount_in_thread(str(root), link.sender)
        data = os.urandom(32 * 65536)
        os.kill(rx.pid, signal.SIGSTOP)
        fd = os.open(root / "streamed", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(32):     # answered while the receiver cannot answer anything
                assert os.pwrite(fd, data[i * 65536:(i + 1) * 65536], i * 65536) == 65536
            done = threading.Event()
            threading.Thread(target=lambda: (os.fsync(fd), done.set()), daemon=True).start()
            assert not done.wait(0.5), "fsync returned while the receiver was stopped"
            os.kill(rx.pid, signal.SIGCONT)
            assert done.wait(20), "fsync did not return after the receiver resumed"
        finally:
            os.close(fd)
        assert (copy / "streamed").read_bytes() == data
        assert lost == [] and link.sender.state is SenderState.CONNECTED
    finally:
        if rx.poll() is None:
            os.kill(rx.pid, signal.SIGCONT)
        if mount is not None:
            mount.unmount()
        unmount(str(root))
        if link is not None:
            link.stop()
        os.close(under_fd)
        rx.terminate()
        rx.wait(10)
