#!/usr/bin/env python3
"""vmctl: start, stop and watch one QEMU guest for the hacluster ``vm`` mirror module.

Standard library only: it runs with the node's python3, outside the daemon's venv.
Called by the module's scripts as ``vmctl.py start|stop [force]|watch|status``, with
the module's ``<user>`` variables and the daemon's script variables in the
environment:

- ``VM_DIR``: the replicated directory (the guest's disk images and ``vm.conf``);
- ``VM_CONF``: the guest's definition, relative to VM_DIR (default ``vm.conf``);
- ``VM_QEMU``: the emulator (default ``qemu-system-x86_64``);
- ``VM_STOP_TIMEOUT``: seconds a guest gets to power off after ACPI powerdown;
- ``VM_CLI``: how the watcher runs hacluster's CLI (default ``hacluster``);
- ``VM_WATCH_INTERVAL``, ``VM_WATCH_MISSES``: the watcher's poll period (s) and how
  many failed polls in a row make the guest down;
- ``HACLUSTER_MODULE``, ``HACLUSTER_ROOT_PREFIX`` (empty outside the test lab).

The pure parts (the definition's parser, QEMU's command line, the watcher's decision)
take no I/O and are unit tested; the QMP client and the process handling are the edges.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# ---- the guest's definition (vm.conf) ----------------------------------------------------
DISK_INTERFACES = ("virtio", "ide", "scsi")
DISK_FORMATS = ("raw", "qcow2")
KVM_SETTINGS = ("on", "off", "auto")
NET_KINDS = ("none", "user", "bridge")
_KEYS = ("name", "memory", "cpus", "kvm", "machine", "kernel", "initrd", "append", "disk",
         "net", "mac", "forward", "serial")
_REPEATABLE = ("disk", "forward")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")
_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class DefinitionError(ValueError):
    """A refused vm.conf; the message is one line naming the file, the line and what."""


@dataclass(frozen=True)
class Disk:
    path: str                     # relative to the replicated directory
    interface: str = "virtio"
    format: str = "raw"


@dataclass(frozen=True)
class Forward:
    """A host TCP port forwarded into the guest (user networking)."""
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class VmDefinition:
    name: str
    memory_mib: int = 512
    cpus: int = 1
    kvm: str = "auto"
    machine: str = "pc"
    kernel: str | None = None     # direct kernel boot (relative to the replicated dir)
    initrd: str | None = None
    append: str | None = None
    disks: tuple[Disk, ...] = ()
    net: str = "none"             # none | user | bridge
    bridge: str | None = None
    mac: str | None = None
    forwards: tuple[Forward, ...] = ()
    serial_port: int | None = None   # the guest's second serial port served on this TCP port
    extra: dict = field(default_factory=dict, compare=False)


def _inside(where: str, key: str, value: str) -> str:
    """A path relative to the replicated directory, never escaping it."""
    if not value or value.startswith("/") or ".." in value.split("/") or "\0" in value:
        raise DefinitionError(f"{where}: {key} {value!r} must be a path inside the replicated "
                              "directory (relative, no '..')")
    return value


def _int(where: str, key: str, value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise DefinitionError(f"{where}: {key} {value!r} is not a whole number") from None
    if not low <= n <= high:
        raise DefinitionError(f"{where}: {key} {n} must be between {low} and {high}")
    return n


def parse_memory_mib(where: str, value: str) -> int:
    """``512``, ``512M`` or ``2G`` -> MiB."""
    m = re.fullmatch(r"(\d+)\s*([MmGg]?)(i?[Bb])?", value.strip())
    if not m:
        raise DefinitionError(f"{where}: memory {value!r} must be MiB, e.g. 512 or 512M or 2G")
    n = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
    if not 16 <= n <= 1 << 22:
        raise DefinitionError(f"{where}: memory {n} MiB must be between 16 MiB and 4 TiB")
    return n


def _disk(where: str, value: str) -> Disk:
    path, *opts = [p.strip() for p in value.split(",")]
    kw = {}
    for opt in opts:
        k, _, v = opt.partition("=")
        if k == "if" and v in DISK_INTERFACES:
            kw["interface"] = v
        elif k == "format" and v in DISK_FORMATS:
            kw["format"] = v
        else:
            raise DefinitionError(f"{where}: disk option {opt!r}: expected if={'|'.join(DISK_INTERFACES)} "
                                  f"or format={'|'.join(DISK_FORMATS)}")
    return Disk(_inside(where, "disk", path), **kw)


def _forward(where: str, value: str) -> Forward:
    m = re.fullmatch(r"(?:tcp:)?(\d+):(\d+)", value.strip())
    if not m:
        raise DefinitionError(f"{where}: forward {value!r} must be tcp:HOSTPORT:GUESTPORT")
    return Forward(_int(where, "forward host port", m.group(1), 1, 65535),
                   _int(where, "forward guest port", m.group(2), 1, 65535))


def parse_definition(text: str, source: str = "vm.conf") -> VmDefinition:
    """The guest's definition from ``key = value`` lines (``#`` comment lines; ``disk`` and
    ``forward`` may repeat). Raises DefinitionError naming ``source:line``."""
    values: dict[str, object] = {"disks": [], "forwards": []}
    seen: set[str] = set()
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()       # comments are whole lines: an append may hold a '#'
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{no}"
        key, eq, value = (s.strip() for s in line.partition("="))
        if not eq:
            raise DefinitionError(f"{where}: expected 'key = value', got {raw.strip()!r}")
        if key not in _KEYS:
            raise DefinitionError(f"{where}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        if key in seen and key not in _REPEATABLE:
            raise DefinitionError(f"{where}: {key} given twice")
        seen.add(key)
        if key == "name":
            if not _NAME.fullmatch(value):
                raise DefinitionError(f"{where}: name {value!r} must be letters, digits, '_.-' (at most 64)")
            values["name"] = value
        elif key == "memory":
            values["memory_mib"] = parse_memory_mib(where, value)
        elif key == "cpus":
            values["cpus"] = _int(where, "cpus", value, 1, 256)
        elif key == "kvm":
            if value not in KVM_SETTINGS:
                raise DefinitionError(f"{where}: kvm {value!r} must be one of {', '.join(KVM_SETTINGS)}")
            values["kvm"] = value
        elif key == "machine":
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
                raise DefinitionError(f"{where}: machine {value!r} is not a QEMU machine type")
            values["machine"] = value
        elif key in ("kernel", "initrd"):
            values[key] = _inside(where, key, value)
        elif key == "append":
            values["append"] = value
        elif key == "disk":
            values["disks"].append(_disk(where, value))     # type: ignore[union-attr]
        elif key == "net":
            kind, _, bridge = value.partition(":")
            if kind not in NET_KINDS or (kind == "bridge") != bool(bridge):
                raise DefinitionError(f"{where}: net {value!r} must be none, user or bridge:BRIDGE")
            if bridge and not _BRIDGE.fullmatch(bridge):
                raise DefinitionError(f"{where}: bridge {bridge!r} is not an interface name")
            values["net"], values["bridge"] = kind, bridge or None
        elif key == "mac":
            if not _MAC.fullmatch(value):
                raise DefinitionError(f"{where}: mac {value!r} must be six hex pairs joined by ':'")
            values["mac"] = value.lower()
        elif key == "forward":
            values["forwards"].append(_forward(where, value))     # type: ignore[union-attr]
        elif key == "serial":
            m = re.fullmatch(r"(?:tcp:)?(\d+)", value)
            if not m:
                raise DefinitionError(f"{where}: serial {value!r} must be tcp:PORT")
            values["serial_port"] = _int(where, "serial port", m.group(1), 1, 65535)
    if "name" not in values:
        raise DefinitionError(f"{source}: name is required")
    if not values["disks"]:
        raise DefinitionError(f"{source}: at least one disk is required")
    if values.get("initrd") and not values.get("kernel"):
        raise DefinitionError(f"{source}: initrd needs kernel")
    if values["forwards"] and values.get("net") != "user":
        raise DefinitionError(f"{source}: forward needs net = user")
    values["disks"] = tuple(values["disks"])        # type: ignore[arg-type]
    values["forwards"] = tuple(values["forwards"])  # type: ignore[arg-type]
    return VmDefinition(**values)   # type: ignore[arg-type]


def choose_accel(setting: str, kvm_usable: bool) -> str:
    """``kvm`` or ``tcg`` (QEMU's software emulation) for the definition's ``kvm``."""
    if setting == "on" and not kvm_usable:
        raise DefinitionError("kvm = on but /dev/kvm cannot be opened on this node "
                              "(set kvm = auto to fall back to software emulation)")
    return "kvm" if kvm_usable and setting != "off" else "tcg"


# The disk cache mode (README: "The write path"): QEMU writes into the file without
# O_DIRECT and turns each guest flush into an fdatasync of the image, which the mirror's
# FUSE file system makes a replication barrier. aio=threads: the portable default.
DRIVE_CACHE = "writeback"


def _qemu_value(value: str) -> str:
    return value.replace(",", ",,")      # QEMU's option syntax escapes a comma by doubling it


def qemu_argv(d: VmDefinition, vm_dir: Path, run_dir: Path, accel: str,
              qemu: str = "qemu-system-x86_64", node: str = "", epoch: str = "") -> list[str]:
    """QEMU's command line for ``d``: daemonized, a QMP socket and the console log in
    ``run_dir`` (local to the node), the disks from ``vm_dir`` (the replicated copy).
    ``node`` and ``epoch`` (the host and the primary session) go into the guest's
    SMBIOS (product serial and SKU), so that the guest can tell where it runs."""
    argv = [qemu, "-name", f"{d.name},process=qemu-{d.name}", "-nodefaults", "-no-user-config",
            "-display", "none", "-machine", f"{d.machine},accel={accel}",
            "-m", str(d.memory_mib), "-smp", str(d.cpus),
            "-qmp", f"unix:{run_dir / 'qmp.sock'},server=on,wait=off",
            "-serial", f"file:{run_dir / 'console.log'}",
            # a guest that powers off or panics stays as a QEMU in status "shutdown"
            # (the watcher sees it, stop_prim ends it); a reset is a shutdown too
            "-no-shutdown", "-no-reboot",
            "-daemonize", "-pidfile", str(run_dir / "qemu.pid")]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    if node:
        argv += ["-smbios", f"type=1,serial={_qemu_value(node)},sku={_qemu_value(epoch or '0')}"]
    if d.serial_port is not None:
        argv += ["-serial", f"tcp:0.0.0.0:{d.serial_port},server=on,wait=off,nodelay=on"]
    if d.kernel:
        argv += ["-kernel", str(vm_dir / d.kernel)]
        if d.initrd:
            argv += ["-initrd", str(vm_dir / d.initrd)]
        if d.append:
            argv += ["-append", d.append]
    for i, disk in enumerate(d.disks):
        argv += ["-drive", (f"file={vm_dir / disk.path},format={disk.format},if={disk.interface},"
                            f"cache={DRIVE_CACHE},aio=threads,index={i}")]
    if d.net != "none":
        mac = f",mac={d.mac}" if d.mac else ""
        if d.net == "user":
            fwd = "".join(f",hostfwd=tcp::{f.host_port}-:{f.guest_port}" for f in d.forwards)
            argv += ["-netdev", f"user,id=net0{fwd}"]
        else:
            argv += ["-netdev", f"bridge,id=net0,br={d.bridge}"]
        argv += ["-device", f"virtio-net-pci,netdev=net0{mac}"]
    return argv


# ---- the watcher's decision ----------------------------------------------------------------
UP, DOWN = "up", "down"
RUNNING = "running"
# QMP RunState values that will not come back by themselves
FAILED_STATES = frozenset({"guest-panicked", "internal-error", "io-error", "shutdown", "watchdog"})
DEAD = "dead"   # no QEMU process any more


class GuestWatch:
    """Up/down of a guest from successive QMP ``query-status`` answers (time-free).

    ``observe(status)`` takes the RunState (``running``, ``paused``, ...), None when QMP
    did not answer (a hung QEMU), or DEAD (the process is gone); it returns the value to
    report when it changes, else None. A failed state or a dead QEMU is down at once;
    ``misses`` non-running answers in a row (paused, no answer, a state in between)
    are down too (start_prim returns once the guest runs, so a watcher that starts
    then sees it running)."""

    def __init__(self, misses: int = 3) -> None:
        if misses < 1:
            raise ValueError(f"misses {misses} must be at least 1")
        self.misses = misses
        self.bad = 0
        self.value: str | None = None

    def observe(self, status: str | None) -> str | None:
        if status == RUNNING:
            self.bad = 0
            new = UP
        else:
            self.bad += 1
            if status == DEAD or status in FAILED_STATES or self.bad >= self.misses:
                new = DOWN
            else:
                return None
        if new == self.value:
            return None
        self.value = new
        return new


# ---- QMP (the edge) ------------------------------------------------------------------------
class QmpError(RuntimeError):
    pass


def qmp(sock_path: Path, command: str, arguments: dict | None = None, timeout: float = 3.0) -> dict:
    """One QMP command on a fresh connection; its ``return`` (QmpError on an error
    reply, OSError/timeout when QEMU does not answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        f = s.makefile("rwb")

        def reply() -> dict:
            while True:
                line = f.readline()
                if not line:
                    raise OSError("QMP connection closed")
                msg = json.loads(line)
                if "return" in msg or "error" in msg:
                    return msg
                # greeting and asynchronous events are skipped
        greeting = json.loads(f.readline() or b"{}")
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        f.write(b'{"execute": "qmp_capabilities"}\n')
        f.flush()
        reply()
        f.write(json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
                .encode() + b"\n")
        f.flush()
        msg = reply()
        if "error" in msg:
            raise QmpError(f"{command}: {msg['error'].get('desc', msg['error'])}")
        return msg["return"]


@dataclass
class Paths:
    vm_dir: Path
    conf: Path
    run_dir: Path

    @property
    def qmp(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"


def paths_from_env(env: dict[str, str]) -> Paths:
    prefix = env.get("HACLUSTER_ROOT_PREFIX", "")
    vm_dir = env.get("VM_DIR")
    if not vm_dir:
        raise DefinitionError("VM_DIR (the replicated directory) is not set")
    module = env.get("HACLUSTER_MODULE") or "vm"
    root = Path(prefix + vm_dir)
    return Paths(root, root / env.get("VM_CONF", "vm.conf"), Path(f"{prefix}/run/hacluster-{module}"))


def running_qemu(p: Paths) -> int | None:
    """The PID in the pidfile if it is a live QEMU of this module (its command line names
    our QMP socket): a dead host's PID may be reused by anything else."""
    try:
        pid = int(p.pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return None
    if str(p.qmp).encode() not in cmdline or stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    return pid


def kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def status_of(p: Paths) -> str | None:
    if running_qemu(p) is None:
        return DEAD
    try:
        return str(qmp(p.qmp, "query-status", timeout=2.0)["status"])
    except (OSError, ValueError, QmpError):
        return None


def _wait(pred, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def _launch(argv: list[str], p: Paths) -> str | None:
    """Run QEMU (-daemonize: it returns once it has opened everything, the guest runs
    on in its own session) and wait until the guest runs; None, or what failed."""
    with open(p.run_dir / "qemu.log", "ab") as log:
        log.write(f"--- {time.strftime('%F %T')} {shlex.join(argv)}\n".encode())
        log.flush()
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=120)
    if res.returncode != 0:
        tail = (p.run_dir / "qemu.log").read_text(errors="replace").strip().splitlines()[-1:]
        return f"QEMU failed to start ({res.returncode}): {' '.join(tail)}"
    if not _wait(lambda: status_of(p) in (RUNNING, DEAD), 30) or (status := status_of(p)) != RUNNING:
        status = status_of(p)
        if (pid := running_qemu(p)) is not None:      # a QEMU that does not run the guest
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: running_qemu(p) is None, 10)
        return f"not running 30 s after QEMU started (status {status})"
    return None


def start(env: dict[str, str]) -> int:
    p = paths_from_env(env)
    if not p.vm_dir.is_dir():
        print(f"the replicated directory {p.vm_dir} is missing")
        return 1
    try:
        d = parse_definition(p.conf.read_text(), str(p.conf))
    except OSError as e:
        print(f"cannot read the guest's definition {p.conf}: {e.strerror}")
        return 1
    except DefinitionError as e:
        print(e)
        return 1
    for disk in d.disks:
        if not (p.vm_dir / disk.path).is_file():
            print(f"{p.conf}: disk {disk.path} is not a file in {p.vm_dir}")
            return 1
    if (pid := running_qemu(p)) is not None:
        print(f"guest {d.name} is already running (QEMU PID {pid}): not starting a second one")
        return 1
    p.run_dir.mkdir(parents=True, exist_ok=True)
    p.pidfile.unlink(missing_ok=True)
    p.qmp.unlink(missing_ok=True)
    try:
        accel = choose_accel(d.kvm, kvm_usable())
    except DefinitionError as e:
        print(f"{p.conf}: {e}")
        return 1
    qemu = env.get("VM_QEMU", "qemu-system-x86_64")
    failure = _launch(qemu_argv(d, p.vm_dir, p.run_dir, accel, qemu, env.get("HACLUSTER_NODE", ""),
                                env.get("HACLUSTER_EPOCH", "")), p)
    if failure and accel == "kvm" and d.kvm == "auto":
        # /dev/kvm opens but KVM does not run this guest (nested virtualisation often
        # refuses some MSRs): kvm = auto falls back to software emulation
        print(f"KVM failed ({failure}): starting guest {d.name} under software emulation (TCG)")
        accel = "tcg"
        failure = _launch(qemu_argv(d, p.vm_dir, p.run_dir, accel, qemu, env.get("HACLUSTER_NODE", ""),
                                    env.get("HACLUSTER_EPOCH", "")), p)
    if failure:
        print(f"guest {d.name}: {failure}")
        return 1
    print(f"guest {d.name} started (QEMU PID {running_qemu(p)}, accel {accel}, "
          f"{d.memory_mib} MiB, {d.cpus} cpu)")
    return 0


def stop(env: dict[str, str], force: bool) -> int:
    p = paths_from_env(env)
    pid = running_qemu(p)
    if pid is None:
        return 0
    gone = lambda: running_qemu(p) is None      # noqa: E731
    if not force:
        timeout = float(env.get("VM_STOP_TIMEOUT", "60"))
        try:
            qmp(p.qmp, "system_powerdown")
        except (OSError, ValueError, QmpError) as e:
            print(f"system_powerdown failed: {e}")
            return 1
        # -no-shutdown: a guest that powered off leaves QEMU in status "shutdown"
        if not _wait(lambda: gone() or status_of(p) == "shutdown", timeout, 0.2):
            print(f"the guest did not power off within {timeout:g} s of ACPI powerdown")
            return 1
    # quit: QEMU flushes its disks and exits (a guest that powered off has nothing left)
    try:
        qmp(p.qmp, "quit")
    except (OSError, ValueError, QmpError):
        pass
    if not _wait(gone, 10 if force else 30):
        if not force:
            print("QEMU did not exit after quit")
            return 1
        print(f"QEMU {pid} did not quit: SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not _wait(gone, 10):
            print(f"QEMU {pid} still there after SIGKILL")
            return 1
    p.pidfile.unlink(missing_ok=True)
    print("guest stopped" + (" (forced)" if force else " (powered off)"))
    return 0


def watch(env: dict[str, str]) -> int:
    """The ``<custom>`` checker program: reports the guest's changes with
    ``hacluster set -r $HACLUSTER_RESOURCE -v up|down``, forever."""
    p = paths_from_env(env)
    resource = env.get("HACLUSTER_RESOURCE", "custom.vm")
    cli = shlex.split(env.get("VM_CLI", "hacluster"))
    interval = float(env.get("VM_WATCH_INTERVAL", "1"))
    w = GuestWatch(int(env.get("VM_WATCH_MISSES", "3")))
    while True:
        status = status_of(p)
        value = w.observe(status)
        if value is not None:
            res = subprocess.run([*cli, "set", "-r", resource, "-v", value], capture_output=True,
                                 text=True, timeout=30)
            print(f"event=vm_status status={status} value={value} set_rc={res.returncode} "
                  f"{res.stderr.strip()}", flush=True)
            if res.returncode != 0:
                w.value = None     # not recorded: report it again at the next poll
        time.sleep(interval)


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    cmd = argv[0] if argv else ""
    try:
        if cmd == "start":
            return start(env)
        if cmd == "stop":
            return stop(env, force="force" in argv[1:])
        if cmd == "watch":
            return watch(env)
        if cmd == "status":
            print(status_of(paths_from_env(env)))
            return 0
    except DefinitionError as e:
        print(e)
        return 1
    print("usage: vmctl.py start | stop [force] | watch | status")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
