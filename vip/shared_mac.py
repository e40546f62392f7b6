"""The shared multicast MAC of a farm VIP, and joining it on an interface.

Choice of address: ``03:bf:<the 4 bytes of the VIP>`` (the scheme of Microsoft NLB's
multicast mode). It is a multicast address (bit 0 of the first byte) that is locally
administered (bit 1), so it is unique per VIP (all 32 bits, not the 23 of the IPv4
multicast mapping) and it lies outside 01:00:5e:…: switches with IGMP snooping
treat 01:00:5e frames as IP multicast and may forward them only to ports that sent an
IGMP join, whereas they flood other multicast MACs to the whole VLAN, which is what a
farm needs on a plain switch. Some routers refuse an ARP reply that maps a unicast IP to
a multicast MAC; clients behind a router then need a static ARP entry on that router.

Joining: the ``SIOCADDMULTI``/``SIOCDELMULTI`` ioctls, which is what ``ip maddr add/del``
does (rtnetlink, hence pyroute2, has no message for link-layer multicast addresses).
Added that way the address is marked "global" in the kernel: adding it twice keeps one
membership and one delete removes it, so join and leave are idempotent. Membership is
read from /proc/net/dev_mcast (the namespace of this process's main thread).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import socket
import struct
from pathlib import Path

from vip.address import VipError

log = logging.getLogger("hacluster.vip.shared_mac")

SIOCADDMULTI = 0x8931
SIOCDELMULTI = 0x8932
_IFNAMSIZ = 16
_IFREQ_SIZE = 40  # struct ifreq on Linux: name[16] + a 24-byte union
DEV_MCAST = Path("/proc/net/dev_mcast")


def shared_mac_for(vip: str) -> str:
    """The farm VIP's shared MAC, ``03:bf:`` + the VIP's bytes, e.g. 03:bf:0a:00:00:64."""
    try:
        packed = ipaddress.IPv4Address(vip).packed
    except ValueError:
        raise ValueError(f"bad farm VIP {vip!r}: not an IPv4 address") from None
    return (b"\x03\xbf" + packed).hex(":")


def mac_bytes(mac: str) -> bytes:
    """``xx:xx:xx:xx:xx:xx`` as 6 bytes; ValueError otherwise."""
    parts = mac.split(":") if isinstance(mac, str) else []
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"bad MAC address {mac!r}: need xx:xx:xx:xx:xx:xx")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"bad MAC address {mac!r}: need hexadecimal bytes") from None


def _multicast(mac: str) -> bytes:
    raw = mac_bytes(mac)
    if not raw[0] & 1:
        raise ValueError(f"bad shared MAC {mac}: not a multicast address")
    return raw


def _ifreq(interface: str, mac: bytes) -> bytes:
    name = interface.encode()
    if not name or len(name) >= _IFNAMSIZ:
        raise ValueError(f"bad interface name {interface!r}")
    # sockaddr: family AF_UNSPEC (the kernel requires it for these ioctls), 14 data bytes
    req = name.ljust(_IFNAMSIZ, b"\x00") + struct.pack("=H", socket.AF_UNSPEC) + mac
    return req.ljust(_IFREQ_SIZE, b"\x00")


def _ioctl(request: int, interface: str, mac: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), request, _ifreq(interface, mac))


def joined(interface: str, mac: str) -> bool:
    """True if ``mac`` was joined on ``interface`` the way join_shared_mac does it."""
    want = mac_bytes(mac).hex()
    try:
        lines = DEV_MCAST.read_text().splitlines()
    except OSError as exc:
        raise VipError(f"cannot read {DEV_MCAST}: {exc.strerror}") from None
    for line in lines:
        fields = line.split()  # index, name, users, global use, address
        if len(fields) == 5 and fields[1] == interface and fields[4] == want:
            return fields[3] != "0"
    return False


def join_shared_mac(interface: str, mac: str) -> None:
    """Accept frames sent to ``mac`` on ``interface`` (``ip maddr add``); idempotent."""
    raw = _multicast(mac)
    try:
        _ioctl(SIOCADDMULTI, interface, raw)
    except OSError as exc:
        raise VipError(f"cannot join shared MAC {mac} on {interface}: "
                       f"{exc.strerror or exc}") from None
    log.info("event=shared_mac_joined interface=%s mac=%s", interface, mac)


def leave_shared_mac(interface: str, mac: str) -> bool:
    """Stop accepting ``mac`` on ``interface``; True if it was joined. A missing
    interface counts as left (nothing of ours remains on it)."""
    raw = _multicast(mac)
    try:
        _ioctl(SIOCDELMULTI, interface, raw)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return False
        raise VipError(f"cannot leave shared MAC {mac} on {interface}: "
                       f"{exc.strerror or exc}") from None
    log.info("event=shared_mac_left interface=%s mac=%s", interface, mac)
    return True
