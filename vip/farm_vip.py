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
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence

from pyroute2 import IPRoute

from vip.address import VipError, add_vip, remove_vip
from vip.arp_responder import ArpResponder
from vip.farm_ruleset import (
    apply_ruleset,
    check_buckets,
    read_table_comment,
    remove_ruleset,
    render_ruleset,
)
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
                 rules: Sequence[object], seed: int) -> None:
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

    @property
    def raised(self) -> bool:
        return self._owned is not None

    @property
    def owned(self) -> frozenset[int] | None:
        """The buckets in the loaded ruleset, None when not raised."""
        return self._owned

    def _render(self, owned: frozenset[int]) -> str:
        assert self._node_addr is not None
        return render_ruleset(self.module, self.vip, self.rules, owned, self.seed,
                              self.interface, self._node_addr, self.mac)

    def raise_(self, owned: Iterable[int]) -> None:
        """Hold the VIP with these buckets. Raised already: the same as set_buckets.
        On failure everything done so far is undone and the error raised."""
        buckets = check_buckets(owned)
        if self.raised:
            self.set_buckets(buckets)
            return
        try:
            self._node_addr = node_address(self.interface, self.vip)
            apply_ruleset(self._render(buckets))
            join_shared_mac(self.interface, self.mac)
            add_vip(self.vip, 32, self.interface)
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
        apply_ruleset(self._render(buckets))
        self._owned = buckets
        log.info("event=farm_buckets_set module=%s vip=%s buckets=%d",
                 self.module, self.vip, len(buckets))

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
