"""Farm clients from the test process itself: sockets created inside a lab
host's network namespace (setns on a thread of ours), so thousands of short
connections cost no process start each. ``hold`` keeps one connection open with a
keep-alive line every 100 ms (the name server echoes it), recording whether it was
later reset or dropped."""
from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
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


def failure(exc: BaseException) -> str:
    """How a connection failed, in one word: reset (an RST on an established connection),
    refused (an RST to the SYN), timeout (no answer: packets dropped), or the errno."""
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, BrokenPipeError):
        return "reset"
    return f"errno {getattr(exc, 'errno', None)}"


def ask_detail(addr: str, port: int, source: str | None = None,
               timeout: float = 2.0) -> tuple[str | None, str, int, str | None]:
    """One short connection: (the node name that answered or None, source address, port,
    None or how it failed: see ``failure``; "eof" when closed without a name)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source is not None:
            sock.bind((source, 0))
        sock.connect((addr, port))
        src, sport = sock.getsockname()
        with sock.makefile("r") as f:
            name = f.readline().strip() or None
        return name, src, sport, None if name else "eof"
    except OSError as exc:
        src, sport = sock.getsockname()
        return None, src, sport, failure(exc)
    finally:
        sock.close()


def ask(addr: str, port: int, source: str | None = None,
        timeout: float = 2.0) -> tuple[str | None, str, int]:
    """One connection: (the node name that answered or None, source address, port)."""
    return ask_detail(addr, port, source, timeout)[:3]


@dataclass
class Held:
    """A long-lived connection (``hold``): who answered its first bytes (``node``, None:
    it never got them), when, how many keep-alive lines came back, and how it ended:
    ``error`` None when the client closed it, else reset / refused / timeout (a
    keep-alive unanswered within the timeout: dropped) / eof (closed by the server) /
    garbled (another answer than the echo)."""
    t_open: float
    src: str = ""
    sport: int = 0
    node: str | None = None
    t_answer: float | None = None
    echoes: int = 0
    t_last_echo: float | None = None
    error: str | None = None
    t_end: float | None = None


def hold(addr: str, port: int, stop: threading.Event, lifetime_s: float | None = None,
         interval_s: float = 0.1, timeout_s: float = 2.0,
         on_open: Callable[[Held], None] | None = None) -> Held:
    """Open one connection to the name server, read the node's name, then send a
    keep-alive line every ``interval_s`` and read its echo, until ``stop`` is set,
    ``lifetime_s`` has passed (None: no limit) or the connection fails. ``on_open`` gets
    the record as soon as the name is read (it is then updated in place)."""
    rec = Held(time.monotonic())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect((addr, port))
        rec.src, rec.sport = sock.getsockname()
        f = sock.makefile("rb")
        rec.node = f.readline().decode(errors="replace").strip() or None
        rec.t_answer = time.monotonic()
        if rec.node is None:
            rec.error = "eof"
            return rec
        if on_open is not None:
            on_open(rec)
        end = None if lifetime_s is None else rec.t_open + lifetime_s
        n = 0
        while not stop.wait(interval_s) and (end is None or time.monotonic() < end):
            n += 1
            line = f"keepalive {n}\n".encode()
            sock.sendall(line)
            got = f.readline()
            if got != line:
                rec.error = "eof" if not got else "garbled"
                return rec
            rec.echoes, rec.t_last_echo = n, time.monotonic()
        return rec
    except OSError as exc:
        if not rec.src:
            try:
                rec.src, rec.sport = sock.getsockname()
            except OSError:
                pass
        rec.error = failure(exc)
        return rec
    finally:
        rec.t_end = time.monotonic()
        sock.close()


def ask_many(addr: str, port: int, count: int, sources=(None,), timeout: float = 2.0) -> list:
    """``count`` connections from each source address, one after the other."""
    return [ask(addr, port, src, timeout) for _ in range(count) for src in sources]
