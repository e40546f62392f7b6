"""A tiny QEMU guest for the lab, built from what the machine has (nothing downloaded):
Debian's kernel (/boot/vmlinuz-*, package linux-image-amd64) and an initramfs made
here from busybox-static and the few kernel modules the guest needs (virtio disk and
network, the ACPI power button), plus a raw disk image.

The guest's /init brings up the disk and user-mode networking, then serves one TCP
port (``GUEST_PORT``, forwarded from the host by QEMU) with a line protocol:

- ``P``                -> ``PONG <node> <epoch> <boot_id>``
- ``W <n>``            -> writes the record ``rec <n>`` into sector n of /dev/vda,
                          fsync (a cache flush to the virtual disk), then ``OK <n> <node> <epoch>``
- ``R <first> <count>`` -> the records of sectors first..first+count-1, then ``END``
- ``B <mib>``          -> writes <mib> MiB of random data after the record area, one
                          fdatasync at the end, then ``OK B``
- ``F <n>``            -> n records of 4 KiB each followed by its own flush, then ``OK F``

The node and epoch come from QEMU's SMBIOS (the module's start_prim puts the host's
name and the primary session's epoch there), so each answer says who served it.
The guest powers off cleanly on ACPI powerdown (a reader on the power button's event
device), which is what the module's stop_prim sends first.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import stat
from pathlib import Path

GUEST_PORT = 7001
DISK_MIB = 64          # records in the first 16 MiB, bulk writes after them
RECORD_AREA_MIB = 16
GUEST_FILES = ("vm.conf", "vmlinuz", "initrd.img", "disk.img")
# the kernel modules the guest loads (their dependencies are added from modules.dep)
GUEST_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "button", "evdev")

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m" 2>/dev/null; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
for e in /sys/class/input/event*; do
    if grep -q "Power Button" "$e/device/name" 2>/dev/null; then
        # one event from the power button (ACPI powerdown): flush and power off
        (dd if="/dev/input/${e##*/}" bs=24 count=1 >/dev/null 2>&1
         echo "vmguest: powerdown"; sync; poweroff -f) &
    fi
done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
cat /sys/class/dmi/id/product_serial > /tmp/node 2>/dev/null || echo "?" > /tmp/node
cat /sys/class/dmi/id/product_sku > /tmp/epoch 2>/dev/null || echo 0 > /tmp/epoch
echo "vmguest: ready node=$(cat /tmp/node) epoch=$(cat /tmp/epoch) up=$(cut -d' ' -f1 /proc/uptime)"
exec nc -ll -p __PORT__ -e /bin/vmservice
"""

SERVICE = r"""#!/bin/sh
# one client connection: a command per line, one answer (or a block ending in END)
node=$(cat /tmp/node); epoch=$(cat /tmp/epoch)
while read -r cmd a b; do
    case "$cmd" in
    P) echo "PONG $node $epoch $(cat /proc/sys/kernel/random/boot_id)" ;;
    W) if printf 'rec %s\n' "$a" | dd of=/dev/vda bs=512 count=1 seek="$a" conv=sync,notrunc,fsync 2>/dev/null
       then echo "OK $a $node $epoch"; else echo "ERR $a"; fi ;;
    R) dd if=/dev/vda bs=512 skip="$a" count="$b" 2>/dev/null | tr -d '\000'; echo END ;;
    B) [ -f /tmp/rand ] || dd if=/dev/urandom of=/tmp/rand bs=1M count=4 2>/dev/null
       i=0; while [ $i -lt "$a" ]; do
           dd if=/tmp/rand of=/dev/vda bs=1M count=1 skip=$((i % 4)) seek=$((__AREA__ + i)) conv=notrunc 2>/dev/null
           i=$((i+1)); done
       sync -d /dev/vda && echo "OK B" || echo "ERR B" ;;
    F) i=0; while [ $i -lt "$a" ]; do
           dd if=/dev/zero of=/dev/vda bs=4096 count=1 seek=$((__AREA__ * 256 + i)) conv=notrunc,fsync 2>/dev/null
           i=$((i+1)); done
       echo "OK F" ;;
    Q) exit 0 ;;
    *) echo "ERR unknown $cmd" ;;
    esac
done
"""


class GuestBuildError(RuntimeError):
    """What the machine lacks to build the guest, in one line."""


# ---- pure parts ---------------------------------------------------------------------------
def newc_archive(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's initramfs format (newc) of ``(path, mode, data)``
    entries (mode with its file type bits; a symlink's data is its target)."""
    out = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        nb = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    for ino, (path, mode, data) in enumerate(entries, 1):
        put(path.lstrip("/"), mode, data, ino)
    put("TRAILER!!!", 0, b"", 0)
    return out.getvalue()


def parse_newc(blob: bytes) -> list[tuple[str, int, bytes]]:
    """The entries of a newc archive (the inverse of :func:`newc_archive`)."""
    out, pos = [], 0
    while True:
        if blob[pos:pos + 6] != b"070701":
            raise ValueError(f"not a newc header at offset {pos}")
        f = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = blob[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = blob[pos: pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, data))


def module_load_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """The module files (paths as modules.dep names them) to insmod, dependencies first,
    for the module names ``wanted``. Raises GuestBuildError for a module not there."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[re.sub(r"\.ko(\.\w+)?$", "", path.rsplit("/", 1)[-1]).replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in deps.get(path, []):
            visit(d)
        order.append(path)
    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise GuestBuildError(f"kernel module {name} is not in modules.dep")
        visit(path)
    return order


def guest_definition(name: str, *, memory_mib: int = 192, kvm: str = "auto",
                     host_port: int = GUEST_PORT) -> str:
    """The guest's vm.conf (read by the module's vmctl.py)."""
    return (f"# the lab's tiny guest (chaos/vm_guest.py)\n"
            f"name = {name}\nmemory = {memory_mib}M\ncpus = 1\nkvm = {kvm}\n"
            "kernel = vmlinuz\ninitrd = initrd.img\n"
            "append = console=ttyS0 panic=1 loglevel=4\n"
            "disk = disk.img, if=virtio, format=raw\n"
            f"net = user\nforward = tcp:{host_port}:{GUEST_PORT}\n")


def parse_records(text: str) -> set[int]:
    """Record numbers in an ``R`` answer."""
    return {int(m.group(1)) for m in re.finditer(r"^rec (\d+)$", text, re.M)}


# ---- building (the edge) --------------------------------------------------------------------
def find_kernel() -> tuple[Path, Path]:
    """(vmlinuz, its /lib/modules directory): the newest kernel whose modules exist."""
    found = []
    for k in Path("/boot").glob("vmlinuz-*"):
        mods = Path("/lib/modules") / k.name[len("vmlinuz-"):]
        if (mods / "modules.dep").is_file():
            found.append((k.stat().st_mtime, k, mods))
    if not found:
        raise GuestBuildError("no /boot/vmlinuz-* with its /lib/modules/*/modules.dep: "
                              "install Debian's linux-image-amd64 (make apt)")
    _, kernel, mods = max(found)
    return kernel, mods


def busybox_path() -> Path:
    for p in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if p.is_file():
            return p
    raise GuestBuildError("no /bin/busybox: install Debian's busybox-static (make apt)")


def initramfs(mods: Path, port: int = GUEST_PORT) -> bytes:
    order = module_load_order((mods / "modules.dep").read_text(), GUEST_MODULES)
    entries: list[tuple[str, int, bytes]] = [
        (d, stat.S_IFDIR | 0o755, b"") for d in ("bin", "dev", "proc", "sys", "tmp", "lib",
                                                  "lib/modules")]
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox_path().read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    names = []
    for rel in order:
        data = (mods / rel).read_bytes()
        if rel.endswith(".xz"):
            import lzma
            data = lzma.decompress(data)
        elif rel.endswith(".zst"):
            raise GuestBuildError(f"{rel}: zstd-compressed modules are not supported here")
        name = re.sub(r"\.(xz|gz)$", "", rel.rsplit("/", 1)[-1])
        names.append(name)
        entries.append((f"lib/modules/{name}", stat.S_IFREG | 0o644, data))
    entries.append(("lib/modules/order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode()))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.replace("__PORT__", str(port)).encode()))
    entries.append(("bin/vmservice", stat.S_IFREG | 0o755,
                    SERVICE.replace("__AREA__", str(RECORD_AREA_MIB)).encode()))
    return gzip.compress(newc_archive(entries), compresslevel=6, mtime=0)


def build_guest(vm_dir: Path, name: str = "guest", *, memory_mib: int = 192, kvm: str = "auto",
                host_port: int = GUEST_PORT) -> Path:
    """The guest's files in ``vm_dir``: vmlinuz, initrd.img, disk.img (sparse, zeros)
    and vm.conf. Returns ``vm_dir``."""
    kernel, mods = find_kernel()
    vm_dir.mkdir(parents=True, exist_ok=True)
    (vm_dir / "vmlinuz").write_bytes(kernel.read_bytes())
    (vm_dir / "initrd.img").write_bytes(initramfs(mods))
    with open(vm_dir / "disk.img", "wb") as f:
        f.truncate(DISK_MIB << 20)
    (vm_dir / "vm.conf").write_text(guest_definition(name, memory_mib=memory_mib, kvm=kvm,
                                                     host_port=host_port))
    for p in vm_dir.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return vm_dir
