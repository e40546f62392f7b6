"""The mirror module: one primary, one secondary, the data replicated between them.

``machine.MirrorMachine`` is pure (events in, plans out) and holds the safety
rules of a failover; ``default_primary`` (pure) chooses between two nodes that may
both become primary; ``driver.MirrorModule`` carries the plans out: the module's
Raft lease, the replication processes, the VIPs, the scripts.
"""
from .driver import MirrorModule
from .machine import MirrorMachine, State, View

__all__ = ["MirrorMachine", "MirrorModule", "State", "View"]
