"""Tells the replication process's owner (the mirror module's daemon) what the
link sees, over the owner's Unix socket: one JSON request per line, one JSON
reply ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``
(the format of hacluster's control socket; replication/ imports nothing above
it, so this is its own tiny client).

* ``peer_lost`` blocks until the owner answered ok, and raises HookFailed
  otherwise: the sender then fails every later write with EIO (DESIGN rule 3).
* ``in_sync`` returns at once; a thread retries every 0.5 s until the owner
  has it. A later ``peer_lost`` cancels a pending ``in_sync`` and is sent only
  after an in-flight one got its answer, so the owner never learns "in sync"
  after "lost".
* ``progress`` is best effort.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any, Callable

log = logging.getLogger("replication.hook")

IN_SYNC_RETRY_S = 0.5
PROGRESS_INTERVAL_S = 1.0
PROGRESS_TIMEOUT_S = 0.5
MAX_REPLY_BYTES = 1 << 20


class HookFailed(RuntimeError):
    """The owner did not confirm (refused, no answer in time, or not listening)."""


class HookClient:
    def __init__(self, socket_path: str, module: str, epoch: int, timeout_s: float = 10.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"hook timeout must be positive, got {timeout_s}")
        self.socket_path = socket_path
        self.module = module
        self.epoch = epoch
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        # Held around every peer_lost/in_sync exchange: orders them on the wire.
        self._decisions = threading.Lock()
        self._generation = 0            # bumped by peer_lost: cancels pending in_sync
        self._generation_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ---- the link's hooks -----------------------------------------------------------
    def peer_lost(self, reason: str) -> None:
        """Blocks until the owner recorded the loss; raises HookFailed if it did not."""
        with self._generation_lock:
            self._generation += 1
        started = time.monotonic()
        try:
            with self._decisions:
                self.request("replication_peer_lost", reason=reason)
        except HookFailed as e:
            log.error("event=hook_peer_lost ok=false seconds=%.3f module=%s epoch=%d reason=%r "
                      "error=%r", time.monotonic() - started, self.module, self.epoch, reason,
                      str(e))
            raise
        log.info("event=hook_peer_lost ok=true seconds=%.3f module=%s epoch=%d reason=%r",
                 time.monotonic() - started, self.module, self.epoch, reason)

    def in_sync(self) -> None:
        """Returns at once; the owner is told (retrying) from a thread."""
        with self._generation_lock:
            generation = self._generation
        self._start_thread(self._deliver_in_sync, generation, name="replication-hook-in-sync")

    def progress(self, progress: dict[str, Any],
                 answered: Callable[[Any], None] | None = None) -> bool:
        """Best effort: False if the owner did not take it; ``answered(result)`` with
        its answer when it did."""
        try:
            result = self.request("replication_progress", timeout_s=PROGRESS_TIMEOUT_S,
                                  progress=progress)
        except HookFailed as e:
            log.debug("event=hook_progress_failed error=%r", str(e))
            return False
        if answered is not None:
            answered(result)
        return True

    def report_progress(self, status: Callable[[], dict[str, Any] | None],
                        answered: Callable[[Any], None] | None = None) -> None:
        """Every PROGRESS_INTERVAL_S, send ``status()`` unless it returns None;
        ``answered(result)`` with each answer (the owner's maintenance hold,
        replication.owner_watch)."""
        def loop() -> None:
            while not self._stop.wait(PROGRESS_INTERVAL_S):
                try:
                    current = status()
                except Exception as e:  # noqa: BLE001 - progress must never stop the link
                    log.debug("event=hook_progress_status_failed error=%r", str(e))
                    continue
                if current is not None:
                    self.progress(current, answered)

        self._start_thread(loop, name="replication-hook-progress")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 1)

    # ---- one exchange ---------------------------------------------------------------
    def request(self, cmd: str, *, timeout_s: float | None = None, **fields: Any) -> Any:
        """Send one request, return the owner's ``result``; HookFailed otherwise."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        message = {"cmd": cmd, "module": self.module, "epoch": self.epoch, **fields}
        line = (json.dumps(message, default=str) + "\n").encode()
        where = f"owner socket {self.socket_path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.socket_path)
            sock.sendall(line)
            reply = b""
            while not reply.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise HookFailed(f"{where} closed the connection without answering {cmd}")
                reply += chunk
                if len(reply) > MAX_REPLY_BYTES:
                    raise HookFailed(f"{where} sent an oversized reply to {cmd}")
        except socket.timeout:
            raise HookFailed(f"{where} did not answer {cmd} within {timeout} s") from None
        except (FileNotFoundError, ConnectionRefusedError):
            raise HookFailed(f"nothing listening on {where} (for {cmd})") from None
        except OSError as e:
            raise HookFailed(f"{where} failed during {cmd}: {e}") from None
        finally:
            sock.close()
        try:
            answer = json.loads(reply)
        except ValueError:
            raise HookFailed(f"{where} answered {cmd} with invalid JSON: {reply[:200]!r}") from None
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            error = answer.get("error") if isinstance(answer, dict) else None
            raise HookFailed(f"{where} refused {cmd}: {error if error else repr(answer)}")
        return answer.get("result")

    # ---- internals ------------------------------------------------------------------
    def _start_thread(self, target: Callable[..., None], *args: Any, name: str) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _deliver_in_sync(self, generation: int) -> None:
        started = time.monotonic()
        attempts = 0
        while not self._stop.is_set():
            with self._decisions:
                with self._generation_lock:
                    cancelled = generation != self._generation
                if cancelled:
                    log.info("event=hook_in_sync_cancelled module=%s epoch=%d reason=peer_lost",
                             self.module, self.epoch)
                    return
                attempts += 1
                try:
                    self.request("replication_in_sync")
                except HookFailed as e:
                    error = str(e)
                else:
                    log.info("event=hook_in_sync ok=true seconds=%.3f attempts=%d module=%s "
                             "epoch=%d", time.monotonic() - started, attempts, self.module,
                             self.epoch)
                    return
            if attempts == 1 or attempts % 20 == 0:   # do not flood the log while retrying
                log.warning("event=hook_in_sync ok=false attempts=%d module=%s epoch=%d error=%r",
                            attempts, self.module, self.epoch, error)
            self._stop.wait(IN_SYNC_RETRY_S)
