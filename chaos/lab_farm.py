"""A farm module on the lab: three nodes (Raft voters, no witness needed) and a
client host; the demo name server on every node behind one VIP.

Shared by the farm lab tests and ``python -m bench farm``: real daemons
(``LabCluster``), the module packaged and installed with the real CLI, clients
opened from the test process inside the client's namespace (chaos.farm_client),
and each node's loaded nftables ruleset read back.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
from collections import Counter


from .farm_client import ask, ask_many, in_netns
from .lab import Lab, wait_until
from .lab_cluster import LabCluster
from .lab_module import LabModule, start_cluster
from .name_module import write_name_module

MODULE = "names"
PORT_ON_PORT, PORT_ON_ADDR = 8080, 8081


class FarmLab(LabModule):
    def __init__(self, lab: Lab, nodes=("f1", "f2", "f3"), client="c",
                 powers: dict[str, int] | None = None, cluster: LabCluster | None = None,
                 extra_sections: str = "") -> None:
        self.lab = lab
        self.nodes = list(nodes)
        self.module = MODULE
        self.client = client
        self.powers = {n: (powers or {}).get(n, 1) for n in self.nodes}
        self._own_cluster = cluster is None
        self.cluster = cluster or LabCluster(lab, self.nodes, [])
        self.extra_sections = extra_sections
        net = ipaddress.ip_network(f"{lab.addr(self.nodes[0])}/24", strict=False)
        self.vip = str(net.network_address + 200)

    def start(self, up: bool = True) -> "FarmLab":
        if self._own_cluster:
            start_cluster(self.cluster, self.root)
        folder = write_name_module(
            self.lab.workdir / "names-module", self.vip,
            {n: (self.lab.addr(n), self.powers[n]) for n in self.nodes},
            [(PORT_ON_PORT, "tcp", "on_port"), (PORT_ON_ADDR, "tcp", "on_addr")],
            extra_sections=self.extra_sections)
        self.install(folder)
        if up:
            self.cli(self.nodes[0], "-H", "all", "-m", MODULE, "start", check=True)
            self.wait_farm(self.nodes)
        return self

    # ---- the bucket table -------------------------------------------------------------
    def ruleset_buckets(self, node: str) -> frozenset[int] | None:
        """The buckets node's loaded nftables ruleset accepts now: the elements of its
        ``owned`` set the kernel has not expired (None: no farm table)."""
        res = subprocess.run(["ip", "netns", "exec", self.lab.hosts[node].netns, "nft", "-j",
                              "list", "set", "inet", f"hacluster_farm_{MODULE}", "owned"],
                             capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            return None
        owned: set[int] = set()
        for item in json.loads(res.stdout).get("nftables", []):
            for elem in (item.get("set") or {}).get("elem", []):
                owned.add(elem["elem"]["val"] if isinstance(elem, dict) else elem)
        return frozenset(owned)

    def complete_on(self, live: list[str]) -> bool:
        """Every bucket accepted by exactly one of ``live`` nodes' rulesets."""
        counts: Counter = Counter()
        for n in live:
            owned = self.ruleset_buckets(n)
            if owned is None:
                return False
            counts.update(owned)
        return len(counts) == 256 and set(counts.values()) == {1}

    def wait_farm(self, live: list[str], timeout: float = 30.0) -> None:
        for n in live:
            self.wait_state(n, "UP", timeout)
        wait_until(f"buckets split over {','.join(live)}", lambda: self.complete_on(live), timeout,
                   interval=0.1)   # each look runs nft in every namespace

    # ---- clients ------------------------------------------------------------------------
    def ask_many(self, port: int, count: int, sources=(None,), timeout: float = 2.0) -> list:
        return in_netns(self.lab.hosts[self.client].netns, ask_many, self.vip, port, count,
                        sources, timeout)

    def ask(self, port: int, source: str | None = None, timeout: float = 2.0):
        return in_netns(self.lab.hosts[self.client].netns, ask, self.vip, port, source, timeout)
