"""Answer ARP requests for a farm VIP with the farm's shared multicast MAC.

The kernel's own replies for the VIP are dropped by the farm's arp table (see
vip.farm_ruleset); this responder replaces them. Replies and announcements carry the
shared MAC as ARP sender hardware address, while the Ethernet source stays the node's
real MAC (a frame with a multicast source is invalid and switches must not learn it).
Every farm node answers: the client gets identical replies, one per node.

A raw AF_PACKET socket on one interface, read by a thread with a short timeout so that
stop() returns promptly; frames that are not a well-formed IPv4 ARP request for the
VIP are ignored, and so are our own outgoing frames.
"""

from __future__ import annotations

import logging
import socket
import threading

from vip.address import VipError
from vip.garp import (
    ARP_REPLY,
    ARP_REQUEST,
    ARPHRD_ETHER,
    BROADCAST_MAC,
    ETH_P_ARP,
    ZERO_MAC,
    build_arp_frame,
    parse_arp_frame,
)

log = logging.getLogger("hacluster.vip.arp_responder")

PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent


def _with_eth_source(frame: bytes, eth_src: bytes) -> bytes:
    return frame[:6] + eth_src + frame[12:]


def reply_for(frame: bytes, vip: str, shared_mac: bytes, real_mac: bytes) -> bytes | None:
    """The reply to send for a received frame, or None if it is not ours to answer.

    Answered: IPv4 ARP requests whose target is the VIP, from a unicast sender other
    than the VIP itself (another farm node's announcement is not a question)."""
    arp = parse_arp_frame(frame)
    if arp is None or arp.op != ARP_REQUEST or arp.target_ip != vip or arp.sender_ip == vip:
        return None
    if arp.eth_src[0] & 1 or arp.sender_mac[0] & 1:
        return None  # a multicast asker cannot be answered (and is not a real host)
    reply = build_arp_frame(ARP_REPLY, shared_mac, vip, arp.sender_mac, arp.sender_ip,
                            eth_dst=arp.eth_src)
    return _with_eth_source(reply, real_mac)


def announcement_frames(vip: str, shared_mac: bytes, real_mac: bytes) -> tuple[bytes, bytes]:
    """A gratuitous ARP pair mapping the VIP to the shared MAC (request and reply form,
    as vip.garp), sent from the real MAC."""
    request = build_arp_frame(ARP_REQUEST, shared_mac, vip, ZERO_MAC, vip)
    reply = build_arp_frame(ARP_REPLY, shared_mac, vip, shared_mac, vip, eth_dst=BROADCAST_MAC)
    return _with_eth_source(request, real_mac), _with_eth_source(reply, real_mac)


class ArpResponder:
    """Answers ARP for ``vip`` on ``interface`` with ``shared_mac`` until stopped."""

    def __init__(self, interface: str, vip: str, shared_mac: bytes,
                 poll_s: float = 0.2) -> None:
        if len(shared_mac) != 6 or not shared_mac[0] & 1:
            raise ValueError(f"bad shared MAC {shared_mac!r}: need 6 bytes, multicast")
        if poll_s <= 0:
            raise ValueError(f"bad ARP responder poll period {poll_s!r} s: need > 0")
        self.interface = interface
        self.vip = vip
        self.shared_mac = bytes(shared_mac)
        self.poll_s = poll_s
        self.replies_sent = 0
        self.real_mac = b""
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open the socket, announce the VIP once, start answering. VipError if the
        interface cannot be used; idempotent while running."""
        if self.running:
            return
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        except OSError as exc:
            raise VipError(f"cannot open a raw ARP socket on {self.interface}: "
                           f"{exc.strerror}") from None
        try:
            sock.bind((self.interface, ETH_P_ARP))
            _name, _proto, _pkttype, hatype, mac = sock.getsockname()
            if hatype != ARPHRD_ETHER or len(mac) != 6:
                raise VipError(f"cannot answer ARP on {self.interface}: not an Ethernet "
                               f"interface (hardware type {hatype})")
            sock.settimeout(self.poll_s)
            self.real_mac = bytes(mac)
            self._sock = sock
            self.announce()
        except OSError as exc:
            sock.close()
            self._sock = None
            raise VipError(f"cannot answer ARP on interface {self.interface!r}: "
                           f"{exc.strerror or exc}") from None
        except VipError:
            sock.close()
            self._sock = None
            raise
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"arp-responder-{self.vip}")
        self._thread.start()
        log.info("event=arp_responder_started interface=%s vip=%s shared_mac=%s",
                 self.interface, self.vip, self.shared_mac.hex(":"))

    def announce(self) -> int:
        """Send one gratuitous pair (clients that cache the VIP update it); frames sent."""
        if self._sock is None:
            raise VipError(f"ARP responder for {self.vip} is not started")
        sent = 0
        for frame in announcement_frames(self.vip, self.shared_mac, self.real_mac):
            try:
                self._sock.send(frame)
            except OSError as exc:
                raise VipError(f"cannot announce {self.vip} on {self.interface}: "
                               f"{exc.strerror or exc}") from None
            sent += 1
        return sent

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                frame, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                # link down or gone for a moment: keep going, the checkers decide
                log.warning("event=arp_responder_recv_failed interface=%s error=%r",
                            self.interface, str(exc))
                self._stopping.wait(self.poll_s)
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            reply = reply_for(frame, self.vip, self.shared_mac, self.real_mac)
            if reply is None:
                continue
            try:
                sock.send(reply)
                self.replies_sent += 1
            except OSError as exc:
                log.warning("event=arp_reply_failed interface=%s error=%r",
                            self.interface, str(exc))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop answering and close the socket; returns within about ``poll_s``."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():  # cannot happen with a socket timeout; say so if it does
                log.warning("event=arp_responder_stop_slow vip=%s", self.vip)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            log.info("event=arp_responder_stopped interface=%s vip=%s replies=%d",
                     self.interface, self.vip, self.replies_sent)
