"""The FUSE layer's hot requests served in C (replication/_dataplane.c).

mfusepy builds libfuse's operations table out of ctypes callbacks into Python; every
request then crosses ctypes and takes the GIL. For the requests that change nothing
(read, getattr) the C functions of ``_dataplane`` go into the table in their place,
and libfuse's worker threads call them without entering Python. Everything else
stays in ReplicatedFS (replication/fuse_fs.py), unchanged.

The swap happens inside mfusepy's call of ``fuse_main_real``: mfusepy builds the
table and hands it to libfuse in the same call, so that call is the one place where
the table exists and is not used yet.

The extension is optional (setup.py): where it was not built, ``available()`` is
False, ``why_unavailable()`` says why, and every request is served in Python.
``HACLUSTER_FUSE_NATIVE=0`` in the environment asks for Python too (benchmarks
compare both in one run).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import threading
from types import ModuleType
from typing import Any, Iterator

_dataplane: ModuleType | None
try:
    _dataplane = importlib.import_module("replication._dataplane")
    _WHY = ""
except ImportError as exc:   # not built here (setup.py: optional)
    _dataplane = None
    _WHY = f"replication._dataplane is not built ({exc})"


def available() -> bool:
    return _dataplane is not None


def why_unavailable() -> str:
    return _WHY


def wanted() -> bool:
    """Built, and not turned off by HACLUSTER_FUSE_NATIVE=0."""
    return available() and os.environ.get("HACLUSTER_FUSE_NATIVE", "1") != "0"


def counters() -> dict[str, int]:
    """Requests served in C so far in this process, by operation ({} if not built)."""
    return dict(_dataplane.counters()) if _dataplane is not None else {}


def native_ops() -> list[str]:
    return sorted(_dataplane.addresses()) if _dataplane is not None else []


def put_into(ops: Any) -> list[str]:
    """Replace the C-served operations in a libfuse operations table (mfusepy's
    ctypes ``fuse_operations``); returns their names."""
    assert _dataplane is not None
    fields = {f[0]: f[1] for f in type(ops)._fields_}
    done = []
    for name, address in sorted(_dataplane.addresses().items()):
        setattr(ops, name, ctypes.cast(ctypes.c_void_p(address), fields[name]))
        done.append(name)
    return done


_claim_lock = threading.Lock()
_claimed = False


@contextlib.contextmanager
def installed(mfusepy: Any, root_fd: int) -> Iterator[bool]:
    """While inside, the mount this thread makes with mfusepy (``FUSE(...)``) serves
    read and getattr in C, under the directory ``root_fd`` (opened before the mount
    covered it). Yields False (and changes nothing) when another mount of this
    process has the C functions already: they know one served directory, and the
    product runs each mount in a process of its own; tests may run several."""
    global _claimed
    assert _dataplane is not None
    with _claim_lock:
        mine = not _claimed
        _claimed = True
    if not mine:
        yield False
        return
    _dataplane.set_root(root_fd)
    real = mfusepy.fuse_main_real
    owner = threading.get_ident()

    def fuse_main_real(argc: Any, argv: Any, ops_p: Any, size: Any, ctx: Any) -> Any:
        if threading.get_ident() == owner:   # not another thread's mount made meanwhile
            put_into(ops_p.contents)
        return real(argc, argv, ops_p, size, ctx)

    mfusepy.fuse_main_real = fuse_main_real
    try:
        yield True
    finally:
        mfusepy.fuse_main_real = real
        _dataplane.set_root(-1)
        with _claim_lock:
            _claimed = False
