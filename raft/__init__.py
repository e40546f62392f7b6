"""The replicated cluster state on pysyncobj: members, liveness, named leases
with epochs; durability and security fixes around pysyncobj."""
from .cluster_state import ClusterState, liveness_resource, mirror_resource
from .lease import HolderLease, LeaderLeaseClock, LeaseTiming
from .member import RaftCommandError, RaftMember
from .settings import RaftSettings

__all__ = ["ClusterState", "liveness_resource", "mirror_resource", "HolderLease", "LeaderLeaseClock", "LeaseTiming",
           "RaftCommandError", "RaftMember", "RaftSettings"]
