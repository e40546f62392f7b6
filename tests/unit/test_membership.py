"""raft/membership.py: which cluster shapes and membership changes are safe (rule 4)."""
from __future__ import annotations

import pytest

from raft.membership import (
    MembershipError,
    check_add,
    check_address,
    check_members,
    check_name,
    check_remove,
    shape_error,
)


def node(addr: str) -> dict[str, str]:
    return {"address": addr, "role": "node"}


def witness(addr: str) -> dict[str, str]:
    return {"address": addr, "role": "witness"}


THREE = {"a": node("10.0.0.1:7400"), "b": node("10.0.0.2:7400"), "c": node("10.0.0.3:7400")}
TWO_W = {"a": node("10.0.0.1:7400"), "b": node("10.0.0.2:7400"), "w": witness("10.0.0.9:7400")}


# ---- shapes --------------------------------------------------------------------------
def test_shape_error_cases():
    assert shape_error({}) == "a cluster needs at least one member"
    err = shape_error({"a": node("h1:1"), "b": node("h2:1")})
    assert err and "two voters without a witness" in err and "add-witness" in err
    assert shape_error({"a": node("h1:1")}) is None
    assert shape_error({"a": node("h1:1"), "w": witness("h2:1")}) is None
    assert shape_error(THREE) is None
    assert shape_error(TWO_W) is None


def test_check_members_accepts_three_nodes_and_two_plus_witness():
    check_members(THREE)
    check_members(TWO_W)


@pytest.mark.parametrize("members, words", [
    ({"a": node("10.0.0.1:7400"), "b": node("10.0.0.2:7400")}, "two voters without a witness"),
    ({"a": node("10.0.0.1:7400"), "b": node("10.0.0.1:7400"), "w": witness("10.0.0.9:7400")},
     "duplicate address 10.0.0.1:7400: members 'a' and 'b'"),
    ({"a": {"address": "10.0.0.1:7400", "role": "boss"}}, "member 'a': invalid role 'boss'"),
    ({"a": {"address": "10.0.0.1:7400"}}, "invalid role None"),
    ({"a": {"role": "node"}}, "invalid address None"),
    ({"A": node("10.0.0.1:7400")}, "invalid member name 'A'"),
    ({"a": "10.0.0.1:7400"}, "member 'a'"),
    ({}, "at least one member"),
])
def test_check_members_refused(members, words):
    with pytest.raises(MembershipError) as e:
        check_members(members)
    assert words in str(e.value)


# ---- names / addresses -------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "node-1", "db.primary", "x_y", "0", "a" * 63])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", ".a", "_a", "a b", "a/b", "a:b", "é", "a" * 64,
                                  "abc\n", "\nabc", None, 1, ["a"]])
def test_invalid_names(name):
    with pytest.raises(MembershipError, match="invalid member name"):
        check_name(name)


@pytest.mark.parametrize("address", ["10.0.0.1:7400", "host:1", "host.example.org:65535",
                                     "a-b.c:80", "192.168.1.1:1"])
def test_valid_addresses(address):
    assert check_address(address) == address


@pytest.mark.parametrize("address, words", [
    ("10.0.0.1", "expected host:port"),
    ("10.0.0.1:7400:1", "expected host:port"),
    ("[::1]:7400", "expected host:port"),
    (7400, "expected host:port"),
    (None, "expected host:port"),
    (":7400", "bad host ''"),
    ("-host:7400", "bad host"),
    ("ho st:7400", "bad host"),
    ("host\n:7400", "bad host"),
    ("host:0", "bad port '0'"),
    ("host:65536", "bad port '65536'"),
    ("host:-1", "bad port"),
    ("host:", "bad port ''"),
    ("host:http", "bad port"),
    ("host:74 0", "bad port"),
    ("host:\u00b2", "bad port"),     # superscript two: str.isdigit() but not a number
    ("host:\u0661", "bad port"),     # Arabic-Indic one: not an ASCII port either
])
def test_invalid_addresses(address, words):
    with pytest.raises(MembershipError) as e:
        check_address(address)
    assert words in str(e.value)
    assert "invalid address" in str(e.value)


# ---- add ---------------------------------------------------------------------------
def test_add_accepted():
    check_add(THREE, "d", "10.0.0.4:7400", "node")
    check_add(TWO_W, "c", "10.0.0.3:7400", "node")
    check_add({"a": node("10.0.0.1:7400")}, "w", "10.0.0.9:7400", "witness")


@pytest.mark.parametrize("members, args, words", [
    ({"a": node("10.0.0.1:7400")}, ("b", "10.0.0.2:7400", "node"),
     "refusing to add node 'b': two voters without a witness"),
    (THREE, ("a", "10.0.0.4:7400", "node"), "member 'a' already exists (address 10.0.0.1:7400)"),
    (THREE, ("d", "10.0.0.2:7400", "node"), "duplicate address 10.0.0.2:7400: already used by member 'b'"),
    (THREE, ("d", "10.0.0.4:7400", "voter"), "invalid role 'voter': expected one of node, witness"),
    (THREE, ("D", "10.0.0.4:7400", "node"), "invalid member name 'D'"),
    (THREE, ("d", "10.0.0.4", "node"), "expected host:port"),
    (THREE, ("d", "10.0.0.4:99999", "node"), "bad port"),
])
def test_add_refused(members, args, words):
    with pytest.raises(MembershipError) as e:
        check_add(members, *args)
    assert words in str(e.value)


def test_add_does_not_modify_members():
    members = {"a": node("10.0.0.1:7400")}
    with pytest.raises(MembershipError):
        check_add(members, "b", "10.0.0.2:7400", "node")
    assert members == {"a": node("10.0.0.1:7400")}


# ---- remove ------------------------------------------------------------------------
def test_remove_dead_node_when_the_rest_keep_quorum():
    four = {**THREE, "d": node("10.0.0.4:7400")}
    check_remove(four, {"a", "b", "c"}, "d", "node")   # d is dead; a, b, c remain, all alive
    five = {**four, "e": node("10.0.0.5:7400")}
    check_remove(five, {"a", "b", "c"}, "e", "node")   # 3 of the remaining 4 alive
    check_remove({**TWO_W, "c": node("10.0.0.3:7400")}, {"a", "w"}, "c", "node")


def test_remove_witness_from_three_plus_witness():
    check_remove({**THREE, "w": witness("10.0.0.9:7400")}, {"a", "b", "c"}, "w", "witness")


def test_remove_unknown_lists_known():
    with pytest.raises(MembershipError) as e:
        check_remove(THREE, set(THREE), "zz", "node")
    assert str(e.value) == "unknown member 'zz' (members: a, b, c)"
    with pytest.raises(MembershipError, match=r"\(members: none\)"):
        check_remove({}, set(), "zz", "node")


@pytest.mark.parametrize("name", [["a"], {"a": 1}, None, 3])
def test_remove_malformed_name_is_unknown(name):
    with pytest.raises(MembershipError, match="unknown member"):
        check_remove(THREE, set(THREE), name, "node")


def test_remove_wrong_role():
    with pytest.raises(MembershipError) as e:
        check_remove(TWO_W, set(TWO_W), "w", "node")
    assert str(e.value) == "'w' is a witness, not a node: use remove-witness"
    with pytest.raises(MembershipError, match="'a' is a node, not a witness: use remove-node"):
        check_remove(TWO_W, set(TWO_W), "a", "witness")


def test_remove_refused_when_shape_becomes_unsafe():
    # removing the witness of a 2-node cluster leaves two voters without a witness
    with pytest.raises(MembershipError, match="refusing to remove witness 'w': two voters without a witness"):
        check_remove(TWO_W, set(TWO_W), "w", "witness")
    # 3 nodes -> 2 nodes without witness
    with pytest.raises(MembershipError, match="two voters without a witness"):
        check_remove(THREE, set(THREE), "c", "node")


def test_remove_last_member_refused():
    with pytest.raises(MembershipError, match="refusing to remove node 'a': a cluster needs at least one member"):
        check_remove({"a": node("10.0.0.1:7400")}, {"a"}, "a", "node")


@pytest.mark.parametrize("live, ok", [
    ({"a", "b", "c", "d"}, True),
    ({"a", "b", "c"}, True),
    ({"a", "b"}, False),    # remaining a, b, c, d(...) minus e: 2 of 4 alive is no majority
    ({"a", "e"}, False),    # the removed node's liveness does not count
    (set(), False),
])
def test_remove_considers_liveness(live, ok):
    five = {**THREE, "d": node("10.0.0.4:7400"), "e": node("10.0.0.5:7400")}
    if ok:
        check_remove(five, live, "e", "node")
    else:
        with pytest.raises(MembershipError) as e:
            check_remove(five, live, "e", "node")
        msg = str(e.value)
        assert "no quorum" in msg and "the remaining 4 voters" in msg
        assert f"only {len(live - {'e'})} alive" in msg


def test_no_quorum_message_names_the_alive():
    with pytest.raises(MembershipError) as e:
        check_remove({**THREE, "d": node("10.0.0.4:7400")}, {"a"}, "d", "node")
    assert str(e.value) == ("refusing to remove node 'd': the remaining 3 voters would have "
                            "only 1 alive (a), no quorum")


# ---- links: several heartbeat networks ------------------------------------------------

def _three(**links):
    return {n: {"address": f"10.0.0.{i}:7400", "role": "node",
                **({"links": links[n]} if n in links else {})}
            for i, n in enumerate(("n1", "n2", "n3"), start=1)}


def test_links_are_checked_ipv4_without_port_and_owned_once():
    from raft.membership import check_links
    check_members(_three(n1=["10.1.0.1"], n2=["10.1.0.2"]))
    assert check_links(None, "n1") == []
    for bad in (["10.1.0.1:7400"], ["host.example"], "10.1.0.1", [7], ["10.1.0.1"] * 8):
        with pytest.raises(MembershipError, match="n1"):
            check_members(_three(n1=bad))
    with pytest.raises(MembershipError, match="link address 10.1.0.9 given to members"):
        check_members(_three(n1=["10.1.0.9"], n2=["10.1.0.9"]))
    with pytest.raises(MembershipError, match="is the Raft host of member 'n2'"):
        check_members(_three(n1=["10.0.0.2"]))


def test_add_with_links_is_checked_against_the_others():
    members = _three(n1=["10.1.0.1"])
    check_add(members, "n4", "10.0.0.4:7400", "node", ["10.1.0.4"])
    with pytest.raises(MembershipError, match="given to members"):
        check_add(members, "n4", "10.0.0.4:7400", "node", ["10.1.0.1"])
    with pytest.raises(MembershipError, match="bad link address"):
        check_add(members, "n4", "10.0.0.4:7400", "node", ["nope"])
