"""Virtual IPs: address add/remove, gratuitous ARP, farm traffic sharing."""
from vip.address import VipError, add_vip, has_vip, interface_for, remove_vip
from vip.announcer import VipAnnouncer
from vip.farm_ruleset import LbRule, bucket_of
from vip.farm_vip import FarmVip, cleanup_leftovers
from vip.garp import (ArpFrame, GarpSocket, build_arp_frame, gratuitous_arp_frames,
                      is_gratuitous, parse_arp_frame, send_gratuitous_arp)

__all__ = [
    "ArpFrame", "FarmVip", "GarpSocket", "LbRule", "VipAnnouncer", "VipError", "add_vip",
    "bucket_of", "build_arp_frame", "cleanup_leftovers", "gratuitous_arp_frames", "has_vip",
    "interface_for", "is_gratuitous", "parse_arp_frame", "remove_vip", "send_gratuitous_arp",
]
