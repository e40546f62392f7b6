"""Renames of directories while writes go on, on both libfuse APIs: every write reaches
the mirror under the name its file had when it was made. A module of its own: the
module-scoped mounts of test_native_fuse_lab.py hold the C data plane while they last,
and a mount made meanwhile falls back to the high-level API without it."""
from __future__ import annotations

import os
import random
import shutil
import threading
import time

import pytest

from replication import native_fuse
from tests.lab.test_fuse_fs import MirrorReplicator, assert_same_tree, tree
from tests.lab.test_native_fuse_lab import StreamingMirror, barrier, needs_dataplane, streaming

pytestmark = [pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
    reason="needs root, /dev/fuse and fusermount3"),
    pytest.mark.usefixtures("fuse_api")]

__all__ = ["streaming"]   # the fixture, used by name


@needs_dataplane
@pytest.mark.parametrize("writes", ["streamed", "python"])
def test_directories_renamed_under_writes_leave_identical_trees(streaming, writes, fuse_api):
    """Writers keep writing files of a directory (streamed: C serves the writes, each
    naming its file by a path; python: each write waits for the mirror) while another
    thread renames that directory back and forth and renames a directory above it:
    every write must reach the mirror under the name its file had when it was made (a
    rename holds C writes back; on the low-level API a directory's rename also waits for
    requests that resolved a path under it, and the paths remembered per descriptor
    expire at every exclusive ordering lock)."""
    rep = (StreamingMirror(streaming.mirror, streaming.state, cold_s=30) if writes == "streamed"
           else MirrorReplicator(streaming.mirror))
    streaming.mount(rep, native=True)
    before = native_fuse.dataplane().ll_counters()
    os.makedirs(streaming.p("top", "a"))
    fds = [os.open(streaming.p("top", "a", f"f{i}"), os.O_RDWR | os.O_CREAT, 0o600)
           for i in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(fd: int, seed: int) -> None:
        # a fixed amount, paced: the test mirror applies on one thread, and every rename
        # waits for it to apply everything before
        rng = random.Random(seed)
        try:
            for _ in range(300):
                os.pwrite(fd, rng.randbytes(4096), rng.randrange(64) * 4096)
                time.sleep(0.001)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def create_and_chmod() -> None:
        n = 0
        try:
            while not stop.is_set():
                for top in ("top", "other"):
                    for sub in ("a", "b"):
                        try:
                            with open(streaming.p(top, sub, f"new{n}"), "wb") as f:
                                f.write(b"x" * 100)
                            os.chmod(streaming.p(top, sub, f"new{n}"), 0o640)
                        except FileNotFoundError:
                            pass          # renamed away meanwhile: not there to use
                        n += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    writers = [threading.Thread(target=write, args=(fd, i)) for i, fd in enumerate(fds)]
    creator = threading.Thread(target=create_and_chmod)
    for t in [*writers, creator]:
        t.start()
    renames = 0
    try:
        names = [("a", "b"), ("b", "a")]
        while any(t.is_alive() for t in writers) or renames < 8:
            top = "top" if renames % 4 < 2 else "other"
            src, dst = names[renames % 2]
            os.rename(streaming.p(top, src), streaming.p(top, dst))
            if renames % 4 == 1:
                os.rename(streaming.p("top"), streaming.p("other"))
            elif renames % 4 == 3:
                os.rename(streaming.p("other"), streaming.p("top"))
            renames += 1
            time.sleep(0.005)
    finally:
        stop.set()
        for t in [*writers, creator]:
            t.join()
    for fd in fds:
        os.fsync(fd)
        os.close(fd)
    barrier(streaming.root)
    assert not errors and not rep.errors, (errors, rep.errors[:5])
    assert renames >= 8
    assert_same_tree(tree(streaming.under), tree(streaming.mirror))
    if fuse_api == "lowlevel":   # paths were remembered, and looked up again after renames
        after = native_fuse.dataplane().ll_counters()
        assert after["path_hits"] > before["path_hits"], (before, after)
        assert after["path_misses"] - before["path_misses"] >= renames, (before, after)

