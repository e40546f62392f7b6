"""replication/fuse_lowlevel.py's Bridge: the low-level requests C hands to Python become
ReplicatedFS's path-based operations (a recording stand-in here; the real mount is
tests/lab/test_fuse_fs.py and test_native_fuse_lab.py, run on both APIs)."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication import fuse_lowlevel as ll
from replication.mount import FUSE_API_ENV, fuse_api_for
from replication.ops import UTIME_NOW, UTIME_OMIT


class RecordingFS:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.negotiated: dict = {}

    def __getattr__(self, name: str):
        def record(*args):
            self.calls.append((name, *args))
            return 7 if name in ("open", "create", "write") else 0
        return record


class Paths:
    """node_path: node ids 1 (the root), 2 'd', 3 'd/e', 4 (no name: unlinked)."""

    names = {1: "", 2: "d", 3: "d/e", 4: None}

    def node_path(self, node: int):
        return self.names[node]


def bridge() -> tuple[ll.Bridge, RecordingFS]:
    fs = RecordingFS()
    return ll.Bridge(fs, Paths()), fs  # type: ignore[arg-type]


def test_names_under_a_node_become_paths_below_the_root():
    b, fs = bridge()
    b.mkdir(1, b"top", 0o755)
    b.mkdir(3, b"sub", 0o700)
    b.create(2, b"f", 0o644, 0)
    b.unlink(3, b"x")
    b.symlink(2, b"l", b"../target")
    b.link(3, 1, b"second")
    b.rename(2, b"a", 3, b"b", 1)
    assert fs.calls == [("mkdir", "/top", 0o755), ("mkdir", "/d/e/sub", 0o700),
                        ("create", "/d/f", 0o644, 0), ("unlink", "/d/e/x"),
                        ("symlink", "/d/l", "../target"), ("link", "/second", "/d/e"),
                        ("rename", "/d/a", "/d/e/b", 1)]


def test_a_node_without_a_name_is_enoent_for_path_operations():
    b, fs = bridge()
    with pytest.raises(OSError) as info:
        b.mkdir(4, b"x", 0o755)
    assert info.value.errno == errno.ENOENT and fs.calls == []


def test_undecodable_names_round_trip_as_surrogates():
    b, fs = bridge()
    b.unlink(2, b"caf\xe9")
    assert fs.calls == [("unlink", "/d/caf\udce9")]


def test_handle_operations_name_no_path():
    b, fs = bridge()
    assert b.write(3, 9, b"data", 4096) == 7
    b.fsync(3, 9, 1)
    b.fallocate(3, 9, 0, 0, 100)
    b.release(9)
    assert fs.calls == [("write", None, b"data", 4096, 9), ("fsync", None, 1, 9),
                        ("fallocate", None, 0, 0, 100, 9), ("release", None, 9)]


@given(valid=st.integers(0, (1 << 9) - 1), with_handle=st.booleans())
def test_setattr_becomes_one_call_per_attribute_in_a_fixed_order(valid, with_handle):
    b, fs = bridge()
    b.setattr(3, 9 if with_handle else -1, valid, 0o104755, 11, 12, 4096, 1_000, 2_000)
    path, fh = (None, 9) if with_handle else ("/d/e", None)
    want: list[tuple] = []
    if valid & ll.SET_ATTR_MODE:
        want.append(("chmod", path, 0o4755, fh))
    if valid & (ll.SET_ATTR_UID | ll.SET_ATTR_GID):
        want.append(("chown", path, 11 if valid & ll.SET_ATTR_UID else -1,
                     12 if valid & ll.SET_ATTR_GID else -1, fh))
    if valid & ll.SET_ATTR_SIZE:
        want.append(("truncate", path, 4096, fh))
    times = ll.SET_ATTR_ATIME | ll.SET_ATTR_MTIME | ll.SET_ATTR_ATIME_NOW | ll.SET_ATTR_MTIME_NOW
    if valid & times:
        atime = (UTIME_NOW if valid & ll.SET_ATTR_ATIME_NOW else
                 1_000 if valid & ll.SET_ATTR_ATIME else UTIME_OMIT)
        mtime = (UTIME_NOW if valid & ll.SET_ATTR_MTIME_NOW else
                 2_000 if valid & ll.SET_ATTR_MTIME else UTIME_OMIT)
        want.append(("utimens", path, (atime, mtime), fh))
    assert fs.calls == want


def test_an_unexpected_error_is_answered_eio(caplog):
    class Broken(RecordingFS):
        def mkdir(self, path, mode):
            raise ValueError("a bug")

    b = ll.Bridge(Broken(), Paths())  # type: ignore[arg-type]
    with pytest.raises(OSError) as info:
        b.mkdir(1, b"x", 0o755)
    assert info.value.errno == errno.EIO
    assert "event=fuse_request_failed op=mkdir" in caplog.text


def test_init_records_what_was_negotiated_and_says_ready():
    b, fs = bridge()
    b.init({"api": "lowlevel", "proto_major": 7, "proto_minor": 38, "max_write": 1 << 20,
            "max_readahead": 1 << 17, "max_background": 0, "capable": 1 | (1 << 12),
            "want": 1})
    assert fs.negotiated["proto"] == "7.38" and fs.negotiated["want"] == "async_read"
    assert fs.negotiated["capable"] == "async_read+auto_inval_data"
    assert fs.calls == [("init", "/")]


def test_the_api_choice(monkeypatch):
    monkeypatch.delenv(FUSE_API_ENV, raising=False)
    monkeypatch.setattr(ll, "available", lambda: True)
    assert fuse_api_for(read_only=False) == "lowlevel"
    assert fuse_api_for(read_only=False, api="highlevel") == "highlevel"
    assert fuse_api_for(read_only=False, api="lowlevel") == "lowlevel"
    assert fuse_api_for(read_only=True, api="lowlevel") == "highlevel"     # the view
    assert fuse_api_for(read_only=False, native=False, api="lowlevel") == "highlevel"
    monkeypatch.setenv(FUSE_API_ENV, "highlevel")
    assert fuse_api_for(read_only=False) == "highlevel"
    monkeypatch.setenv(FUSE_API_ENV, "lowlevel")
    assert fuse_api_for(read_only=False) == "lowlevel"
    monkeypatch.setattr(ll, "available", lambda: False)
    assert fuse_api_for(read_only=False) == "highlevel"
    monkeypatch.setenv(FUSE_API_ENV, "kernel")
    with pytest.raises(ValueError, match="HACLUSTER_FUSE_API"):
        fuse_api_for(read_only=False)


def test_descriptor_limits_rise_for_the_nodes():
    inf = ll.resource.RLIM_INFINITY
    assert ll.fd_limits(1024, 524288, 1048576, privileged=True) == (1048576, 1048576)
    assert ll.fd_limits(1024, 524288, 1048576, privileged=False) == (524288, 524288)
    assert ll.fd_limits(1024, 4096, 1024, privileged=True) == (4096, 4096)   # never lowered
    assert ll.fd_limits(inf, inf, 1048576, privileged=True) == (inf, inf)
    assert ll.fd_limits(1024, inf, 1048576, privileged=False) == (inf, inf)
