"""A virtual machine in the lab: the modules/vm template parameterised for a lab
(VIP, replicated directory, lab timers) with the tiny guest of chaos.vm_guest in its
replicated directory, and ``VmMirrorLab``, a MirrorLab whose application is that guest.

The client host reaches the guest's record service through the VIP: QEMU's user
networking forwards the port on the primary into the guest. ``GuestClient`` talks
that service's line protocol (from the client host, or from the test runner for a
guest outside the cluster, the benches' baseline).
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from .lab import Lab, LabProcess, wait_until
from .lab_cluster import LabCluster
from .lab_mirror import MirrorLab
from .module_template import copied_template, set_user_vars, write_userconfig
from .vm_guest import GUEST_FILES, GUEST_PORT, build_guest, parse_records

TEMPLATE = Path(__file__).resolve().parent.parent / "modules" / "vm"
VMCTL = TEMPLATE / "bin" / "vmctl.py"
MODULE = "vmdemo"
DATADIR = "/srv/vmdemo"


def write_vm_module(folder: Path, vip: str, *, datadir: str = DATADIR, ack_timeout_s: float = 1.0,
                    stop_timeout_s: float = 5.0, template: Path = TEMPLATE) -> Path:
    """A copy of the template with these values in its userconfig.xml (the scripts are
    the template's, unchanged). The watcher reports through this interpreter's CLI."""
    path, root, service = copied_template(folder, template, vip, datadir, ack_timeout_s)
    set_user_vars(service, {"VM_DIR": datadir, "VM_STOP_TIMEOUT": f"{stop_timeout_s:g}",
                            "VM_CLI": f"{sys.executable} -m hacluster"})
    write_userconfig(path, root)
    return folder


class GuestClient:
    """The guest's record service (chaos.vm_guest's protocol) on one connection."""

    def __init__(self, host: str, port: int = GUEST_PORT, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.f = self.sock.makefile("rwb")

    def ask(self, line: str) -> str:
        self.f.write(line.encode() + b"\n")
        self.f.flush()
        answer = self.f.readline().decode().strip()
        if not answer:
            raise OSError(f"no answer to {line!r}")
        return answer

    def records(self, first: int, count: int) -> set[int]:
        self.f.write(f"R {first} {count}\n".encode())
        self.f.flush()
        lines = []
        while (line := self.f.readline().decode()) and line.strip() != "END":
            lines.append(line)
        if not line:
            raise OSError("the guest closed the connection during R")
        return parse_records("".join(lines))

    def close(self) -> None:
        self.sock.close()


def wait_guest(host: str, port: int = GUEST_PORT, timeout: float = 120.0) -> str:
    """Wait until the guest's service answers P; its answer (PONG node epoch boot_id)."""
    def pong() -> str | None:
        try:
            c = GuestClient(host, port, timeout=2.0)
            try:
                return c.ask("P")
            finally:
                c.close()
        except OSError:
            return None
    return wait_until(f"guest at {host}:{port}", pong, timeout, 0.1)


def vmctl(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The module's vmctl.py run by hand (the benches' plain guest)."""
    return subprocess.run(["python3", str(VMCTL), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


class VmMirrorLab(MirrorLab):
    """A MirrorLab running the lab guest from the modules/vm template; kvm: the
    guest's setting (off: QEMU's software emulation, as on machines without KVM)."""

    def __init__(self, lab: Lab, nodes=("n1", "n2"), witness="w", client="c",
                 ack_timeout_s: float = 1.0, *, module: str = MODULE, datadir: str = DATADIR,
                 vip_host: int = 202, cluster: LabCluster | None = None, kvm: str = "off") -> None:
        super().__init__(lab, nodes, witness, client, ack_timeout_s, module=module, port=GUEST_PORT,
                         datadir=datadir, vip_host=vip_host, cluster=cluster)
        self.kvm = kvm
        self.url = f"{self.vip}:{GUEST_PORT}"

    def write_module(self, servers: tuple[str, ...], flow_servers: tuple[str, ...]) -> Path:
        if servers or flow_servers:
            raise ValueError("the vm lab module runs on a two-node cluster of its own")
        return write_vm_module(self.lab.workdir / f"{self.module}-module", self.vip,
                               datadir=self.datadir, ack_timeout_s=self.ack_timeout_s)

    def start(self, prim: str | None = "n1") -> "VmMirrorLab":
        if prim is not None:
            # the first primary's copy holds the guest before the module starts (an
            # administrator copies a VM's files in the same way); `second` resyncs the other
            build_guest(self.data_dir(prim), self.module, kvm=self.kvm)
        super().start(prim)
        return self

    # ---- the guest through the VIP, from the client host ----------------------------
    def client_ask(self, *lines: str, timeout: float = 30.0) -> list[str] | None:
        """Answers of the guest to ``lines`` (an R's records as one 'records a,b,...'
        line), asked from the client host; None: no answer."""
        code = ("import json,sys\nfrom chaos.vm_module import GuestClient\n"
                f"c=GuestClient({self.vip!r},{GUEST_PORT},{timeout})\nout=[]\n"
                f"for l in {list(lines)!r}:\n"
                "    out.append(','.join(map(str,sorted(c.records(*map(int,l.split()[1:])))))"
                " if l.startswith('R ') else c.ask(l))\n"
                "print(json.dumps(out))\n")
        res = self.lab.run(self.client, [sys.executable, "-c", code], check=False, timeout=timeout + 15)
        if res.returncode != 0:
            return None
        return json.loads(res.stdout)

    def wait_guest(self, timeout: float = 120.0) -> str:
        return wait_until("the guest answers through the VIP",
                          lambda: (lambda a: a[0] if a else None)(self.client_ask("P", timeout=3.0)),
                          timeout, 0.2)

    def start_writer(self, prefix: str = "1", timeout_s: float = 3.0) -> LabProcess:
        """Numbered records from ``prefix`` (a number: the first record) on."""
        self.writer = self.lab.spawn(self.client, [
            sys.executable, "-m", "chaos.vm_writer_proc", "--host", self.vip, "--port", str(GUEST_PORT),
            "--first", prefix, "--timeout", str(timeout_s)], name=f"vmwriter-{self.module}-{prefix}")
        return self.writer

    def guest_records(self, first: int, count: int) -> dict[str, str] | None:
        """The records the running guest reads from its disk (sectors first..), as
        key -> value like the writer's acks; None: no answer."""
        out = self.client_ask(f"R {first} {count}", timeout=60.0)
        if out is None:
            return None
        return {n: f"rec {n}" for n in out[0].split(",") if n}

    def image_records(self, node: str, first: int, count: int) -> dict[str, str]:
        """The records in ``node``'s real copy of the disk image."""
        with open(self.data_dir(node) / "disk.img", "rb") as f:
            f.seek(first * 512)
            raw = f.read(count * 512)
        return {str(n): f"rec {n}" for n in parse_records(raw.replace(b"\0", b"").decode(errors="replace"))}

    def images_identical(self, timeout: float = 20.0) -> bool:
        """Are both real copies of the guest's files byte for byte the same? Waits up
        to ``timeout`` for writes on their way."""
        def same() -> bool:
            a, b = (self.data_dir(n) for n in self.nodes)
            return all((a / n).read_bytes() == (b / n).read_bytes() for n in GUEST_FILES)
        try:
            wait_until("identical copies", same, timeout, 0.5)
            return True
        except TimeoutError:
            return False

    def console(self, node: str) -> str:
        path = self.root(node) / "run" / f"hacluster-{self.module}" / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

