"""PostgreSQL in the lab: the modules/postgresql template, parameterised for a lab
(VIP, replicated directory, port, trusted client network, lab timers), and
``PgMirrorLab``, a MirrorLab whose application is that database.

The workload (chaos.pg_writer_proc) runs on the client host and inserts numbered rows
through the VIP; its acknowledged commits are read back with SQL through the VIP.
pgbench runs there too. The lab's host folders are 0700: PostgreSQL runs as the
``postgres`` user, so the path down to the replicated directory is made traversable
(0711, no listing) before the module starts.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

from .lab import Lab, LabProcess, wait_until
from .lab_cluster import LabCluster
from .lab_mirror import MirrorLab

TEMPLATE = Path(__file__).resolve().parent.parent / "modules" / "postgresql"
PG_BIN = "/usr/lib/postgresql/15/bin"
MODULE = "pgdemo"
PORT = 5432
DATADIR = "/srv/pgdemo"
# Left out of a comparison of the two copies: the running server's lock file.
NOT_COMPARED = ("data/postmaster.pid",)


def write_pg_module(folder: Path, vip: str, *, datadir: str = DATADIR, port: int = PORT,
                    clients: str = "", ack_timeout_s: float = 1.0,
                    servers: tuple[str, ...] = (), flow_servers: tuple[str, ...] = (),
                    extra_vars: dict[str, str] | None = None,
                    template: Path = TEMPLATE) -> Path:
    """A copy of the template with these values in its userconfig.xml (the scripts are
    the template's, unchanged). ``clients``: networks trusted without a password (the
    lab's); ``servers``/``flow_servers``: as for the kv module."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(template, folder)
    path = folder / "conf" / "userconfig.xml"
    root = ET.fromstring(path.read_bytes())
    service = root.find("service")
    service.set("scripts_timeout", "120s")
    service.find("vip").find(".//virtual_addr").set("addr", vip)
    rfs = service.find("rfs")
    rfs.set("ack_timeout", f"{ack_timeout_s}s")
    rfs.find("replicated").set("dir", datadir)
    heart = service.find("heart")
    for name, addrs, ident in (("default", servers, None), ("flow", flow_servers, "flow")):
        if addrs:
            hb = ET.SubElement(heart, "heartbeat", {"name": name, **({"ident": ident} if ident else {})})
            for a in addrs:
                ET.SubElement(hb, "server", {"addr": a})
    values = {"PG_DIR": datadir, "PG_PORT": str(port), "PG_CLIENTS": clients,
              "PG_CLIENT_AUTH": "trust", "PG_BIN": PG_BIN,
              # a lab database: small, quick checkpoints
              "PG_OPTIONS": "-c shared_buffers=32MB -c max_wal_size=256MB",
              **(extra_vars or {})}
    user = service.find("user")
    for var in user.findall("var"):
        if var.get("name") in values:
            var.set("value", values.pop(var.get("name")))
    for name, value in values.items():
        ET.SubElement(user, "var", {"name": name, "value": value})
    path.write_bytes(b"<!DOCTYPE safe>\n" + ET.tostring(root))
    return folder


class PgMirrorLab(MirrorLab):
    """A MirrorLab running PostgreSQL from the modules/postgresql template."""

    def __init__(self, lab: Lab, nodes=("n1", "n2"), witness="w", client="c",
                 ack_timeout_s: float = 1.0, *, module: str = MODULE, port: int = PORT,
                 datadir: str = DATADIR, vip_host: int = 201,
                 cluster: LabCluster | None = None, flow_network: str | None = None,
                 sessions: int = 4) -> None:
        super().__init__(lab, nodes, witness, client, ack_timeout_s, module=module, port=port,
                         datadir=datadir, vip_host=vip_host, cluster=cluster,
                         flow_network=flow_network)
        self.sessions = sessions
        self.url = f"postgresql://{self.vip}:{port}"

    def write_module(self, servers: tuple[str, ...], flow_servers: tuple[str, ...]) -> Path:
        net = ipaddress.ip_network(f"{self.lab.addr(self.client)}/24", strict=False)
        return write_pg_module(self.lab.workdir / f"{self.module}-module", self.vip,
                               datadir=self.datadir, port=self.port, clients=str(net),
                               ack_timeout_s=self.ack_timeout_s, servers=servers,
                               flow_servers=flow_servers)

    def start(self, prim: str | None = "n1") -> "PgMirrorLab":
        # PostgreSQL runs as postgres: let it through the lab's 0700 folders.
        if self._own_cluster:
            for n in self.nodes:
                self.root(n).mkdir(parents=True, exist_ok=True)
        for d in {self.lab.workdir, *(self.lab.host_dir(n) for n in self.nodes),
                  *(self.root(n) for n in self.nodes)}:
            os.chmod(d, os.stat(d).st_mode | 0o111)
        super().start(prim)
        if prim is not None:
            self.sql("CREATE TABLE IF NOT EXISTS acks (k text PRIMARY KEY, v text NOT NULL)")
        return self

    # ---- SQL from the client host --------------------------------------------------------
    def sql(self, *statements: str, timeout: float = 60.0, check: bool = True) -> list[dict] | None:
        """Run statements through the VIP from the client host; one {tag, rows} each,
        or None (check=False) when they failed."""
        res = self.lab.run(self.client, [sys.executable, "-m", "chaos.pg_wire", "--host", self.vip,
                                         "--port", str(self.port), "--timeout", str(timeout),
                                         *statements], check=False, timeout=timeout + 15)
        if res.returncode != 0:
            if check:
                raise RuntimeError(f"SQL through {self.vip} failed: {res.stderr.strip()}")
            return None
        return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]

    def client_tool(self, tool: str, *args: str, timeout: float = 300.0, check: bool = True):
        """A PostgreSQL client program (pgbench, pg_amcheck, ...) run on the client host."""
        res = self.lab.run(self.client, [f"{PG_BIN}/{tool}", "-h", self.vip, "-p", str(self.port),
                                         "-U", "postgres", *args], check=False, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({res.returncode}): "
                               f"{res.stderr.strip()[-2000:]}")
        return res

    def start_pgbench(self, name: str = "pgbench", clients: int = 4, seconds: int = 3600) -> LabProcess:
        """pgbench's TPC-B-like load through the VIP (``init_pgbench`` first); -P 1
        prints progress every second into its log."""
        return self.lab.spawn(self.client, [f"{PG_BIN}/pgbench", "-h", self.vip, "-p", str(self.port),
                                            "-U", "postgres", "-n", "-c", str(clients), "-j", "2",
                                            "-T", str(seconds), "-P", "1", "postgres"], name=name)

    def init_pgbench(self, scale: int = 2) -> None:
        self.client_tool("pgbench", "-i", "-q", "-s", str(scale), "postgres")

    # ---- the numbered inserts ----------------------------------------------------------
    def start_writer(self, prefix: str = "rec", timeout_s: float = 2.0) -> LabProcess:
        timeout_s = max(timeout_s, 2.0)     # a commit waits for an fsync on both copies
        self.writer = self.lab.spawn(self.client, [
            sys.executable, "-m", "chaos.pg_writer_proc", "--host", self.vip, "--port", str(self.port),
            "--prefix", prefix, "--sessions", str(self.sessions), "--timeout", str(timeout_s)],
            name=f"pgwriter-{self.module}-{prefix}")
        return self.writer

    def rows(self) -> dict[str, str] | None:
        """Every row of ``acks`` as the primary answers through the VIP; None: no answer."""
        out = self.sql("SELECT k, v FROM acks", check=False)
        return None if out is None else {k: v for k, v in out[0]["rows"]}

    def keys_via_vip(self) -> set[str] | None:
        rows = self.rows()
        return None if rows is None else set(rows)

    def log_records(self, node: str) -> dict[str, str]:
        """The acknowledged rows as the primary reads them (PostgreSQL's files are not
        read outside the server): SQL through the VIP, which ``node`` must hold."""
        rows = self.rows()
        if rows is None:
            raise RuntimeError(f"no answer through the VIP ({node} expected primary)")
        return rows

    def checkpoint(self) -> None:
        self.sql("CHECKPOINT")

    def copy_digest(self, node: str) -> dict[str, str]:
        """Path -> sha256 (or 'dir'/'link:...') of a node's real copy, ``postmaster.pid`` aside."""
        base = self.data_dir(node)
        out: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(base):
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                rel = full.relative_to(base).as_posix()
                if rel in NOT_COMPARED:
                    continue
                if full.is_symlink():
                    out[rel] = "link:" + os.readlink(full)
                elif full.is_dir():
                    out[rel] = "dir"
                else:
                    h = hashlib.sha256()
                    with open(full, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                    out[rel] = h.hexdigest()
        return out

    def copies_identical(self, prim: str, sec: str, timeout: float = 20.0) -> bool:
        """After a checkpoint, are both real copies byte for byte the same
        (``postmaster.pid`` aside)? Waits up to ``timeout`` for writes on their way."""
        if self.sql("CHECKPOINT", check=False) is None:
            return False
        try:
            wait_until("identical copies", lambda: not self.copies_differ(), timeout, 0.5)
            return True
        except TimeoutError:
            return False

    def copies_differ(self) -> list[str]:
        """Paths whose content differs between the two real copies (empty: identical)."""
        a, b = (self.copy_digest(n) for n in self.nodes)
        return sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))
