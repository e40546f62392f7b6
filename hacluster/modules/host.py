"""What a node gives its modules: the one interface between them.

The node daemon implements ``ModuleHost``; modules (the registry, the runtimes,
the mirror and farm drivers) use nothing else of it and never import it. The
committed cluster state reaches a module as a read-only slice (``ModuleSlice``):
the part its view reads, handed over when that part changed (``registry.StateFeed``)
or read on demand.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Protocol, TypeVar, runtime_checkable

from raft.commands import Answer, RaftCommand

from hacluster.node.cluster_config import ClusterConfig
from hacluster.node.lease_holder import LeaseHolder

R = TypeVar("R", bound=Answer)
T = TypeVar("T")


def frozen(value: Any) -> Any:
    """A read-only copy of plain data: mappings become MappingProxyType, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


@dataclass(frozen=True)
class ModuleSlice:
    """The part of the committed cluster state one module's view reads, read-only:
    its own entry (None: not installed) and the leases it named (absent: none yet),
    without their ``seq`` (the leader's fence, which moves at every renewal)."""
    module: Mapping[str, Any] | None
    leases: Mapping[str, Mapping[str, Any]]
    maintenance: bool = False   # the module, or the cluster, is in maintenance

    @classmethod
    def of(cls, state: Mapping[str, Any], module: str, leases: Iterable[str]) -> "ModuleSlice":
        """From a cluster state snapshot (``raft.member.RaftMember.snapshot``). A lease's
        ``hold_s`` (the leader's, like ``seq``) is left out."""
        entry = state["modules"].get(module)
        maintenance = state.get("maintenance") or {}
        return cls(frozen(entry) if entry is not None else None, MappingProxyType({
            r: frozen({k: v for k, v in state["leases"][r].items() if k not in ("seq", "hold_s")})
            for r in leases if r in state["leases"]}),
            "cluster" in maintenance or module in (maintenance.get("modules") or {}))

    def lease(self, resource: str) -> Mapping[str, Any]:
        """The lease ``resource`` (empty when there is none)."""
        return self.leases.get(resource) or MappingProxyType({})

    def entry(self) -> Mapping[str, Any]:
        """The module's entry (empty when it is not installed)."""
        return self.module if self.module is not None else MappingProxyType({})


@runtime_checkable
class ModuleHost(Protocol):
    """The node, as its modules see it (implemented by ``hacluster.node.daemon.Daemon``)."""

    name: str                       # this node's member name
    config: ClusterConfig           # paths, secret files, lease timing, the lab's path prefix

    # ---- the committed state ----------------------------------------------------------
    def cluster_state(self) -> dict[str, Any]:
        """A copy of the whole committed state (members, leases, modules), read now
        (a deep copy: slice it once for many readers, see ``ModuleSlice.of``)."""
        ...

    def members(self) -> dict[str, dict[str, str]]:
        """The committed members, or the configured ones before the first is committed."""
        ...

    def member_hosts(self) -> set[str]:
        """The members' hosts, as their connections come from (for listeners' limits)."""
        ...

    def caught_up(self) -> bool:
        """This member has applied what the leader had committed when it (re)joined."""
        ...

    # ---- changing it ------------------------------------------------------------------
    async def commit(self, command: RaftCommand[R], *args: Any) -> R:
        """Commit ``command(*args)`` through Raft and return its answer once applied
        here; ``ControlError`` when it was not committed in time (no quorum?)."""
        ...

    # ---- leases -----------------------------------------------------------------------
    def hold(self, resource: str, *, on_acquired: Callable[[int], None] | None = None,
             on_lost: Callable[[int, str], None] | None = None,
             resume_epoch: int | None = None) -> LeaseHolder:
        """Keep acquiring and renewing lease ``resource`` for this node from now on
        (``resume_epoch``: go on with a session left running, LeaseHolder)."""
        ...

    def holder(self, resource: str) -> LeaseHolder | None:
        """The holder of ``resource`` on this node (this node's liveness lease, say)."""
        ...

    def release(self, resource: str, *, hand_back: bool = True) -> "asyncio.Future[None]":
        """Stop holding ``resource``, at once on this node; the future is done once the
        lease is handed back in Raft (``LeaseHolder.hand_back``: not a loss), or, without
        ``hand_back``, once the holder stopped (for a lease not held: nothing to hand back)."""
        ...

    # ---- tasks ------------------------------------------------------------------------
    def track(self, task: "asyncio.Task[T]") -> "asyncio.Task[T]":
        """A background task, cancelled when the node stops."""
        ...
