"""A mount outlives its owner (the node daemon) only while the owner allowed it.

A mount serves writes only for its owner's lease (DESIGN.md rules 1 and 7): when the
daemon dies, the mount stops at once, so a killed daemon never leaves a mount
accepting writes. In maintenance the daemon may stop and start again while the
application keeps writing; then it grants the mount a *hold*: a monotonic time (the
same clock on one host) up to which the mount may go on without it — its own lease
deadline, which the Raft leader never precedes (raft.lease). The grant comes with
every answer to the mount's progress report, once a second; a new daemon that adopts
the mount names itself as the new owner the same way.

``OwnerWatch`` waits on a pidfd of the owner (woken the moment it exits, like
PR_SET_PDEATHSIG, which cannot be lifted from another thread of a process whose main
thread sits in libfuse); the decision is ``must_stop``, pure.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from typing import Any, Callable

log = logging.getLogger("replication.owner")


def must_stop(owner_alive: bool, hold_until: float | None, now: float) -> bool:
    """Stop serving? Only without a live owner, once its hold (if any) is over."""
    return not owner_alive and (hold_until is None or now >= hold_until)


class OwnerWatch:
    """Kills this process (SIGKILL: the FUSE mount is aborted, every later write fails)
    when its owner is gone and no hold covers the time. ``log_file``: where this
    process's output goes once the owner, which read it from a pipe, is gone."""

    def __init__(self, owner_pid: int, log_file: str | None = None,
                 stop: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._owner_pid = owner_pid
        self._hold_until: float | None = None
        self._log_file = log_file
        self._stop = stop or (lambda: os.kill(os.getpid(), signal.SIGKILL))
        self._wake_r, self._wake_w = os.pipe()
        self._pidfd = self._open(owner_pid)
        self._orphaned_output = False

    @staticmethod
    def _open(pid: int) -> int | None:
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError:
            return None         # already gone: the first check stops us (without a hold)

    # ---- what the owner says (the progress report's answer) ---------------------------
    @property
    def hold_until(self) -> float | None:
        return self._hold_until

    def answer(self, result: Any) -> None:
        """The owner's answer to a progress report: ``hold_until`` (monotonic or None)
        and ``owner_pid`` (a daemon that adopted this mount)."""
        if not isinstance(result, dict):
            return
        hold = result.get("hold_until")
        owner = result.get("owner_pid")
        with self._lock:
            if hold is None or (isinstance(hold, (int, float)) and not isinstance(hold, bool)):
                if hold != self._hold_until:
                    log.info("event=owner_hold hold_until=%s", "none" if hold is None else f"{hold:.3f}")
                self._hold_until = None if hold is None else float(hold)
            if isinstance(owner, int) and not isinstance(owner, bool) and owner != self._owner_pid:
                pidfd = self._open(owner)
                if pidfd is not None:
                    old, self._pidfd, self._owner_pid = self._pidfd, pidfd, owner
                    if old is not None:
                        os.close(old)
                    log.info("event=owner_adopted owner_pid=%d", owner)
        os.write(self._wake_w, b"x")

    # ---- the watch ------------------------------------------------------------------
    def _owner_alive(self) -> bool:
        with self._lock:
            pidfd = self._pidfd
        if pidfd is None:
            return False
        ready, _, _ = select.select([pidfd], [], [], 0)
        return not ready        # a pidfd turns readable when its process exits

    def check(self, now: float) -> bool:
        """One look; True once it has stopped this process (or would have)."""
        alive = self._owner_alive()
        if not alive:
            self._orphan_output()
        with self._lock:
            hold = self._hold_until
        if must_stop(alive, hold, now):
            log.error("event=owner_gone action=stop hold_until=%s reason=%r",
                      "none" if hold is None else f"{hold:.3f}",
                      "the daemon that owns this mount is gone and no maintenance hold covers now")
            self._stop()
            return True
        return False

    def _orphan_output(self) -> None:
        """The owner read our output from a pipe: from now on it goes to the log file."""
        if self._orphaned_output or self._log_file is None:
            return
        self._orphaned_output = True
        try:
            fd = os.open(self._log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            log.warning("event=log_file_unusable path=%s error=%r", self._log_file, str(e))
            return
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        log.warning("event=owner_gone action=hold hold_until=%s log=%s",
                    "none" if self._hold_until is None else f"{self._hold_until:.3f}", self._log_file)

    def run(self) -> None:
        """The watch thread's loop: sleeps on the owner's pidfd, the wake pipe, and the
        end of the hold."""
        while True:
            now = time.monotonic()
            if self.check(now):
                return
            with self._lock:
                pidfd, hold = self._pidfd, self._hold_until
            waits = [self._wake_r] + ([pidfd] if pidfd is not None and self._owner_alive() else [])
            timeout = None if hold is None or self._owner_alive() else max(0.0, hold - now)
            ready, _, _ = select.select(waits, [], [], timeout)
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="owner-watch", daemon=True)
        thread.start()
        return thread
