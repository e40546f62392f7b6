"""Add, remove and find a virtual IPv4 address in the current network namespace.

Blocking netlink calls (pyroute2's IPRoute, a few milliseconds each). pyroute2 0.9's
synchronous IPRoute refuses to run on a thread whose asyncio loop is running, so
asyncio callers must go through ``run_in_executor`` (see vip.announcer).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vip.lifetime import INFINITE_LFT

log = logging.getLogger("hacluster.vip.address")

LABEL_SUFFIX = ":hv"  # makes our addresses recognisable in `ip addr` (label eth0:hv)
_IFNAMSIZ = 16  # kernel limit for a label, including the terminating NUL


class VipError(RuntimeError):
    """A virtual IP could not be added, removed or looked up."""


@dataclass(frozen=True)
class _Ipv4Addr:
    index: int
    interface: str
    local: ipaddress.IPv4Address
    prefixlen: int
    label: str | None


def _netlink(caller: str) -> IPRoute:
    """An IPRoute socket, refused on a running loop's thread (pyroute2 would fail there
    with an obscure "event loop is already running")."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return IPRoute()
    raise VipError(f"{caller}() called on a running asyncio loop's thread: "
                   f"call it through loop.run_in_executor")


def _parse_addr(addr: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(addr)
    except ValueError:
        raise VipError(f"bad virtual IP {addr!r}: not an IPv4 address") from None


def _dump(ipr: IPRoute) -> list[_Ipv4Addr]:
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    found = []
    for msg in ipr.get_addr(family=socket.AF_INET):
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on p2p links.
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if local is None:
            continue
        found.append(_Ipv4Addr(msg["index"], names.get(msg["index"], f"#{msg['index']}"),
                               ipaddress.IPv4Address(local), msg["prefixlen"],
                               msg.get_attr("IFA_LABEL")))
    return found


def _label_for(interface: str) -> str | None:
    label = interface + LABEL_SUFFIX
    return label if len(label) < _IFNAMSIZ else None


def _pick_interface(vip: ipaddress.IPv4Address, addrs: list[_Ipv4Addr],
                    interface: str | None) -> tuple[str, int] | None:
    """The interface whose IPv4 network contains ``vip`` (longest prefix wins) and
    that prefix length, among ``interface``'s addresses if one is named."""
    best: tuple[str, int] | None = None
    for a in addrs:
        if interface is not None and a.interface != interface:
            continue
        if a.prefixlen >= 32 or a.local == vip:
            continue  # a /32 (another VIP, say) defines no subnet
        if vip in ipaddress.IPv4Network(f"{a.local}/{a.prefixlen}", strict=False):
            if best is None or a.prefixlen > best[1]:
                best = (a.interface, a.prefixlen)
    return best


def _netlink_error(action: str, addr: str, interface: str, exc: NetlinkError) -> VipError:
    return VipError(f"cannot {action} virtual IP {addr} on {interface}: "
                    f"{exc.args[-1] if exc.args else exc} (errno {exc.code})")


def _check_lifetime(addr: str, lifetime_s: int | None) -> None:
    if lifetime_s is None:
        return
    if isinstance(lifetime_s, bool) or not isinstance(lifetime_s, int) \
            or not 0 < lifetime_s < INFINITE_LFT:
        raise VipError(f"bad lifetime {lifetime_s!r} s for virtual IP {addr}: need a whole "
                       f"number of seconds >= 1 (the kernel refuses 0)")


def _set_lifetime(ipr: IPRoute, a: _Ipv4Addr, lifetime_s: int) -> None:
    """Give the existing address ``a`` a new lifetime (NLM_F_REPLACE: the kernel restarts
    its count from now and reschedules its expiry work)."""
    try:
        ipr.addr("replace", index=a.index, address=str(a.local), prefixlen=a.prefixlen,
                 valid_lft=lifetime_s, preferred_lft=lifetime_s)
    except NetlinkError as exc:
        raise _netlink_error("refresh", str(a.local), a.interface, exc) from None


def _already_held(addrs: list[_Ipv4Addr], vip: ipaddress.IPv4Address,
                  interface: str | None) -> _Ipv4Addr | None:
    """``vip`` as already held (on ``interface`` if named), None if nowhere; VipError if
    it is held, but on another interface than the one named."""
    held = [a for a in addrs if a.local == vip]
    if not held:
        return None
    mine = [a for a in held if interface is None or a.interface == interface]
    if mine:
        return mine[0]
    raise VipError(f"virtual IP {vip} is already on {held[0].interface}, "
                   f"not on the requested {interface}")


def _add_request(vip: ipaddress.IPv4Address, index: int, interface: str, prefixlen: int,
                 lifetime_s: int | None) -> dict:
    """The RTM_NEWADDR to add ``vip``/``prefixlen`` on ``interface`` (link ``index``): a
    broadcast address below /31, our label when it fits, the lifetime if one is given
    (both lifetimes: the kernel removes the address when ``valid_lft`` ends)."""
    network = ipaddress.IPv4Network(f"{vip}/{prefixlen}", strict=False)
    if prefixlen < 31 and vip in (network.network_address, network.broadcast_address):
        raise VipError(f"virtual IP {vip}/{prefixlen} is the network or broadcast "
                       f"address of {network}")
    request: dict = {"index": index, "address": str(vip), "prefixlen": prefixlen}
    if prefixlen < 31:
        request["broadcast"] = str(network.broadcast_address)
    label = _label_for(interface)
    if label is not None:
        request["label"] = label
    if lifetime_s is not None:
        request["valid_lft"] = request["preferred_lft"] = lifetime_s
    return request


def add_vip(addr: str, prefixlen: int | None = None, interface: str | None = None,
            lifetime_s: int | None = None) -> str:
    """Add ``addr`` and return the interface that holds it.

    With ``interface`` None, the interface is the one whose IPv4 network contains the
    address; ``prefixlen`` None means that network's prefix length (else /32).
    ``lifetime_s``: the kernel removes the address by itself after that many seconds
    (``valid_lft`` = ``preferred_lft``) unless ``hold_vip`` extends it; None = forever.
    Already present on that interface: only its lifetime is set (idempotent)."""
    vip = _parse_addr(addr)
    if prefixlen is not None and not (isinstance(prefixlen, int) and 0 < prefixlen <= 32):
        raise VipError(f"bad prefix length {prefixlen!r} for virtual IP {addr}: need 1..32")
    _check_lifetime(addr, lifetime_s)
    with _netlink("add_vip") as ipr:
        addrs = _dump(ipr)
        held = _already_held(addrs, vip, interface)
        if held is not None:
            if lifetime_s is not None:
                _set_lifetime(ipr, held, lifetime_s)
            return held.interface
        picked = _pick_interface(vip, addrs, interface)
        if interface is None:
            if picked is None:
                raise VipError(f"virtual IP {addr}: no local interface has an IPv4 network "
                               f"containing it (name the interface)")
            interface = picked[0]
        links = ipr.link_lookup(ifname=interface)
        if not links:
            raise VipError(f"virtual IP {addr}: no interface named {interface!r}")
        if prefixlen is None:
            prefixlen = picked[1] if picked else 32
        try:
            ipr.addr("add", **_add_request(vip, links[0], interface, prefixlen, lifetime_s))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # added by someone else meanwhile: same outcome
                raise _netlink_error("add", addr, interface, exc) from None
    log.debug("event=vip_add addr=%s prefixlen=%s interface=%s lifetime_s=%s", vip, prefixlen,
              interface, lifetime_s)
    return interface


@dataclass(frozen=True)
class HeldAddress:
    """An address as the kernel holds it: what ``hold_vip`` needs to renew it cheaply."""
    index: int
    interface: str
    address: str
    prefixlen: int
    broadcast: str | None
    label: str | None


def find_vip(addr: str, interface: str | None = None) -> HeldAddress | None:
    """``addr`` as held (on ``interface`` if named), None if absent."""
    vip = _parse_addr(addr)
    with _netlink("find_vip") as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if local is None or ipaddress.IPv4Address(local) != vip:
                continue
            links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            name = links.get(msg["index"], f"#{msg['index']}")
            if interface is not None and name != interface:
                continue
            return HeldAddress(msg["index"], name, str(vip), msg["prefixlen"],
                               msg.get_attr("IFA_BROADCAST"), msg.get_attr("IFA_LABEL"))
    return None


_KEPT = threading.local()   # one netlink socket per thread, for hold_vip


def _hold_request(held: HeldAddress, lifetime_s: int) -> dict:
    """The RTM_NEWADDR (sent with NLM_F_REPLACE) that gives ``held`` a new lifetime of
    ``lifetime_s`` seconds, or puts it back exactly as it was if the kernel expired it."""
    _check_lifetime(held.address, lifetime_s)
    request: dict = {"index": held.index, "address": held.address, "prefixlen": held.prefixlen,
                     "valid_lft": lifetime_s, "preferred_lft": lifetime_s}
    if held.broadcast is not None:
        request["broadcast"] = held.broadcast
    if held.label is not None:
        request["label"] = held.label
    return request


def hold_vip(held: HeldAddress, lifetime_s: int) -> None:
    """Restart the kernel's count of the address's lifetime at ``lifetime_s`` seconds,
    and put the address back as it was if the kernel expired it meanwhile: one
    RTM_NEWADDR with NLM_F_REPLACE on a socket kept by the calling thread (about a
    quarter of a millisecond; opening a socket and dumping addresses costs ~2 ms, and
    this runs after every lease renewal). Only for a holder whose lease is held now:
    it never checks whether the address should be there."""
    request = _hold_request(held, lifetime_s)
    for attempt in (1, 2):
        ipr = getattr(_KEPT, "ipr", None)
        if ipr is None:
            ipr = _KEPT.ipr = _netlink("hold_vip")
        try:
            ipr.addr("replace", **request)
            return
        except NetlinkError as exc:
            raise _netlink_error("hold", held.address, held.interface, exc) from None
        except OSError:         # the kept socket broke: open a new one, once
            _KEPT.ipr = None
            ipr.close()
            if attempt == 2:
                raise


def _removals(addrs: list[_Ipv4Addr], vip: ipaddress.IPv4Address,
              interface: str | None) -> list[_Ipv4Addr]:
    """The addresses ``remove_vip`` deletes: ``vip`` wherever it is held (on
    ``interface`` only, if named), whatever its prefix length."""
    return [a for a in addrs if a.local == vip and (interface is None or a.interface == interface)]


def remove_vip(addr: str, interface: str | None = None) -> bool:
    """Remove ``addr`` (from ``interface`` only, if named); True if it was there."""
    vip = _parse_addr(addr)
    removed = False
    with _netlink("remove_vip") as ipr:
        for a in _removals(_dump(ipr), vip, interface):
            try:
                # The kernel matches local address and prefix length: pass both as found.
                ipr.addr("del", index=a.index, address=str(vip), prefixlen=a.prefixlen)
                removed = True
            except NetlinkError as exc:
                if exc.code != errno.EADDRNOTAVAIL:  # already gone meanwhile
                    raise _netlink_error("remove", addr, a.interface, exc) from None
    log.debug("event=vip_remove addr=%s interface=%s removed=%s", vip, interface, removed)
    return removed


def has_vip(addr: str) -> str | None:
    """The interface holding ``addr``, or None."""
    vip = _parse_addr(addr)
    with _netlink("has_vip") as ipr:
        for a in _dump(ipr):
            if a.local == vip:
                return a.interface
    return None


def interface_for(addr: str) -> str:
    """The interface whose IPv4 network contains ``addr`` (longest prefix wins)."""
    vip = _parse_addr(addr)
    with _netlink("interface_for") as ipr:
        picked = _pick_interface(vip, _dump(ipr), None)
    if picked is None:
        raise VipError(f"virtual IP {addr}: no local interface has an IPv4 network "
                       f"containing it (name the interface)")
    return picked[0]
