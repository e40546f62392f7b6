"""Cluster event hooks: a command or a webhook run when something happens to the
cluster (issue 21 item 3; Pacemaker's alerts, SafeKit's notification scripts), besides
a module's own ``transition`` script.

Configured in ``hooks.json`` next to cluster.json (written by the administrator, never
by the daemon)::

    {"hooks": [
      {"on": ["member_lost", "quorum_lost"], "command": ["/usr/local/bin/page-oncall"]},
      {"on": ["*"], "url": "https://alerts.example/hacluster", "timeout_s": 5}
    ]}

Events (``EVENTS``), each with its fields:

* ``member_lost`` / ``member_back`` (member): a member's liveness lease expired in Raft /
  it holds it again afterwards. Fired by the Raft leader only (one per cluster).
* ``lease_expired`` (resource, holder, epoch): any lease the leader expired. Leader only.
* ``primary_changed`` (module, previous, primary, epoch, forced): Raft granted a mirror
  module's primary lease to another node: a failover or a swap was decided. Leader only.
* ``failover_done`` (module, primary, epoch): on the node that became primary, once its
  module serves (PRIM or ALONE) in a newer epoch than it last saw.
* ``quorum_lost`` / ``quorum_back``: this member no longer / again sees a majority.
* ``peer_refused`` (peer, reason): a connection refused by Raft's transport (wrong
  secret, a flood, an oversize message), as logged (once per address per interval).

A command gets the event as JSON on stdin and as environment variables
(``HACLUSTER_EVENT``, ``HACLUSTER_NODE``, ``HACLUSTER_<FIELD>``); a URL gets it as a JSON
POST. Best effort, never in the way: hooks run one at a time off the event loop's
critical path, each within its ``timeout_s`` (then killed), from a bounded queue (the
oldest event is dropped, with a warning, when it overflows); every run is one log line
(``event=hook_done`` / ``hook_failed``). Firing decisions are pure (``EventTracker``,
``quorum_event``, ``module_events``); the runner is the I/O.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("hacluster.hooks")

HOOKS_FILE = "hooks.json"
EVENTS = ("member_lost", "member_back", "lease_expired", "primary_changed", "failover_done",
          "quorum_lost", "quorum_back", "peer_refused")
LIVENESS_PREFIX = "node/"
MIRROR_PREFIX = "mirror/"
SERVING = ("PRIM", "ALONE")
QUEUE_MAX = 256
DEFAULT_TIMEOUT_S = 10.0
KILL_WAIT_S = 2.0
_FIELD = re.compile(r"^[a-z_]+$")


class HookConfigError(ValueError):
    """hooks.json that cannot be used; the message names the file and the hook."""


@dataclass(frozen=True)
class ClusterEvent:
    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self, node: str) -> dict[str, Any]:
        return {"event": self.kind, "node": node, **self.fields}


@dataclass(frozen=True)
class Hook:
    on: frozenset[str]
    command: tuple[str, ...] | None = None
    url: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def wants(self, kind: str) -> bool:
        return "*" in self.on or kind in self.on

    @property
    def target(self) -> str:
        return self.url if self.url else " ".join(self.command or ())


def parse_hooks(text: str, where: str) -> list[Hook]:
    """The hooks of a hooks.json text; HookConfigError (one line, naming ``where``)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise HookConfigError(f"{where}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("hooks"), list):
        raise HookConfigError(f"{where}: expected {{\"hooks\": [...]}}")
    unknown = sorted(set(raw) - {"hooks"})
    if unknown:
        raise HookConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    hooks = []
    for i, h in enumerate(raw["hooks"]):
        at = f"{where}: hooks[{i}]"
        if not isinstance(h, dict):
            raise HookConfigError(f"{at}: expected an object")
        extra = sorted(set(h) - {"on", "command", "url", "timeout_s"})
        if extra:
            raise HookConfigError(f"{at}: unknown field(s) {', '.join(extra)}")
        on = h.get("on")
        if not isinstance(on, list) or not on or not all(isinstance(e, str) for e in on):
            raise HookConfigError(f"{at}: 'on' must be a non-empty list of events "
                                  f"({', '.join(EVENTS)} or *)")
        bad = [e for e in on if e != "*" and e not in EVENTS]
        if bad:
            raise HookConfigError(f"{at}: unknown event {bad[0]!r}; have {', '.join(EVENTS)} or *")
        command, url = h.get("command"), h.get("url")
        if (command is None) == (url is None):
            raise HookConfigError(f"{at}: give exactly one of 'command' and 'url'")
        if command is not None and (not isinstance(command, list) or not command
                                    or not all(isinstance(c, str) and c for c in command)
                                    or not command[0].startswith("/")):
            raise HookConfigError(f"{at}: 'command' must be a list of strings starting with "
                                  "an absolute program path (no shell)")
        if url is not None and (not isinstance(url, str)
                                or not url.startswith(("http://", "https://"))):
            raise HookConfigError(f"{at}: 'url' must be an http:// or https:// URL")
        timeout = h.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
            raise HookConfigError(f"{at}: 'timeout_s' must be a number of seconds in (0, 300]")
        hooks.append(Hook(frozenset(on), tuple(command) if command else None, url, float(timeout)))
    return hooks


def load_hooks(directory: Path) -> list[Hook]:
    """The hooks in ``directory``/hooks.json; none when the file does not exist."""
    path = directory / HOOKS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise HookConfigError(f"{path}: unreadable: {e.strerror}") from None
    return parse_hooks(text, str(path))


# ---- when to fire (pure) ------------------------------------------------------------------

class EventTracker:
    """Events from applied Raft entries. Every member feeds it every entry (to know
    who was lost and who held what); the caller fires what it returns only on the
    leader, once caught up, so each cluster event fires once."""

    def __init__(self) -> None:
        self.lost: set[str] = set()
        self.holders: dict[str, str] = {}

    def applied(self, op: str, args: tuple, result: Mapping[str, Any]) -> list[ClusterEvent]:
        if not result.get("ok") or not args:
            return []
        resource = args[0]
        if not isinstance(resource, str):
            return []
        out: list[ClusterEvent] = []
        if op == "expire":
            holder = result.get("holder")
            out.append(ClusterEvent("lease_expired", {"resource": resource, "holder": holder,
                                                      "epoch": result.get("epoch")}))
            if resource.startswith(LIVENESS_PREFIX):
                member = resource[len(LIVENESS_PREFIX):]
                self.lost.add(member)
                out.append(ClusterEvent("member_lost", {"member": member}))
        elif op == "acquire" and len(args) >= 2 and isinstance(args[1], str):
            holder = args[1]
            if resource.startswith(LIVENESS_PREFIX) and holder in self.lost:
                self.lost.discard(holder)
                out.append(ClusterEvent("member_back", {"member": holder}))
            previous = self.holders.get(resource)
            self.holders[resource] = holder
            if resource.startswith(MIRROR_PREFIX) and previous is not None and previous != holder:
                out.append(ClusterEvent("primary_changed", {
                    "module": resource[len(MIRROR_PREFIX):], "previous": previous,
                    "primary": holder, "epoch": result.get("epoch"),
                    "forced": bool(result.get("forced"))}))
        return out


def quorum_event(before: bool | None, now: bool) -> ClusterEvent | None:
    """quorum_lost / quorum_back on a change (nothing on the first look)."""
    if before is None or before == now:
        return None
    return ClusterEvent("quorum_back" if now else "quorum_lost")


def module_events(before: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]],
                  node: str) -> list[ClusterEvent]:
    """failover_done for each mirror module of this node that serves now (PRIM/ALONE) in
    a newer epoch than before, having not served then (``before``/``now``: module name ->
    its status, as ``hacluster state`` has it)."""
    out = []
    for name, st in sorted(now.items()):
        prev = before.get(name)
        if prev is None or st.get("mode") != "mirror" or st.get("state") not in SERVING:
            continue
        epoch, prev_epoch = st.get("epoch"), prev.get("epoch")
        if (prev.get("state") not in SERVING and isinstance(epoch, int)
                and (not isinstance(prev_epoch, int) or epoch > prev_epoch)):
            out.append(ClusterEvent("failover_done", {"module": name, "primary": node,
                                                      "epoch": epoch}))
    return out


_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def refused_event(message: str) -> ClusterEvent | None:
    """The peer_refused event in a Raft transport log line, else None."""
    if not message.startswith("event=peer_refused"):
        return None
    fields = {k: v[1:-1] if v.startswith('"') else v for k, v in _KV.findall(message)}
    fields.pop("event", None)
    return ClusterEvent("peer_refused", fields)


def environment(event: ClusterEvent, node: str) -> dict[str, str]:
    env = {"HACLUSTER_EVENT": event.kind, "HACLUSTER_NODE": node}
    for k, v in event.fields.items():
        if _FIELD.match(k) and v is not None:
            env[f"HACLUSTER_{k.upper()}"] = str(v)
    return env


# ---- running them (I/O) --------------------------------------------------------------------

class HookRunner:
    """Runs the hooks for each fired event, one at a time, from a bounded queue."""

    def __init__(self, hooks: list[Hook], node: str) -> None:
        self.hooks = hooks
        self.node = node
        self._queue: deque[ClusterEvent] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0

    def start(self) -> None:
        if self.hooks and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event-hooks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wants(self, kind: str) -> bool:
        """Does any hook run on ``kind`` (what is costly to watch for is watched only then)?"""
        return any(h.wants(kind) for h in self.hooks)

    def fire(self, event: ClusterEvent) -> None:
        """Queue ``event`` for the hooks that want it (event loop thread)."""
        log.info("event=cluster_event kind=%s %s", event.kind,
                 " ".join(f"{k}={v}" for k, v in event.fields.items()))
        if not self.wants(event.kind):
            return
        if len(self._queue) >= QUEUE_MAX:
            self._queue.popleft()
            self.dropped += 1
            log.warning("event=hook_queue_full dropped=%d reason=\"hooks slower than events: "
                        "the oldest event was dropped\"", self.dropped)
        self._queue.append(event)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            event = self._queue.popleft()
            for hook in self.hooks:
                if hook.wants(event.kind):
                    await self.run_one(hook, event)

    async def run_one(self, hook: Hook, event: ClusterEvent) -> bool:
        started = time.monotonic()
        payload = json.dumps(event.as_dict(self.node)).encode()
        try:
            if hook.command is not None:
                error = await self._command(hook, event, payload)
            else:
                error = await asyncio.get_running_loop().run_in_executor(
                    None, _post, hook.url, payload, hook.timeout_s)
        except Exception as e:      # a hook never takes the daemon down
            error = f"{type(e).__name__}: {e}"
        took = time.monotonic() - started
        if error is None:
            log.info("event=hook_done kind=%s hook=%r took_s=%.3f", event.kind, hook.target, took)
            return True
        log.warning("event=hook_failed kind=%s hook=%r took_s=%.3f error=%r", event.kind,
                    hook.target, took, error)
        return False

    async def _command(self, hook: Hook, event: ClusterEvent, payload: bytes) -> str | None:
        assert hook.command is not None
        proc = await asyncio.create_subprocess_exec(
            *hook.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, **environment(event, self.node)},
            start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(payload), hook.timeout_s)
        except asyncio.TimeoutError:
            await _kill(proc)
            return f"killed after {hook.timeout_s:g} s"
        except asyncio.CancelledError:     # the daemon stops: no hook outlives it
            await asyncio.shield(_kill(proc))
            raise
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip().splitlines()[-1:] if out else []
            return f"exit status {proc.returncode}" + (f": {tail[0][:200]}" if tail else "")
        return None


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill a hook's whole session (start_new_session: a child it left would hold the
    pipe) and reap it, so that nothing of it outlives the wait."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        await asyncio.wait_for(proc.communicate(), KILL_WAIT_S)   # reaped, pipes closed
    except asyncio.TimeoutError:
        pass


def _post(url: str | None, payload: bytes, timeout_s: float) -> str | None:
    assert url is not None
    req = urllib.request.Request(url, data=payload, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "hacluster-hooks"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))
    return None if 200 <= status < 300 else f"HTTP {status}"


class RefusedTap(logging.Handler):
    """Turns the Raft transport's ``event=peer_refused`` lines (any thread) into
    peer_refused events on the runner's loop."""

    def __init__(self, runner: HookRunner, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self.runner = runner
        self.loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = refused_event(record.getMessage())
        except Exception:       # never break logging
            return
        if event is not None:
            try:
                self.loop.call_soon_threadsafe(self.runner.fire, event)
            except RuntimeError:
                pass            # the loop is closed: the daemon is stopping
