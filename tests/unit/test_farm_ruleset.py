"""Pure parts of farm traffic sharing: the nft script, bucket_of, the shared MAC, ARP replies.
(The scripts are loaded into real kernels in tests/lab/test_farm_traffic.py.)"""
import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vip.arp_responder import announcement_frames, reply_for
from vip.farm_ruleset import (
    BUCKETS,
    bucket_of,
    check_buckets,
    check_rules,
    jhash,
    render_refresh,
    render_removal,
    render_ruleset,
)
from vip.farm_vip import FarmVip
from vip.garp import (
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST_MAC,
    ZERO_MAC,
    build_arp_frame,
    parse_arp_frame,
)
from vip.shared_mac import mac_bytes, shared_mac_for

VIP = "10.1.2.100"
NODE = "10.1.2.1"
RULES = [(80, "tcp", "on_port"), (None, "udp", "on_addr")]
SEED = 0x5EED1234


def render(owned=range(100), rules=RULES, **kw):
    args = {"module": "web", "vip": VIP, "rules": rules, "owned": owned, "seed": SEED,
            "interface": "eth0", "node_addr": NODE, "mac": shared_mac_for(VIP)}
    args.update(kw)
    return render_ruleset(**args)


def to_vip_rules(script: str) -> list[str]:
    body = script.split("  chain to_vip {\n")[1].split("\n  }\n", 1)[0]
    return [ln.strip() for ln in body.splitlines()]


def owned_set(script: str) -> dict[int, int | None]:
    """Bucket -> timeout (ms, None = none) from the rendered ``owned`` set."""
    body = script.split("  set owned {\n")[1].split("\n  }\n", 1)[0]
    assert "typeof meta length" in body and "flags timeout" in body
    found = re.search(r"elements = \{ (.*) \}", body)
    out: dict[int, int | None] = {}
    for element in (found.group(1).split(", ") if found else []):
        b, _, timeout = element.partition(" timeout ")
        assert int(b) not in out, f"bucket {b} twice"
        out[int(b)] = int(timeout.removesuffix("ms")) if timeout else None
    return out


def test_script_replaces_both_tables_in_one_transaction():
    script = render()
    lines = script.splitlines()
    # declare-then-delete: safe when absent, and one nft -f load is one transaction
    assert lines[:4] == ["table inet hacluster_farm_web {}", "delete table inet hacluster_farm_web",
                         "table arp hacluster_farm_web {}", "delete table arp hacluster_farm_web"]
    assert "type filter hook prerouting priority -300; policy accept;" in script
    assert 'iifname "eth0" ip daddr 10.1.2.100 jump to_vip' in script
    assert "hclab" not in script  # never the lab's own tables
    assert f'comment "hacluster farm vip={VIP} interface=eth0 mac=03:bf:0a:01:02:64"' in script


def test_to_vip_chain_order_pkttype_rules_then_catch_all():
    script = render()
    chain = to_vip_rules(script)
    assert chain == [
        "meta pkttype set host",
        # TCP: the bucket judges only a new connection (a SYN) ...
        "tcp dport 80 tcp flags & (syn | ack) == syn "
        "jhash ip saddr . tcp sport mod 256 seed 0x5eed1234 @owned accept",
        "tcp dport 80 tcp flags & (syn | ack) == syn drop",
        "tcp dport 80 accept",
        "meta l4proto udp jhash ip saddr mod 256 seed 0x5eed1234 @owned accept",
        "meta l4proto udp drop",
        # whatever matches no rule is bucketed by source address: one node answers it
        "jhash ip saddr mod 256 seed 0x5eed1234 @owned accept",
        "drop",
    ]
    assert owned_set(script) == {b: None for b in range(100)}


def test_tcp_segments_after_the_syn_are_accepted_only_for_known_connections():
    """... every other segment only if conntrack knows the connection here, after
    conntrack (priority -150): a moved bucket's old owner keeps its connections and no
    node answers another's segments (rebalancing resets nothing)."""
    script = render()
    assert "type filter hook prerouting priority -150; policy accept;" in script
    assert 'iifname "eth0" ip daddr 10.1.2.100 jump flows' in script
    body = script.split("  chain flows {\n")[1].split("\n  }\n", 1)[0]
    assert [ln.strip() for ln in body.splitlines()] == [
        "tcp dport 80 tcp flags & (syn | ack) == syn accept",
        "tcp dport 80 ct state established,related accept",
        "tcp dport 80 drop",
    ]
    udp_only = render(rules=[(None, "udp", "on_addr")])
    assert "chain flows" not in udp_only and "priority -150" not in udp_only


def test_arp_table_drops_kernel_replies_and_rewrites_requests_from_the_vip():
    arp = render().split("table arp hacluster_farm_web {\n")[1]
    assert "type filter hook output priority 0; policy accept;" in arp
    assert f"arp operation reply arp saddr ip {VIP} counter drop" in arp
    assert f"arp operation request arp saddr ip {VIP} counter arp saddr ip set {NODE}" in arp


@given(st.sets(st.integers(0, 255)), st.integers(1, 10**6))
def test_owned_set_holds_each_bucket_once_with_its_timeout(owned, timeout_ms):
    assert owned_set(render(owned=owned, timeout_ms=timeout_ms)) == {b: timeout_ms for b in owned}
    assert owned_set(render(owned=owned)) == {b: None for b in owned}   # no lease: no expiry


def test_a_lease_at_its_end_installs_no_bucket():
    assert owned_set(render(owned=range(256), timeout_ms=0)) == {}


@given(st.sets(st.integers(0, 255)), st.integers(1, 10**6))
def test_refresh_replaces_the_elements_in_one_transaction(owned, timeout_ms):
    lines = render_refresh("web", owned, timeout_ms).splitlines()
    assert lines[0] == "flush set inet hacluster_farm_web owned"
    if not owned:
        assert lines == lines[:1]
        return
    assert len(lines) == 2
    head, _, elements = lines[1].partition(" { ")
    assert head == "add element inet hacluster_farm_web owned"
    as_set = ("  set owned {\n    typeof meta length\n    flags timeout\n"
              "    elements = { " + elements + "\n  }\n")
    assert owned_set(as_set) == {b: timeout_ms for b in owned}


def test_refresh_refuses_a_zero_or_bad_timeout():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="timeout"):
            render_refresh("web", {1}, bad)
    with pytest.raises(ValueError, match="timeout"):
        render(timeout_ms=-5)


def test_removal_script_is_idempotent_form():
    assert render_removal("web") == ("table inet hacluster_farm_web {}\n"
                                     "delete table inet hacluster_farm_web\n"
                                     "table arp hacluster_farm_web {}\n"
                                     "delete table arp hacluster_farm_web\n")


@pytest.mark.parametrize("kw, needle", [
    ({"owned": [0, 256]}, "bad farm bucket 256: need an integer 0..255"),
    ({"owned": [-1]}, "bad farm bucket -1"),
    ({"owned": [True]}, "bad farm bucket True"),
    ({"owned": "0-9"}, "bad farm bucket set"),
    ({"vip": "10.1.2.300"}, "bad farm VIP '10.1.2.300': not an IPv4 address"),
    ({"vip": "224.0.0.5"}, "bad farm VIP '224.0.0.5': not a unicast address"),
    ({"rules": [(80, "sctp", "on_port")]}, "bad protocol 'sctp' in farm rule #0"),
    ({"rules": [(80, "tcp", "on_ip")]}, "bad filter 'on_ip' in farm rule #0"),
    ({"rules": [(80, "tcp", "on_port"), (0, "tcp", "on_addr")]}, "bad port 0 in farm rule #1"),
    ({"rules": [("80", "tcp", "on_addr")]}, "bad port '80' in farm rule #0"),
    ({"rules": [(80, "tcp")]}, "bad farm rule #0"),
    ({"module": "web farm"}, "bad farm module name 'web farm'"),
    ({"module": 'x";drop'}, "bad farm module name"),
    ({"seed": 2**32}, "bad farm hash seed 4294967296"),
    ({"interface": 'eth0"; flush ruleset'}, "bad farm interface name"),
    ({"node_addr": VIP}, "it is the farm VIP itself"),
    ({"mac": "03:BF:0A:01:02:64;"}, "bad shared MAC"),
])
def test_bad_input_is_refused_with_one_line_naming_it(kw, needle):
    with pytest.raises(ValueError) as err:
        render(**kw)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_check_helpers_accept_good_input():
    assert check_rules([(None, "tcp", "on_addr")])[0].port is None
    assert check_buckets(range(256)) == frozenset(range(256))


def test_farm_vip_refuses_bad_settings_before_touching_anything():
    with pytest.raises(ValueError, match="bad filter 'on_ip' in farm rule #0"):
        FarmVip("web", VIP, "eth0", [(80, "tcp", "on_ip")], SEED)
    with pytest.raises(ValueError, match="bad farm VIP"):
        FarmVip("web", "10.0.0", "eth0", RULES, SEED)


# -- bucket_of against values the kernel computed ----------------------------------

@pytest.mark.parametrize("sport, bucket", [(1025, 60), (40000, 91), (65535, 34), (12345, 224)])
def test_bucket_of_matches_kernel_on_port(sport, bucket):
    # measured with `udp sport P jhash ip saddr . udp sport mod 256 seed 0x5eed1234 N counter`
    assert bucket_of("10.9.8.7", sport, "on_port", 0x5EED1234) == bucket


def test_bucket_of_matches_kernel_on_addr():
    assert bucket_of("10.9.8.7", None, "on_addr", 0x5EED1234) == 12


def test_jhash_empty_key_and_refused_long_key():
    assert jhash(b"", 0) == 0xDEADBEEF  # length 0: the initial value untouched
    with pytest.raises(ValueError, match="jhash key of 13 bytes"):
        jhash(bytes(13), 1)


@given(st.integers(0, 2**32 - 1), st.integers(0, 65535), st.integers(0, 2**32 - 1))
def test_bucket_of_is_a_bucket(ip, port, seed):
    addr = str(ipaddress.IPv4Address(ip))
    assert 0 <= bucket_of(addr, port, "on_port", seed) < BUCKETS
    assert bucket_of(addr, port, "on_addr", seed) == bucket_of(addr, None, "on_addr", seed)


def test_bucket_of_refuses_bad_input():
    with pytest.raises(ValueError, match="bad client port None"):
        bucket_of("10.0.0.1", None, "on_port", 0)
    with pytest.raises(ValueError, match="bad farm filter 'x'"):
        bucket_of("10.0.0.1", 1, "x", 0)


# -- shared MAC and ARP frames ------------------------------------------------------

def test_shared_mac_is_locally_administered_multicast_per_vip():
    mac = shared_mac_for("10.0.0.100")
    assert mac == "03:bf:0a:00:00:64"
    assert mac_bytes(mac)[0] & 0b11 == 0b11  # multicast + locally administered
    assert shared_mac_for("10.128.0.100") != mac  # all 32 bits, unlike 01:00:5e mapping
    with pytest.raises(ValueError, match="bad farm VIP 'x'"):
        shared_mac_for("x")
    with pytest.raises(ValueError, match="bad MAC address"):
        mac_bytes("03:bf:0a:00:00")


SHARED = mac_bytes(shared_mac_for(VIP))
REAL = bytes.fromhex("02000000aa01")
CLIENT_MAC = bytes.fromhex("02000000cc01")


def test_reply_carries_shared_mac_from_real_source():
    request = build_arp_frame(ARP_REQUEST, CLIENT_MAC, "10.1.2.4", ZERO_MAC, VIP)
    reply = reply_for(request, VIP, SHARED, REAL)
    f = parse_arp_frame(reply)
    assert (f.op, f.sender_mac, f.sender_ip) == (ARP_REPLY, SHARED, VIP)
    assert (f.target_mac, f.target_ip) == (CLIENT_MAC, "10.1.2.4")
    assert (f.eth_dst, f.eth_src) == (CLIENT_MAC, REAL)  # unicast back; switch learns REAL


@pytest.mark.parametrize("frame", [
    build_arp_frame(ARP_REQUEST, CLIENT_MAC, "10.1.2.4", ZERO_MAC, "10.1.2.5"),  # other IP
    build_arp_frame(ARP_REPLY, CLIENT_MAC, "10.1.2.4", SHARED, VIP),  # a reply
    build_arp_frame(ARP_REQUEST, SHARED, VIP, ZERO_MAC, VIP),  # a peer's announcement
    build_arp_frame(ARP_REQUEST, CLIENT_MAC, "10.1.2.4", ZERO_MAC, VIP)[:30],  # truncated
    b"",
    bytes(60),
])
def test_other_and_malformed_frames_get_no_reply(frame):
    assert reply_for(frame, VIP, SHARED, REAL) is None


@given(st.binary(max_size=100))
def test_arbitrary_bytes_never_crash_the_responder(frame):
    reply = reply_for(frame, VIP, SHARED, REAL)
    assert reply is None or parse_arp_frame(reply).sender_mac == SHARED


def test_announcement_maps_vip_to_shared_mac():
    request, reply = (parse_arp_frame(f) for f in announcement_frames(VIP, SHARED, REAL))
    for f in (request, reply):
        assert f.sender_ip == f.target_ip == VIP
        assert (f.sender_mac, f.eth_src, f.eth_dst) == (SHARED, REAL, BROADCAST_MAC)
    assert (request.op, request.target_mac, reply.op, reply.target_mac) == (
        ARP_REQUEST, ZERO_MAC, ARP_REPLY, SHARED)
