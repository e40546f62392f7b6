"""Virtual IPs: address add/remove, gratuitous ARP, farm traffic sharing."""
from vip.address import VipError, add_vip, has_vip, remove_vip
from vip.announcer import VipAnnouncer
from vip.garp import (ArpFrame, GarpSocket, build_arp_frame, gratuitous_arp_frames,
                      is_gratuitous, parse_arp_frame, send_gratuitous_arp)

__all__ = [
    "ArpFrame", "GarpSocket", "VipAnnouncer", "VipError", "add_vip", "build_arp_frame",
    "gratuitous_arp_frames", "has_vip", "is_gratuitous", "parse_arp_frame", "remove_vip",
    "send_gratuitous_arp",
]
