"""PostgreSQL in the lab: the modules/postgresql template, parameterised for a lab
(VIP, replicated directory, port, trusted client network, lab timers), and
``PgMirrorLab``, a MirrorLab whose application is that database.

The workload (chaos.pg_writer_proc) runs on the client host and inserts numbered rows
through the VIP; its acknowledged commits are read back with SQL through the VIP.
pgbench runs there too. The lab's host folders are 0700: PostgreSQL runs as the
``postgres`` user, so the path down to the replicated directory is made traversable
(0711, no listing) before the module starts.

``PlainPostgres`` is the benches' baseline: the same PostgreSQL with the same settings
on a plain directory of a lab host (no FUSE, no replication, no cluster).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import psutil

from .lab import NSENTER, Lab, LabProcess, wait_until
from .lab_cluster import LabCluster
from .lab_mirror import MirrorLab
from .module_template import copied_template, set_user_vars, write_userconfig

TEMPLATE = Path(__file__).resolve().parent.parent / "modules" / "postgresql"
PG_BIN = "/usr/lib/postgresql/15/bin"
MODULE = "pgdemo"
PORT = 5432
DATADIR = "/srv/pgdemo"
# Left out of a comparison of the two copies: the running server's lock file.
NOT_COMPARED = ("data/postmaster.pid",)
# A lab database: small, quick checkpoints (the module's PG_OPTIONS, and the plain baseline's).
LAB_PG_OPTIONS = "-c shared_buffers=32MB -c max_wal_size=256MB"
START_TIMEOUT_S = 240


def pg_client_argv(addr: str, port: int, tool: str, *args: str) -> list[str]:
    """A PostgreSQL client program (pgbench, pg_amcheck, ...) against ``addr:port`` as
    the postgres user (the lab's databases trust their client network)."""
    return [f"{PG_BIN}/{tool}", "-h", addr, "-p", str(port), "-U", "postgres", *args]


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


def postmaster_pid(data: Path) -> int | None:
    """The PID in ``data``/postmaster.pid (None: no file, or not a PID)."""
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def crash_postmaster(data: Path, timeout: float = 30.0) -> bool:
    """A crash of the server of ``data``: SIGKILL to its postmaster's process group
    (pg_ctl starts it in a session of its own, its backends with it), waited for to the
    last process (a backend still attached to the shared memory would stop the next
    start), then its postmaster.pid removed (the PID is dead; the module's start_prim
    removes such a file too). False: no server was running."""
    pid = postmaster_pid(data)
    if pid is None:
        return False
    try:
        leader = psutil.Process(pid)
        group = [leader, *leader.children(recursive=True)]
        os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError):
        (data / "postmaster.pid").unlink(missing_ok=True)
        return False
    _, alive = psutil.wait_procs(group, timeout)
    if alive:
        raise RuntimeError(f"postgres of {data} still running after SIGKILL: {[p.pid for p in alive]}")
    (data / "postmaster.pid").unlink(missing_ok=True)
    return True


def postmaster_options(data: Path) -> str:
    """The options the server of ``data`` was last started with (its postmaster.opts,
    the data directory option left out), quoted for ``pg_ctl start -o``: a restart by
    hand with exactly what the module's start_prim gave it."""
    words = shlex.split((data / "postmaster.opts").read_text())[1:]
    opts: list[str] = []
    i = 0
    while i < len(words):
        if words[i] == "-D":
            i += 2
            continue
        opts.append(words[i])
        i += 1
    return " ".join(shlex.quote(w) for w in opts)


def pg_ctl_start_argv(data: Path, log: Path, options: str) -> list[str]:
    """``pg_ctl start -w`` as the postgres user: returns once the server accepts
    connections (after crash recovery, when the last server died)."""
    return as_postgres([f"{PG_BIN}/pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_S), "-D",
                        str(data), "-l", str(log), "-o", options])


def timed_run(argv: list[str], what: str, timeout: float = START_TIMEOUT_S + 60) -> float:
    """Run ``argv`` (a clear error when it fails); seconds it took."""
    t = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({res.returncode}): "
                           f"{(res.stderr or res.stdout).strip()[-2000:]}")
    return took


class PlainPostgres:
    """PostgreSQL on a plain directory of lab host ``host`` (under the lab's work
    folder, so on the same file system as the mirror's copies): the same binaries and
    settings as the module, no FUSE, no replication, no cluster. ``listen``: the
    address it listens on; ``clients``: networks trusted besides the local ones. Every
    server it starts is stopped by its PID (``close``, which also removes the directory)."""

    def __init__(self, lab: Lab, host: str, *, port: int = 5440, listen: str = "127.0.0.1",
                 clients: str = "", name: str = "plain") -> None:
        self.lab, self.host, self.port, self.listen, self.clients = lab, host, port, listen, clients
        self.name = name
        self.base = lab.host_dir(host) / f"{name}-pg"
        self.data = self.base / "data"
        self.log = self.base / "postgresql.log"

    @property
    def options(self) -> str:
        return (f"-p {self.port} -k {self.base} -c listen_addresses={self.listen} "
                f"-c cluster_name={self.name} {LAB_PG_OPTIONS}")

    def init(self) -> "PlainPostgres":
        self.base.mkdir(parents=True, exist_ok=True)
        for d in (self.lab.workdir, self.lab.host_dir(self.host), self.base):
            os.chmod(d, os.stat(d).st_mode | 0o111)   # postgres goes through the lab's 0700 folders
        shutil.chown(self.base, "postgres")
        self.lab.run(self.host, as_postgres([f"{PG_BIN}/initdb", "-D", str(self.data), "-A", "trust"]),
                     timeout=120)
        if self.clients:
            with open(self.data / "pg_hba.conf", "a") as f:
                for net in self.clients.split():
                    f.write(f"host all all {net} trust\n")
        return self

    def start(self) -> float:
        """``pg_ctl start -w`` in the lab host's network namespace (entered as for the
        mirror's restart_postgres); seconds until it accepts connections."""
        argv = pg_ctl_start_argv(self.data, self.log, self.options)
        return timed_run([NSENTER, f"--net=/run/netns/{self.lab.hosts[self.host].netns}", "--",
                          *argv], f"pg_ctl start on {self.data}")

    def crash(self) -> bool:
        return crash_postmaster(self.data)

    def close(self) -> None:
        self.crash()
        shutil.rmtree(self.base, ignore_errors=True)


def write_pg_module(folder: Path, vip: str, *, datadir: str = DATADIR, port: int = PORT,
                    clients: str = "", ack_timeout_s: float = 1.0,
                    servers: tuple[str, ...] = (), flow_servers: tuple[str, ...] = (),
                    extra_vars: dict[str, str] | None = None,
                    template: Path = TEMPLATE) -> Path:
    """A copy of the template with these values in its userconfig.xml (the scripts are
    the template's, unchanged). ``clients``: networks trusted without a password (the
    lab's); ``servers``/``flow_servers``: as for the kv module."""
    path, root, service = copied_template(folder, template, vip, datadir, ack_timeout_s)
    heart = service.find("heart")
    if heart is None and (servers or flow_servers):
        heart = ET.Element("heart")        # the template has none: first, as in SafeKit's order
        service.insert(0, heart)
    for name, addrs, ident in (("default", servers, None), ("flow", flow_servers, "flow")):
        if addrs:
            hb = ET.SubElement(heart, "heartbeat", {"name": name, **({"ident": ident} if ident else {})})
            for a in addrs:
                ET.SubElement(hb, "server", {"addr": a})
    set_user_vars(service, {"PG_DIR": datadir, "PG_PORT": str(port), "PG_CLIENTS": clients,
                            "PG_CLIENT_AUTH": "trust", "PG_BIN": PG_BIN,
                            "PG_OPTIONS": LAB_PG_OPTIONS, **(extra_vars or {})})
    write_userconfig(path, root)
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
        res = self.lab.run(self.client, pg_client_argv(self.vip, self.port, tool, *args),
                           check=False, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({res.returncode}): "
                               f"{res.stderr.strip()[-2000:]}")
        return res

    def start_pgbench(self, name: str = "pgbench", clients: int = 4, seconds: int = 3600) -> LabProcess:
        """pgbench's TPC-B-like load through the VIP (``init_pgbench`` first); -P 1
        prints progress every second into its log."""
        return self.lab.spawn(self.client, pg_client_argv(
            self.vip, self.port, "pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds),
            "-P", "1", "postgres"), name=name)

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

    # ---- the server as the primary's daemon sees it ----------------------------------------
    def as_node_sees(self, node: str, path: Path) -> Path:
        """``path`` as ``node``'s daemon, the module's scripts and its PostgreSQL see it:
        through the daemon's mount namespace (``ip netns exec`` gave it its own), where
        the replicated directory is the FUSE mount."""
        return Path(f"/proc/{self.cluster.procs[node].pid}/root") / str(path).lstrip("/")

    def in_node_mounts(self, node: str, argv: list[str]) -> list[str]:
        """``argv`` run in ``node``'s network namespace and its daemon's mount namespace."""
        return [NSENTER, f"--mount=/proc/{self.cluster.procs[node].pid}/ns/mnt",
                f"--net=/run/netns/{self.lab.hosts[node].netns}", "--", *argv]

    def pg_data(self, node: str) -> Path:
        """PostgreSQL's data directory on ``node`` (the module's DATA, pg_common.sh)."""
        return self.data_dir(node) / "data"

    def crash_postgres(self, node: str) -> str:
        """SIGKILL the module's server on ``node`` (the primary) the way a crash would,
        the mount and the cluster left running; the options it ran with, for
        ``restart_postgres``."""
        data = self.as_node_sees(node, self.pg_data(node))
        options = postmaster_options(data)
        if not crash_postmaster(data):
            raise RuntimeError(f"no PostgreSQL running on {node} to crash")
        return options

    def server_log(self, node: str) -> Path:
        """The server's log on ``node`` (in pg_common.sh's RUN, outside the mount)."""
        return self.root(node) / "run" / f"hacluster-{self.module}" / "postgresql.log"

    def restart_postgres(self, node: str, options: str) -> float:
        """``pg_ctl start -w`` by hand on ``node``, through its mount (crash recovery
        reads and writes the replicated copy), with the module's options; seconds until
        it accepts connections. Its log goes where start_prim's goes."""
        argv = pg_ctl_start_argv(self.pg_data(node), self.server_log(node), options)
        return timed_run(self.in_node_mounts(node, argv), f"pg_ctl start on {node}")

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
