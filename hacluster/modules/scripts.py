"""Running a module's ``bin/`` scripts (SafeKit conventions), on asyncio.

Each script runs as ``bin/<script> <state> <next_state> <action>`` in its own
process group (so a timeout kills what it spawned too), with stdin from
/dev/null and its output through a pipe the daemon reads, line by line, appended to
the module's script log with a timestamp (UTC) and the script name; the log rotates at
its size cap (rotating_log). A script that is not there is a success.
Stop scripts that fail are called once more with action ``force``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from checkers.errd import process_start_ticks

from .rotating_log import DEFAULT_KEEP, DEFAULT_MAX_BYTES, RotatingLog, utc_timestamp

log = logging.getLogger("hacluster.scripts")

SCRIPTS = ("prestart", "poststop", "start_prim", "stop_prim", "start_second", "stop_second",
           "start_both", "stop_both", "transition")
STOP_SCRIPTS = frozenset({"stop_prim", "stop_second", "stop_both", "poststop"})
FORCE_ACTION = "force"
KILL_GRACE_S = 2.0
# After a script exits, wait this long for its remaining output; a background
# child (e.g. the application started by start_prim) may keep the pipe open.
DRAIN_IDLE_S = 0.05
MAX_LINE_BYTES = 64 * 1024
_POLL_S = 0.05


@dataclass(frozen=True)
class ScriptResult:
    script: str
    returncode: int
    timed_out: bool
    duration_s: float
    forced: bool = False
    skipped: bool = False
    last_line: str = ""     # the script's last non-empty output line (a failure's reason)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _timestamp() -> str:
    return utc_timestamp()


def _check_env(env: dict[str, str], where: str) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"invalid environment variable name {key!r} in {where}")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"environment variable {key} in {where} must be a string "
                             f"without NUL bytes, got {value!r}")


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member that is not a zombie
    (orphans may stay zombies for a while when PID 1 does not reap)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """False when the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Tells when the process exits. (Process.wait() on Python 3.11 also waits
    for the pipes to close, which a background child can hold open forever.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=MAX_LINE_BYTES, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _spawn(program: str, *args: str,
                 **kwargs: Any) -> tuple[asyncio.subprocess.Process, asyncio.Future[None]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(lambda: _ExitProtocol(loop), program,
                                                     *args, **kwargs)
    return asyncio.subprocess.Process(transport, protocol, loop), protocol.exited


class _LineLogger:
    """Copies a script's output pipe into the script log, one write per line through
    the runner's one RotatingLog (lines of scripts running at once interleave only
    whole, and rotation falls between lines)."""

    def __init__(self, out: RotatingLog, script: str, stream: asyncio.StreamReader) -> None:
        self.script = script
        self.prefix = f" {script}: ".encode()
        self.stream = stream
        self.out = out
        self.activity = 0      # bumped on every chunk: lets the caller see the pipe go idle
        self.last_line = b""
        self.task = asyncio.ensure_future(self._copy())

    def _write(self, line: bytes) -> None:
        if line.strip():
            self.last_line = line
        self.out.write_line(_timestamp().encode() + self.prefix + line)

    async def _copy(self) -> None:
        pending = b""
        try:
            while chunk := await self.stream.read(65536):
                self.activity += 1
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._write(line)
                while len(pending) > MAX_LINE_BYTES:
                    self._write(pending[:MAX_LINE_BYTES])
                    pending = pending[MAX_LINE_BYTES:]
            if pending:
                self._write(pending)
        except OSError as e:
            log.warning("event=script_log_failed script=%s reason=%r", self.script, str(e))

    async def drain(self) -> None:
        """Return at EOF, or once the pipe has been idle for DRAIN_IDLE_S."""
        while not self.task.done():
            seen = self.activity
            done, _ = await asyncio.wait([self.task], timeout=DRAIN_IDLE_S)
            if not done and self.activity == seen:
                return


class ScriptRunner:
    def __init__(self, module_dir: Path, module: str, log_path: Path, env: dict[str, str],
                 timeout_s: float, *, kill_grace_s: float = KILL_GRACE_S,
                 log_max_bytes: int = DEFAULT_MAX_BYTES, log_keep: int = DEFAULT_KEEP) -> None:
        """``env``: the module's ``<user>`` variables. ``timeout_s``: default
        per-script timeout. ``log_max_bytes``, ``log_keep``: the script log's rotation."""
        _check_env(env, f"the <user> variables of module {module}")
        if timeout_s <= 0:
            raise ValueError(f"script timeout of module {module} must be positive, got {timeout_s}")
        self.module_dir = Path(module_dir)
        self.module = module
        self.log_path = Path(log_path)
        self.log = RotatingLog(self.log_path, log_max_bytes, log_keep)
        self.env = dict(env)
        self.timeout_s = timeout_s
        self.kill_grace_s = kill_grace_s
        # pgid (= the script's pid) -> when it started (clock ticks since boot: psutil's
        # create_time moves when the wall clock is stepped), to never signal a reused PID.
        self._groups: dict[int, int | None] = {}
        self._loggers: set[_LineLogger] = set()

    # ---- public API ---------------------------------------------------------------
    async def run(self, script: str, state: str, next_state: str, action: str, *,
                  timeout_s: float | None = None,
                  extra_env: dict[str, str] | None = None) -> ScriptResult:
        if script not in SCRIPTS:
            raise ValueError(f"unknown script {script!r} for module {self.module} "
                             f"(known: {', '.join(SCRIPTS)})")
        extra_env = extra_env or {}
        _check_env(extra_env, f"extra environment of {script} (module {self.module})")
        path = self.module_dir / "bin" / script
        args = [state, next_state, action]
        if not path.exists():
            log.info("event=script_skipped module=%s script=%s reason=missing path=%s",
                     self.module, script, path)
            return ScriptResult(script, 0, False, 0.0, skipped=True)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        env = {**os.environ, **self.env, **extra_env, "SAFEMODULE": self.module,
               "HACLUSTER_MODULE": self.module, "HACLUSTER_MODULE_DIR": str(self.module_dir)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("event=script_started module=%s script=%s args=%r timeout_s=%s",
                 self.module, script, " ".join(args), timeout)
        started = time.monotonic()
        try:
            proc, exited = await _spawn(
                str(path), *args, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, cwd=str(self.module_dir), env=env)
        except OSError as e:   # not executable, bad interpreter line, ...
            log.error("event=script_failed module=%s script=%s reason=%r", self.module, script,
                      f"cannot execute {path}: {e}")
            return ScriptResult(script, 126, False, time.monotonic() - started)
        self._remember(proc.pid)
        assert proc.stdout is not None
        output = _LineLogger(self.log, script, proc.stdout)
        self._loggers.add(output)
        output.task.add_done_callback(lambda _: self._loggers.discard(output))
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(exited), timeout)
        except asyncio.TimeoutError:
            timed_out = True
            log.warning("event=script_timeout module=%s script=%s timeout_s=%s pgid=%d",
                        self.module, script, timeout, proc.pid)
            await self._kill_group(proc.pid, exited)
        finally:
            if not exited.done():     # cancelled: do not leave the script running
                await self._kill_group(proc.pid, exited)
        await output.drain()
        duration = time.monotonic() - started
        rc = proc.returncode if proc.returncode is not None else -int(signal.SIGKILL)
        log.info("event=script_done module=%s script=%s rc=%d seconds=%.3f timed_out=%s",
                 self.module, script, rc, duration, str(timed_out).lower())
        return ScriptResult(script, rc, timed_out, duration,
                            last_line=output.last_line.decode(errors="replace").strip()[:200])

    async def run_stop(self, script: str, state: str, next_state: str,
                       action: str) -> ScriptResult:
        """A stop script; if it fails or times out, once more with action ``force``."""
        if script not in STOP_SCRIPTS:
            raise ValueError(f"{script!r} is not a stop script "
                             f"(stop scripts: {', '.join(sorted(STOP_SCRIPTS))})")
        first = await self.run(script, state, next_state, action)
        if first.ok:
            return first
        log.warning("event=script_force module=%s script=%s first_rc=%d timed_out=%s",
                    self.module, script, first.returncode, str(first.timed_out).lower())
        forced = await self.run(script, state, next_state, FORCE_ACTION)
        return ScriptResult(script, forced.returncode, forced.timed_out,
                            first.duration_s + forced.duration_s, forced=True)

    async def kill_leftovers(self) -> int:
        """Kill every process group this runner started that still has live
        members; returns how many groups were signalled."""
        killed = 0
        for pgid in list(self._groups):
            if not self._same_group(pgid):
                self._groups.pop(pgid, None)
                continue
            if _group_alive(pgid):
                log.warning("event=script_leftovers_killed module=%s pgid=%d", self.module, pgid)
                await self._kill_group(pgid, None)
                killed += 1
            self._groups.pop(pgid, None)
        # Output of the killed processes: wait for the pipes to close.
        loggers = [output.task for output in self._loggers]
        if loggers:
            _, pending = await asyncio.wait(loggers, timeout=1.0)
            for task in pending:
                task.cancel()
        return killed

    # ---- internals ------------------------------------------------------------------
    def _remember(self, pid: int) -> None:
        for pgid in [g for g in self._groups if not self._same_group(g) or not _group_alive(g)]:
            del self._groups[pgid]
        try:
            self._groups[pid] = process_start_ticks(pid)
        except ProcessLookupError:
            # A fast script may be gone already while its background children
            # (the application) live on in its group: remember the group anyway.
            self._groups[pid] = None

    def _same_group(self, pgid: int) -> bool:
        """Whether ``pgid`` can still be our group: its leader is our process,
        or there is no process with that PID (a live PID with another
        start time means ours exited and the group emptied)."""
        try:
            started = process_start_ticks(pgid)
        except ProcessLookupError:
            return True
        # Leader gone before we saw it (None): a live process with that PID is another one.
        return self._groups[pgid] is not None and started == self._groups[pgid]

    async def _kill_group(self, pgid: int, exited: asyncio.Future[None] | None) -> None:
        """SIGTERM to the group, SIGKILL after the grace period if any member is left."""
        if _signal_group(pgid, signal.SIGTERM):
            deadline = time.monotonic() + self.kill_grace_s
            while time.monotonic() < deadline and _group_alive(pgid):
                await asyncio.sleep(_POLL_S)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
        if exited is not None:
            await exited
