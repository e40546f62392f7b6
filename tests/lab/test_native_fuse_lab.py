"""replication/native_fuse.py and _dataplane.c: read and getattr served in C, through
real FUSE mounts on tmp dirs. The same tree read through a mount served in C and through
one served in Python gives the same bytes and the same attributes; the C functions are
really the ones answering (their counters move); a second mount in the same process
falls back to Python and leaves the first one's directory alone."""
from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication import native_fuse
from replication.activity_log import ActivityLog
from replication.fuse_fs import fuse_mount_at
from replication.mount import mount_in_thread
from replication.ops import OpKind
from tests.lab.test_fuse_fs import (MirrorReplicator, Setup, assert_same_tree, op_strategy,
                                    run_op, tree)

pytestmark = [pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
    reason="needs root, /dev/fuse and fusermount3"),
              pytest.mark.usefixtures("fuse_api")]


class Accepting:
    """A replicator that accepts every op at once (nothing to replicate here: these
    tests are about the requests that change nothing)."""

    def submit(self, op):
        return None

    def wait(self, ticket) -> None:
        return None


@pytest.fixture
def sample_tree():
    base = Path(tempfile.mkdtemp(prefix="hc-native-", dir="/var/tmp"))
    root = base / "root"
    root.mkdir()
    (root / "dir" / "sub").mkdir(parents=True)
    rnd = os.urandom(3 * 1024 * 1024 + 17)       # not a multiple of any page or request
    (root / "big.bin").write_bytes(rnd)
    (root / "dir" / "small.txt").write_text("hello\n")
    (root / "dir" / "empty").write_bytes(b"")
    os.symlink("dir/small.txt", root / "link")
    os.chmod(root / "dir" / "small.txt", 0o640)
    os.mkfifo(root / "dir" / "fifo")
    try:
        yield base, root, {"big.bin": rnd, "dir/small.txt": b"hello\n", "dir/empty": b""}
    finally:
        shutil.rmtree(base, ignore_errors=True)


ATTRS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns",
         "st_ctime_ns", "st_blocks")
NAMES = ("", "big.bin", "dir", "dir/sub", "dir/small.txt", "dir/empty", "dir/fifo", "link")


def observe(mnt: Path, contents: dict[str, bytes]) -> dict:
    """What a reader sees through the mount: every name's lstat, the contents of the
    files (read in odd-sized pieces, and whole), fstat of an open file, a missing name."""
    seen: dict = {}
    for name in NAMES:
        st = os.lstat(mnt / name) if name else os.stat(mnt)
        seen[f"stat:{name}"] = tuple(getattr(st, a) for a in ATTRS)
    for name in contents:
        with open(mnt / name, "rb", buffering=0) as f:
            pieces = []
            while chunk := f.read(12345):
                pieces.append(chunk)
            seen[f"read:{name}"] = b"".join(pieces)
            seen[f"fstat:{name}"] = tuple(getattr(os.fstat(f.fileno()), a) for a in ATTRS)
            seen[f"pread:{name}"] = os.pread(f.fileno(), 4096, max(0, len(contents[name]) - 100))
    with pytest.raises(OSError) as missing:
        os.lstat(mnt / "dir" / "nothing")
    seen["missing"] = missing.value.errno
    seen["readlink"] = os.readlink(mnt / "link")
    return seen


def test_the_extension_is_built():
    """make test installs a compiler and libfuse3's headers: the package's own build
    must have made it (setup.py)."""
    assert native_fuse.available(), native_fuse.why_unavailable()


@pytest.mark.skipif(not native_fuse.available(), reason="replication._dataplane is not built")
def test_c_and_python_answer_the_same(sample_tree):
    base, root, contents = sample_tree
    views = {}
    for native in (True, False):
        before = native_fuse.counters()
        m = mount_in_thread(str(root), Accepting(), native=native)
        try:
            views[native] = observe(root, contents)
        finally:
            m.unmount()
        after = native_fuse.counters()
        moved = {k: after[k] - before[k] for k in after}
        if native:
            assert moved["read"] > 0 and moved["getattr"] > 0, moved
            assert moved["open"] > 0 and moved["release"] == moved["open"], moved
        else:
            assert not any(moved.values()), moved
    assert views[True]["missing"] == errno.ENOENT
    for name, data in contents.items():
        assert views[True][f"read:{name}"] == data
    assert stat.S_ISLNK(views[True]["stat:link"][0]) and stat.S_ISFIFO(views[True]["stat:dir/fifo"][0])
    assert views[True] == views[False]


O_PATH = 0o10000000


def fds_on(path: str) -> int:
    """Descriptors of this process open on ``path`` (the mount's own, in a test), not
    counting O_PATH ones (the low-level API holds one per inode the kernel knows)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != path:
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
            n += not flags & O_PATH
        except OSError:
            pass
    return n


@pytest.mark.skipif(not native_fuse.available(), reason="replication._dataplane is not built")
def test_handles_opened_in_c_are_adopted_by_python_when_it_needs_them(streaming):
    """Opens are served in C; a handle Python needs (an fsync, a write C does not
    serve) is adopted with its open flags and then released by Python; one nobody
    adopted is released in C. No descriptor is left behind either way,
    and a read-only mount refuses writable opens (Python's EROFS)."""
    rep = StreamingMirror(streaming.mirror, streaming.state)
    streaming.mount(rep, native=True)
    with open(streaming.p("f"), "wb") as f:
        f.write(b"a" * 8192)
    under = streaming.p("f")    # the real file's name is the mount's: the same path
    before = native_fuse.counters()
    for _ in range(50):                           # PostgreSQL's start after a crash
        fd = os.open(streaming.p("f"), os.O_RDONLY)
        os.close(fd)
        fd = os.open(streaming.p("f"), os.O_RDWR)
        os.fsync(fd)                              # Python's: adopts the handle
        os.close(fd)
    moved = {k: native_fuse.counters()[k] - before[k] for k in before}
    assert moved["open"] == 100 and moved["release"] == 50, moved
    # an O_SYNC handle opened in C: its write is Python's, with the flags adopted
    fd = os.open(streaming.p("f"), os.O_RDWR | os.O_SYNC)
    try:
        os.pwrite(fd, b"b" * 4096, 0)
    finally:
        os.close(fd)
    with open(streaming.p("f"), "r+b") as f:      # opened in C, written in C or Python
        f.seek(4096)
        f.write(b"c" * 4096)
    barrier(streaming.root)
    assert fds_on(under) == 0                     # every handle closed by whoever had it
    assert not rep.errors
    assert_same_tree(tree(streaming.under), tree(streaming.mirror))
    assert (Path(streaming.mirror) / "f").read_bytes() == b"b" * 4096 + b"c" * 4096


@pytest.mark.skipif(not native_fuse.available(), reason="replication._dataplane is not built")
def test_a_read_only_mount_opens_for_reading_in_c_and_refuses_writing(sample_tree):
    base, root, contents = sample_tree
    m = mount_in_thread(str(root), Accepting(), native=True, read_only=True)
    try:
        before = native_fuse.counters()
        assert (root / "dir" / "small.txt").read_bytes() == b"hello\n"
        assert native_fuse.counters()["open"] == before["open"] + 1
        with pytest.raises(OSError) as info:
            os.open(root / "dir" / "small.txt", os.O_WRONLY)
        assert info.value.errno == errno.EROFS
    finally:
        m.unmount()


@pytest.mark.skipif(not native_fuse.available(), reason="replication._dataplane is not built")
def test_a_second_mount_in_the_process_is_served_in_python(sample_tree):
    base, root, contents = sample_tree
    other = base / "other"
    other.mkdir()
    (other / "only-here").write_bytes(b"other tree\n")
    first = mount_in_thread(str(root), Accepting(), native=None)
    try:
        second = mount_in_thread(str(other), Accepting(), native=None)
        try:
            before = native_fuse.counters()
            assert (other / "only-here").read_bytes() == b"other tree\n"
            assert not (other / "big.bin").exists()
            assert native_fuse.counters() == before   # served in Python
            # the first mount's C functions still look under the first directory
            assert (root / "dir" / "small.txt").read_bytes() == b"hello\n"
            assert not (root / "only-here").exists()
            assert native_fuse.counters()["read"] > before["read"]
        finally:
            second.unmount()
    finally:
        first.unmount()


# ---- writes served in C (streamed, barrier durability) --------------------------------------

class StreamingMirror(MirrorReplicator):
    """The test_fuse_fs mirror (ops applied in submit order on a thread of its own, to
    a mirror whose clock is hostile), as a replicator that streams writes: C serves
    them, and an activity log whose keys go cold quickly makes pins come and go."""

    streams_writes = True

    def __init__(self, mirror: str, state: str, fail_writes_after: int | None = None,
                 cold_s: float = 0.2) -> None:
        super().__init__(mirror)
        self.activity = ActivityLog(state, 1, region_size=64 << 10, cold_s=cold_s)
        self.fail_writes_after = fail_writes_after

    def submit(self, op):
        if self.fail_writes_after is not None and op.kind is OpKind.WRITE:
            if self.fail_writes_after <= 0:
                raise ConnectionError("replication unavailable (test)")
            self.fail_writes_after -= 1
        return super().submit(op)


def barrier(root: str) -> None:
    """fsync of the mounted root: every change before it is applied on the mirror
    when it returns (the C queue is drained into the replicator first)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def streaming(tmp_path):
    s = Setup(tmp_path)
    (tmp_path / "state").mkdir()
    s.state = str(tmp_path / "state")
    try:
        yield s
    finally:
        s.close()
        assert not fuse_mount_at(s.root)


needs_dataplane = pytest.mark.skipif(not native_fuse.available(),
                                     reason="replication._dataplane is not built")


@needs_dataplane
def test_streamed_writes_are_served_in_c_and_reach_the_mirror_by_the_barrier(streaming):
    rep = StreamingMirror(streaming.mirror, streaming.state)
    streaming.mount(rep, native=True)
    before = native_fuse.counters()
    fd = os.open(streaming.p("wal"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for i in range(200):
            os.pwrite(fd, bytes([i]) * 8192, (i % 50) * 8192)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    after = native_fuse.counters()
    # the first write of each 64 KiB region goes to Python (which pins it), the rest to C
    assert after["write"] - before["write"] >= 150, (before, after)
    assert after["write_python"] - before["write_python"] >= 1
    assert not rep.errors
    assert_same_tree(tree(streaming.under), tree(streaming.mirror))
    # pins end once unused: the activity log's keys are no longer held busy
    deadline = time.monotonic() + 5
    while any(k[0] == "wal" for k in rep.activity._state.busy):
        assert time.monotonic() < deadline, rep.activity._state.busy
        time.sleep(0.05)



class DurableTreeMirror(StreamingMirror):
    """A StreamingMirror that, like Sender.tree_durable, says False at every op and
    True at a barrier once the mirror applied every op before it (its mirror has no
    power to lose: applied is durable here)."""

    tree_durable = None

    def submit(self, op):
        if self.tree_durable is not None:
            self.tree_durable(False)
        ticket = super().submit(op)
        if op.kind is OpKind.FSYNC:
            self.wait(ticket)                    # everything before it applied
            if self.tree_durable is not None:
                self.tree_durable(True)
        return ticket


@needs_dataplane
def test_fsyncs_of_handles_c_opened_are_served_in_c_while_the_tree_is_durable(streaming):
    rep = DurableTreeMirror(streaming.mirror, streaming.state, cold_s=30)
    streaming.mount(rep, native=True)
    assert rep.tree_durable is not None          # serve gave it the C data plane's word
    with open(streaming.p("f"), "wb") as f:
        f.write(b"a" * 8192)

    def open_fsync_close() -> int:
        before = native_fuse.counters()["fsync"]
        fd = os.open(streaming.p("f"), os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return native_fuse.counters()["fsync"] - before

    assert open_fsync_close() == 0               # Python's barrier: it says the tree is durable
    assert open_fsync_close() == 1               # then C answers by the local sync
    assert open_fsync_close() == 1
    fd = os.open(streaming.p("f"), os.O_RDWR)    # a write (Python's, then C's) ends that
    try:
        os.pwrite(fd, b"b" * 4096, 0)
        os.pwrite(fd, b"c" * 4096, 4096)
        before = native_fuse.counters()["fsync"]
        os.fsync(fd)
        assert native_fuse.counters()["fsync"] == before     # in Python: it replicates them
    finally:
        os.close(fd)
    assert (Path(streaming.mirror) / "f").read_bytes() == b"b" * 4096 + b"c" * 4096
    assert open_fsync_close() == 1               # that barrier made the tree durable again
    os.mkdir(streaming.p("d"))                   # a namespace change ends it too
    assert open_fsync_close() == 0
    assert not rep.errors
    assert_same_tree(tree(streaming.under), tree(streaming.mirror))


def wait_mirrored(path: Path, want: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes() == want):
        assert time.monotonic() < deadline, f"{path} not mirrored without a barrier"
        time.sleep(0.01)


@needs_dataplane
def test_streamed_writes_reach_the_mirror_without_a_barrier_also_after_the_pump_parked(
        streaming):
    """No fsync anywhere: the pump sends what C queued, while writes keep coming
    (once per linger period) and after it parked (woken by the first record)."""
    rep = StreamingMirror(streaming.mirror, streaming.state, cold_s=30)   # pins stay
    streaming.mount(rep, native=True)
    mirrored = Path(streaming.mirror) / "data"
    fd = os.open(streaming.p("data"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        want = bytearray(8 * 8192)
        for i in range(8):          # the first write pins the region (Python), then C
            want[i * 8192:(i + 1) * 8192] = bytes([i + 1]) * 8192
            os.pwrite(fd, bytes([i + 1]) * 8192, i * 8192)
        wait_mirrored(mirrored, bytes(want))
        for _ in range(3):
            # parked: PUMP_HOT_ROUNDS lingers with nothing queued (25x that, for a busy machine)
            time.sleep(25 * native_fuse.PUMP_LINGER_S * native_fuse.PUMP_HOT_ROUNDS)
            before = native_fuse.counters()
            want[0:8192] = bytes([want[0] + 1]) * 8192
            os.pwrite(fd, bytes(want[0:8192]), 0)
            after = native_fuse.counters()
            assert after["write"] == before["write"] + 1             # served in C
            assert after["pump_unparked"] == before["pump_unparked"] + 1, (before, after)
            wait_mirrored(mirrored, bytes(want))
    finally:
        os.close(fd)
    assert not rep.errors


class HeldMirror(StreamingMirror):
    """Its submission of C's WRITE records blocks (``hold``) until ``release``."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.released = threading.Event()

    def submit(self, op):
        if self.hold.is_set() and op.kind is OpKind.WRITE:
            self.holding.set()
            assert self.released.wait(30), "never released"
        return super().submit(op)


@needs_dataplane
def test_c_writes_go_on_while_the_pump_submits(streaming):
    """The pump submits what it took without the queue lock: C writes made while its
    submission is stuck are answered, queued behind it, and reach the mirror after it,
    in order, once it goes on (a barrier meanwhile waits for it)."""
    rep = HeldMirror(streaming.mirror, streaming.state, cold_s=30)   # pins stay
    streaming.mount(rep, native=True)
    fd = os.open(streaming.p("data"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"a" * 8192, 0)       # Python's: pins the region for C
        barrier(streaming.root)
        rep.hold.set()
        os.pwrite(fd, b"b" * 8192, 0)       # C's; the pump takes it and is held
        assert rep.holding.wait(10), "the pump never submitted"
        before = native_fuse.counters()["write"]
        done = threading.Event()

        def more() -> None:
            for i in range(1, 9):
                os.pwrite(fd, bytes([ord("b") + i]) * 8192, 0)
            done.set()
        threading.Thread(target=more, daemon=True).start()
        assert done.wait(10), "C writes waited for the held submission"
        assert native_fuse.counters()["write"] - before == 8
        rep.hold.clear()
        rep.released.set()
        barrier(streaming.root)
        assert (Path(streaming.mirror) / "data").read_bytes() == b"j" * 8192
    finally:
        rep.released.set()
        os.close(fd)
    assert not rep.errors


@needs_dataplane
def test_names_that_are_not_utf8_stream_too(streaming):
    """Linux names are bytes: a name that is no UTF-8 goes through the queue and the
    pins as mfusepy gives it to Python (surrogateescape)."""
    rep = StreamingMirror(streaming.mirror, streaming.state)
    streaming.mount(rep, native=True)
    name = os.path.join(os.fsencode(streaming.root), b"\xff\xfe-not-utf8")
    before = native_fuse.counters()["write"]
    fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for i in range(20):
            os.pwrite(fd, bytes([i]) * 4096, i * 4096)
    finally:
        os.close(fd)
    barrier(streaming.root)
    assert native_fuse.counters()["write"] - before >= 10
    assert not rep.errors
    assert_same_tree(tree(streaming.under), tree(streaming.mirror))
    assert os.listdir(os.fsencode(streaming.mirror)) == [b"\xff\xfe-not-utf8"]

@needs_dataplane
def test_concurrent_streamed_writers_keep_their_order(streaming):
    """Writers on several names of one file (hard links reach the layer in parallel),
    truncates and namespace changes between them: the mirror equals the directory at
    the barrier."""
    rep = StreamingMirror(streaming.mirror, streaming.state)
    streaming.mount(rep, native=True)
    p = streaming.p
    with open(p("shared"), "wb") as f:
        f.write(b"\0" * (256 << 10))
    os.mkdir(p("ns"))
    for i in range(6):
        os.link(p("shared"), p(f"name{i}"))
    errors = []

    def writer(i: int) -> None:
        try:
            rnd = random.Random(i)
            own = os.open(p(f"name{i}"), os.O_WRONLY)
            for n in range(200):
                size = rnd.choice([1, 4096, 5000, 8192, 65536])
                os.pwrite(own, bytes([i * 16 + n % 16]) * size, rnd.randrange(0, 256 << 10))
                if n % 50 == 49:
                    os.ftruncate(own, rnd.randrange(200 << 10, 256 << 10))
            os.close(own)
            with open(p("ns", f"f{i}"), "wb") as f:
                f.write(bytes([i]) * 1000)
            os.rename(p("ns", f"f{i}"), p("ns", "last"))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    before = native_fuse.counters()["write"]
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    barrier(streaming.root)
    assert not errors and not rep.errors
    assert native_fuse.counters()["write"] - before > 100
    assert_same_tree(tree(streaming.under), tree(streaming.mirror))


@needs_dataplane
def test_a_write_that_cannot_be_submitted_fails_the_next_barrier(streaming):
    rep = StreamingMirror(streaming.mirror, streaming.state, fail_writes_after=3)
    streaming.mount(rep, native=True)
    fd = os.open(streaming.p("f"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for i in range(20):
            try:
                os.pwrite(fd, b"x" * 4096, i * 4096)
            except OSError as e:       # Python's own write path refuses it at once
                assert e.errno == errno.EIO
        with pytest.raises(OSError) as failed:
            os.fsync(fd)
        assert failed.value.errno == errno.EIO
        with pytest.raises(OSError) as later:   # and every change after it
            os.pwrite(fd, b"y", 0)
        assert later.value.errno == errno.EIO
    finally:
        os.close(fd)


@needs_dataplane
@pytest.mark.parametrize("flag", [os.O_SYNC, os.O_DSYNC], ids=["O_SYNC", "O_DSYNC"])
def test_sync_writes_are_barriers_served_by_python(streaming, flag):
    """An O_SYNC / O_DSYNC write answers only once durable on both copies (an FSYNC
    op after it): Python's write does that, so C must hand every such write to it,
    pinned region or not."""
    rep = StreamingMirror(streaming.mirror, streaming.state)
    streaming.mount(rep, native=True)
    with open(streaming.p("f"), "wb") as f:       # pins the region through Python
        f.write(b"\0" * 8192)
        f.write(b"\1" * 8192)
    fd = os.open(streaming.p("f"), os.O_WRONLY | flag)
    try:
        before = native_fuse.counters()
        fsyncs_before = sum(op.kind is OpKind.FSYNC for op in rep.ops)
        for i in range(5):
            os.pwrite(fd, bytes([i]) * 4096, i * 4096)
            # answered: applied on the mirror already (FSYNC waited for), no barrier needed
            with open(os.path.join(streaming.mirror, "f"), "rb") as m:
                m.seek(i * 4096)
                assert m.read(4096) == bytes([i]) * 4096
        after = native_fuse.counters()
    finally:
        os.close(fd)
    assert after["write"] == before["write"], (before, after)
    assert after["write_python"] - before["write_python"] == 5
    # one FSYNC op per write at least (the kernel may follow each with an fsync too)
    assert sum(op.kind is OpKind.FSYNC for op in rep.ops) - fsyncs_before >= 5


# Last in this file: the module-scoped mount holds the C functions of this process
# until the module ends (a mount made meanwhile is served in Python).
@pytest.fixture(scope="module")
def streaming_prop(tmp_path_factory, fuse_api):   # one mount per API
    base = tmp_path_factory.mktemp("streaming-prop")
    s = Setup(base)
    (base / "state").mkdir()
    s.rep = StreamingMirror(s.mirror, str(base / "state"))
    s.before = native_fuse.counters() if native_fuse.available() else {}
    try:
        if native_fuse.available():
            s.mount(s.rep, native=True)
        yield s
        if native_fuse.available():   # the property's runs, together, went through C
            assert native_fuse.counters()["write"] > s.before["write"]
    finally:
        s.close()
        assert not fuse_mount_at(s.root)


@needs_dataplane
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(op_strategy, min_size=1, max_size=25))
def test_random_operation_sequences_leave_identical_trees_at_every_barrier(streaming_prop, ops):
    s = streaming_prop
    for name in os.listdir(s.root):
        path = s.p(name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    barrier(s.root)
    assert tree(s.mirror) == {}
    os.makedirs(s.p("d", "f"))
    for i, op in enumerate(ops):
        try:
            run_op(s.root, op)
        except OSError as e:
            assert e.errno != errno.EIO, op
        if i % 7 == 6:
            barrier(s.root)
            assert_same_tree(tree(s.under), tree(s.mirror))
    barrier(s.root)
    assert not s.rep.errors
    assert_same_tree(tree(s.under), tree(s.mirror))
