"""vip/, pure: the ARP frame builder, and the refusals that come before any netlink call."""
import asyncio
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vip import (VipAnnouncer, VipError, add_vip, build_arp_frame, gratuitous_arp_frames,
                 has_vip, is_gratuitous, parse_arp_frame, remove_vip)
from vip.garp import ARP_REPLY, ARP_REQUEST, BROADCAST_MAC, ZERO_MAC

MAC = bytes.fromhex("020000aabbcc")


# -- pure: the ARP frame -------------------------------------------------------------


def test_arp_frame_layout_byte_by_byte():
    frame = build_arp_frame(ARP_REPLY, MAC, "10.1.2.200", MAC, "10.1.2.200")
    assert len(frame) == 60  # Ethernet minimum without FCS
    assert frame[0:6] == BROADCAST_MAC  # Ethernet destination
    assert frame[6:12] == MAC  # Ethernet source = sender MAC (switches learn it)
    assert frame[12:14] == b"\x08\x06"  # ethertype ARP
    assert frame[14:22] == bytes([0, 1, 8, 0, 6, 4, 0, 2])  # htype 1, IPv4, 6, 4, op 2
    assert frame[22:28] == MAC  # sender MAC
    assert frame[28:32] == bytes([10, 1, 2, 200])  # sender IP
    assert frame[32:38] == MAC  # target MAC
    assert frame[38:42] == bytes([10, 1, 2, 200])  # target IP
    assert frame[42:] == bytes(18)  # padding


def test_gratuitous_pair_is_request_with_zero_target_and_reply_to_self():
    request, reply = gratuitous_arp_frames(MAC, "192.168.7.9")
    req, rep = parse_arp_frame(request), parse_arp_frame(reply)
    assert (req.op, req.target_mac) == (ARP_REQUEST, ZERO_MAC)
    # Linux counts a reply as gratuitous only when target MAC = sender MAC
    assert (rep.op, rep.target_mac) == (ARP_REPLY, MAC)
    for f in (req, rep):
        assert f.sender_ip == f.target_ip == "192.168.7.9"
        assert f.sender_mac == f.eth_src == MAC and f.eth_dst == BROADCAST_MAC
        assert is_gratuitous(f)


macs = st.binary(min_size=6, max_size=6)
ips = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


@given(op=st.sampled_from([ARP_REQUEST, ARP_REPLY]), sha=macs, spa=ips, tha=macs, tpa=ips,
       dst=macs)
def test_parse_inverts_build(op, sha, spa, tha, tpa, dst):
    f = parse_arp_frame(build_arp_frame(op, sha, spa, tha, tpa, eth_dst=dst))
    assert f == (dst, sha, op, sha, spa, tha, tpa)


def test_parse_rejects_other_frames():
    frame = build_arp_frame(ARP_REQUEST, MAC, "10.0.0.1", ZERO_MAC, "10.0.0.2")
    assert parse_arp_frame(frame[:41]) is None  # truncated
    assert parse_arp_frame(frame[:12] + b"\x08\x00" + frame[14:]) is None  # IPv4, not ARP
    assert not is_gratuitous(parse_arp_frame(frame))  # an ordinary who-has


@pytest.mark.parametrize("args, needle", [
    ((ARP_REQUEST, MAC, "10.0.0.300", ZERO_MAC, "10.0.0.1"), "10.0.0.300"),
    ((ARP_REQUEST, MAC[:5], "10.0.0.1", ZERO_MAC, "10.0.0.1"), "sender MAC"),
    ((3, MAC, "10.0.0.1", ZERO_MAC, "10.0.0.1"), "ARP operation 3"),
])
def test_frame_builder_bad_input_names_it(args, needle):
    with pytest.raises(VipError, match=needle):
        build_arp_frame(*args)


def test_announcer_refuses_bad_settings():
    with pytest.raises(VipError, match="refresh period -1"):
        VipAnnouncer("10.0.0.5", None, None, refresh_s=-1)
    with pytest.raises(VipError, match="burst 0"):
        VipAnnouncer("10.0.0.5", None, None, burst=0)


def test_address_functions_refuse_the_loop_thread():
    # pyroute2's sync IPRoute breaks on a running loop: say so before touching netlink
    async def call(fn, *args):
        fn(*args)

    for fn, args in ((add_vip, ("10.0.0.5",)), (remove_vip, ("10.0.0.5",)),
                     (has_vip, ("10.0.0.5",))):
        with pytest.raises(VipError, match=f"{fn.__name__}.*run_in_executor"):
            asyncio.run(call(fn, *args))


def test_bad_address_and_prefix_named():
    with pytest.raises(VipError, match="'10.0.0': not an IPv4"):
        has_vip("10.0.0")
    with pytest.raises(VipError, match="prefix length 33 .*10.0.0.5"):
        add_vip("10.0.0.5", 33)
