"""The vm module's pure parts: the guest's definition (vm.conf), QEMU's command line,
the accelerator choice and the watcher's decision (modules/vm/bin/vmctl.py, loaded
from its file as the module's scripts run it), and the lab guest's builder
(chaos.vm_guest: the initramfs archive, the kernel modules' load order)."""
from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.vm_guest import (GuestBuildError, guest_definition, module_load_order, newc_archive,
                            parse_newc, parse_records)

VMCTL = Path(__file__).resolve().parents[2] / "modules" / "vm" / "bin" / "vmctl.py"
_spec = importlib.util.spec_from_file_location("vmctl", VMCTL)
vmctl = importlib.util.module_from_spec(_spec)
sys.modules["vmctl"] = vmctl       # dataclasses look their module up while the file runs
_writes = sys.dont_write_bytecode
sys.dont_write_bytecode = True      # no __pycache__ in the module's bin/ (it would be packaged)
try:
    _spec.loader.exec_module(vmctl)
finally:
    sys.dont_write_bytecode = _writes

GOOD = """# a guest
name = web1
memory = 2G
cpus = 2
kvm = auto
disk = disk.img
disk = data/db.qcow2, if=ide, format=qcow2
net = user
forward = tcp:8080:80
append = console=ttyS0 root=/dev/vda1 # not a comment
"""


def test_definition_parsed():
    d = vmctl.parse_definition(GOOD)
    assert (d.name, d.memory_mib, d.cpus, d.kvm, d.net) == ("web1", 2048, 2, "auto", "user")
    assert d.disks == (vmctl.Disk("disk.img"), vmctl.Disk("data/db.qcow2", "ide", "qcow2"))
    assert d.forwards == (vmctl.Forward(8080, 80),)
    assert d.append == "console=ttyS0 root=/dev/vda1 # not a comment"


@pytest.mark.parametrize("text, error", [
    ("name = a\n", "vm.conf: at least one disk is required"),
    ("disk = d.img\n", "vm.conf: name is required"),
    ("name = a\ndisk = ../etc/passwd\n", "vm.conf:2: disk '../etc/passwd' must be a path inside"),
    ("name = a\ndisk = /var/d.img\n", "vm.conf:2: disk '/var/d.img' must be a path inside"),
    ("name = a\ndisk = d.img\nmemory = lots\n", "vm.conf:3: memory 'lots' must be MiB"),
    ("name = a\ndisk = d.img\ncpus = 0\n", "vm.conf:3: cpus 0 must be between 1 and 256"),
    ("name = a\ndisk = d.img\nkvm = maybe\n", "vm.conf:3: kvm 'maybe' must be one of on, off, auto"),
    ("name = a\ndisk = d.img\ncolour = red\n", "vm.conf:3: unknown key 'colour'"),
    ("name = a\nname = b\ndisk = d.img\n", "vm.conf:2: name given twice"),
    ("name = a\ndisk = d.img\nforward = tcp:80:80\n", "vm.conf: forward needs net = user"),
    ("name = a\ndisk = d.img, if=floppy\n", "vm.conf:2: disk option 'if=floppy'"),
    ("name = a\ndisk = d.img\nnet = bridge\n", "vm.conf:3: net 'bridge' must be none, user or bridge:BRIDGE"),
    ("name = a\ndisk = d.img\nmac = 52:54\n", "vm.conf:3: mac '52:54' must be six hex pairs"),
    ("name = a b\ndisk = d.img\n", "vm.conf:1: name 'a b' must be"),
    ("name = a\ndisk d.img\n", "vm.conf:2: expected 'key = value'"),
])
def test_definition_errors_name_line_and_what(text, error):
    with pytest.raises(vmctl.DefinitionError) as e:
        vmctl.parse_definition(text)
    assert str(e.value).startswith(error), str(e.value)
    assert "\n" not in str(e.value)


def test_qemu_argv_disk_cache_and_flushes_and_sockets():
    d = vmctl.parse_definition(GOOD)
    argv = vmctl.qemu_argv(d, Path("/srv/vm"), Path("/run/hacluster-vm"), "tcg", node="n1", epoch="7")
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0] == ("file=/srv/vm/disk.img,format=raw,if=virtio,cache=writeback,aio=threads,index=0")
    assert "cache=writeback" in drives[1] and "format=qcow2,if=ide" in drives[1]
    assert "unix:/run/hacluster-vm/qmp.sock,server=on,wait=off" in argv
    assert "pc,accel=tcg" in argv and "-cpu" not in argv
    assert "user,id=net0,hostfwd=tcp::8080-:80" in argv
    assert "type=1,serial=n1,sku=7" in argv
    assert {"-daemonize", "-no-shutdown", "-no-reboot"} <= set(argv)
    kvm = vmctl.qemu_argv(d, Path("/srv/vm"), Path("/run/x"), "kvm")
    assert "pc,accel=kvm" in kvm and kvm[kvm.index("-cpu") + 1] == "host" and "-smbios" not in kvm


def test_qemu_argv_bridge_and_comma_in_node_name():
    d = vmctl.parse_definition("name = a\ndisk = d.img\nnet = bridge:br0\nmac = 52:54:00:AA:bb:01\n")
    argv = vmctl.qemu_argv(d, Path("/v"), Path("/r"), "tcg", node="a,b")
    assert "bridge,id=net0,br=br0" in argv and "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01" in argv
    assert "type=1,serial=a,,b,sku=0" in argv


@pytest.mark.parametrize("setting, usable, accel", [
    ("auto", True, "kvm"), ("auto", False, "tcg"), ("off", True, "tcg"), ("on", True, "kvm")])
def test_choose_accel(setting, usable, accel):
    assert vmctl.choose_accel(setting, usable) == accel


def test_kvm_on_without_kvm_is_refused():
    with pytest.raises(vmctl.DefinitionError, match="kvm = on but /dev/kvm"):
        vmctl.choose_accel("on", False)


def test_watch_failed_states_and_dead_are_down_at_once():
    for status in ("guest-panicked", "internal-error", "shutdown", "io-error", vmctl.DEAD):
        w = vmctl.GuestWatch(misses=3)
        assert w.observe("running") == "up"
        assert w.observe(status) == "down", status
        assert w.observe(status) is None          # reported once
        assert w.observe("running") == "up"


def test_watch_paused_or_silent_is_down_after_misses():
    w = vmctl.GuestWatch(misses=3)
    assert w.observe("running") == "up"
    assert [w.observe("paused"), w.observe(None), w.observe("paused")] == [None, None, "down"]
    w2 = vmctl.GuestWatch(misses=2)
    w2.observe("running")
    assert [w2.observe(None), w2.observe("running"), w2.observe(None)] == [None, None, None]


STATUSES = st.sampled_from(["running", "paused", "prelaunch", "shutdown", "guest-panicked",
                            "internal-error", None, vmctl.DEAD])


@given(st.lists(STATUSES, max_size=60), st.integers(1, 5))
def test_watch_reports_only_changes_and_follows_the_rule(statuses, misses):
    w = vmctl.GuestWatch(misses)
    last, bad = None, 0
    for s in statuses:
        out = w.observe(s)
        bad = 0 if s == "running" else bad + 1
        if s == "running":
            expected = "up"
        elif s == vmctl.DEAD or s in vmctl.FAILED_STATES or bad >= misses:
            expected = "down"
        else:
            expected = last
        assert out == (expected if expected != last else None)
        last = expected


# ---- the lab guest's builder -----------------------------------------------------------
ENTRY = st.tuples(st.from_regex(r"[a-z]{1,8}(/[a-z0-9_.]{1,12}){0,2}", fullmatch=True),
                  st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFREG | 0o755, stat.S_IFDIR | 0o755,
                                   stat.S_IFLNK | 0o777]),
                  st.binary(max_size=300))


@given(st.lists(ENTRY, max_size=8))
def test_newc_round_trip(entries):
    blob = newc_archive(entries)
    assert len(blob) % 4 == 0
    assert parse_newc(blob) == entries


def test_module_load_order_puts_dependencies_first():
    dep = ("kernel/drivers/virtio/virtio.ko:\n"
           "kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n"
           "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko "
           "kernel/drivers/virtio/virtio.ko\n"
           "kernel/drivers/input/evdev.ko:\n")
    assert module_load_order(dep, ("virtio_blk", "evdev", "virtio")) == [
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/block/virtio_blk.ko", "kernel/drivers/input/evdev.ko"]
    with pytest.raises(GuestBuildError, match="kernel module e1000 is not in modules.dep"):
        module_load_order(dep, ("e1000",))


def test_the_lab_guest_definition_parses():
    d = vmctl.parse_definition(guest_definition("g", kvm="off", host_port=7001))
    assert (d.kernel, d.initrd, d.kvm, d.forwards) == ("vmlinuz", "initrd.img", "off",
                                                       (vmctl.Forward(7001, 7001),))


def test_parse_records():
    assert parse_records("rec 1\nrec 22\ngarbage\nrec x\nrec 3\n") == {1, 22, 3}
