"""Live events of the whole cluster for the API's server-sent events (/api/events).

Any node answers for the cluster: the hub reads what the API's reads show (the
members and Raft from this node's committed state and status, every module's state
on every node through peer control) once a ``period`` while at least one page
listens, and sends what changed since the previous reading. One reading serves every
listener (the poller is shared), none runs when nobody listens, and a listener that
does not keep up is dropped rather than let its queue grow (the page reconnects and
starts again from a full picture).

The pure part, :func:`picture` and :func:`changes`, is unit tested; the hub only
schedules it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

log = logging.getLogger("hacluster.http.events")

PERIOD_S = 1.0
QUEUE_MAX = 64          # events a listener may be behind before it is dropped
# what of a module's per-node state makes an event (progress changes included: the
# page shows replication and reintegration progress live)
MODULE_FIELDS = ("state", "ready", "primary", "epoch", "in_sync", "transition", "reintegration",
                 "buckets", "members", "connected", "error", "failover", "vip")
MEMBER_FIELDS = ("live", "connected", "leader")
RAFT_FIELDS = ("leader", "term", "has_quorum")

Reading = tuple[dict[str, Any], list[dict[str, Any]]]     # (cluster, modules)


@dataclass(frozen=True)
class Picture:
    """What events compare: per (module, node) the state fields, per member its
    liveness, and the Raft leader, term and quorum."""
    modules: dict[tuple[str, str], dict[str, Any]]
    members: dict[str, dict[str, Any]]
    raft: dict[str, Any]


def picture(cluster: dict[str, Any], modules: list[dict[str, Any]]) -> Picture:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for module in modules:
        for row in module.get("nodes", []):
            if row.get("ok"):
                result = row.get("result") or {}
                rows[(module["name"], row["node"])] = {
                    k: result[k] for k in MODULE_FIELDS if k in result}
            else:
                rows[(module["name"], row["node"])] = {"state": "UNKNOWN",
                                                       "error": row.get("error", "")}
    members = {m["name"]: {k: m.get(k) for k in MEMBER_FIELDS}
               for m in cluster.get("members", [])}
    return Picture(rows, members, {k: cluster.get(k) for k in RAFT_FIELDS})


def changes(before: Picture | None, after: Picture) -> list[dict[str, Any]]:
    """The events from ``before`` to ``after`` (``before`` None: none, the listener
    starts from the full picture). A module on a node that appears or disappears is a
    change of its state from/to None."""
    if before is None:
        return []
    out: list[dict[str, Any]] = []
    if before.raft != after.raft:
        out.append({"type": "raft", "before": before.raft, "after": after.raft})
    for name in sorted(set(before.members) | set(after.members)):
        old, new = before.members.get(name), after.members.get(name)
        if old != new:
            out.append({"type": "member", "member": name, "before": old, "after": new})
    for key in sorted(set(before.modules) | set(after.modules)):
        old, new = before.modules.get(key), after.modules.get(key)
        if old != new:
            out.append({"type": "module", "module": key[0], "node": key[1],
                        "from": (old or {}).get("state"), "to": (new or {}).get("state"),
                        "before": old, "after": new})
    return out


def frame(event_id: int, kind: str, data: Any) -> bytes:
    """One server-sent event (the data on one line: JSON has no raw newline)."""
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, sort_keys=True)}\n\n".encode()


@dataclass(eq=False)     # each listener is itself (a set member), not its value
class _Listener:
    queue: asyncio.Queue[tuple[int, str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_MAX))


class EventHub:
    """Reads the cluster with ``read`` every ``period_s`` while someone listens."""

    def __init__(self, read: Callable[[], Awaitable[Reading]], period_s: float = PERIOD_S,
                 wall: Callable[[], float] = time.time) -> None:
        self._read = read
        self._period_s = period_s
        self._wall = wall
        self._listeners: set[_Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: Picture | None = None
        self._snapshot: dict[str, Any] | None = None
        self._seq = 0

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[tuple[int, str, Any] | None]]:
        """A queue of (id, kind, data), None when the listener was dropped; the
        latest full picture ("snapshot") first when there is one."""
        listener = _Listener()
        if self._snapshot is not None:
            listener.queue.put_nowait((self._seq, "snapshot", self._snapshot))
        self._listeners.add(listener)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        try:
            yield listener.queue
        finally:
            self._listeners.discard(listener)
            if not self._listeners and self._task is not None:
                self._task.cancel()
                self._task = None
                self._last = None     # a later listener starts from a fresh reading

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _send(self, kind: str, data: Any) -> None:
        self._seq += 1
        for listener in list(self._listeners):
            try:
                listener.queue.put_nowait((self._seq, kind, data))
            except asyncio.QueueFull:
                self._listeners.discard(listener)
                with contextlib.suppress(asyncio.QueueEmpty):
                    listener.queue.get_nowait()
                listener.queue.put_nowait(None)
                log.info("event=api_events_listener_dropped reason=%r", "not keeping up")

    async def _poll(self) -> None:
        while self._listeners:
            try:
                cluster, modules = await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - no quorum, a node away: tell, go on
                self._send("error", {"error": str(e) or type(e).__name__, "t": self._wall()})
            else:
                now = picture(cluster, modules)
                for event in changes(self._last, now):
                    self._send(event["type"], {**event, "t": self._wall()})
                if self._last is None or now != self._last:
                    self._snapshot = {"cluster": cluster, "modules": modules, "t": self._wall()}
                    self._send("snapshot", self._snapshot)
                self._last = now
            await asyncio.sleep(self._period_s)
