"""A farm module on the lab: three nodes (Raft voters, no witness needed) and a
client host; the demo name server on every node behind one VIP.

Shared by the farm lab tests and ``python -m bench farm``: real daemons
(``LabCluster``), the module packaged and installed with the real CLI, clients
opened from the test process inside the client's namespace (chaos.farm_client),
and each node's loaded nftables ruleset read back.
"""
from __future__ import annotations

import ipaddress
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hacluster.control import ControlError, request

from .farm_client import ask, ask_many, in_netns
from .lab import Lab, wait_until
from .lab_cluster import LabCluster
from .lab_mirror import start_cluster
from .name_module import write_name_module

MODULE = "names"
PORT_ON_PORT, PORT_ON_ADDR = 8080, 8081
_VMAP_ACCEPT = re.compile(r"(\d+)(?:-(\d+))?\s*:\s*accept")


class FarmLab:
    def __init__(self, lab: Lab, nodes=("f1", "f2", "f3"), client="c",
                 powers: dict[str, int] | None = None, cluster: LabCluster | None = None,
                 extra_sections: str = "") -> None:
        self.lab = lab
        self.nodes = list(nodes)
        self.client = client
        self.powers = {n: (powers or {}).get(n, 1) for n in self.nodes}
        self._own_cluster = cluster is None
        self.cluster = cluster or LabCluster(lab, self.nodes, [])
        self.extra_sections = extra_sections
        net = ipaddress.ip_network(f"{lab.addr(self.nodes[0])}/24", strict=False)
        self.vip = str(net.network_address + 200)

    def root(self, node: str) -> Path:
        return self.lab.host_dir(node) / "root"

    def start(self, up: bool = True) -> "FarmLab":
        if self._own_cluster:
            start_cluster(self.cluster, self.root)
        folder = write_name_module(
            self.lab.workdir / "names-module", self.vip,
            {n: (self.lab.addr(n), self.powers[n]) for n in self.nodes},
            [(PORT_ON_PORT, "tcp", "on_port"), (PORT_ON_ADDR, "tcp", "on_addr")],
            extra_sections=self.extra_sections)
        safe = self.lab.workdir / f"{MODULE}.safe"
        self.cli(self.nodes[0], "module", "package", str(folder), "-o", str(safe), check=True)
        self.cli(self.nodes[0], "module", "install", str(safe), check=True)
        for n in self.nodes:
            wait_until(f"module installed on {n}", lambda n=n: self._installed(n), 30)
        if up:
            self.cli(self.nodes[0], "-H", "all", "-m", MODULE, "start", check=True)
            self.wait_farm(self.nodes)
        return self

    def _installed(self, node: str) -> bool:
        try:
            return any(r["module"] == MODULE and r["installed_here"] and r["state"]
                       for r in self.call(node, "module_list"))
        except ControlError:
            return False

    # ---- daemons ------------------------------------------------------------------
    def cli(self, node: str, *args: str, check: bool = False, timeout: float = 120):
        res = self.cluster.hacluster(node, *args, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"hacluster {' '.join(args)} on {node} failed ({res.returncode}): "
                               f"{res.stderr.strip() or res.stdout.strip()}")
        return res

    def call(self, node: str, cmd: str, timeout: float = 5.0, **kw: Any) -> Any:
        return request(self.cluster.config_dir(node) / "control.sock", cmd, timeout=timeout, **kw)

    def state(self, node: str) -> dict | None:
        try:
            return self.call(node, "module_state", module=MODULE, timeout=2.0)
        except (ControlError, OSError, ValueError):
            return None

    def wait_state(self, node: str, state: str, timeout: float = 30.0) -> dict:
        return wait_until(f"{node} {state}", lambda: (lambda st: st if st and st["state"] == state
                                                      and st["ready"] == "Ready" else None)(
            self.state(node)), timeout)

    # ---- the bucket table -------------------------------------------------------------
    def ruleset_buckets(self, node: str) -> frozenset[int] | None:
        """The buckets node's loaded nftables ruleset accepts (None: no farm table)."""
        res = subprocess.run(["ip", "netns", "exec", self.lab.hosts[node].netns, "nft", "list",
                              "table", "inet", f"hacluster_farm_{MODULE}"],
                             capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            return None
        text = res.stdout
        owned: set[int] = set()
        for line in text.splitlines():
            line = line.strip()
            if "jhash" not in line and not line.endswith(("accept", "drop")):
                continue
            if "vmap" in line:
                for lo, hi in _VMAP_ACCEPT.findall(line):
                    owned.update(range(int(lo), int(hi or lo) + 1))
                return frozenset(owned)
            if line.endswith("accept") and "dport" in line:
                return frozenset(range(256))
            if line.endswith("drop") and "dport" in line:
                return frozenset()
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
        wait_until(f"buckets split over {','.join(live)}", lambda: self.complete_on(live), timeout)

    # ---- clients ------------------------------------------------------------------------
    def ask_many(self, port: int, count: int, sources=(None,), timeout: float = 2.0) -> list:
        return in_netns(self.lab.hosts[self.client].netns, ask_many, self.vip, port, count,
                        sources, timeout)

    def ask(self, port: int, source: str | None = None, timeout: float = 2.0):
        return in_netns(self.lab.hosts[self.client].netns, ask, self.vip, port, source, timeout)

    # ---- faults -----------------------------------------------------------------------------
    def kill_host(self, node: str) -> float:
        """Power loss of a node: every process SIGKILLed and its network cut."""
        t = time.monotonic()
        self.lab.cut(node)
        self.lab.kill_host(node)
        return t

    def restart_node(self, node: str) -> None:
        self.lab.heal(node)
        self.cluster.start(node)
