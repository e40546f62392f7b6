"""The README's walk-through, "From three blank servers to a running mirror module",
followed literally on lab hosts.

Every command of its ```` ```sh walkthrough on=HOSTS ```` blocks runs, as written, in
``sh`` on each named lab host (a network namespace), in the order of the README, and
must exit as the README says (0, or the ``# exit status N`` on its line); what a block
prints must show what the README's ```` ```text ```` block after it shows (digests
and column widths aside; ```` ```text example ```` is one run's, not checked:
which member leads varies). Only this changes:

- the addresses: the README's ``10.0.0.N`` are the lab's network ``.N``;
- each host's root: the lab's hosts share one file system, so each has a root
  directory of its own, given to every command in the documented variables
  (``HACLUSTER_CONFIG``, ``HACLUSTER_STATE_DIR``, ``HACLUSTER_RUN_DIR``,
  ``HACLUSTER_LOG_DIR``, and the lab's ``HACLUSTER_ROOT_PREFIX`` for module paths), and
  a path under ``/etc``, ``/var`` or ``/run`` that a command names is under it;
- three commands the lab has no machinery for are done as they would be on a server:
  ``make install`` ends with ``hacluster setup`` (the Makefile's own line, run with
  ``--root``; the apt and pip part is what ``tests/lab/test_install.py`` covers with the
  wheel in a fresh venv); ``scp`` is a copy into the other host's root (no sshd here);
  ``systemctl enable --now UNIT`` starts the ``ExecStart=`` of the unit ``hacluster
  setup`` wrote (the shipped one), with the directories the unit names made with their
  modes and a ``NOTIFY_SOCKET``, and returns once the daemon says ``READY=1``, as systemd
  does for ``Type=notify`` (the three members at once, as the README says to run them).

The firewall rules are loaded into each host with ``nft`` as written, so everything
after them passes through them: the cluster forms, the module is fetched, replicates
and swaps, and Prometheus's host reads the endpoints, with every other packet dropped.
"""
from __future__ import annotations

import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_root

SECTION = "## From three blank servers to a running mirror module"
# The README's hosts and their addresses: 10.0.0.N is the lab host with index N - 1.
HOSTS = {"n1": "10.0.0.1", "n2": "10.0.0.2", "w": "10.0.0.3", "mon": "10.0.0.4"}
ADDRESS = re.compile(r"\b10\.0\.0\.(\d{1,3})\b")
# The directories of a member (hacluster.node.paths), under a lab host's root.
MEMBER_DIRS = {"HACLUSTER_CONFIG": "/etc/hacluster", "HACLUSTER_STATE_DIR": "/var/lib/hacluster",
               "HACLUSTER_RUN_DIR": "/run/hacluster", "HACLUSTER_LOG_DIR": "/var/log/hacluster"}
# A path of the server's own file system in a command (/etc/hacluster/, /var/lib/myapp):
# under the host's root in the lab.
SERVER_PATH = re.compile(r"(?<![\w/.:-])(/(?:etc|var|run)/)")
SCP = re.compile(r"^scp -p (?P<sources>.+) root@(?P<address>[\d.]+):(?P<dest>/\S*)$")
SYSTEMCTL = re.compile(r"^systemctl enable --now (?P<unit>[\w-]+)$")
EXIT_STATUS = re.compile(r"#.*\bexit status (\d+)")


# ---- the README's blocks (pure) -----------------------------------------------------
@dataclass
class Command:
    text: str
    exit_status: int = 0


@dataclass
class Block:
    hosts: list[str]
    commands: list[Command]
    output: str | None          # the ```text block right after it, if any
    line: int


def section(readme: str) -> str:
    start = readme.index(SECTION + "\n")
    end = readme.find("\n## ", start + len(SECTION))
    return readme[start:end if end >= 0 else len(readme)]


def split_commands(script: str) -> list[Command]:
    """One command per line, with its continuation lines (``\\``) and its here-document."""
    lines = script.splitlines()
    out: list[Command] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        first = lines[i]
        text = [first]
        while text[-1].endswith("\\"):
            i += 1
            text.append(lines[i])
        heredoc = re.search(r"<<-?'?(\w+)'?", " ".join(text))
        if heredoc:
            while lines[i] != heredoc.group(1):
                i += 1
                text.append(lines[i])
        i += 1
        status = EXIT_STATUS.search(first)
        out.append(Command("\n".join(text), int(status.group(1)) if status else 0))
    return out


def blocks(readme: str) -> list[Block]:
    text = section(readme)
    offset = readme.index(text)
    fence = re.compile(r"^```sh walkthrough on=(?P<hosts>\S+)\n(?P<body>.*?)^```\n"
                       r"(?:```text\n(?P<output>.*?)^```\n)?", re.M | re.S)
    return [Block(m["hosts"].split(","), split_commands(m["body"]), m["output"],
                  readme.count("\n", 0, offset + m.start()) + 1)
            for m in fence.finditer(text)]


def output_shows(expected: str, printed: str) -> str | None:
    """None when ``printed`` shows every line of the README's ``expected``, in order;
    else the first line it does not. Digests (12 hex digits or more) and runs of spaces
    (table widths) may differ; a line ``...`` stands for any lines."""
    got = [" ".join(line.split()) for line in printed.splitlines()]
    at = 0
    for line in expected.splitlines():
        if line.strip() in ("", "..."):
            continue
        pattern = "".join("[0-9a-f]+" if re.fullmatch(r"[0-9a-f]{12,}", token) else re.escape(token)
                          for token in re.split(r"([0-9a-f]{12,})", " ".join(line.split())))
        while at < len(got) and not re.fullmatch(pattern, got[at]):
            at += 1
        if at == len(got):
            return line
        at += 1
    return None


def test_the_walkthrough_is_in_the_readme_and_parses():
    found = blocks((REPO / "README.md").read_text())
    assert found, f"no ```sh walkthrough blocks under {SECTION!r}"
    for b in found:
        assert set(b.hosts) <= set(HOSTS), f"README.md:{b.line}: unknown host in {b.hosts}"
        assert b.commands, f"README.md:{b.line}: an empty block"
    every = [c.text for b in found for c in b.commands]
    # the steps the issue names, each present as a command
    for needle in ("make install", "hacluster cluster init", "scp -p", "nft -f -",
                   "systemctl enable --now hacluster-node", "systemctl enable --now hacluster-witness",
                   "hacluster cluster status", "hacluster module package", "hacluster module install",
                   "hacluster -m myapp prim", "hacluster -m myapp second", "hacluster -m myapp swap"):
        assert any(c.startswith(needle) for c in every), needle
    heredoc = next(c for c in every if c.startswith("nft -f -"))
    assert heredoc.splitlines()[-1] == "RULES" and "policy drop" in heredoc


def test_output_shows_allows_digests_widths_and_elisions():
    assert output_shows("leader n1  term 3\n...\nquorum yes", "x\nleader n1 term 3\ny\nquorum yes") is None
    assert output_shows("quorum yes", "quorum NO") == "quorum yes"
    assert output_shows("sha256 0123456789abcdef", "sha256 fedcba9876543210aa") is None
    assert output_shows("primary n1  epoch 2", "primary n2 epoch 2") == "primary n1  epoch 2"
    assert output_shows("epoch 2", "epoch 3") == "epoch 2"
    assert output_shows("a\nb", "b\na") == "b"          # in order


# ---- following it on the lab --------------------------------------------------------
class Walkthrough:
    def __init__(self, lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        net = lab.addr("n1").rsplit(".", 1)[0]
        self.address = lambda text: ADDRESS.sub(lambda m: f"{net}.{m.group(1)}", text)
        self.back = lambda text: text.replace(f"{net}.", "10.0.0.")
        for host, address in HOSTS.items():
            assert lab.addr(host) == self.address(address), (host, lab.addr(host))
        self.daemons: dict[str, object] = {}
        self.starting: list[tuple[str, socket.socket]] = []

    def root(self, host: str) -> Path:
        return self.lab.host_dir(host) / "root"

    def checkout(self, host: str) -> Path:
        """The copy of the repository the README's commands run in."""
        d = self.lab.host_dir(host) / "hacluster"
        if not d.exists():
            d.mkdir()
            shutil.copytree(REPO / "modules", d / "modules")
        return d

    def env(self, host: str) -> dict[str, str]:
        root = self.root(host)
        env = {var: f"{root}{path}" for var, path in MEMBER_DIRS.items()}
        env["HACLUSTER_ROOT_PREFIX"] = str(root)
        env["PATH"] = f"{root}/usr/local/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return env

    def under_root(self, host: str, text: str) -> str:
        return SERVER_PATH.sub(lambda m: f"{self.root(host)}{m.group(1)}", text)

    # -- the commands the lab does as a server would ------------------------------------
    def make_install(self, host: str):
        """What ``make install`` ends with: the Makefile's own ``hacluster setup`` line,
        run by the installation the tests run from, into the host's root."""
        makefile = (REPO / "Makefile").read_text()
        recipe = re.search(r"^install:\n((?:\t.*\n)+)", makefile, re.M).group(1)
        (line,) = [ln.strip() for ln in recipe.splitlines() if " setup" in ln]
        assert line.startswith("$(PREFIX)/bin/hacluster setup"), line
        sbin = re.search(r"^SBINDIR := (\S+)$", makefile, re.M).group(1)
        command = Path(sys.executable).parent / "hacluster"
        if not command.exists():
            pytest.skip(f"no hacluster command next to {sys.executable} (pip install -e . makes it)")
        argv = [str(command), *shlex.split(line.split(" ", 1)[1].replace("$(SBINDIR)", sbin)),
                "--root", str(self.root(host))]
        res = self.lab.run(host, argv, check=False, env=self.env(host), cwd=self.checkout(host))
        prefix = re.search(r"^PREFIX := (\S+)$", makefile, re.M).group(1)
        res.stdout = res.stdout.replace(str(command), f"{prefix}/bin/hacluster")
        return res

    def scp(self, host: str, m: re.Match):
        to = next(h for h, a in HOSTS.items() if a == m["address"])
        command = f"cp -p {m['sources']} {self.root(to)}{m['dest']}"
        return self.lab.run(host, ["sh", "-c", command], check=False, env=self.env(host),
                            cwd=self.checkout(host))

    def systemctl_enable_now(self, host: str, unit: str) -> None:
        """systemd's start of a Type=notify unit, from the unit file setup wrote."""
        path = self.root(host) / "etc/systemd/system" / f"{unit}.service"
        service = unit_service_section(path.read_text())
        shipped = unit_service_section((REPO / "hacluster/node/systemd" / path.name).read_text())
        assert service == shipped, "hacluster setup wrote another unit than the shipped one"
        assert service["Type"] == "notify"
        for key, var in (("ConfigurationDirectory", "HACLUSTER_CONFIG"),
                         ("StateDirectory", "HACLUSTER_STATE_DIR"),
                         ("RuntimeDirectory", "HACLUSTER_RUN_DIR"),
                         ("LogsDirectory", "HACLUSTER_LOG_DIR")):
            d = Path(self.env(host)[var])
            assert d.name == service[key], (key, service[key])
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(int(service[f"{key}Mode"], 8))
        argv = shlex.split(service["ExecStart"])
        assert argv[0].startswith("/"), service["ExecStart"]
        argv[0] = f"{self.root(host)}{argv[0]}"
        notify = self.tmp / f"notify-{host}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        self.daemons[host] = self.lab.spawn(host, argv, name=unit,
                                            env={**self.env(host), "NOTIFY_SOCKET": str(notify)})
        self.starting.append((host, sock))

    def wait_started(self) -> None:
        """The pending ``systemctl enable --now`` return: each daemon said READY=1."""
        for host, sock in self.starting:
            sock.settimeout(30)
            try:
                while "READY=1" not in sock.recv(65536).decode().split("\n"):
                    pass
            except TimeoutError:
                raise AssertionError(f"{host}: no READY=1 within 30 s; its log: "
                                     f"{self.daemons[host].log_path.read_text()[-2000:]}") from None
            finally:
                sock.close()
        self.starting.clear()

    # -- one command --------------------------------------------------------------------
    def run(self, host: str, command: Command) -> str:
        text = command.text
        if SYSTEMCTL.match(text):
            self.systemctl_enable_now(host, SYSTEMCTL.match(text)["unit"])
            return ""
        self.wait_started()
        if text == "make install":
            res = self.make_install(host)
        elif SCP.match(text):
            res = self.scp(host, SCP.match(text))
        else:
            script = self.under_root(host, self.address(text))
            res = self.lab.run(host, ["sh", "-c", script], check=False, timeout=120,
                               env=self.env(host), cwd=self.checkout(host))
        assert res.returncode == command.exit_status, (
            f"on {host}: {text}\nexit status {res.returncode}, the README says "
            f"{command.exit_status}\nstdout: {res.stdout}\nstderr: {res.stderr}")
        root = str(self.root(host))
        return self.back(res.stdout.replace(root, ""))

    def stop(self) -> dict[str, int]:
        """systemctl stop: SIGTERM, the daemon's own stop sequence; each exit status."""
        return {host: proc.stop(timeout=30) for host, proc in self.daemons.items() if proc.alive()}


def unit_service_section(text: str) -> dict[str, str]:
    section_name, out = None, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section_name = line
        elif section_name == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


@needs_root
@pytest.mark.lab
def test_the_readme_walkthrough_from_three_blank_servers_to_a_swap(make_lab, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed (the walk-through's load-balancer check uses it)")
    readme = (REPO / "README.md").read_text()
    lab = make_lab(list(HOSTS))
    walk = Walkthrough(lab, tmp_path)
    try:
        for block in blocks(readme):
            for host in block.hosts:
                printed = "".join(walk.run(host, c) for c in block.commands)
                if block.output is not None:
                    missing = output_shows(block.output, printed)
                    assert missing is None, (f"README.md:{block.line} on {host}: the README shows "
                                             f"{missing!r}; it printed:\n{printed}")
        walk.wait_started()
        # Where it ends: n2 primary, n1 its in-sync secondary, after one swap, with the
        # firewall tables loaded on every member all along.
        for host in ("n1", "n2", "w"):
            tables = lab.run(host, ["nft", "list", "tables"]).stdout
            assert "table inet hacluster_firewall" in tables, (host, tables)
        state = lab.run("n1", ["hacluster", "-m", "myapp", "state"], check=False, env=walk.env("n1"))
        assert state.returncode == 4, state          # SECOND
        state = lab.run("n2", ["hacluster", "-m", "myapp", "state"], check=False, env=walk.env("n2"))
        assert state.returncode == 3, state          # PRIM
        assert " epoch " in state.stdout and "in sync n1,n2" in state.stdout, state.stdout
        vip = walk.address("10.0.0.10")         # the sed of step 6
        assert f"inet {vip}/" in lab.run("n2", ["ip", "-4", "addr"]).stdout
        assert f"inet {vip}/" not in lab.run("n1", ["ip", "-4", "addr"]).stdout
        # The rules are not a formality: a listening port is dropped for a host the table
        # does not name (Raft from Prometheus's host, HTTP from a data node to the
        # witness) and answers the one it names.
        assert not connects(lab, "mon", walk.address(HOSTS["n1"]), 7400)
        assert connects(lab, "n2", walk.address(HOSTS["n1"]), 7400)
        assert not connects(lab, "n1", walk.address(HOSTS["w"]), 7404)
        assert connects(lab, "mon", walk.address(HOSTS["w"]), 7404)
        # systemctl stop: each daemon's own stop sequence, then exit status 0
        assert walk.stop() == {"n1": 0, "n2": 0, "w": 0}
    finally:
        walk.stop()


def connects(lab, host: str, address: str, port: int) -> bool:
    """Whether a TCP connection from ``host`` to ``address:port`` is accepted within 1 s
    (a dropped SYN times out; nothing listening would be refused at once)."""
    code = ("import socket, sys\n"
            f"try: socket.create_connection(({address!r}, {port}), timeout=1).close()\n"
            "except OSError as e: sys.exit(str(e))\n")
    return lab.run(host, [sys.executable, "-c", code], check=False).returncode == 0
