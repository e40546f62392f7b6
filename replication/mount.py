"""Running the replicating FUSE layer: in a thread (tests) or in its own process
(the product), and taking it down cleanly, also when it is stuck or dead.

``unmount(root)``: ``fusermount3 -u``; when busy, lazily (``-u -z``); when even
that leaves the mount (a dead or hung server), the kernel connection is
aborted through fusectl and the mount detached.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import subprocess
import threading
import time
from typing import Callable

from . import fuse_fs, fuse_lowlevel, native_fuse
from .fuse_fs import OrderingLock, Replicator, fuse_mount_at, mount_point_path

log = logging.getLogger("replication.mount")

_FUSECTL = "/sys/fs/fuse/connections"


def unmount(root: str, timeout: float = 10.0) -> None:
    """Remove the FUSE mount on ``root`` (no-op when there is none)."""
    root = mount_point_path(root)
    if not fuse_mount_at(root):
        return
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    for args in (["-u"], ["-u", "-z"]):
        if tool:
            try:
                r = subprocess.run([tool, *args, root], capture_output=True, text=True, timeout=timeout)
                if r.returncode == 0 and not fuse_mount_at(root):
                    return
                log.info("event=unmount_retry args=%s rc=%s err=%r", args, r.returncode, r.stderr.strip())
            except subprocess.TimeoutExpired:
                log.warning("event=unmount_timeout args=%s", args)
    # A server that does not answer: abort its connection, then detach.
    dev = fuse_mount_at(root)
    if dev:
        _abort_connection(dev)
        subprocess.run(["umount", "-l", root], capture_output=True, timeout=timeout)
    if fuse_mount_at(root):
        raise RuntimeError(f"could not unmount {root}")


def _abort_connection(dev: str) -> None:
    minor = dev.split(":")[1]
    mounted_here = False
    if not os.path.isdir(os.path.join(_FUSECTL, minor)):
        mounted_here = subprocess.run(["mount", "-t", "fusectl", "none", _FUSECTL],
                                      capture_output=True).returncode == 0
    try:
        with open(os.path.join(_FUSECTL, minor, "abort"), "w") as f:
            f.write("1")
        log.warning("event=fuse_connection_aborted dev=%s", dev)
    except OSError as e:
        log.warning("event=fuse_abort_failed dev=%s error=%r", dev, e)
    finally:
        if mounted_here:
            subprocess.run(["umount", _FUSECTL], capture_output=True)


# Which libfuse API the primary's writable mount is served on: "lowlevel"
# (fuse_lowlevel.serve_lowlevel: one kernel inode per file, long caches) by default, or
# "highlevel" (mfusepy, fuse_fs.serve), which serves where the C extension is missing
# and always serves the secondary's read-only view.
FUSE_API_ENV = "HACLUSTER_FUSE_API"
FUSE_APIS = ("lowlevel", "highlevel")


def fuse_api_for(read_only: bool, native: bool | None = None, api: str | None = None) -> str:
    """The API a mount gets: ``api`` (else $HACLUSTER_FUSE_API, else low-level); the
    low-level one only for a writable mount with the C extension built and wanted
    (``native``, else not turned off by $HACLUSTER_FUSE_NATIVE=0)."""
    api = api or os.environ.get(FUSE_API_ENV) or "lowlevel"
    if api not in FUSE_APIS:
        raise ValueError(f"{FUSE_API_ENV}: {api!r} is not one of {', '.join(FUSE_APIS)}")
    if native is None:
        native = native_fuse.wanted()      # HACLUSTER_FUSE_NATIVE=0: all in Python
    if api == "lowlevel" and (read_only or not native or not fuse_lowlevel.available()):
        return "highlevel"
    return api


def serve(root: str, replicator: Replicator, *, read_only: bool = False,
          ready: Callable[[], None] | None = None, lock: OrderingLock | None = None,
          trust_page_cache: bool | None = None, native: bool | None = None,
          api: str | None = None) -> None:
    """Serve the replicating file system over ``root`` until unmounted, on the API
    ``fuse_api_for`` picks (fuse_fs.serve / fuse_lowlevel.serve_lowlevel say more)."""
    if fuse_api_for(read_only, native, api) == "lowlevel":
        try:
            fuse_lowlevel.serve_lowlevel(root, replicator, ready=ready, lock=lock,
                                         trust_page_cache=trust_page_cache is not False)
            return
        except fuse_lowlevel.DataPlaneBusy as e:   # nothing was mounted
            log.info("event=fuse_api_fallback root=%s api=highlevel reason=%r", root, str(e))
    fuse_fs.serve(root, replicator, read_only=read_only, ready=ready, lock=lock,
                  trust_page_cache=trust_page_cache, native=native)


class Mount:
    """A live mount over ``root``; ``unmount()`` (or leaving the ``with``) ends it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def alive(self) -> bool:
        raise NotImplementedError

    def unmount(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def __enter__(self) -> "Mount":
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()


class ThreadMount(Mount):
    def __init__(self, root: str, thread: threading.Thread, errors: list) -> None:
        super().__init__(root)
        self._thread = thread
        self._errors = errors

    def alive(self) -> bool:
        return self._thread.is_alive()

    def unmount(self, timeout: float = 10.0) -> None:
        unmount(self.root, timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Lazily unmounted with files still open: the loop ends when they close.
            log.warning("event=fuse_thread_lingers root=%s", self.root)


class ProcessMount(Mount):
    def __init__(self, root: str, process) -> None:
        super().__init__(root)
        self.process = process

    def alive(self) -> bool:
        return self.process.is_alive()

    def unmount(self, timeout: float = 10.0) -> None:
        p = self.process
        try:
            unmount(self.root, timeout)  # the server's loop then ends by itself
            p.join(timeout)
            if p.is_alive():
                log.warning("event=fuse_process_terminate pid=%s", p.pid)
                p.terminate()
                p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(timeout)
        finally:
            unmount(self.root, timeout)


def _wait_ready(ready: Callable[[], bool], failed: Callable[[], str | None], timeout: float,
                root: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        reason = failed()
        if reason is not None:
            raise RuntimeError(f"FUSE mount on {root} failed: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"FUSE mount on {root} not ready after {timeout}s")
        time.sleep(0.01)


def mount_in_thread(root: str, replicator: Replicator, *, read_only: bool = False,
                    lock: OrderingLock | None = None, timeout: float = 10.0,
                    trust_page_cache: bool | None = None,
                    native: bool | None = None) -> ThreadMount:
    """Serve ``root`` from a daemon thread of this process (tests, tools).

    This process must not mmap files of the mount: a page fault taken while
    holding the GIL waits for a FUSE worker that needs the GIL (deadlock). The
    product runs ``serve`` in its own process (``mount_in_process``)."""
    root = mount_point_path(root)
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(root, replicator, read_only=read_only, ready=ready.set, lock=lock,
                  trust_page_cache=trust_page_cache, native=native)
        except BaseException as e:  # noqa: BLE001 - reported to the caller below
            errors.append(e)
            log.error("event=fuse_serve_failed root=%s error=%r", root, e)

    t = threading.Thread(target=run, name=f"fuse:{root}", daemon=True)
    t.start()
    m = ThreadMount(root, t, errors)
    try:
        _wait_ready(ready.is_set, lambda: repr(errors[0]) if errors else
                    ("server ended" if not t.is_alive() else None), timeout, root)
    except BaseException:
        m.unmount()
        raise
    return m


def _child_main(root: str, factory: Callable[..., Replicator], args: tuple, read_only: bool,
                conn, trust_page_cache: bool | None = None) -> None:
    try:
        replicator = factory(*args)
        serve(root, replicator, read_only=read_only, ready=lambda: conn.send("ready"),
              trust_page_cache=trust_page_cache)
    except BaseException as e:
        try:
            conn.send(f"error: {e!r}")
        except OSError:
            pass
        raise


def mount_in_process(root: str, replicator_factory: Callable[..., Replicator], args: tuple = (), *,
                     read_only: bool = False, timeout: float = 20.0,
                     trust_page_cache: bool | None = None) -> ProcessMount:
    """Serve ``root`` from a child process (spawned, so no threads are inherited).

    ``replicator_factory(*args)`` builds the replicator inside the child: it and
    ``args`` must be picklable (a module-level function)."""
    root = mount_point_path(root)
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_main, args=(root, replicator_factory, args, read_only, child_conn,
                                              trust_page_cache),
                    name=f"fuse:{root}", daemon=True)
    p.start()
    child_conn.close()
    m = ProcessMount(root, p)
    state: dict[str, str] = {}

    def poll() -> bool:
        if "msg" not in state and parent_conn.poll():
            try:
                state["msg"] = parent_conn.recv()
            except EOFError:
                state["msg"] = "error: child closed its pipe"
        return state.get("msg") == "ready"

    def failed() -> str | None:
        msg = state.get("msg")
        if msg and msg != "ready":
            return msg
        if not p.is_alive():
            return f"child exited with {p.exitcode}"
        return None

    try:
        _wait_ready(poll, failed, timeout, root)
    except BaseException:
        m.unmount()
        raise
    finally:
        parent_conn.close()
    return m
