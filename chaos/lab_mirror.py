"""A mirror module on the lab: two nodes, a witness, a client host.

Shared by the mirror lab tests, ``make demo`` and ``python -m bench failover``:
real daemons (``LabCluster``), the demo key/value application packaged as a
``.safe`` with the real CLI, a VIP in the lab subnet, a writer process on the
client host whose acknowledged records are read back from its log.
"""
from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path


from .kv_module import DATADIR, write_kv_module
from .lab import Lab, LabProcess, wait_until
from .lab_cluster import LabCluster
from .lab_module import LabModule, start_cluster

MODULE = "kvdemo"
PORT = 8080


class MirrorLab(LabModule):
    """One kv mirror module. By default it owns a cluster of its two nodes and a
    witness; given ``cluster`` (already started, e.g. with more nodes or other
    modules on it) it only installs its module there, on ``nodes``."""

    def __init__(self, lab: Lab, nodes=("n1", "n2"), witness="w", client="c",
                 ack_timeout_s: float = 1.0, defaultprim: str | None = None, *,
                 module: str = MODULE, port: int = PORT, datadir: str = DATADIR,
                 vip_host: int = 200, cluster: LabCluster | None = None,
                 extra_sections: str = "", flow_network: str | None = None,
                 links_network: str | None = None) -> None:
        """``links_network``: a second heartbeat network for Raft and leases (the
        members' links, raft.links), when the module's own cluster is made here."""
        self.lab = lab
        self.nodes = list(nodes)
        self.client = client
        self.module = module
        self.port = port
        self.datadir = datadir
        self._own_cluster = cluster is None
        self.cluster = cluster or LabCluster(lab, self.nodes, [witness],
                                             links_network=links_network)
        net = ipaddress.ip_network(f"{lab.addr(self.nodes[0])}/24", strict=False)
        self.vip = str(net.network_address + vip_host)
        self.url = f"http://{self.vip}:{port}"
        self.ack_timeout_s = ack_timeout_s
        self.defaultprim = defaultprim
        self.extra_sections = extra_sections    # <errd>/<check>/<failover> for the module
        if flow_network is not None and flow_network not in lab.networks[1:]:
            raise ValueError(f"flow_network {flow_network!r} must be one of the lab's networks "
                             f"other than its first (Raft's), {lab.networks[0]!r}; the lab has "
                             f"{list(lab.networks)}")
        # replication on its own network (heartbeat ident="flow"); Raft stays on the first
        self.flow_network = flow_network
        self.writer: LabProcess | None = None

    # ---- set-up ----------------------------------------------------------------
    def data_dir(self, node: str) -> Path:
        return Path(str(self.root(node)) + self.datadir)

    def start(self, prim: str | None = "n1") -> "MirrorLab":
        if self._own_cluster:
            start_cluster(self.cluster, self.root)
        for n in self.nodes:
            self.data_dir(n).mkdir(parents=True, exist_ok=True)
        # With more data nodes than two, the module names its pair (heartbeat servers).
        data_nodes = [m for m in self.cluster.members if self.cluster.role(m) == "node"]
        servers = tuple(self.lab.addr(n) for n in self.nodes) if len(data_nodes) > 2 else ()
        flow_servers = ()
        if self.flow_network is not None:
            # the flow addresses follow the order of the default heartbeat's servers
            servers = tuple(self.lab.addr(n) for n in self.nodes)
            flow_servers = tuple(self.flow_addr(n) for n in self.nodes)
        self.install(self.write_module(servers, flow_servers))
        if prim is not None:
            self.cli(prim, "-m", self.module, "prim", check=True)
            for n in self.nodes:
                if n != prim:
                    self.cli(n, "-m", self.module, "second", check=True)
            self.wait_pair(prim)
        return self

    def write_module(self, servers: tuple[str, ...], flow_servers: tuple[str, ...]) -> Path:
        """The module folder to package (the kv app here; other workloads override)."""
        return write_kv_module(self.lab.workdir / f"{self.module}-module", self.vip,
                               port=self.port, ack_timeout_s=self.ack_timeout_s,
                               defaultprim=self.defaultprim, datadir=self.datadir,
                               servers=servers, extra_sections=self.extra_sections,
                               flow_servers=flow_servers)

    def flow_addr(self, node: str) -> str:
        """The address a node replicates on: its flow network's, else its Raft one."""
        return self.lab.addr(node, self.flow_network)

    def states(self) -> dict[str, str | None]:
        out = {}
        for n in self.nodes:
            st = self.state(n)
            out[n] = f"{st['state']}/{st['ready']}" if st else None
        return out

    def wait_state(self, node: str, state: str, timeout: float = 30.0) -> dict:
        return wait_until(f"{node} {state}", lambda: (lambda st: st if st and st["state"] == state
                                                      and st["ready"] == "Ready" else None)(
            self.state(node)), timeout)

    def wait_pair(self, prim: str, timeout: float = 60.0) -> None:
        self.wait_state(prim, "PRIM", timeout)
        for n in self.nodes:
            if n != prim:
                self.wait_state(n, "SECOND", timeout)

    def other(self, node: str) -> str:
        return next(n for n in self.nodes if n != node)

    # ---- the client -------------------------------------------------------------------
    def start_writer(self, prefix: str = "rec", timeout_s: float = 1.0) -> LabProcess:
        self.writer = self.lab.spawn(self.client, [
            sys.executable, "-m", "chaos.kv_writer_proc", "--url", self.url, "--prefix", prefix,
            "--timeout", str(timeout_s)], name=f"writer-{self.module}-{prefix}")
        return self.writer

    def acks(self, proc: LabProcess | None = None) -> list[dict]:
        proc = proc or self.writer
        out = []
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass    # a line cut by a kill
        return out

    def wait_acks(self, count: int, timeout: float = 30.0) -> list[dict]:
        return wait_until(f"{count} acknowledged writes",
                          lambda: (lambda a: a if len(a) >= count else None)(self.acks()), timeout)

    def client_get(self, path: str, timeout: float = 2.0) -> dict | None:
        code = ("import json,sys,urllib.request\n"
                f"r=urllib.request.urlopen({self.url + path!r}, timeout={timeout})\n"
                "sys.stdout.write(r.read().decode())")
        res = self.lab.run(self.client, [sys.executable, "-c", code], check=False,
                           timeout=timeout + 10)
        if res.returncode != 0:
            return None
        return json.loads(res.stdout)

    def keys_via_vip(self) -> set[str] | None:
        body = self.client_get("/keys", timeout=5.0)
        return set(body["keys"]) if body else None

    def copies_identical(self, prim: str, sec: str, timeout: float = 10.0) -> bool:
        """Do both real copies hold the same records (a write the stopped client left
        in flight may still be on its way: waits up to ``timeout``)?"""
        from .kvapp import CorruptLogError

        def same() -> bool:
            try:
                a = self.log_records(sec)
                return a == self.log_records(prim)
            except CorruptLogError:
                return False
        try:
            wait_until("identical copies", same, timeout, 0.1)
            return True
        except TimeoutError:
            return False

    def log_records(self, node: str) -> dict[str, str]:
        """The records in a node's real copy of the replicated directory."""
        from .kvapp import replay
        path = self.data_dir(node) / "kv.log"
        return replay(path.read_bytes(), str(path))[0] if path.exists() else {}
