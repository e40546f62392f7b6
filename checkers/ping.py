"""ping: a host answers ICMP echo (SafeKit ``<ping><to addr/>``). IPv4 only.

What it needs: an unprivileged ICMP datagram socket (``socket(AF_INET, SOCK_DGRAM,
IPPROTO_ICMP)``) is used when the process's group is inside
``net.ipv4.ping_group_range`` (many distributions set ``0 2147483647``; the kernel
default ``1 0`` allows nobody); otherwise a raw ICMP socket, which needs root or
CAP_NET_RAW. With neither, :func:`ping_method` says so and the checker cannot run.

Decision (pure): :class:`PingDecision`, a Debounce over echo results.
Probe: :func:`ping_once` (blocking for up to its timeout: run it in an executor).
"""
from __future__ import annotations

import os
import select
import socket
import struct
import time
from pathlib import Path

from .resource import Debounce

PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")
ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0


class PingUnavailable(OSError):
    """Neither an ICMP datagram socket nor a raw socket is allowed to this process."""


class PingDecision(Debounce):
    """up/down from echo results (``observe(True|False)``)."""


def ping_method(group_range: Path = PING_GROUP_RANGE) -> str | None:
    """``"dgram"``, ``"raw"`` or None (this process may not ping)."""
    try:
        low, high = (int(x) for x in group_range.read_text().split())
    except (OSError, ValueError):
        low, high = 1, 0
    if any(low <= g <= high for g in {os.getegid(), *os.getgroups()}):
        return "dgram"
    if os.geteuid() == 0:
        return "raw"
    return None


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def build_echo(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def is_echo_reply(packet: bytes, ident: int | None, seq: int, payload: bytes, has_ip_header: bool) -> bool:
    """True if ``packet`` answers our echo. ``ident`` None: not checked (a datagram
    socket's kernel replaces it with the socket's own id)."""
    if has_ip_header:
        if len(packet) < 20:
            return False
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < 8:
        return False
    kind, _code, _csum, rid, rseq = struct.unpack("!BBHHH", packet[:8])
    return (kind == ICMP_ECHO_REPLY and rseq == seq and packet[8:] == payload
            and (ident is None or rid == ident))


def ping_once(addr: str, timeout_s: float, method: str | None = None, seq: int = 1) -> bool:
    """Send one echo to ``addr`` and wait up to ``timeout_s`` for its reply."""
    method = method or ping_method()
    if method is None:
        raise PingUnavailable("ping: no ICMP datagram socket (see net.ipv4.ping_group_range) and not root")
    kind = socket.SOCK_DGRAM if method == "dgram" else socket.SOCK_RAW
    ident = os.getpid() & 0xFFFF
    payload = struct.pack("!d", time.monotonic()) + b"hacluster"
    deadline = time.monotonic() + timeout_s
    try:
        addr = socket.gethostbyname(addr)  # replies come from the address, not the name
    except OSError:
        return False
    with socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(build_echo(ident, seq, payload), (addr, 0))
        except OSError:
            return False  # unreachable network, bad address: the host does not answer
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                packet, (source, *_rest) = sock.recvfrom(65535)
            except BlockingIOError:
                continue
            if source == addr and is_echo_reply(packet, None if method == "dgram" else ident,
                                                seq, payload, has_ip_header=method == "raw"):
                return True
    return False
