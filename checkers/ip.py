"""ip: the module's virtual IP is still configured here and nobody else claims it
(SafeKit ``<ip><to addr/>``). IPv4.

Decision (pure): :func:`ip_value`: down when the address is gone from every local
interface, or when another MAC answered an ARP probe for it (a duplicate).
Probes: :func:`vip_configured` (psutil's interface list; no privilege) and
:func:`arp_duplicates` (an RFC 5227 ARP probe, sender IP 0.0.0.0, on an AF_PACKET
socket: needs root or CAP_NET_RAW; blocking for its timeout, run it in an executor).
A farm module's nodes all hold the VIP behind one shared MAC: pass that MAC in
``own_macs`` so that the other nodes' answers are not counted as duplicates.
"""
from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from .resource import DOWN, UP, Debounce

ETH_P_ARP = 0x0806
ARP_REQUEST, ARP_REPLY = 1, 2
BROADCAST = b"\xff" * 6


@dataclass(frozen=True)
class IpSample:
    configured: bool
    duplicate_macs: tuple[str, ...] = ()


def ip_value(sample: IpSample | None) -> str:
    if sample is None or not sample.configured or sample.duplicate_macs:
        return DOWN
    return UP


class IpDecision(Debounce):
    def observe_sample(self, sample: IpSample | None) -> str:
        return self.observe(ip_value(sample) == UP)


def vip_configured(addr: str, interface: str | None = None) -> bool:
    """True if ``addr`` is an address of ``interface`` (or of any interface)."""
    target = str(ipaddress.ip_address(addr))
    for name, addrs in psutil.net_if_addrs().items():
        if interface is not None and name != interface:
            continue
        if any(a.family in (socket.AF_INET, socket.AF_INET6) and a.address.split("%")[0] == target
               for a in addrs):
            return True
    return False


def mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError(f"{text!r} is not a MAC address")
    return bytes(int(p, 16) for p in parts)


def build_arp_probe(src_mac: bytes, vip: str) -> bytes:
    """An Ethernet frame holding an RFC 5227 ARP probe: who has ``vip``? (sender 0.0.0.0)."""
    target = ipaddress.IPv4Address(vip).packed
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, ARP_REQUEST,
                      src_mac, b"\0\0\0\0", b"\0" * 6, target)
    return BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP) + arp


def arp_claimant(frame: bytes, vip: str, own_macs: frozenset[bytes]) -> bytes | None:
    """The sender MAC of ``frame`` if it is an ARP packet in which someone else claims
    ``vip`` (a reply from it, or a request/announcement with it as sender)."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    _htype, ptype, _hlen, _plen, op, sha, spa, _tha, _tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    if ptype != 0x0800 or op not in (ARP_REQUEST, ARP_REPLY):
        return None
    if spa != ipaddress.IPv4Address(vip).packed or sha in own_macs:
        return None
    return sha


def interface_mac(interface: str) -> bytes:
    return mac_bytes(Path(f"/sys/class/net/{interface}/address").read_text().strip())


def arp_duplicates(vip: str, interface: str, timeout_s: float,
                   own_macs: frozenset[bytes] = frozenset()) -> tuple[str, ...]:
    """MACs other than ours that claim ``vip`` on ``interface`` within ``timeout_s``."""
    mine = interface_mac(interface)
    own = own_macs | {mine}
    found: list[str] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((interface, ETH_P_ARP))
        sock.setblocking(False)
        sock.send(build_arp_probe(mine, vip))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                frame = sock.recv(2048)
            except BlockingIOError:
                continue
            sha = arp_claimant(frame, vip, frozenset(own))
            if sha is not None and mac_text(sha) not in found:
                found.append(mac_text(sha))
    return tuple(found)


def probe_ip(vip: str, interface: str | None, timeout_s: float, check_duplicate: bool = True,
             own_macs: frozenset[bytes] = frozenset()) -> IpSample:
    """Both probes: configured here, and (if it is, and an interface is known) no duplicate."""
    configured = vip_configured(vip, interface)
    if not configured or not check_duplicate or interface is None:
        return IpSample(configured)
    return IpSample(True, arp_duplicates(vip, interface, timeout_s, own_macs))
