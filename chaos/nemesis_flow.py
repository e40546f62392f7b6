"""The nemesis that cuts only the replication network (a two-network lab).

The mirror module replicates on its own network when its userconfig has a heartbeat
marked ident="flow" (MirrorLab(flow_network=...)); Raft, leases and the peer_lost
commit stay on the lab's first network. Cutting the flow network of one data node
therefore loses the secondary's acknowledgements without touching quorum: the
primary's writes block until it has committed the secondary's removal from the
in-sync set, then go on ALONE (no failover, the epoch stays); after heal the
primary reintegrates the secondary and both return to PRIM + SECOND in sync.
"""
from __future__ import annotations

import random

from .lab_shapes import TWO_NETWORKS
from .nemesis import Nemesis, NemesisContext, Roles


class CutReplicationNetwork(Nemesis):
    """The flow network of the primary or of the secondary (seeded) cut in both
    directions with an nft drop on that host's flow interface; heal removes it."""
    name = "cut-replication-network"
    lab_shape = TWO_NETWORKS.name   # the runner builds the lab with a flow network

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        side = rng.choice(["primary", "secondary"])
        return {"host": getattr(roles, side), "side": side}

    @staticmethod
    def _flow_network(ctx: NemesisContext) -> str:
        net = ctx.mirror.flow_network
        if net is None:
            raise RuntimeError("cut-replication-network needs a mirror lab with a replication "
                               "network of its own (MirrorLab(flow_network=...), lab shape "
                               "two_networks)")
        return net

    def _start(self, ctx: NemesisContext) -> None:
        net, host = self._flow_network(ctx), self.targets["host"]
        ctx.lab.cut(host, direction="both", method="nft", net=net)
        self.record("cut", host, f"{self.targets['side']}'s {net} network "
                                 f"({ctx.lab.hosts[host].ifaces[net]}) dropped both ways")

    def heal(self, ctx: NemesisContext) -> None:
        host = self.targets.get("host")
        if host is None:
            return
        # Lab.heal(host) undoes every cut of that host; this nemesis made the only one.
        ctx.lab.heal(host)
        self.record("heal", host, f"{ctx.mirror.flow_network} network restored")
