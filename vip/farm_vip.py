"""A farm VIP on this node: the address, the shared MAC, the ARP responder and the
bucket ruleset, raised and dropped as one thing.

Blocking calls (netlink, nft, ioctl, a thread join): an asyncio driver runs them in an
executor, one at a time. Order, so that no step ever shows the LAN a wrong picture:
raise_ loads the ruleset first (the kernel's ARP replies for the VIP are dropped and the
bucket filter is in place before the address exists), then joins the shared MAC, adds
the address, starts the responder; drop undoes it in reverse and removes the tables
last. The tables therefore exist whenever any other piece does, and their comment names
the VIP, interface and MAC: ``cleanup_leftovers(module)`` undoes a crashed node from
that alone.

Kernel-side expiry (DESIGN.md rule 7): given ``deadline`` (the node's liveness-lease
deadline, ``time.monotonic()`` seconds, None while not held), the buckets carry a
timeout ending at that deadline (to the millisecond: the fence) and the address a
lifetime a little longer (whole seconds, rounded up, plus one: a backstop, see
lifetime.backstop_lifetime_s); ``refresh`` (after each lease renewal) extends both. A
killed or frozen daemon's node stops accepting its buckets at the deadline, and loses
the address soon after, by itself.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence

from pyroute2 import IPRoute

from vip.address import HeldAddress, VipError, add_vip, find_vip, hold_vip, remove_vip
from vip.arp_responder import ArpResponder
from vip.farm_ruleset import (
    NftContext,
    apply_ruleset,
    check_buckets,
    read_table_comment,
    remove_ruleset,
    render_refresh,
    render_ruleset,
)
from vip.lifetime import backstop_lifetime_s, element_timeout_ms
from vip.shared_mac import join_shared_mac, leave_shared_mac, mac_bytes, shared_mac_for

log = logging.getLogger("hacluster.vip.farm_vip")


def node_address(interface: str, vip: str) -> str:
    """This node's own IPv4 address on ``interface``: the one whose network holds the
    VIP (longest prefix), else the first non-/32 one. VipError if there is none."""
    target = ipaddress.IPv4Address(vip)
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=interface)
        if not links:
            raise VipError(f"farm VIP {vip}: no interface named {interface!r}")
        candidates = []
        for msg in ipr.get_addr(family=socket.AF_INET, index=links[0]):
            local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if local is None or msg["prefixlen"] >= 32 or local == vip:
                continue
            net = ipaddress.IPv4Network(f"{local}/{msg['prefixlen']}", strict=False)
            candidates.append((target in net, msg["prefixlen"], local))
    if not candidates:
        raise VipError(f"farm VIP {vip}: {interface} has no IPv4 address of its own "
                       f"(needed as the sender of ARP requests)")
    in_net = [c for c in candidates if c[0]]
    return max(in_net, key=lambda c: c[1])[2] if in_net else candidates[0][2]


class FarmVip:
    """The farm VIP of one module on one interface of this node."""

    def __init__(self, module: str, vip: str, interface: str,
                 rules: Sequence[object], seed: int,
                 deadline: Callable[[], float | None] | None = None) -> None:
        """``deadline``: the holder lease's current deadline (None: not held); with it
        what the kernel holds expires there unless ``refresh`` extends it; without it,
        it is held until dropped. Read on the calling thread when each change is made."""
        self.module = module
        self.vip = vip
        self.interface = interface
        self.rules = list(rules)
        self.seed = seed
        self.mac = shared_mac_for(vip)
        # Bad settings refused here, before anything is touched (placeholder node address).
        render_ruleset(module, vip, self.rules, (), seed, interface, "192.0.2.1", self.mac)
        self._node_addr: str | None = None
        self._responder: ArpResponder | None = None
        self._owned: frozenset[int] | None = None
        self._deadline = deadline
        self._nft: NftContext | None = None
        # monotonic time until which the kernel holds the address and the buckets
        self.installed_until: float | None = None
        # Raised without the address: the lease had under a second left (see _add_address)
        self.address_pending = False
        self._held: HeldAddress | None = None   # as the kernel holds it, for hold_vip

    @property
    def raised(self) -> bool:
        return self._owned is not None

    @property
    def owned(self) -> frozenset[int] | None:
        """The buckets in the loaded ruleset, None when not raised."""
        return self._owned

    def _lifetimes(self) -> tuple[float, int | None, int | None]:
        """(now, address lifetime s, bucket timeout ms) for the current deadline;
        (now, None, None) without a deadline (held until dropped); 0s when the lease
        is not held or about to end."""
        now = time.monotonic()
        if self._deadline is None:
            return now, None, None
        deadline = self._deadline()
        if deadline is None:
            return now, 0, 0
        # The buckets are the fence (exact timeouts); the address only backs them up,
        # and outlives them (see lifetime.backstop_lifetime_s).
        return now, backstop_lifetime_s(deadline, now), element_timeout_ms(deadline, now)

    def _render(self, owned: frozenset[int], timeout_ms: int | None) -> str:
        assert self._node_addr is not None
        return render_ruleset(self.module, self.vip, self.rules, owned, self.seed,
                              self.interface, self._node_addr, self.mac, timeout_ms)

    def _installed(self, now: float, lifetime_s: int | None, timeout_ms: int | None) -> None:
        if lifetime_s is None or timeout_ms is None:
            self.installed_until = None
        else:
            self.installed_until = now + min(lifetime_s, timeout_ms / 1000.0)

    def _add_address(self, lifetime_s: int | None) -> bool:
        """Add the VIP with its lifetime; False (nothing added) if the lease leaves less
        than the kernel's one-second granularity: the next refresh adds it."""
        if lifetime_s == 0:
            log.warning("event=farm_vip_not_added module=%s vip=%s reason=%r", self.module,
                        self.vip, "the lease ends in less than a second")
            return False
        add_vip(self.vip, 32, self.interface, lifetime_s)
        self._held = find_vip(self.vip, self.interface)
        return True

    def raise_(self, owned: Iterable[int]) -> None:
        """Hold the VIP with these buckets. Raised already: the same as set_buckets.
        On failure everything done so far is undone and the error raised."""
        buckets = check_buckets(owned)
        if self.raised:
            self.set_buckets(buckets)
            return
        try:
            self._node_addr = node_address(self.interface, self.vip)
            now, lifetime_s, timeout_ms = self._lifetimes()
            apply_ruleset(self._render(buckets, timeout_ms))
            join_shared_mac(self.interface, self.mac)
            self.address_pending = not self._add_address(lifetime_s)
            self._installed(now, lifetime_s, timeout_ms)
            self._responder = ArpResponder(self.interface, self.vip, mac_bytes(self.mac))
            self._responder.start()
        except BaseException:
            try:
                self._undo()  # nothing half-applied
            except VipError as exc:
                log.warning("event=farm_vip_rollback_failed module=%s error=%r",
                            self.module, str(exc))
            raise
        self._owned = buckets
        log.info("event=farm_vip_raised module=%s vip=%s interface=%s mac=%s buckets=%d",
                 self.module, self.vip, self.interface, self.mac, len(buckets))

    def set_buckets(self, owned: Iterable[int]) -> None:
        """Replace the owned buckets in one atomic ruleset swap."""
        buckets = check_buckets(owned)
        if not self.raised:
            raise VipError(f"farm VIP {self.vip} of {self.module} is not raised: "
                           f"raise_ it before setting buckets")
        now, lifetime_s, timeout_ms = self._lifetimes()
        apply_ruleset(self._render(buckets, timeout_ms))
        self._owned = buckets
        if lifetime_s is not None and lifetime_s > 0:
            self._refresh_address(lifetime_s)
            self.address_pending = False
        self._installed(now, lifetime_s, timeout_ms)
        log.info("event=farm_buckets_set module=%s vip=%s buckets=%d",
                 self.module, self.vip, len(buckets))

    def _refresh_address(self, lifetime_s: int) -> None:
        """Extend the address's lifetime; it is (put) back if it was not there: not added
        yet (raised with under a second of lease left), or expired by the kernel although
        the lease held (a renewal came just late). The lease is held now."""
        if self._held is None:
            self._add_address(lifetime_s)
            log.info("event=farm_vip_added module=%s vip=%s lifetime_s=%d", self.module,
                     self.vip, lifetime_s)
        else:
            hold_vip(self._held, lifetime_s)

    def refresh(self) -> str:
        """After a lease renewal: extend the buckets' timeouts and the address's
        lifetime to the current deadline. Nothing when not raised, without a deadline,
        or when the lease is (about to be) gone: then what the kernel holds lapses.
        Returns what was done, for the log."""
        if not self.raised or self._deadline is None:
            return "not raised"
        now, lifetime_s, timeout_ms = self._lifetimes()
        if not timeout_ms:
            return "lease ending: left to lapse"
        if self._nft is None:
            self._nft = NftContext()  # on this (the VIP) thread, in this namespace
        assert self._owned is not None
        self._nft.run(render_refresh(self.module, self._owned, timeout_ms),
                      f"the bucket refresh of {self.module}")
        if lifetime_s:
            self._refresh_address(lifetime_s)
            self.address_pending = False
        self._installed(now, lifetime_s or 0, timeout_ms)
        return f"buckets {timeout_ms} ms, address {lifetime_s} s"

    def adopt(self, owned: Iterable[int]) -> None:
        """Take over what a daemon before this one left held for the farm (maintenance:
        its ruleset, address and shared MAC, with the kernel's timeouts), then put the
        ruleset in one atomic swap to ``owned`` with this lease's deadline (the buckets a
        node accepted never lapse in between: the swap replaces them, it does not
        remove them first). VipError if nothing is left to adopt."""
        recorded = read_table_comment(self.module)
        if recorded is None or recorded[0] != self.vip or recorded[1] != self.interface:
            raise VipError(f"farm VIP {self.vip} of {self.module}: no ruleset left to adopt "
                           f"(found {recorded!r})")
        buckets = check_buckets(owned)
        self._node_addr = node_address(self.interface, self.vip)
        self._held = find_vip(self.vip, self.interface)
        self._owned = frozenset()       # raised: set_buckets swaps the ruleset
        self.set_buckets(buckets)
        self._responder = ArpResponder(self.interface, self.vip, mac_bytes(self.mac))
        self._responder.start()
        log.info("event=farm_vip_adopted module=%s vip=%s buckets=%d", self.module, self.vip,
                 len(buckets))

    def detach(self) -> None:
        """The daemon stops in maintenance: leave the ruleset, the address and the
        shared MAC to the kernel's timeouts (the other nodes answer ARP for the shared
        MAC meanwhile); stop this process's ARP responder."""
        responder, self._responder = self._responder, None
        if responder is not None:
            responder.stop()

    def drop(self) -> None:
        """Remove everything this node holds for the farm VIP; idempotent, also when
        only leftovers of a crashed process remain."""
        self._undo()
        log.info("event=farm_vip_dropped module=%s vip=%s", self.module, self.vip)

    def _undo(self) -> None:
        responder, self._responder = self._responder, None
        if responder is not None:
            responder.stop()
        remove_vip(self.vip, self.interface)
        leave_shared_mac(self.interface, self.mac)
        remove_ruleset(self.module)  # last: while it exists it names what to clean
        self._owned = None
        self.installed_until = None
        self.address_pending = False
        self._held = None
        nft, self._nft = self._nft, None
        if nft is not None:
            nft.close()


def cleanup_leftovers(module: str) -> list[str]:
    """Undo what a crashed node left for ``module`` (found from its table's comment):
    the VIP, the shared MAC, the tables. Returns what it removed; [] if nothing."""
    recorded = read_table_comment(module)
    if recorded is None:
        remove_ruleset(module)  # an arp table alone, or a table without our comment
        return []
    vip, interface, mac = recorded
    removed = []
    if remove_vip(vip, interface):
        removed.append(f"vip {vip} on {interface}")
    if leave_shared_mac(interface, mac):
        removed.append(f"shared mac {mac} on {interface}")
    remove_ruleset(module)
    removed.append(f"tables of {module}")
    log.info("event=farm_leftovers_removed module=%s removed=%r", module, removed)
    return removed
