"""replication/native_fuse.py and _dataplane.c: read and getattr served in C, through
real FUSE mounts on tmp dirs. The same tree read through a mount served in C and through
one served in Python gives the same bytes and the same attributes; the C functions are
really the ones answering (their counters move); a second mount in the same process
falls back to Python and leaves the first one's directory alone."""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from replication import native_fuse
from replication.mount import mount_in_thread

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
    reason="needs root, /dev/fuse and fusermount3")


class Accepting:
    """A replicator that accepts every op at once (nothing to replicate here: these
    tests are about the requests that change nothing)."""

    def submit(self, op):
        return None

    def wait(self, ticket) -> None:
        return None


@pytest.fixture
def tree():
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
def test_c_and_python_answer_the_same(tree):
    base, root, contents = tree
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
        else:
            assert moved == {"read": 0, "getattr": 0}, moved
    assert views[True]["missing"] == errno.ENOENT
    for name, data in contents.items():
        assert views[True][f"read:{name}"] == data
    assert stat.S_ISLNK(views[True]["stat:link"][0]) and stat.S_ISFIFO(views[True]["stat:dir/fifo"][0])
    assert views[True] == views[False]


@pytest.mark.skipif(not native_fuse.available(), reason="replication._dataplane is not built")
def test_a_second_mount_in_the_process_is_served_in_python(tree):
    base, root, contents = tree
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
            assert native_fuse.counters()["getattr"] > before["getattr"]
        finally:
            second.unmount()
    finally:
        first.unmount()
