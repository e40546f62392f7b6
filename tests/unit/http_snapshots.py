"""Snapshots of a node for the HTTP endpoints' unit tests (plain data, as the daemon
builds them: hacluster.node.daemon.Daemon.http_snapshot)."""
from __future__ import annotations

import dataclasses

from hacluster.http.histogram import Histogram
from hacluster.http.snapshot import (LinkSnapshot, MemberSnapshot, ModuleSnapshot, NodeSnapshot,
                                     RaftSnapshot, Reintegration)


def raft(leader: str | None = "n1", live: bool = True, **kw) -> RaftSnapshot:
    h = Histogram()
    for v in (0.0008, 0.0012, 0.003, 0.2):
        h.observe(v)
    fields = dict(role="leader" if leader == "n1" else "follower", term=7, commit_index=1234,
                  last_applied=1234, leader=leader, has_quorum=leader is not None,
                  members=(MemberSnapshot("n1", "node", True, True, leader == "n1"),
                           MemberSnapshot("n2", "node", True, True, leader == "n2"),
                           MemberSnapshot("w", "witness", False, False, False)),
                  live=live, renewals=h.snapshot(), renewals_unconfirmed=2)
    fields.update(kw)
    return RaftSnapshot(**fields)


def mirror(state: str = "PRIM", lease_held: bool = True, **kw) -> ModuleSnapshot:
    fields = dict(name="db", mode="mirror", state=state, ready=True, lease_held=lease_held,
                  epoch=5, primary="n1", nodes=("n1", "n2"), in_sync=frozenset({"n1"}),
                  failovers=1, promotions=1,
                  links=(LinkSnapshot("10.0.0.2:7610", "reintegrating", "connected", 3, 40, 4096,
                                      0.4),),
                  reintegration=Reintegration(100, 400, 1, 4, 1),
                  resources={"tcp.db": "up", "custom.x": "down"})
    fields.update(kw)
    return ModuleSnapshot(**fields)


def farm(state: str = "UP", buckets: int = 128, **kw) -> ModuleSnapshot:
    fields = dict(name="web", mode="farm", state=state, ready=True, buckets=buckets,
                  table_version=9, nodes=("n1", "n2"))
    fields.update(kw)
    return ModuleSnapshot(**fields)


def node(modules=(), known=None, **kw) -> NodeSnapshot:
    modules = tuple(modules)
    fields = dict(cluster="prod", node="n1", kind="node", version="0.1.0",
                  started_at=1_800_000_000.5, uptime_s=12.25, raft=raft(), modules=modules,
                  known_modules=frozenset(known if known is not None else
                                          [m.name for m in modules]))
    fields.update(kw)
    return NodeSnapshot(**fields)


def with_module(snapshot: NodeSnapshot, module: ModuleSnapshot) -> NodeSnapshot:
    return dataclasses.replace(snapshot, modules=(module,),
                               known_modules=snapshot.known_modules | {module.name})
