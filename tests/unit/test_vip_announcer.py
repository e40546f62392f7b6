"""vip/announcer.VipAnnouncer without root: when it adds the address and with which
lifetime, when it announces (a burst, then periodic refreshes, none after drop),
when it asks its lease holder for a renewal and when it renews the kernel's
lifetime. Its edge, the kernel (netlink address calls and the raw ARP socket), is a
recording ``Kernel`` put in place of vip.address's functions and vip.garp's socket;
the announcer's own code, its netlink thread and the real clock run as they do on a
node. The real kernel: tests/lab/test_vip.py."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import loop_until
from vip import announcer as announcer_mod
from vip.address import HeldAddress, VipError
from vip.announcer import VipAnnouncer

VIP = "10.1.2.200"


class Kernel:
    """What the announcer asked of the kernel, in order, with the monotonic time of
    each call; the address as held (interface eth1)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.held_until: float | None = None      # None: forever, while present
        self.present = False
        self.garp_fails_at: int | None = None     # the GARP round that fails (1 = first)
        self.garp_rounds = 0
        self.lock = threading.Lock()

    def _call(self, *what) -> None:
        with self.lock:
            self.calls.append((*what, time.monotonic()))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    # vip.address
    def add_vip(self, addr, prefixlen=None, interface=None, lifetime_s=None) -> str:
        self._call("add", lifetime_s)
        self.present = True
        return "eth1"

    def find_vip(self, addr, interface=None) -> HeldAddress | None:
        return HeldAddress(3, "eth1", addr, 24, "10.1.2.255", "eth1:hv") if self.present else None

    def hold_vip(self, held: HeldAddress, lifetime_s: int) -> None:
        self._call("hold", lifetime_s)

    def remove_vip(self, addr, interface=None) -> bool:
        self._call("remove", interface)
        was, self.present = self.present, False
        return was

    def has_vip(self, addr) -> str | None:
        return "eth1" if self.present else None

    # vip.garp
    def garp_socket(self, interface: str, addr: str) -> "Kernel":
        self._call("garp_open", interface)
        return self

    def send_round(self) -> int:
        self.garp_rounds += 1
        if self.garp_rounds == self.garp_fails_at:
            raise VipError("cannot send on eth1: network is down")
        self._call("garp")
        return 2

    def close(self) -> None:
        self._call("garp_close")


@pytest.fixture
def kernel(monkeypatch) -> Kernel:
    k = Kernel()
    for name in ("add_vip", "find_vip", "hold_vip", "remove_vip", "has_vip"):
        monkeypatch.setattr(announcer_mod, name, getattr(k, name))
    monkeypatch.setattr(announcer_mod, "GarpSocket", k.garp_socket)
    return k


class Holder:
    """A lease holder as the announcer sees it: ``lease.valid_until()`` and
    ``renew_now()``; a renewal extends the lease by ``renews_to`` seconds (None:
    the renewal never comes) and tells the announcer, as the daemon's hook does."""

    def __init__(self, left_s: float | None, renews_to: float | None = 10.0) -> None:
        self.until = None if left_s is None else time.monotonic() + left_s
        self.renews_to = renews_to
        self.renewals_asked = 0
        self.announcer: VipAnnouncer | None = None
        self.lease = self

    def valid_until(self) -> float | None:
        return self.until

    def renew_now(self) -> None:
        self.renewals_asked += 1
        if self.renews_to is not None:
            self.until = time.monotonic() + self.renews_to
            asyncio.get_running_loop().call_soon(self.announcer.lease_renewed, self.until)


def on_lease(holder: Holder, **kw) -> VipAnnouncer:
    ann = VipAnnouncer(VIP, 24, None, lease=lambda: holder, **kw)
    holder.announcer = ann
    return ann


def test_raise_adds_then_bursts_then_refreshes_until_drop(kernel):
    async def go():
        ann = VipAnnouncer(VIP, 24, None, refresh_s=0.01, burst=3)
        await ann.raise_()
        assert ann.raised and ann.held_on == "eth1"
        assert kernel.names() == ["add", "garp_open", "garp", "garp", "garp"]
        assert kernel.calls[0][1] is None                       # no lease: held until dropped
        await loop_until("two refresh rounds", lambda: kernel.names().count("garp") >= 5)
        await ann.drop()
        after = len(kernel.calls)
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert kernel.names()[-2:] == ["garp_close", "remove"] and len(kernel.calls) == after
        assert not ann.raised and not kernel.present
    asyncio.run(go())


def test_without_refresh_only_the_burst_is_sent_and_raising_again_sends_a_new_one(kernel):
    async def go():
        ann = VipAnnouncer(VIP, 24, None, refresh_s=0, burst=2)
        await ann.raise_()
        await ann.raise_()
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert kernel.names() == ["add", "garp_open", "garp", "garp", "add", "garp", "garp"]
        await ann.drop()
    asyncio.run(go())


def test_on_a_lease_the_address_ends_no_later_than_the_lease(kernel):
    async def go():
        holder = Holder(left_s=10.0)
        ann = on_lease(holder, refresh_s=0, burst=1)
        await ann.raise_()
        _, lifetime, at = kernel.calls[0]
        assert 1 <= lifetime and at + lifetime <= holder.until < at + lifetime + 1
        assert holder.renewals_asked == 0
        await ann.drop()
    asyncio.run(go())


def test_a_lease_under_a_second_away_is_renewed_before_the_address_is_added(kernel):
    async def go():
        holder = Holder(left_s=0.5, renews_to=10.0)
        ann = on_lease(holder, refresh_s=0, burst=1, renew_interval_s=0.375)
        await ann.raise_()
        assert holder.renewals_asked == 1
        _, lifetime, at = kernel.calls[0]
        assert 1 <= lifetime and at + lifetime <= holder.until
        await ann.drop()
    asyncio.run(go())


@pytest.mark.parametrize("left_s, renews_to, error", [
    (None, None, "^virtual IP 10.1.2.200: its lease is not held$"),
    (-1.0, None, "^virtual IP 10.1.2.200: its lease is not held$"),
    # renewed, but never to a second ahead: given up after four renewal intervals (>= 1 s)
    (0.9, 0.9, "^virtual IP 10.1.2.200: its lease was not renewed to a second ahead within "
               r"1\.00 s \(the kernel counts address lifetimes in whole seconds\)$"),
])
def test_no_address_without_a_lease_a_second_ahead(kernel, left_s, renews_to, error):
    async def go():
        holder = Holder(left_s=left_s, renews_to=renews_to)
        ann = on_lease(holder, refresh_s=0, burst=1, renew_interval_s=0.1)
        with pytest.raises(VipError, match=error):
            await ann.raise_()
        assert "add" not in kernel.names() and not ann.raised
    asyncio.run(go())


def test_renewals_refresh_the_lifetime_unless_it_already_reaches_the_deadline(kernel):
    async def go():
        holder = Holder(left_s=30.0)
        ann = on_lease(holder, refresh_s=0, burst=1, renew_interval_s=2.0)
        await ann.raise_()
        installed = ann._installed_until      # the kernel's end: whole seconds, rounded down
        assert installed is not None
        # a deadline within an eighth of an interval of it: nothing to do
        ann.lease_renewed(installed + 0.2)
        await asyncio.sleep(0.01)
        assert "hold" not in kernel.names()
        # the renewal moved the deadline further: the lifetime follows it
        deadline = time.monotonic() + 31.0
        ann.lease_renewed(deadline)
        await loop_until("the lifetime was renewed", lambda: "hold" in kernel.names())
        _, lifetime, at = kernel.calls[-1]
        assert at + lifetime <= deadline < at + lifetime + 1
        await ann.drop()
        ann.lease_renewed(time.monotonic() + 60.0)               # dropped: never brought back
        await asyncio.sleep(0.01)
        assert kernel.names().count("hold") == 1 and kernel.names()[-1] == "remove"
    asyncio.run(go())


def test_the_marker_spans_the_address_and_tells_a_left_behind_vip(kernel, tmp_path: Path):
    async def go():
        marker = tmp_path / "vips" / "web"
        ann = VipAnnouncer(VIP, 24, None, refresh_s=0, burst=1, marker=marker)
        assert not ann.left_behind()
        await ann.raise_()
        assert marker.exists() and ann.left_behind()
        kernel.present = False                   # the kernel expired it: the marker still says so
        assert ann.left_behind()
        await ann.drop()
        assert not marker.exists() and not ann.left_behind()
    asyncio.run(go())


def test_a_burst_that_cannot_be_sent_leaves_nothing_raised(kernel, tmp_path: Path):
    async def go():
        kernel.garp_fails_at = 2
        marker = tmp_path / "marker"
        ann = VipAnnouncer(VIP, 24, None, refresh_s=0, burst=3, marker=marker)
        with pytest.raises(VipError, match="network is down"):
            await ann.raise_()
        assert kernel.names() == ["add", "garp_open", "garp", "garp_close", "remove"]
        assert not ann.raised and not kernel.present and not marker.exists()
    asyncio.run(go())


def test_a_failed_refresh_round_is_logged_and_the_refreshes_go_on(kernel):
    async def go():
        kernel.garp_fails_at = 2                 # the first refresh round
        ann = VipAnnouncer(VIP, 24, None, refresh_s=0.01, burst=1)
        await ann.raise_()
        await loop_until("a later refresh round", lambda: kernel.names().count("garp") >= 2)
        assert ann.raised
        await ann.drop()
    asyncio.run(go())


def test_a_drop_after_a_cancelled_raise_removes_after_the_add(kernel):
    async def go():
        ann = VipAnnouncer(VIP, 24, None, refresh_s=0.01, burst=50)
        raising = asyncio.ensure_future(ann.raise_())
        await loop_until("the burst began", lambda: "garp" in kernel.names())
        raising.cancel()
        await asyncio.gather(raising, return_exceptions=True)
        await ann.drop()
        names = kernel.names()
        assert names.index("add") < names.index("remove") and names[-1] == "remove"
        assert not kernel.present and not ann.raised
        count = len(kernel.calls)
        await asyncio.sleep(0.05)
        assert len(kernel.calls) == count           # nothing announces it any more
    asyncio.run(go())
