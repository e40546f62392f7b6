"""A test lab: hacluster hosts as Linux network namespaces on one machine.

Every host is a namespace ``hclab-<id>-<host>`` with one veth per network (``eth0``,
``eth1``, ...). The other ends sit on bridges inside a "switch" namespace
``hclab-<id>-sw``, so the machine's own network namespace gains no interface, address or
route. Faults are injected with nftables inside the host namespaces or by taking a
switch port down. A registry in /run/hclab lets ``cleanup_all()`` (or
``python -m chaos.lab cleanup``) remove what a crashed test left behind.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil

from checkers.errd import process_start_ticks

log = logging.getLogger("chaos.lab")

REGISTRY_DIR = Path("/run/hclab")
LAB_TABLES = ("hclab_cut", "hclab_block")     # the lab's own fault tables, kept at a power loss
NS_PREFIX = "hclab-"
IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
# The git checkout this lab runs from: the lab, the demo's modules (``python -m
# chaos.kvapp`` in a module script, whose working directory is the module's) and the
# benchmarks are not in the product's wheel, so every process the lab starts finds
# them here, and the product's packages from the same tree as the tests that drive it.
SOURCE_TREE = Path(__file__).resolve().parents[1]

_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_MAX_NETWORKS = 8  # 10.213.x.x .. 10.220.x.x
_MAX_HOSTS = 253  # host index + 1 must stay a valid last octet
_IP_ONLY = "meta protocol { ip, ip6 } drop"  # one-way cuts: ARP must still flow both ways
_ALL = "drop"

# Labs of this process that are started and not yet cleaned; a strong reference so an
# abandoned Lab object is still cleaned at exit (and its Popen objects stay alive).
_LIVE: dict[str, Lab] = {}
_LIVE_LOCK = threading.Lock()


def wait_until(what: str, predicate, timeout: float = 20.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns something true (returned), or raise
    TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30,
        input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check,
                          timeout=timeout, input=input)


def _fmt(**kv: object) -> str:
    return " ".join(f"{k}={v}" for k, v in kv.items() if v is not None)


def _same_process(pid: int, create_time: float | None,
                  start_ticks: int | None = None) -> psutil.Process | None:
    """The process with this pid if it is still the one recorded (pids get reused).
    Recorded by its start in clock ticks since boot, which no step of the wall clock
    moves (psutil's create_time does: it adds the boot time of /proc/stat, so after a
    step a live owner would look gone and its labs be cleaned). Registries written
    before start_ticks was kept have only create_time, compared within 1 s."""
    try:
        proc = psutil.Process(pid)
        if start_ticks is not None:
            if process_start_ticks(pid) != start_ticks:
                return None
        elif create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return None
        return proc
    except (psutil.Error, ProcessLookupError):
        return None


def _identity(pid: int) -> dict[str, float | int]:
    """How the registry records a process: start_ticks for this code, create_time as
    well for a cleanup run by an older one."""
    return {"create_time": psutil.Process(pid).create_time(), "start_ticks": process_start_ticks(pid)}


def _gone(proc: psutil.Process) -> bool:
    # PID 1 may never reap orphans (it does not on the lab machine): a zombie is dead.
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _kill_and_wait(procs: Iterable[psutil.Process], timeout: float = 5) -> None:
    procs = list(procs)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if not _gone(p)]
        if procs:
            time.sleep(0.02)


def _netns_list() -> list[str]:
    out = _sh([IP, "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    out = _sh([IP, "netns", "pids", ns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _purge_netns(ns: str) -> list[str]:
    """Kill whatever still runs in the namespace (found by namespace, not by name), delete it."""
    removed = []
    strays = []
    for pid in _netns_pids(ns):
        proc = _same_process(pid, None)
        if proc is not None:
            strays.append(proc)
            removed.append(f"pid {pid} (in {ns})")
    _kill_and_wait(strays)
    if _sh([IP, "netns", "del", ns], check=False).returncode == 0:
        removed.append(f"namespace {ns}")
    return removed


class LabProcess:
    """A process started inside a lab host; the Popen pid is the process itself."""

    def __init__(self, host: str, name: str, popen: subprocess.Popen, log_path: Path,
                 lab_id: str, identity: Mapping[str, float | int] | None) -> None:
        self.host = host
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        # with the pid, identifies the process in the registry (None: gone at once)
        self.identity = dict(identity) if identity is not None else None
        self._lab_id = lab_id

    def __repr__(self) -> str:
        return f"LabProcess(host={self.host!r}, name={self.name!r}, pid={self.pid})"

    def _log(self, action: str, **kv: object) -> None:
        log.info("lab=%s action=%s %s", self._lab_id, action,
                 _fmt(host=self.host, name=self.name, pid=self.pid, **kv))

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None  # poll() also reaps a zombie

    def signal(self, sig: int) -> None:
        # Popen.send_signal does nothing once the child is reaped, so a reused pid is safe.
        self._log("signal", sig=signal.Signals(sig).name)
        self.popen.send_signal(sig)

    def kill(self) -> int:
        self._log("kill")
        self.popen.send_signal(signal.SIGKILL)
        return self.popen.wait()

    def pause(self) -> None:
        self._log("pause")
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._log("resume")
        self.popen.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        self._log("stop", timeout=timeout)
        self.popen.send_signal(signal.SIGTERM)
        self.popen.send_signal(signal.SIGCONT)  # a paused process would never see SIGTERM
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)


class LabHost:
    """One namespace of the lab; ``ifaces[net]`` is its interface on that network."""

    def __init__(self, name: str, index: int, netns: str, networks: Sequence[str],
                 addrs: dict[str, str]) -> None:
        self.name = name
        self.index = index
        self.netns = netns
        self.networks = tuple(networks)
        self.addrs = addrs
        self.ifaces = {net: f"eth{j}" for j, net in enumerate(networks)}

    def __repr__(self) -> str:
        return f"LabHost({self.name!r}, netns={self.netns!r}, addrs={self.addrs})"

    def addr(self, net: str | None = None) -> str:
        return self.addrs[net or self.networks[0]]


class Lab:
    """Hosts as network namespaces joined by bridges in a switch namespace."""

    def __init__(self, hosts: Sequence[str], networks: Sequence[str] = ("lan",),
                 workdir: str | os.PathLike | None = None) -> None:
        hosts, networks = list(hosts), list(networks)
        if not hosts or len(set(hosts)) != len(hosts) or len(hosts) > _MAX_HOSTS:
            raise ValueError(f"need 1..{_MAX_HOSTS} unique host names, got {hosts}")
        for h in hosts:
            if not _HOST_RE.match(h) or h == "sw":
                raise ValueError(f"bad host name {h!r} (letters, digits, _.-; not 'sw')")
        if not networks or len(set(networks)) != len(networks) or len(networks) > _MAX_NETWORKS:
            raise ValueError(f"need 1..{_MAX_NETWORKS} unique network names, got {networks}")
        self.id = secrets.token_hex(3)
        self.networks = tuple(networks)
        self._own_workdir = workdir is None
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"hclab-{self.id}-"))
        else:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.switch_ns = f"{NS_PREFIX}{self.id}-sw"
        k = int(self.id, 16) % 254 + 1  # any subnet works: it exists only in our namespaces
        self.hosts: dict[str, LabHost] = {}
        for i, name in enumerate(hosts):
            addrs = {net: f"10.{213 + j}.{k}.{i + 1}" for j, net in enumerate(networks)}
            self.hosts[name] = LabHost(name, i, f"{NS_PREFIX}{self.id}-{name}", networks, addrs)
        self.processes: list[LabProcess] = []
        self.registry_path = REGISTRY_DIR / f"{self.id}.json"
        self._namespaces: list[str] = []
        self._lock = threading.RLock()
        self._started = False
        self._cleaned = False
        # fault state, rendered into nft tables / port states on every change
        self._cuts: dict[str, dict[tuple[str, str], str]] = {h: {} for h in self.hosts}
        self._blocks: dict[str, set[tuple[str, str]]] = {h: set() for h in self.hosts}
        self._down_ports: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"Lab(id={self.id!r}, hosts={list(self.hosts)}, networks={list(self.networks)})"

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _log(self, action: str, **kv: object) -> None:
        log.info("lab=%s action=%s %s", self.id, action, _fmt(**kv))

    # -- setup and teardown -------------------------------------------------------------

    def _write_registry(self) -> None:
        data = {
            "id": self.id,
            "owner": {"pid": os.getpid(), **_identity(os.getpid())},
            "workdir": str(self.workdir),
            "namespaces": self._namespaces,
            "processes": [
                {"pid": p.pid, **(p.identity or {}), "host": p.host, "name": p.name}
                for p in self.processes],
        }
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        tmp = REGISTRY_DIR / f".{self.id}.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.registry_path)  # atomic: cleanup_all never reads half a file

    def _add_netns(self, ns: str) -> None:
        # Recorded before it exists, so a crash right after leaves nothing unrecorded.
        self._namespaces.append(ns)
        self._write_registry()
        _sh([IP, "netns", "add", ns])
        _sh([IP, "-n", ns, "link", "set", "lo", "up"])

    def _switch_port(self, host: str, net: str) -> str:
        return f"v{self.hosts[host].index}n{self.networks.index(net)}"

    def start(self) -> Lab:
        if self._started:
            raise RuntimeError(f"lab {self.id} already started")
        self._started = True
        self._log("start", hosts=",".join(self.hosts), networks=",".join(self.networks),
                  workdir=self.workdir)
        with _LIVE_LOCK:
            _LIVE[self.id] = self
        try:
            self._add_netns(self.switch_ns)
            for j, _net in enumerate(self.networks):
                br = f"br{j}"
                # mcast_snooping off: a dumb switch floods multicast (shared-MAC VIPs need it)
                _sh([IP, "-n", self.switch_ns, "link", "add", br, "type", "bridge",
                     "mcast_snooping", "0"])
                _sh([IP, "-n", self.switch_ns, "link", "set", br, "up"])
            for host in self.hosts.values():
                self._setup_host(host)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _setup_host(self, host: LabHost) -> None:
        self.host_dir(host.name)
        self._add_netns(host.netns)
        for j, net in enumerate(self.networks):
            port, iface = self._switch_port(host.name, net), host.ifaces[net]
            # both ends created in place: no temporary interface in the root namespace
            _sh([IP, "link", "add", iface, "netns", host.netns, "type", "veth",
                 "peer", "name", port, "netns", self.switch_ns])
            _sh([IP, "-n", self.switch_ns, "link", "set", port, "master", f"br{j}", "up"])
            _sh([IP, "-n", host.netns, "addr", "add", f"{host.addrs[net]}/24", "dev", iface])
            _sh([IP, "-n", host.netns, "link", "set", iface, "up"])

    def _remove_workdir(self) -> list[str]:
        """The work folder the lab made for itself holds the cluster's secrets and
        copies of data: it goes with the lab (HCLAB_KEEP=1 keeps it for a post-mortem),
        unless something is still mounted inside it."""
        if not self._own_workdir or os.environ.get("HCLAB_KEEP"):
            return []
        prefix = str(self.workdir) + "/"
        try:
            with open("/proc/mounts") as f:
                mounted = [ln.split()[1] for ln in f if ln.split()[1].startswith(prefix)]
        except OSError:
            mounted = []
        if mounted:
            self._log("workdir_kept", reason=f"still mounted: {mounted[0]}")
            return []
        shutil.rmtree(self.workdir, ignore_errors=True)
        return [f"workdir {self.workdir}"]

    def cleanup(self) -> list[str]:
        """Stop every process, delete the namespaces and the registry entry, and the
        work folder the lab made; idempotent."""
        with self._lock:
            if self._cleaned:
                return []
            self._log("cleanup")
            removed = []
            running = [p for p in self.processes if p.alive()]
            for p in running:
                p.popen.send_signal(signal.SIGTERM)
                p.popen.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 2
            for p in running:
                try:
                    p.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait()
                removed.append(f"pid {p.pid} ({p.host}/{p.name})")
            # Children a daemon forked are found by namespace; switch goes last.
            for ns in reversed(self._namespaces):
                removed += _purge_netns(ns)
            self.registry_path.unlink(missing_ok=True)
            self._cleaned = True
            removed += self._remove_workdir()
            with _LIVE_LOCK:
                _LIVE.pop(self.id, None)
            return removed

    def host_dir(self, host: str) -> Path:
        d = self.workdir / self.hosts[host].name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def addr(self, host: str, net: str | None = None) -> str:
        return self.hosts[host].addr(net)

    # -- running things -----------------------------------------------------------------

    @staticmethod
    def _env(env: Mapping[str, str] | None) -> dict[str, str]:
        """Ours plus ``env`` (the child still needs PATH, ...), with the source tree
        first on PYTHONPATH (see SOURCE_TREE)."""
        merged = {**os.environ, **(env or {})}
        paths = [str(SOURCE_TREE)] + [p for p in merged.get("PYTHONPATH", "").split(os.pathsep)
                                      if p and p != str(SOURCE_TREE)]
        merged["PYTHONPATH"] = os.pathsep.join(paths)
        return merged

    def run(self, host: str, argv: Sequence[str], check: bool = True, timeout: float = 30,
            env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """Run argv in the host's namespace and wait; ``env`` adds to our environment.
        Its stdin is /dev/null: a command that would ask at a terminal (hacluster's
        confirmations) never waits on the test runner's."""
        ns = self.hosts[host].netns
        log.debug("lab=%s action=run host=%s argv=%s", self.id, host, list(argv))
        return subprocess.run([IP, "netns", "exec", ns, *argv], capture_output=True,
                              stdin=subprocess.DEVNULL, text=True, check=check, timeout=timeout,
                              env=self._env(env), cwd=cwd)

    def spawn(self, host: str, argv: Sequence[str], name: str = "daemon",
              env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None,
              share_mounts: bool = False) -> LabProcess:
        """Start argv in the host's namespace, output appended to <workdir>/<host>/<name>.log;
        ``env`` adds to our environment. ``share_mounts``: enter only the network
        namespace (nsenter), so mounts the process makes (FUSE) are visible to the
        caller; `ip netns exec` gives the process a mount namespace of its own."""
        if self._cleaned or not self._started:
            raise RuntimeError(f"lab {self.id} is not running")
        ns = self.hosts[host].netns
        log_path = self.host_dir(host) / f"{name}.log"
        with self._lock, open(log_path, "ab") as out:
            out.write(f"=== {time.strftime('%F %T')} start {list(argv)}\n".encode())
            out.flush()
            # `ip netns exec` execs the command: the Popen pid is the process itself.
            # New session: a Ctrl-C aimed at the test runner does not hit the daemons.
            prefix = ([NSENTER, f"--net=/run/netns/{ns}", "--"] if share_mounts
                      else [IP, "netns", "exec", ns])
            popen = subprocess.Popen([*prefix, *argv], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=self._env(env), start_new_session=True)
            try:
                identity = _identity(popen.pid)
            except (psutil.Error, ProcessLookupError):
                identity = None  # already gone: nothing to clean later
            proc = LabProcess(host, name, popen, log_path, self.id, identity)
            self.processes.append(proc)
            self._write_registry()
        self._log("spawn", host=host, name=name, pid=proc.pid, argv=" ".join(argv))
        return proc

    # -- faults -------------------------------------------------------------------------

    def kill_host(self, host: str) -> int:
        """Power loss: SIGKILL every process in the host's namespace (found by
        namespace, so the children of daemons die too), then the kernel state a
        reboot would not keep is wiped (``forget_kernel_state``). Returns how many
        processes were killed."""
        ns = self.hosts[host].netns
        procs = [p for p in (_same_process(pid, None) for pid in _netns_pids(ns)) if p is not None]
        self._log("kill_host", host=host, processes=len(procs))
        _kill_and_wait(procs)
        self.forget_kernel_state(host)
        return len(procs)

    def forget_kernel_state(self, host: str) -> dict[str, int]:
        """What a powered-off server comes back without: addresses other than the
        lab's own (a VIP), nftables tables other than the lab's fault tables (a
        farm ruleset, an ARP filter), neighbour entries, static multicast
        memberships (a farm's shared MAC). Without this, a killed host's stale
        ruleset and VIP answered for it after its daemon was gone."""
        h = self.hosts[host]
        ns = h.netns
        gone = {"addresses": 0, "tables": 0, "maddrs": 0}
        for net, iface in h.ifaces.items():
            own = h.addrs[net]
            res = _sh([IP, "-n", ns, "-4", "-o", "addr", "show", "dev", iface], check=False)
            for line in res.stdout.splitlines():
                fields = line.split()
                if "inet" in fields:
                    cidr = fields[fields.index("inet") + 1]
                    if cidr.split("/")[0] != own:
                        _sh([IP, "-n", ns, "addr", "del", cidr, "dev", iface], check=False)
                        gone["addresses"] += 1
            res = _sh([IP, "-n", ns, "maddr", "show", "dev", iface], check=False)
            for line in res.stdout.splitlines():
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "link" and "static" in fields:
                    _sh([IP, "-n", ns, "maddr", "del", fields[1], "dev", iface], check=False)
                    gone["maddrs"] += 1
            _sh([IP, "-n", ns, "neigh", "flush", "dev", iface], check=False)
        res = _sh([IP, "netns", "exec", ns, NFT, "list", "tables"], check=False)
        for line in res.stdout.splitlines():
            fields = line.split()    # "table <family> <name>"
            if len(fields) == 3 and fields[0] == "table" and fields[2] not in LAB_TABLES:
                _sh([IP, "netns", "exec", ns, NFT, "delete", "table", fields[1], fields[2]],
                    check=False)
                gone["tables"] += 1
        self._log("forget_kernel_state", host=host, **gone)
        return gone

    def _nets(self, net: str | None) -> tuple[str, ...]:
        if net is None:
            return self.networks
        if net not in self.networks:
            raise ValueError(f"unknown network {net!r}; have {self.networks}")
        return (net,)

    def _check_hosts(self, hosts: Iterable[str]) -> None:
        unknown = [h for h in hosts if h not in self.hosts]
        if unknown:
            raise KeyError(f"unknown hosts {unknown}; have {list(self.hosts)}")

    def _render(self, host: str) -> str:
        """nft script replacing this host's lab tables in one transaction."""
        h = self.hosts[host]
        cut: dict[tuple[str, str], list[str]] = {k: [r] for k, r in self._cuts[host].items()}
        dsts: dict[str, list[str]] = {}
        for net, dst in sorted(self._blocks[host]):
            dsts.setdefault(h.ifaces[net], []).append(self.hosts[dst].addr(net))
        block = {("egress", iface): [f"ip daddr {{ {', '.join(a)} }} drop"]
                 for iface, a in dsts.items()}
        lines = []
        for table, chains in (("hclab_cut", cut), ("hclab_block", block)):
            # declare-then-delete makes the delete safe when the table does not exist
            lines += [f"table netdev {table} {{}}", f"delete table netdev {table}"]
            if not chains:
                continue
            lines.append(f"table netdev {table} {{")
            for (hook, iface), rules in sorted(chains.items()):
                lines += [f"  chain {hook}_{iface} {{",
                          f'    type filter hook {hook} device "{iface}" priority 0; policy accept;',
                          *(f"    {r}" for r in rules), "  }"]
            lines.append("}")
        return "\n".join(lines) + "\n"

    def _load(self, host: str) -> None:
        _sh([IP, "netns", "exec", self.hosts[host].netns, NFT, "-f", "-"],
            input=self._render(host))

    def cut(self, host: str, direction: str = "both", method: str = "nft",
            net: str | None = None) -> None:
        """Isolate a host. nft: drop in its namespace ("both" drops every frame; "in"/"out"
        drop IP only so ARP keeps the other direction working). link: switch port down."""
        if direction not in ("both", "in", "out"):
            raise ValueError(f"direction must be both, in or out, not {direction!r}")
        if method not in ("nft", "link"):
            raise ValueError(f"method must be nft or link, not {method!r}")
        if method == "link" and direction != "both":
            raise ValueError("method 'link' only cuts both directions")
        nets, h = self._nets(net), self.hosts[host]
        with self._lock:
            self._log("cut", host=host, direction=direction, method=method, net=net)
            if method == "link":
                for n in nets:
                    port = self._switch_port(host, n)
                    _sh([IP, "-n", self.switch_ns, "link", "set", port, "down"])
                    self._down_ports.add((host, n))
                return
            hooks = {"in": ("ingress",), "out": ("egress",), "both": ("ingress", "egress")}
            rule = _ALL if direction == "both" else _IP_ONLY
            for n in nets:
                for hook in hooks[direction]:
                    key = (hook, h.ifaces[n])
                    if self._cuts[host].get(key) != _ALL:  # a full drop already covers IP
                        self._cuts[host][key] = rule
            self._load(host)

    def block(self, src_host: str, dst_hosts: str | Iterable[str], net: str | None = None) -> None:
        """Drop IP packets from src to each dst (one way: dst -> src still flows)."""
        dsts = [dst_hosts] if isinstance(dst_hosts, str) else list(dst_hosts)
        self._check_hosts([src_host, *dsts])
        with self._lock:
            self._log("block", src=src_host, dst=",".join(dsts), net=net)
            self._blocks[src_host].update((n, d) for n in self._nets(net) for d in dsts
                                          if d != src_host)
            self._load(src_host)

    def partition(self, groups: Sequence[Sequence[str]], net: str | None = None) -> None:
        """Drop traffic between the groups; hosts in no group keep full connectivity."""
        groups = [list(g) for g in groups]
        self._check_hosts([h for g in groups for h in g])
        with self._lock:
            self._log("partition", groups="|".join(",".join(g) for g in groups), net=net)
            for i, g in enumerate(groups):
                others = [h for j, o in enumerate(groups) if j != i for h in o]
                for src in g:
                    self._blocks[src].update((n, d) for n in self._nets(net) for d in others)
            for src in {h for g in groups for h in g}:
                self._load(src)

    def heal(self, host: str | None = None) -> None:
        """Undo cuts, blocks and partitions: of one host (also blocks aimed at it) or all."""
        with self._lock:
            self._log("heal", host=host or "all")
            targets = [host] if host is not None else list(self.hosts)
            for h, n in sorted(self._down_ports):
                if h in targets:
                    _sh([IP, "-n", self.switch_ns, "link", "set", self._switch_port(h, n), "up"])
                    self._down_ports.discard((h, n))
            touched = set(targets)
            for t in targets:
                self._cuts[t].clear()
                self._blocks[t].clear()
            for src, blocked in self._blocks.items():
                aimed = {b for b in blocked if b[1] in targets}
                if aimed:
                    blocked -= aimed
                    touched.add(src)
            for h in sorted(touched):
                self._load(h)


def _cleanup_registry(path: Path, data: dict) -> list[str]:
    removed = []
    lab_id = data.get("id", path.stem)
    procs = []
    for rec in data.get("processes", []):
        proc = _same_process(rec["pid"], rec.get("create_time"), rec.get("start_ticks"))
        if proc is not None and not _gone(proc):
            procs.append(proc)
            removed.append(f"pid {rec['pid']} (lab {lab_id} {rec.get('host')}/{rec.get('name')})")
    _kill_and_wait(procs)
    existing = set(_netns_list())
    for ns in reversed(data.get("namespaces", [])):
        if ns in existing:
            removed += _purge_netns(ns)
    path.unlink(missing_ok=True)
    removed.append(f"registry {path}")
    log.info("lab=%s action=cleanup_registry removed=%d", lab_id, len(removed))
    return removed


def cleanup_all(force: bool = False) -> list[str]:
    """Remove the leftovers of all labs and return what was removed.

    Labs of this process are cleaned; labs whose owning process is gone are cleaned from
    their registry (pids checked by start time); namespaces named hclab-* that no live
    lab claims are deleted. Labs owned by another running process (a concurrent test
    run) are left alone unless ``force``.
    """
    removed: list[str] = []
    with _LIVE_LOCK:
        mine = list(_LIVE.values())
    for lab in mine:
        removed += lab.cleanup()
    live_ids = set()
    for path in sorted(REGISTRY_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            removed.append(f"registry {path} (unreadable)")
            continue
        owner = data.get("owner", {})
        other_owner = owner.get("pid") != os.getpid()
        if other_owner and not force and _same_process(owner.get("pid", 0), owner.get("create_time"),
                                                       owner.get("start_ticks")):
            live_ids.add(data.get("id", path.stem))
            continue
        removed += _cleanup_registry(path, data)
    for ns in _netns_list():
        if ns.startswith(NS_PREFIX) and not any(ns.startswith(f"{NS_PREFIX}{i}-") for i in live_ids):
            removed += _purge_netns(ns)
    return removed


@atexit.register
def _cleanup_at_exit() -> None:
    with _LIVE_LOCK:
        labs = list(_LIVE.values())
    for lab in labs:
        try:
            lab.cleanup()
        except Exception:
            log.exception("lab=%s action=cleanup_at_exit failed", lab.id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cleanup", help="remove leftovers of all labs (namespaces, processes)")
    p.add_argument("--force", action="store_true",
                   help="also remove labs whose owning process is still running")
    args = parser.parse_args(argv)
    if args.command == "cleanup":
        removed = cleanup_all(force=args.force)
        for item in removed:
            print(f"removed {item}")
        if not removed:
            print("nothing to clean")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
