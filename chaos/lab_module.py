"""What the mirror and farm lab harnesses share: one module of a cluster of real
daemons on lab hosts — installing it with the real CLI, talking to each daemon's
control socket, waiting for states, killing and restarting hosts."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hacluster.node.control import ControlError, request

from .lab import Lab, wait_until
from .lab_cluster import LabCluster


def start_cluster(cluster: LabCluster, root) -> None:
    """Write the cluster's configuration (each node's '/' for module paths is
    ``root(node)``), start every member and wait for a leader."""
    cluster.init()
    for n in cluster.members:
        if cluster.role(n) != "node":
            continue
        path = cluster.config_dir(n) / "cluster.json"
        cfg = json.loads(path.read_text())
        cfg["path_prefix"] = str(root(n))
        path.write_text(json.dumps(cfg, indent=2))
        root(n).mkdir(parents=True, exist_ok=True)
    cluster.start_all()
    cluster.wait_leader()


class LabModule:
    """Subclasses set ``lab``, ``cluster``, ``nodes`` and ``module``."""

    lab: Lab
    cluster: LabCluster
    nodes: list[str]
    module: str

    def root(self, node: str) -> Path:
        """What the node sees as '/' for module paths (cluster.json path_prefix)."""
        return self.lab.host_dir(node) / "root"

    def install(self, folder: Path) -> None:
        """Package the module folder and install it through the cluster."""
        safe = self.lab.workdir / f"{self.module}.safe"
        self.cli(self.nodes[0], "module", "package", str(folder), "-o", str(safe), check=True)
        self.cli(self.nodes[0], "module", "install", str(safe), check=True)
        for n in self.nodes:
            wait_until(f"module installed on {n}", lambda n=n: self._installed(n), 30)

    def _installed(self, node: str) -> bool:
        try:
            return any(r["module"] == self.module and r["installed_here"] and r["state"]
                       for r in self.call(node, "module_list"))
        except ControlError:
            return False

    # ---- talking to the daemons -----------------------------------------------------
    def cli(self, node: str, *args: str, check: bool = False, timeout: float = 120):
        res = self.cluster.hacluster(node, *args, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"hacluster {' '.join(args)} on {node} failed ({res.returncode}): "
                               f"{res.stderr.strip() or res.stdout.strip()}")
        return res

    def call(self, node: str, cmd: str, timeout: float = 5.0, **kw: Any) -> Any:
        return request(self.cluster.socket_path(node), cmd, timeout=timeout, **kw)

    def state(self, node: str) -> dict | None:
        try:
            return self.call(node, "module_state", module=self.module, timeout=2.0)
        except (ControlError, OSError, ValueError):
            return None

    def wait_state(self, node: str, state: str, timeout: float = 30.0) -> dict:
        return wait_until(f"{node} {state}", lambda: (lambda st: st if st and st["state"] == state
                                                      and st["ready"] == "Ready" else None)(
            self.state(node)), timeout)

    # ---- faults ------------------------------------------------------------------------
    def kill_host(self, node: str) -> float:
        """Power loss of a node: every process SIGKILLed and its network cut."""
        t = time.monotonic()
        self.lab.cut(node)
        self.lab.kill_host(node)
        return t

    def restart_node(self, node: str) -> None:
        """The node boots: its daemon starts first (on empty kernel state, see
        Lab.kill_host), then its network is back, as on a server whose links come
        up while it boots; it never finds its old VIP or ruleset acting for it."""
        self.cluster.start(node)
        self.lab.heal(node)
