"""Farm clients from the test process itself: sockets created inside a lab
host's network namespace (setns on a thread of ours), so thousands of short
connections cost no process start each."""
from __future__ import annotations

import ctypes
import os
import socket
import threading
from concurrent.futures import Future
from typing import Callable, TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def in_netns(netns: str, fn: Callable[..., T], *args: object, timeout: float = 300) -> T:
    """Run fn(*args) on a fresh thread inside a network namespace; its result.
    Sockets it creates stay in that namespace and can be used from any thread."""
    done: Future = Future()

    def run() -> None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
        finally:
            os.close(fd)
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return done.result(timeout=timeout)


def ask(addr: str, port: int, source: str | None = None,
        timeout: float = 2.0) -> tuple[str | None, str, int]:
    """One connection: (the node name that answered or None, source address, port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.connect((addr, port))
        src, sport = sock.getsockname()
        with sock.makefile("r") as f:
            return f.readline().strip() or None, src, sport
    except OSError:
        src, sport = sock.getsockname()
        return None, src, sport
    finally:
        sock.close()


def ask_many(addr: str, port: int, count: int, sources=(None,), timeout: float = 2.0) -> list:
    """``count`` connections from each source address, one after the other."""
    return [ask(addr, port, src, timeout) for _ in range(count) for src in sources]
