"""Gratuitous ARP: tell the LAN that a virtual IP now lives at this interface's MAC.

Each round sends two broadcast frames with sender IP = target IP = the VIP and sender
MAC = the interface's MAC: an ARP request (RFC 5227 announcement, target MAC zero) and
an ARP reply whose target MAC equals the sender MAC. Linux hosts update an existing
neighbour entry from either (the reply form only counts as gratuitous when target MAC
= sender MAC); switches learn the MAC from the Ethernet source.
Sent with a raw AF_PACKET socket: no subprocess, microseconds per frame.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from typing import NamedTuple

from vip.address import VipError

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ETH_MIN_FRAME = 60  # without FCS; shorter frames are runts on a real wire

_ETH_HEADER = struct.Struct("!6s6sH")
_ARP_BODY = struct.Struct("!HHBBH6s4s6s4s")


class ArpFrame(NamedTuple):
    """The fields of an Ethernet/IPv4 ARP frame (MACs as 6 bytes, IPs as dotted text)."""
    eth_dst: bytes
    eth_src: bytes
    op: int
    sender_mac: bytes
    sender_ip: str
    target_mac: bytes
    target_ip: str


def _ip4(addr: str) -> bytes:
    try:
        return ipaddress.IPv4Address(addr).packed
    except ValueError:
        raise VipError(f"bad IPv4 address {addr!r} for an ARP frame") from None


def _mac(mac: bytes, what: str) -> bytes:
    if len(mac) != 6:
        raise VipError(f"bad {what} MAC {mac!r}: need 6 bytes")
    return bytes(mac)


def build_arp_frame(op: int, sender_mac: bytes, sender_ip: str, target_mac: bytes,
                    target_ip: str, eth_dst: bytes = BROADCAST_MAC) -> bytes:
    """An Ethernet frame carrying one IPv4-over-Ethernet ARP packet, padded to 60 bytes;
    the Ethernet source is the sender MAC."""
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise VipError(f"bad ARP operation {op!r}: need 1 (request) or 2 (reply)")
    sender_mac = _mac(sender_mac, "sender")
    frame = (_ETH_HEADER.pack(_mac(eth_dst, "destination"), sender_mac, ETH_P_ARP)
             + _ARP_BODY.pack(ARPHRD_ETHER, ETH_P_IP, 6, 4, op, sender_mac,
                              _ip4(sender_ip), _mac(target_mac, "target"), _ip4(target_ip)))
    return frame.ljust(ETH_MIN_FRAME, b"\x00")


def parse_arp_frame(frame: bytes) -> ArpFrame | None:
    """The ARP fields of an Ethernet/IPv4 ARP frame, or None for anything else."""
    need = _ETH_HEADER.size + _ARP_BODY.size
    if len(frame) < need:
        return None
    dst, src, ethertype = _ETH_HEADER.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP_BODY.unpack_from(
        frame, _ETH_HEADER.size)
    if (htype, ptype, hlen, plen) != (ARPHRD_ETHER, ETH_P_IP, 6, 4):
        return None
    return ArpFrame(dst, src, op, sha, str(ipaddress.IPv4Address(spa)), tha,
                    str(ipaddress.IPv4Address(tpa)))


def gratuitous_arp_frames(mac: bytes, addr: str) -> tuple[bytes, bytes]:
    """The two frames of one gratuitous ARP round: (request form, reply form)."""
    return (build_arp_frame(ARP_REQUEST, mac, addr, ZERO_MAC, addr),
            build_arp_frame(ARP_REPLY, mac, addr, mac, addr))


def is_gratuitous(frame: ArpFrame) -> bool:
    """True for a gratuitous ARP as built here (sender IP = target IP, broadcast)."""
    return (frame.sender_ip == frame.target_ip and frame.eth_dst == BROADCAST_MAC
            and (frame.op == ARP_REQUEST
                 or (frame.op == ARP_REPLY and frame.target_mac == frame.sender_mac)))


class GarpSocket:
    """A raw socket bound to one Ethernet interface that sends gratuitous ARP rounds."""

    def __init__(self, interface: str, addr: str) -> None:
        self.interface = interface
        self.addr = addr
        _ip4(addr)
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                       socket.htons(ETH_P_ARP))
        except OSError as exc:
            raise VipError(f"cannot open a raw socket for gratuitous ARP on {interface}: "
                           f"{exc.strerror}") from None
        try:
            self._sock.bind((interface, ETH_P_ARP))
            # getsockname() gives the hardware type and MAC in this namespace (no /sys).
            _name, _proto, _pkttype, hatype, mac = self._sock.getsockname()
        except OSError as exc:
            self._sock.close()
            raise VipError(f"cannot send gratuitous ARP on interface {interface!r}: "
                           f"{exc.strerror}") from None
        if hatype != ARPHRD_ETHER or len(mac) != 6:
            self._sock.close()
            raise VipError(f"cannot send gratuitous ARP on {interface}: not an Ethernet "
                           f"interface (hardware type {hatype})")
        self.mac = bytes(mac)
        self._frames = gratuitous_arp_frames(self.mac, addr)
        # A full transmit queue must not stall the caller (an asyncio loop, say).
        self._sock.setblocking(False)

    def send_round(self) -> int:
        """Send the request and the reply form once; the number of frames sent."""
        sent = 0
        for frame in self._frames:
            try:
                self._sock.send(frame)
                sent += 1
            except BlockingIOError:
                pass  # queue full: the next round or refresh makes up for it
            except OSError as exc:  # ENETDOWN, ENXIO, ENODEV, ...: one error type for callers
                if exc.errno == errno.ENOBUFS:
                    continue  # dropped on the way out (qdisc, egress filter): as a full queue
                raise VipError(f"cannot send gratuitous ARP for {self.addr} on "
                               f"{self.interface}: {exc.strerror or exc}") from None
        return sent

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> GarpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_gratuitous_arp(interface: str, addr: str, count: int = 3,
                        interval_s: float = 0.05) -> int:
    """Send ``count`` gratuitous ARP rounds for ``addr`` on ``interface``, ``interval_s``
    apart (blocking: it sleeps between rounds); the number of frames sent."""
    if count < 1:
        raise VipError(f"bad gratuitous ARP count {count!r}: need at least 1")
    sent = 0
    with GarpSocket(interface, addr) as sock:
        for i in range(count):
            if i:
                time.sleep(interval_s)
            sent += sock.send_round()
    return sent
