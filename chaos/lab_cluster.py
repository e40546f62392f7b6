"""A hacluster cluster running as real daemons on lab hosts.

Shared by the lab tests, the benchmarks and ``make demo``: writes the cluster
configuration with the real ``hacluster cluster init``, starts ``node run`` /
``witness run`` in each host's namespace, talks to each daemon over its
control socket, and reads the daemons' structured log lines back.

Each member's directories are the lab host's own, passed explicitly on every command
line (``--state-dir``, ``--run-dir``, ``--log-dir``) as a server's are by default
(/var/lib/hacluster, /run/hacluster, /var/log/hacluster): nothing of a lab run lands
outside the lab's work folder, and the configuration directory is only read.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from hacluster.node.control import ControlError, request
from hacluster.node.structured_log import parse_line

from .lab import Lab, LabProcess, wait_until

RAFT_PORT = 7400


class LabCluster:
    def __init__(self, lab: Lab, nodes: list[str], witnesses: list[str] = (),
                 contend: dict[str, list[str]] | None = None,
                 raft_settings: dict[str, Any] | None = None, name: str = "lab",
                 links_network: str | None = None) -> None:
        """``links_network``: every member also reaches the others over this lab
        network (its address there is its link: several heartbeat networks)."""
        if links_network is not None and links_network not in lab.networks[1:]:
            raise ValueError(f"links_network {links_network!r} must be one of the lab's "
                             f"networks other than its first; the lab has {list(lab.networks)}")
        self.links_network = links_network
        self.lab = lab
        self.nodes = list(nodes)
        self.witnesses = list(witnesses)
        self.contend = contend or {}
        self.raft_settings = raft_settings or {}
        self.name = name
        self.cfg_root = lab.workdir / "cfg"
        self.procs: dict[str, LabProcess] = {}
        self._config_dirs: dict[str, Path] = {}
        self._removed_states: dict[str, int] = {}
        self._state_dirs: dict[str, Path] = {}

    # ---- set-up -------------------------------------------------------------
    def role(self, member: str) -> str:
        return "witness" if member in self.witnesses else "node"

    @property
    def members(self) -> list[str]:
        return self.nodes + self.witnesses

    def config_dir(self, member: str) -> Path:
        return self._config_dirs.get(member, self.cfg_root / member)

    def state_dir(self, member: str) -> Path:
        """/var/lib/hacluster of the member's host (or the one its last start named)."""
        return self._state_dirs.get(member) or self.lab.host_dir(member) / "state"

    def run_dir(self, member: str) -> Path:
        """/run/hacluster of the member's host."""
        return self.lab.host_dir(member) / "run"

    def log_dir(self, member: str) -> Path:
        """/var/log/hacluster of the member's host."""
        return self.lab.host_dir(member) / "log"

    def socket_path(self, member: str) -> Path:
        return self.run_dir(member) / "control.sock"

    def path_flags(self, member: str) -> list[str]:
        return ["--state-dir", str(self.state_dir(member)), "--run-dir", str(self.run_dir(member)),
                "--log-dir", str(self.log_dir(member))]

    def move_state_away(self, member: str) -> Path:
        """What an administrator does before adding a removed member back (the daemon
        refuses its old state, naming this): its state directory moved aside."""
        n = self._removed_states[member] = self._removed_states.get(member, 0) + 1
        old = self.state_dir(member)
        aside = old.with_name(f"state.removed-{n}")
        if old.exists():
            old.rename(aside)
        return aside

    def init(self) -> None:
        argv = ["cluster", "init", "--name", self.name, "--out", str(self.cfg_root)]
        for n in self.nodes:
            argv += ["--node", f"{n}={self.lab.addr(n)}:{RAFT_PORT}"]
        for w in self.witnesses:
            argv += ["--witness", f"{w}={self.lab.addr(w)}:{RAFT_PORT}"]
        if self.links_network is not None:
            for m in self.members:
                argv += ["--link", f"{m}={self.lab.addr(m, self.links_network)}"]
        res = self.hacluster(None, *argv)
        if res.returncode != 0:
            raise RuntimeError(f"cluster init failed: {res.stderr.strip()}")
        if self.raft_settings:
            for m in self.members:
                path = self.config_dir(m) / "cluster.json"
                cfg = json.loads(path.read_text())
                cfg["raft"].update(self.raft_settings)
                path.write_text(json.dumps(cfg, indent=2))

    def hacluster(self, member: str | None, *args: str, timeout: float = 60):
        """Run the real CLI; inside the member's namespace with its config, or
        (member None) in the lab's first host without one."""
        host = member or self.members[0]
        argv = [sys.executable, "-m", "hacluster"]
        if member is not None:
            argv += ["-c", str(self.config_dir(member)), *self.path_flags(member)]
        return self.lab.run(host, argv + list(args), check=False, timeout=timeout)

    def start(self, member: str, config_dir: Path | None = None,
              env: dict[str, str] | None = None, state_dir: Path | None = None) -> LabProcess:
        """``env``: added to the daemon's environment (NOTIFY_SOCKET, as systemd would).
        ``config_dir``, ``state_dir``: this member's from now on."""
        if config_dir is not None:
            self._config_dirs[member] = config_dir
        if state_dir is not None:
            self._state_dirs[member] = state_dir
        cfg = self.config_dir(member)
        argv = [sys.executable, "-m", "hacluster", "-c", str(cfg), *self.path_flags(member),
                self.role(member), "run"]
        for resource in self.contend.get(member, []):
            argv += ["--contend", resource]
        proc = self.lab.spawn(member, argv, name="hacluster", env=env)
        self.procs[member] = proc
        return proc

    def start_all(self) -> None:
        for m in self.members:
            self.start(m)

    def kill(self, member: str) -> None:
        self.procs[member].kill()

    def stop(self, member: str) -> int:
        return self.procs[member].stop()

    def pause(self, member: str) -> None:
        self.procs[member].signal(signal.SIGSTOP)

    def resume(self, member: str) -> None:
        self.procs[member].signal(signal.SIGCONT)

    # ---- observation ------------------------------------------------------------
    def status(self, member: str, timeout: float = 2.0) -> dict | None:
        try:
            return request(self.socket_path(member), "status", timeout=timeout)
        except (ControlError, OSError, ValueError):
            return None

    def cpu_percent(self, seconds: float, members: list[str] | None = None) -> dict[str, float]:
        """Each running member daemon's CPU over the next ``seconds`` (% of one core).
        ``ip netns exec`` execs the daemon, so the lab's pid is the daemon itself."""
        procs = {m: psutil.Process(self.procs[m].pid) for m in (members or self.members)}
        for p in procs.values():
            p.cpu_percent(None)
        time.sleep(seconds)
        return {m: p.cpu_percent(None) for m, p in procs.items()}

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 20.0,
                 interval: float = 0.02) -> Any:
        return wait_until(what, predicate, timeout, interval)

    def leader(self, among: list[str] | None = None) -> str | None:
        """The leader that a majority of the given running members agree on."""
        among = among or [m for m, p in self.procs.items() if p.alive()]
        votes: dict[str, int] = {}
        for m in among:
            st = self.status(m, timeout=0.5)
            # Before the bootstrap entry is applied the leader is only an address.
            if st and st["leader"] in self.members:
                votes[st["leader"]] = votes.get(st["leader"], 0) + 1
        for leader, n in votes.items():
            if n > len(among) / 2:
                return leader
        return None

    def wait_leader(self, among: list[str] | None = None, timeout: float = 20.0,
                    exclude: str | None = None) -> str:
        return self.wait_for("a leader", lambda: (lambda l: l if l and l != exclude else None)(
            self.leader(among)), timeout)

    def lease(self, member: str, resource: str) -> dict | None:
        st = self.status(member)
        if not st:
            return None
        return next((r for r in st["leases"] if r["resource"] == resource), None)

    def events(self, member: str, event: str | None = None) -> list[dict[str, str]]:
        path = self.lab.workdir / member / "hacluster.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            if "event=" not in line:
                continue
            fields = parse_line(line)
            if event is None or fields.get("event") == event:
                out.append(fields)
        return out


    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.alive():
                proc.stop()
