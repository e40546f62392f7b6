"""Who answers 200: the readiness decisions of the HTTP endpoints, pure.

Patroni's REST health checks are the model: a load balancer polls every node and
sends traffic to those that answer 200.

* ``/primary/<module>``: 200 only on the node that serves the module now. A mirror
  module: this node is PRIM or ALONE *and* holds the module's lease (its deadline not
  passed): a primary that lost its lease is demoting, and answering 200 there would send
  clients to a node that must stop acting. A farm module: this node is UP and owns
  buckets. In both, no transition away from that state is running (a swap or a stop
  has begun to stop the application: the load balancer drains it first). 503
  everywhere else; 404 for a module the cluster does not know.
* ``/ready``: the node is a live member: Raft has a leader and this node holds its
  liveness lease.
* ``/health``: the daemon runs (it answers at all).

Bodies are small JSON objects saying why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .snapshot import ModuleSnapshot, NodeSnapshot

PRIMARY_STATES = ("PRIM", "ALONE")

PRIMARY = "primary"
SECONDARY = "secondary"
FARM_MEMBER = "farm_member"
NO_ROLE = "none"
ROLES = (PRIMARY, SECONDARY, FARM_MEMBER, NO_ROLE)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def role_of(module: ModuleSnapshot) -> str:
    """What this node is for the module: primary (PRIM, ALONE), secondary (SECOND),
    farm_member (a farm module UP here), none (stopped, waiting, or starting)."""
    if module.mode == "farm":
        return FARM_MEMBER if module.state == "UP" else NO_ROLE
    if module.state in PRIMARY_STATES:
        return PRIMARY
    return SECONDARY if module.state == "SECOND" else NO_ROLE


def serves(module: ModuleSnapshot) -> tuple[bool, str]:
    """Whether this node serves ``module`` now, and why (or why not)."""
    if module.mode == "farm":
        if module.state != "UP":
            return False, f"state {module.state}"
        if module.heading_to not in (None, "UP"):
            return False, f"UP, leaving for {module.heading_to} ({module.transition})"
        if module.buckets <= 0:
            return False, "UP but owns no bucket"
        return True, f"UP with {module.buckets} buckets"
    if module.state not in PRIMARY_STATES:
        return False, f"state {module.state}"
    if not module.lease_held:
        return False, f"{module.state} without the module's lease (demoting)"
    if module.heading_to not in (None, *PRIMARY_STATES):
        return False, f"{module.state}, leaving for {module.heading_to} ({module.transition})"
    return True, f"{module.state} holding the lease at epoch {module.epoch}"


def primary(snapshot: NodeSnapshot, name: str) -> Answer:
    """``GET /primary/<name>``."""
    module = snapshot.module(name)
    base = {"node": snapshot.node, "module": name}
    if module is None:
        if name in snapshot.known_modules:
            return Answer(503, {**base, "serving": False, "reason": "the module does not run on "
                                                                   "this node"})
        return Answer(404, {**base, "error": "unknown module"})
    ok, reason = serves(module)
    return Answer(200 if ok else 503, {**base, "serving": ok, "state": module.state,
                                       "role": role_of(module), "epoch": module.epoch,
                                       "reason": reason})


def ready(snapshot: NodeSnapshot) -> Answer:
    """``GET /ready``."""
    raft = snapshot.raft
    base: dict[str, Any] = {"node": snapshot.node, "kind": snapshot.kind}
    if raft is None:
        return Answer(503, {**base, "ready": False, "reason": "Raft is starting"})
    base.update(leader=raft.leader, term=raft.term, live=raft.live)
    if raft.leader is None:
        return Answer(503, {**base, "ready": False, "reason": "no Raft leader known"})
    if not raft.live:
        return Answer(503, {**base, "ready": False,
                            "reason": "this node does not hold its liveness lease"})
    return Answer(200, {**base, "ready": True, "reason": "a live member"})


def health(snapshot: NodeSnapshot) -> Answer:
    """``GET /health``: the daemon answers."""
    return Answer(200, {"node": snapshot.node, "kind": snapshot.kind, "version": snapshot.version,
                        "uptime_s": round(snapshot.uptime_s, 3)})
