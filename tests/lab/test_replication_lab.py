"""Replication end to end: a real FUSE mount on one lab host, a real receiver on
another, real processes killed with SIGKILL."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.lab import wait_until as _wait
from chaos.replication_pair import ReplicationPair as Pair
from replication.fuse_fs import fuse_mount_at
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

def tree(root: Path) -> dict[str, tuple]:
    """Everything the copies must agree on, per path (the root's own times excepted)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            s = os.lstat(full)
            if stat.S_ISREG(s.st_mode):
                with open(full, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(s.st_mode):
                content = os.readlink(full)
            else:
                content = None
            out[rel] = (stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid,
                        s.st_size if not stat.S_ISDIR(s.st_mode) else 0, s.st_mtime_ns, content)
    return out


def assert_same(a: Path, b: Path) -> None:
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    fields = ("type", "mode", "uid", "gid", "size", "mtime_ns", "content")
    diffs = {p: {f: (x, y) for f, x, y in zip(fields, ta[p], tb[p]) if x != y}
             for p in ta if ta[p] != tb[p]}
    assert diffs == {}, f"copies differ (primary, secondary): {diffs}"


@pytest.fixture
def pair(make_lab, tmp_path):
    lab = make_lab(["prim", "sec"])
    p = Pair(lab, tmp_path)
    yield p
    p.close()


# ---- property: random operation sequences through the mount ----------------------------

NAMES = st.sampled_from(["a", "b", "c", "d/x", "d/y", "d/e/z", "e"])
ABSOLUTE_TARGET = "/proc/hacluster-test-absolute-target"   # procfs: nothing can be made there
DATA = st.one_of(st.binary(max_size=64), st.integers(1, 3 << 20).map(lambda n: os.urandom(n)))
# Every example starts from these, so that most ops find something to act on.
SEED_FILES = {"a": 5000, "b": 0, "d/x": 1 << 20, "d/e/z": 70_000}
OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), NAMES, st.integers(0, 4 << 20), DATA),
    st.tuples(st.just("truncate"), NAMES, st.integers(0, 5 << 20)),
    st.tuples(st.just("rename"), NAMES, NAMES),
    st.tuples(st.just("unlink"), NAMES),
    st.tuples(st.just("mkdir"), NAMES),
    st.tuples(st.just("rmdir"), NAMES),
    # An absolute target is replicated literally; it must never lead anywhere real:
    # write and truncate below follow symlinks (a link to /etc/passwd truncated the
    # host's /etc/passwd once, breaking everything that looks users up).
    st.tuples(st.just("symlink"), NAMES, st.sampled_from(["../a", "target", ABSOLUTE_TARGET])),
    st.tuples(st.just("link"), NAMES, NAMES),
    st.tuples(st.just("chmod"), NAMES, st.sampled_from([0o600, 0o644, 0o755, 0o4755])),
    st.tuples(st.just("chown"), NAMES, st.sampled_from([0, 1000, 65534])),
    st.tuples(st.just("utime"), NAMES, st.integers(0, 2 ** 33)),
    st.tuples(st.just("fsync"), NAMES),
), min_size=5, max_size=30)


def apply_op(root: Path, op) -> None:
    kind, name = op[0], op[1]
    path = root / name
    try:
        if kind in ("write", "truncate", "mkdir", "symlink", "link", "rename"):
            os.makedirs(path.parent, exist_ok=True)
        if kind == "write":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, op[3], op[2])
            finally:
                os.close(fd)
        elif kind == "truncate":
            os.truncate(path, op[2])
        elif kind == "rename":
            os.rename(path, root / op[2])
        elif kind == "unlink":
            os.unlink(path)
        elif kind == "mkdir":
            os.mkdir(path, 0o755)
        elif kind == "rmdir":
            os.rmdir(path)
        elif kind == "symlink":
            os.symlink(op[2], path)
        elif kind == "link":
            os.link(path, root / op[2])
        elif kind == "chmod":
            if not path.is_symlink():  # Linux has no lchmod
                os.chmod(path, op[2])

        elif kind == "chown":
            os.chown(path, op[2], op[2], follow_symlinks=False)
        elif kind == "utime":
            os.utime(path, ns=(op[2], op[2]), follow_symlinks=False)
        elif kind == "fsync":
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError:
        pass  # the same refusal happens to an application; nothing is replicated


def test_random_operation_sequences_leave_identical_trees(pair):
    pair.start_receiver()
    pair.start_mount()
    counter = iter(range(10 ** 6))

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(OPS)
    def run(ops):
        top = pair.prim / f"ex{next(counter)}"
        os.mkdir(top)
        for name, size in SEED_FILES.items():
            apply_op(top, ("write", name, 0, os.urandom(size)))
        for op in ops:
            apply_op(top, op)
        # A barrier (fsync of the directory) returns only once the receiver applied
        # everything before it: the trees are identical then.
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        assert_same(pair.prim_real, pair.sec)

    run()


# ---- crashes -------------------------------------------------------------------------------

class Writer(threading.Thread):
    """Appends numbered 4 KiB records; remembers which writes were acknowledged.
    The file is opened O_DSYNC: each write is a barrier, answered once it is
    durable on both copies (an application that asks for durability)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.acked: list[int] = []
        self.stop = threading.Event()
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_DSYNC, 0o644)
        except OSError as e:
            self.error = e
            return
        i = 0
        while not self.stop.is_set():
            try:
                os.pwrite(fd, record(i), i * 4096)
            except OSError as e:
                self.error = e
                break
            self.acked.append(i)
            i += 1
        try:
            os.close(fd)
        except OSError:
            pass


def record(i: int) -> bytes:
    return (f"record {i:08d} ".encode() * 256)[:4096]


def assert_records(path: Path, acked: list[int]) -> None:
    data = path.read_bytes()
    for i in acked:
        assert data[i * 4096:(i + 1) * 4096] == record(i), f"acknowledged record {i} missing in {path}"


def test_receiver_killed_mid_stream_then_reintegrated(pair):
    pair.start_receiver()
    pair.start_mount()
    w = Writer(pair.prim / "stream")
    w.start()
    _wait("writes", lambda: len(w.acked) > 200)
    pair.receiver.kill()
    _wait("writes go on alone", lambda: (n := len(w.acked)) and time.sleep(0.3) is None
          and len(w.acked) > n + 50)
    before = pair.in_sync_count()
    pair.start_receiver()
    pair.wait_in_sync(before)
    _wait("more writes replicated", lambda: len(w.acked) > 0 and time.sleep(0.2) is None)
    w.stop.set()
    w.join(10)
    assert w.error is None
    assert_same(pair.prim_real, pair.sec)
    assert_records(pair.sec / "stream", w.acked)


def test_sender_killed_mid_stream_then_reintegrated(pair):
    pair.start_receiver()
    pair.start_mount()
    (pair.prim / "other").write_bytes(os.urandom(300_000))
    w = Writer(pair.prim / "stream")
    w.start()
    _wait("writes", lambda: len(w.acked) > 200)
    pair.mount.kill()
    w.join(10)
    assert w.error is not None  # the mount is gone: the application sees it
    acked = list(w.acked)
    pair.unmount()
    # Acknowledged writes reached the receiver before the application was answered.
    assert_records(pair.sec / "stream", acked)
    pair.start_mount()  # crash: the store is not trusted, digests are compared
    assert_same(pair.prim_real, pair.sec)
    assert_records(pair.prim / "stream", acked)


def test_sigterm_stops_the_mount_cleanly_and_leaves_its_store_trusted(pair):
    """`python -m replication mount` is stopped with SIGTERM (as an administrator
    trying it alone would): it unmounts, exits 0, and closes its change store clean,
    so the next start can trust the bitmaps. (libfuse's own handler used to catch
    the signal on a thread that never ended the loop: SIGKILL after the timeout.)"""
    pair.start_receiver()
    pair.start_mount()
    (pair.prim / "f").write_bytes(os.urandom(100_000))
    assert pair.mount.stop(timeout=10) == 0
    assert not fuse_mount_at(str(pair.prim))
    store = json.loads((pair.state / "changes" / "store.json").read_text())
    assert store["open"] is False and store["trusted"] is True, store
