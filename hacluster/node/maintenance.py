"""The committed maintenance, as a node reads it at every renewal (DESIGN.md,
"Maintenance"): which leases may be held beyond the lease, and whether the cluster's
feature level lets a renewal ask for that (raft.cluster_state.set_maintenance)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from raft.cluster_state import maintenance_hold_of

__all__ = ["MaintenanceView"]


@dataclass(frozen=True)
class MaintenanceView:
    level: int = 0
    cluster: float | None = None                    # the cluster's hold, when on
    modules: Mapping[str, float] = field(default_factory=dict)

    # The Raft commands after which a node reads it again.
    CHANGED_BY = frozenset({"set_maintenance", "raise_feature_level", "uninstall_module",
                            "bootstrap"})

    @classmethod
    def of(cls, state: Mapping[str, Any]) -> "MaintenanceView":
        """From a committed state snapshot (raft.member.RaftMember.snapshot)."""
        m = state.get("maintenance") or {}
        return cls(int(state.get("feature_level", 0)), m.get("cluster"),
                   dict(m.get("modules") or {}))

    def hold(self, resource: str) -> float | None:
        """The hold a renewal of ``resource`` asks for now (what Raft grants it)."""
        return maintenance_hold_of({"cluster": self.cluster, "modules": self.modules}, resource)

    def covers(self, module: str) -> bool:
        """``module`` (or the whole cluster) is in maintenance."""
        return self.cluster is not None or module in self.modules

    def as_dict(self) -> dict[str, Any]:
        return {"feature_level": self.level, "cluster": self.cluster, "modules": dict(self.modules)}
