"""raft.links: heartbeat datagrams and the path table of several heartbeat networks."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft.links import (MAX_DATAGRAM, Heartbeat, HeartbeatError, LinkTable, decode_heartbeat,
                        encode_heartbeat, heartbeat_key, member_paths)

KEY = heartbeat_key("s" * 40)
senders = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.:", min_size=1, max_size=60)


@given(sender=senders, network=st.integers(0, 255), seq=st.integers(0, (1 << 64) - 1))
def test_heartbeat_round_trip(sender, network, seq):
    hb = Heartbeat(sender, network, seq)
    data = encode_heartbeat(KEY, hb)
    assert len(data) <= MAX_DATAGRAM
    assert decode_heartbeat(KEY, data) == hb


@given(index=st.integers(0, 200), flip=st.integers(1, 255))
def test_any_changed_byte_is_refused(index, flip):
    data = bytearray(encode_heartbeat(KEY, Heartbeat("10.0.0.1:7400", 1, 42)))
    index %= len(data)
    data[index] ^= flip
    with pytest.raises(HeartbeatError):
        decode_heartbeat(KEY, bytes(data))


def test_wrong_secret_short_and_long_datagrams_are_refused_with_a_reason():
    data = encode_heartbeat(KEY, Heartbeat("10.0.0.1:7400", 0, 1))
    with pytest.raises(HeartbeatError, match="authentication"):
        decode_heartbeat(heartbeat_key("t" * 40), data)
    with pytest.raises(HeartbeatError, match="size"):
        decode_heartbeat(KEY, data[:10])
    with pytest.raises(HeartbeatError, match="size"):
        decode_heartbeat(KEY, data + b"x" * MAX_DATAGRAM)
    with pytest.raises(HeartbeatError, match="magic"):
        decode_heartbeat(KEY, b"XXXX" + data[4:])


def test_member_paths_are_the_raft_host_then_the_links():
    assert member_paths({"address": "10.0.0.1:7400", "role": "node"}) == ["10.0.0.1"]
    assert member_paths({"address": "10.0.0.1:7400", "role": "node",
                         "links": ["10.1.0.1", "10.2.0.1"]}) == ["10.0.0.1", "10.1.0.1", "10.2.0.1"]


def table(timeout: float = 0.15) -> LinkTable:
    t = LinkTable(("10.0.0.1", "10.1.0.1"), timeout)
    t.set_peers({"10.0.0.2:7400": ("10.0.0.2", "10.1.0.2"),
                 "10.0.0.3:7400": ("10.0.0.3",)})          # a witness on one network only
    return t


def test_shared_networks_and_hosts():
    t = table()
    assert t.shared("10.0.0.2:7400") == [0, 1]
    assert t.shared("10.0.0.3:7400") == [0]
    assert t.peer_of("10.1.0.2") == ("10.0.0.2:7400", 1)
    assert t.peer_of("10.9.9.9") is None
    assert t.hosts() == {"10.0.0.2", "10.1.0.2", "10.0.0.3"}
    assert t.several


def test_a_path_is_alive_for_the_timeout_after_a_heartbeat():
    t = table()
    p = "10.0.0.2:7400"
    assert not t.alive(p, 1, 0.0)
    assert t.heard(Heartbeat(p, 1, 5), 10.0)
    assert t.alive(p, 1, 10.1) and not t.alive(p, 1, 10.15)


def test_replays_unknown_senders_and_unshared_networks_are_not_taken():
    t = table()
    p = "10.0.0.2:7400"
    assert t.heard(Heartbeat(p, 0, 5), 1.0)
    assert not t.heard(Heartbeat(p, 0, 5), 1.05)         # the same sequence again
    assert not t.heard(Heartbeat(p, 0, 4), 1.06)         # an older one
    assert t.heard(Heartbeat(p, 0, 6), 1.07)
    assert not t.heard(Heartbeat("10.9.9.9:7400", 0, 9), 1.0)
    assert not t.heard(Heartbeat("10.0.0.3:7400", 1, 9), 1.0)   # the witness has no network 1
    # silent for longer than stale_s: a restarted sender (lower sequence) is taken again
    assert t.heard(Heartbeat(p, 0, 1), 1.07 + t.stale_s + 0.01)


def test_switch_only_from_a_dead_path_to_a_live_one():
    t = table()
    p = "10.0.0.2:7400"
    t.heard(Heartbeat(p, 0, 1), 0.0)
    t.heard(Heartbeat(p, 1, 2), 0.0)
    assert t.switch_to(p, 0, 0.1) is None                  # both alive: stay
    t.heard(Heartbeat(p, 1, 3), 0.1)
    assert t.switch_to(p, 0, 0.2) == 1                     # 0 silent, 1 heard
    assert t.switch_to(p, 1, 0.2) is None
    assert t.switch_to(p, 0, 1.0) is None                  # everything silent: a stall, stay
    assert t.switch_to("10.0.0.3:7400", 0, 1.0) is None     # one network: nothing to switch to


def test_connect_prefers_a_live_network_else_takes_turns():
    t = table()
    p = "10.0.0.2:7400"
    assert [t.connect_choice(p, 0.0, a) for a in range(4)] == [0, 1, 0, 1]
    t.heard(Heartbeat(p, 1, 1), 0.0)
    assert [t.connect_choice(p, 0.05, a) for a in range(3)] == [1, 1, 1]
    assert t.connect_choice("10.0.0.3:7400", 0.0, 7) == 0


def test_changes_are_reported_once_per_edge():
    t = table()
    p = "10.0.0.2:7400"
    assert t.changes(0.0) == []                            # never heard: nothing to say
    t.heard(Heartbeat(p, 1, 1), 0.0)
    [up] = t.changes(0.01)
    assert (up.peer, up.network, up.host, up.alive) == (p, 1, "10.1.0.2", True)
    assert t.changes(0.02) == []
    [down] = t.changes(0.5)
    assert not down.alive and down.network == 1
    assert t.changes(0.6) == []
    status = t.status(0.6)[p]
    assert [r["network"] for r in status] == [0, 1]
    assert status[1]["alive"] is False and status[1]["last_heard_s"] == 0.6


@given(heard=st.lists(st.tuples(st.integers(0, 2), st.floats(0, 10)), max_size=20),
       current=st.integers(0, 2), now=st.floats(0, 12))
def test_a_switch_never_goes_to_a_dead_path_nor_stays_put(heard, current, now):
    t = LinkTable(("a", "b", "c"), 0.15)
    p = "x:1"
    t.set_peers({p: ("xa", "xb", "xc")})
    seq = 0
    for net, at in sorted(heard, key=lambda h: h[1]):
        seq += 1
        t.heard(Heartbeat(p, net, seq), at)
    target = t.switch_to(p, current, now)
    if target is not None:
        assert target != current
        assert t.alive(p, target, now) and not t.alive(p, current, now)
    else:
        assert t.alive(p, current, now) or not t.alive_networks(p, now)


def test_forgotten_peers_are_dropped():
    t = table()
    t.heard(Heartbeat("10.0.0.3:7400", 0, 1), 0.0)
    t.set_peers({"10.0.0.2:7400": ("10.0.0.2", "10.1.0.2")})
    assert t.status(0.0) == {"10.0.0.2:7400": [
        {"network": 0, "address": "10.0.0.2", "alive": False, "last_heard_s": None},
        {"network": 1, "address": "10.1.0.2", "alive": False, "last_heard_s": None}]}
