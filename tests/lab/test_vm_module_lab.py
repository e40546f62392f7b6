"""A virtual machine in a mirror module (the modules/vm template), end to end: real
daemons, a QEMU guest (software emulation where there is no KVM) whose service writes
numbered records to its own disk and flushes each before acknowledging it to a client
outside; the host running it killed; the guest booted on the other node with every
acknowledged record; the old host back and resynchronised; a swap back (issue 23's
acceptance)."""
from __future__ import annotations

import time

import pytest

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.vm_guest import GuestBuildError, find_kernel
from chaos.vm_module import VmMirrorLab
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

RECORDS = 3000      # the sectors the read-backs cover (writers start at 1, 1001, 2001)


def _needs_guest_tools() -> None:
    import shutil
    try:
        find_kernel()
    except GuestBuildError as e:
        pytest.skip(f"no guest kernel: {e}")
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 missing (Debian's qemu-system-x86, make apt)")


def _acks(m: VmMirrorLab, *writers) -> list[Ack]:
    return [Ack(**a) for w in writers for a in m.acks(w)]


def _all_acked_present(m: VmMirrorLab, acks: list[Ack], where: str) -> None:
    found = m.guest_records(1, RECORDS)
    assert found is not None, f"{where}: the guest does not answer through the VIP"
    lost = lost_acked_writes(acks, found)
    assert not lost, f"{where}: {len(lost)} acknowledged records missing, e.g. {lost[:3]}"
    answers = sorted((a.t_acked, a.node, a.epoch) for a in acks)
    assert not epoch_violations(answers), epoch_violations(answers)


def test_vm_failover_resync_and_swap_back(make_lab):
    _needs_guest_tools()
    lab = make_lab(["n1", "n2", "w", "c"])
    m = VmMirrorLab(lab).start(prim="n1")
    t0 = time.monotonic()
    assert m.wait_guest().split()[1] == "n1"
    print(f"vm_lab: guest answering {time.monotonic() - t0:.1f} s after the pair was ready")

    w1 = m.start_writer("1")
    m.wait_acks(30, timeout=60)

    # ---- the host running the guest loses power --------------------------------------
    t_kill = m.kill_host("n1")
    m.wait_state("n2", "ALONE", timeout=90)
    wait_until("records acknowledged by the guest on n2",
               lambda: any(a.node == "n2" for a in _acks(m, w1)), 120)
    w1.stop()
    acks = _acks(m, w1)
    first_n2 = min(a.t_acked for a in acks if a.node == "n2")
    print(f"vm_lab: host killed -> the guest on n2 acknowledges again: {first_n2 - t_kill:.1f} s")
    assert any(a.node == "n1" and a.t_acked < t_kill for a in acks)
    _all_acked_present(m, acks, "the guest booted on n2")
    assert "vmguest: ready node=n2" in m.console("n2")

    # ---- the old host returns while the guest writes -------------------------------------
    w2 = m.start_writer("1001")
    m.wait_acks(10, timeout=60)
    t_back = time.monotonic()
    m.restart_node("n1")
    m.wait_pair("n2", timeout=120)
    print(f"vm_lab: n1 back in sync {time.monotonic() - t_back:.1f} s after its return")
    w2.stop()

    # ---- swap back, records going on ------------------------------------------------------
    w3 = m.start_writer("2001")
    m.wait_acks(10, timeout=60)
    t_swap = time.monotonic()
    m.cli("n2", "-m", m.module, "swap", check=True)
    wait_until("records acknowledged by the guest on n1 again", lambda: any(
        a.node == "n1" and a.t_acked > t_swap for a in _acks(m, w3)), 120)
    print(f"vm_lab: swap -> the guest on n1 acknowledges: "
          f"{min(a.t_acked for a in _acks(m, w3) if a.t_acked > t_swap and a.node == 'n1') - t_swap:.1f} s")
    m.wait_pair("n1", timeout=60)
    w3.stop()
    acks = _acks(m, w1, w2, w3)
    _all_acked_present(m, acks, "the guest back on n1")
    # n2 powered the guest off cleanly (ACPI) for the swap
    assert "vmguest: powerdown" in m.console("n2")
    # every acknowledged record is in both real copies of the disk image
    assert m.images_identical(), "the two copies of the guest's files differ"
    for n in m.nodes:
        lost = lost_acked_writes(acks, m.image_records(n, 1, RECORDS))
        assert not lost, f"{n}'s copy of disk.img lacks {len(lost)} acknowledged records"
