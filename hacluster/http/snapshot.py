"""What the HTTP endpoints know of their node: one snapshot, plain data.

The daemon implements ``NodeProbe`` (``hacluster.node.daemon.Daemon.http_snapshot``)
and builds a ``NodeSnapshot`` on its loop, from what its status already reads; the
endpoints (``metrics``, ``readiness``) are pure functions of it. Nothing here knows the
daemon or the modules' classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

from .histogram import HistogramSnapshot

@dataclass(frozen=True)
class MemberSnapshot:
    name: str
    role: str               # node | witness
    live: bool              # holds its liveness lease in the committed state
    connected: bool         # this member's Raft connection to it (itself: True)
    leader: bool


@dataclass(frozen=True)
class RaftSnapshot:
    role: str               # leader | follower | candidate (this member's, local view)
    term: int
    commit_index: int
    last_applied: int
    leader: str | None      # the leader's member name, None when none is known
    has_quorum: bool
    members: tuple[MemberSnapshot, ...]
    live: bool              # this member holds its liveness lease now (local deadline)
    renewals: HistogramSnapshot     # lease renewal latency (every batch that committed)
    renewals_unconfirmed: int       # batches that got no committed answer in time


@dataclass(frozen=True)
class LinkSnapshot:
    """One replicated directory's link, as its mount last reported it (primary only)."""
    peer: str               # receiver host:port (one per replicated directory)
    phase: str              # connecting | reintegrating | connected | alone | ...
    sender_state: str       # the sender's state (connected, alone, failed, ...)
    in_flight: int          # ops sent and not yet acknowledged: the replication queue
    ops_sent: int
    bytes_sent: int
    age_s: float            # since the mount reported it


@dataclass(frozen=True)
class Reintegration:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    passes: int


@dataclass(frozen=True)
class ModuleSnapshot:
    name: str
    mode: str               # mirror | farm
    state: str              # STOP WAIT ALONE PRIM SECOND (mirror), STOP WAIT UP (farm)
    ready: bool
    lease_held: bool = False    # mirror: this node holds the module's lease now
    epoch: int = 0
    primary: str | None = None
    nodes: tuple[str, ...] = ()
    in_sync: frozenset[str] = frozenset()
    failovers: int = 0      # changes of primary seen committed since the daemon started
    promotions: int = 0     # times this node became primary since the daemon started
    links: tuple[LinkSnapshot, ...] = ()
    reintegration: Reintegration | None = None
    buckets: int = 0        # farm: buckets this node owns
    table_version: int = 0  # farm: the bucket table's version
    resources: Mapping[str, str] = field(default_factory=dict)  # checker resource -> init|up|down
    transition: str | None = None  # the reason of the plan running now, if one runs
    heading_to: str | None = None   # the state that plan leads to


@dataclass(frozen=True)
class NodeSnapshot:
    cluster: str
    node: str
    kind: str               # node | witness
    version: str
    started_at: float       # wall clock (Unix seconds) of the daemon's start
    uptime_s: float
    raft: RaftSnapshot | None   # None while Raft is starting
    modules: tuple[ModuleSnapshot, ...] = ()    # those running on this node
    known_modules: frozenset[str] = frozenset()  # installed in the cluster (running here or not)

    def module(self, name: str) -> ModuleSnapshot | None:
        return next((m for m in self.modules if m.name == name), None)


class NodeProbe(Protocol):
    """The daemon, as the HTTP endpoints see it."""

    def http_snapshot(self) -> NodeSnapshot:
        """The node now: read on the daemon's loop, cheap (no I/O)."""
        ...
