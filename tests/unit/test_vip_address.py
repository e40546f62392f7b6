"""vip/address.py without root: what it decides (which interface and prefix a VIP
gets, the exact netlink requests that add, renew and remove it, which lifetimes it
accepts), and the read-only netlink paths on the loopback address every network
namespace has. Adding and removing for real: tests/lab/test_vip.py."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vip.address import (HeldAddress, VipError, _add_request, _already_held, _check_lifetime,
                         _hold_request, _Ipv4Addr, _label_for, _pick_interface, _removals,
                         add_vip, find_vip, has_vip, interface_for, remove_vip)
from vip.lifetime import INFINITE_LFT

IP = ipaddress.IPv4Address
VIP = IP("10.1.2.200")


def held(interface: str, local: str, prefixlen: int, index: int = 2) -> _Ipv4Addr:
    return _Ipv4Addr(index, interface, IP(local), prefixlen, None)


ADDRS = [held("lo", "127.0.0.1", 8, 1),
         held("eth0", "10.1.0.5", 16),
         held("eth1", "10.1.2.5", 24, 3),
         held("eth1", "10.1.2.201", 32, 3)]     # another VIP: defines no subnet


def test_the_longest_prefix_containing_the_vip_wins():
    assert _pick_interface(VIP, ADDRS, None) == ("eth1", 24)
    assert _pick_interface(IP("10.1.9.9"), ADDRS, None) == ("eth0", 16)
    assert _pick_interface(IP("192.168.0.1"), ADDRS, None) is None


def test_a_named_interface_limits_the_choice_and_32s_define_no_subnet():
    assert _pick_interface(VIP, ADDRS, "eth0") == ("eth0", 16)
    assert _pick_interface(IP("10.1.2.201"), [ADDRS[3]], None) is None
    assert _pick_interface(VIP, ADDRS, "eth9") is None
    # the VIP's own address (held by someone already) is not its subnet
    assert _pick_interface(VIP, [held("eth2", "10.1.2.200", 24)], None) is None


def test_an_address_already_held_is_reused_on_its_interface_and_refused_elsewhere():
    addrs = ADDRS + [held("eth1", "10.1.2.200", 24, 3)]
    assert _already_held(addrs, VIP, None) == addrs[-1]
    assert _already_held(addrs, VIP, "eth1") == addrs[-1]
    assert _already_held(ADDRS, VIP, "eth1") is None
    with pytest.raises(VipError, match=r"^virtual IP 10\.1\.2\.200 is already on eth1, "
                                       r"not on the requested eth0$"):
        _already_held(addrs, VIP, "eth0")


def test_the_add_request_carries_broadcast_label_and_both_lifetimes():
    assert _add_request(VIP, 3, "eth1", 24, 7) == {
        "index": 3, "address": "10.1.2.200", "prefixlen": 24, "broadcast": "10.1.2.255",
        "label": "eth1:hv", "valid_lft": 7, "preferred_lft": 7}
    # forever: no lifetime at all; /31 and /32 have no broadcast address
    assert _add_request(VIP, 3, "eth1", 32, None) == {
        "index": 3, "address": "10.1.2.200", "prefixlen": 32, "label": "eth1:hv"}
    assert "broadcast" not in _add_request(VIP, 3, "eth1", 31, None)
    # a label must fit the kernel's IFNAMSIZ with its NUL: a long interface name gets none
    assert _label_for("enp0s31f6") == "enp0s31f6:hv" and _label_for("enx0123456789ab") is None
    assert "label" not in _add_request(VIP, 3, "enx0123456789ab", 24, None)


@pytest.mark.parametrize("vip, prefixlen, network", [
    ("10.1.2.0", 24, "10.1.2.0/24"), ("10.1.2.255", 24, "10.1.2.0/24"), ("10.0.0.3", 30, "10.0.0.0/30")])
def test_the_network_and_broadcast_addresses_are_refused(vip, prefixlen, network):
    with pytest.raises(VipError, match=f"^virtual IP {vip}/{prefixlen} is the network or "
                                       f"broadcast address of {network}$"):
        _add_request(IP(vip), 1, "eth0", prefixlen, None)


@given(vip=st.integers(0, 2**32 - 1).map(IP), prefixlen=st.integers(1, 32),
       lifetime=st.one_of(st.none(), st.integers(1, INFINITE_LFT - 1)))
def test_an_accepted_add_request_is_in_its_network_and_never_its_edges(vip, prefixlen, lifetime):
    network = ipaddress.IPv4Network(f"{vip}/{prefixlen}", strict=False)
    try:
        request = _add_request(vip, 5, "eth0", prefixlen, lifetime)
    except VipError:
        assert prefixlen < 31 and vip in (network.network_address, network.broadcast_address)
        return
    assert IP(request["address"]) == vip and request["prefixlen"] == prefixlen
    assert request.get("broadcast") == (str(network.broadcast_address) if prefixlen < 31 else None)
    assert request.get("valid_lft") == request.get("preferred_lft") == lifetime


def test_the_hold_request_puts_the_address_back_exactly_as_it_was():
    h = HeldAddress(3, "eth1", "10.1.2.200", 24, "10.1.2.255", "eth1:hv")
    assert _hold_request(h, 2) == {"index": 3, "address": "10.1.2.200", "prefixlen": 24,
                                   "broadcast": "10.1.2.255", "label": "eth1:hv",
                                   "valid_lft": 2, "preferred_lft": 2}
    bare = HeldAddress(3, "eth1", "10.1.2.200", 32, None, None)
    assert set(_hold_request(bare, 2)) == {"index", "address", "prefixlen", "valid_lft",
                                           "preferred_lft"}


@pytest.mark.parametrize("lifetime", [0, -1, INFINITE_LFT, 1.5, True, "3"])
def test_lifetimes_the_kernel_would_refuse_or_misread_are_named(lifetime):
    with pytest.raises(VipError, match=f"^bad lifetime {lifetime!r} s for virtual IP 10.1.2.200: "
                                       "need a whole number of seconds >= 1"):
        _check_lifetime("10.1.2.200", lifetime)
    with pytest.raises(VipError, match="bad lifetime"):
        _hold_request(HeldAddress(3, "eth1", "10.1.2.200", 24, None, None), lifetime)


@given(st.one_of(st.none(), st.integers(1, INFINITE_LFT - 1)))
def test_every_whole_second_below_forever_is_a_lifetime(lifetime):
    _check_lifetime("10.1.2.200", lifetime)


def test_removal_takes_every_prefix_length_of_the_vip_and_only_on_the_named_interface():
    addrs = ADDRS + [held("eth1", "10.1.2.200", 24, 3), held("eth0", "10.1.2.200", 32)]
    assert _removals(addrs, VIP, None) == addrs[-2:]
    assert _removals(addrs, VIP, "eth0") == addrs[-1:]
    assert _removals(ADDRS, VIP, None) == []


# -- read-only netlink: 127.0.0.1/8 on lo is in every network namespace ------------------

def test_the_loopback_address_is_found_where_the_kernel_holds_it():
    assert has_vip("127.0.0.1") == "lo"
    assert find_vip("127.0.0.1") == HeldAddress(1, "lo", "127.0.0.1", 8, None, "lo")
    assert find_vip("127.0.0.1", "eth-none") is None
    assert interface_for("127.9.9.9") == "lo"


def test_adding_an_address_already_held_changes_nothing_and_says_where():
    assert add_vip("127.0.0.1") == "lo"          # no lifetime asked: no netlink change at all
    with pytest.raises(VipError, match="^virtual IP 127.0.0.1 is already on lo, not on the "
                                       "requested eth-none$"):
        add_vip("127.0.0.1", interface="eth-none")


def test_removing_an_address_nobody_holds_is_a_no():
    assert remove_vip("127.9.9.9") is False
    assert has_vip("127.9.9.9") is None
