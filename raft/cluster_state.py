"""The replicated cluster state as a deterministic state machine.

Every method here is applied, in log order, on every member; it must give the
same result everywhere, so it reads no clock and no local fact. Decisions that
need a clock (has a lease run out?) are taken by the leader *outside* and come
in as commands with a compare-and-set guard (``expire`` checks epoch and seq).

State is plain data so that it can be dumped and checked:
  members: name -> {"address": "host:port", "role": "node"|"witness"}
  leases:  resource -> {"holder": name|None, "epoch": int, "seq": int,
                        "lease_s": float, "eligible": [names] | None}
``epoch`` rises with every grant; ``seq`` rises with every change (grant,
renewal, release, expiry) so the leader's expiry decision can be fenced.
"""
from __future__ import annotations

import copy
import math
from typing import Any

from .membership import MembershipError, check_add, check_members, check_name, check_remove

Result = dict[str, Any]

LIVENESS_PREFIX = "node/"


def liveness_resource(name: str) -> str:
    return LIVENESS_PREFIX + name


def _valid_duration(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _ok(**kw: Any) -> Result:
    return {"ok": True, **kw}


def _refused(error: str, **kw: Any) -> Result:
    return {"ok": False, "error": error, **kw}


class ClusterState:
    def __init__(self) -> None:
        self.members: dict[str, dict[str, str]] = {}
        self.leases: dict[str, dict[str, Any]] = {}

    # ---- reads -------------------------------------------------------------
    def live_members(self) -> set[str]:
        return {n for n in self.members if self.holder(liveness_resource(n)) == n}

    def holder(self, resource: str) -> str | None:
        lease = self.leases.get(resource)
        return lease["holder"] if lease else None

    def to_dict(self) -> dict[str, Any]:
        return {"members": copy.deepcopy(self.members), "leases": copy.deepcopy(self.leases)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClusterState":
        state = cls()
        state.members = copy.deepcopy(data.get("members", {}))
        state.leases = copy.deepcopy(data.get("leases", {}))
        return state

    # ---- membership ----------------------------------------------------------
    def bootstrap(self, members: dict[str, dict[str, str]]) -> Result:
        """First leader writes the initial members from `cluster init`; later calls are no-ops."""
        if self.members:
            return _refused("already bootstrapped")
        try:
            check_members(members)
        except (MembershipError, TypeError, AttributeError) as e:
            return _refused(f"invalid initial members: {e}")
        self.members = {n: {"address": m["address"], "role": m["role"]} for n, m in members.items()}
        return _ok(members=sorted(self.members))

    def add_member(self, name: str, address: str, role: str) -> Result:
        try:
            check_add(self.members, name, address, role)
        except MembershipError as e:
            return _refused(str(e))
        self.members[name] = {"address": address, "role": role}
        return _ok(name=name, address=address)

    def remove_member(self, name: str, role: str) -> Result:
        try:
            check_remove(self.members, self.live_members(), name, role)
        except MembershipError as e:
            return _refused(str(e))
        held = sorted(r for r, lease in self.leases.items()
                      if lease["holder"] == name and r != liveness_resource(name))
        if held:
            return _refused(f"refusing to remove {name!r}: it holds lease(s) {', '.join(held)}; "
                            "stop its modules first")
        address = self.members.pop(name)["address"]
        self.leases.pop(liveness_resource(name), None)
        for lease in self.leases.values():
            if lease["eligible"] is not None and name in lease["eligible"]:
                lease["eligible"] = [n for n in lease["eligible"] if n != name]
        return _ok(name=name, address=address)

    # ---- leases ---------------------------------------------------------------
    def _lease(self, resource: str, lease_s: float) -> dict[str, Any]:
        lease = self.leases.get(resource)
        if lease is None:
            # A member's liveness lease is its own: nobody else may take it.
            eligible = ([resource[len(LIVENESS_PREFIX):]]
                        if resource.startswith(LIVENESS_PREFIX) else None)
            lease = {"holder": None, "epoch": 0, "seq": 0, "lease_s": float(lease_s),
                     "eligible": eligible}
            self.leases[resource] = lease
        return lease

    def acquire(self, resource: str, node: str, lease_s: float, force: bool = False) -> Result:
        if not isinstance(node, str) or node not in self.members:
            return _refused(f"unknown member {node!r}")
        if not isinstance(resource, str) or not resource:
            return _refused(f"invalid resource {resource!r}")
        if not _valid_duration(lease_s):
            return _refused(f"invalid lease duration {lease_s!r}")
        if resource.startswith(LIVENESS_PREFIX) and resource != liveness_resource(node):
            return _refused(f"{resource} is the liveness lease of another member")
        lease = self._lease(resource, lease_s)
        if lease["holder"] == node:
            lease["seq"] += 1
            return _ok(epoch=lease["epoch"], renewed=True)
        if lease["holder"] is not None:
            return _refused(f"{resource} is held by {lease['holder']} (epoch {lease['epoch']})",
                            holder=lease["holder"], epoch=lease["epoch"])
        if lease["eligible"] is not None and node not in lease["eligible"] and not force:
            return _refused(f"{node} is not eligible for {resource} "
                            f"(eligible: {', '.join(lease['eligible']) or 'none'})")
        lease["holder"] = node
        lease["epoch"] += 1
        lease["seq"] += 1
        return _ok(epoch=lease["epoch"], forced=bool(force and lease["eligible"] is not None
                                                       and node not in lease["eligible"]))

    def renew(self, resource: str, node: str, epoch: int) -> Result:
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None or lease["holder"] != node or lease["epoch"] != epoch:
            holder = lease["holder"] if lease else None
            cur = lease["epoch"] if lease else 0
            return _refused(f"{node} no longer holds {resource} epoch {epoch} "
                            f"(holder {holder}, epoch {cur})", holder=holder, epoch=cur)
        lease["seq"] += 1
        return _ok(epoch=epoch)

    def release(self, resource: str, node: str, epoch: int) -> Result:
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None or lease["holder"] != node or lease["epoch"] != epoch:
            return _refused(f"{node} does not hold {resource} epoch {epoch}")
        lease["holder"] = None
        lease["seq"] += 1
        return _ok(epoch=epoch)

    def expire(self, resource: str, epoch: int, seq: int) -> Result:
        """The leader saw no renewal for a full lease. Fenced by (epoch, seq):
        if anything happened to the lease since the leader looked, it is void."""
        lease = self.leases.get(resource) if isinstance(resource, str) else None
        if lease is None or lease["holder"] is None:
            return _refused(f"{resource} has no holder")
        if lease["epoch"] != epoch or lease["seq"] != seq:
            return _refused(f"stale expiry of {resource} (epoch {epoch} seq {seq}, "
                            f"now epoch {lease['epoch']} seq {lease['seq']})")
        holder = lease["holder"]
        lease["holder"] = None
        lease["seq"] += 1
        return _ok(epoch=epoch, holder=holder)

    def set_eligible(self, resource: str, nodes: list[str] | None, lease_s: float) -> Result:
        if not isinstance(resource, str) or not resource:
            return _refused(f"invalid resource {resource!r}")
        if not _valid_duration(lease_s):
            return _refused(f"invalid lease duration {lease_s!r}")
        if nodes is not None:
            if not isinstance(nodes, (list, tuple)):
                return _refused(f"eligible nodes must be a list of member names or None, got {nodes!r}")
            try:
                for n in nodes:
                    check_name(n)
            except MembershipError as e:
                return _refused(str(e))
            unknown = sorted(set(nodes) - set(self.members))
            if unknown:
                return _refused(f"unknown member(s) {', '.join(unknown)}")
            nodes = sorted(set(nodes))
        lease = self._lease(resource, lease_s)
        lease["eligible"] = nodes
        return _ok(eligible=nodes)
