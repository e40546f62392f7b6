"""hacluster/node/anonymize.py: addresses and names become tokens, the same value the
same token within one Anonymizer (one archive), distinct values distinct tokens, and
nothing else in the text changes."""
from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import assume, given, settings, strategies as st

from hacluster.node.anonymize import CLUSTER, HOST, MEMBER, Anonymizer

BOUNDARY = "A-Za-z0-9_"


def present(value: str, text: str, ignore_case: bool = False) -> bool:
    """Does ``value`` stand in ``text`` as a whole word (as the anonymizer sees one)?"""
    pattern = f"(?<![{BOUNDARY}.:]){re.escape(value)}(?![{BOUNDARY}]|[.:][0-9A-Fa-f])"
    return re.search(pattern, text, re.IGNORECASE if ignore_case else 0) is not None


def lab() -> Anonymizer:
    a = Anonymizer()
    a.add(MEMBER, ["n1", "n2", "w"])
    a.add(HOST, ["db1.example.com"])
    a.add(CLUSTER, ["prod"])
    return a


def test_addresses_and_names_become_tokens_and_the_rest_stays():
    a = lab()
    text = ("n1 at 10.213.5.1:7400 sees n2 (10.213.5.2) and w; [fe80::1%eth0]:80, 2001:db8::5, "
            "::ffff:10.213.5.1; DB1.example.com is db1; cluster prod; n10 ln1 n1_x node/n1 "
            "at 21:32:58.123Z mac aa:bb:cc:dd:ee:ff loopback 127.0.0.1 ::1 0.0.0.0 version 1.2.3")
    assert a.text(text) == (
        "MEMBER-1 at IP-1:7400 sees MEMBER-2 (IP-2) and MEMBER-3; [IPV6-1]:80, IPV6-2, "
        "::ffff:IP-1; HOST-1 is HOST-2; cluster CLUSTER-1; n10 ln1 n1_x node/MEMBER-1 "
        "at 21:32:58.123Z mac aa:bb:cc:dd:ee:ff loopback 127.0.0.1 ::1 0.0.0.0 version 1.2.3")


def test_the_same_value_keeps_its_token_across_files_and_the_mapping_undoes_it():
    a = lab()
    first = a.text("n2 10.0.0.7")
    second = a.text("10.0.0.7 then n2 then 10.0.0.8")
    assert first == "MEMBER-1 IP-1"
    assert second == "IP-1 then MEMBER-1 then IP-2"
    assert a.mapping() == {"IP-1": "10.0.0.7", "IP-2": "10.0.0.8", "MEMBER-1": "n2"}
    assert a.counts() == {"IP": 2, "MEMBER": 1}


def test_a_longer_name_wins_where_both_start_and_hosts_ignore_case():
    a = Anonymizer()
    a.add(MEMBER, ["n1"])
    a.add(HOST, ["N1.Lab.Example"])     # its first label, n1, is a member already
    assert a.text("n1.lab.example n1 N1.LAB.EXAMPLE") == "HOST-1 MEMBER-1 HOST-1"


def test_a_token_is_never_rewritten_and_an_unknown_category_is_refused():
    a = Anonymizer()
    a.add(MEMBER, ["MEMBER-2", "x"])
    assert a.text("x MEMBER-2") == "MEMBER-1 MEMBER-2"
    with pytest.raises(ValueError, match="unknown category 'ip'"):
        a.add("ip", ["10.0.0.1"])


def test_an_address_given_as_a_name_is_found_as_an_address():
    a = Anonymizer()
    a.add(HOST, ["10.0.0.9", ""])
    assert a.text("10.0.0.9") == "IP-1"


names = st.from_regex(r"[g-z][g-z0-9]{2,7}", fullmatch=True)
fillers = st.from_regex(r"[G-Z]{1,6}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).filter(lambda a: not (a.is_loopback or a.is_unspecified)).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda a: not (a.is_loopback or a.is_unspecified)
                                   and a.ipv4_mapped is None).map(str)
separators = st.sampled_from([" ", "\n", ", ", "=", " (", ") ", "/", "\t"])


@settings(max_examples=200, deadline=None)
@given(members=st.lists(names, min_size=1, max_size=4, unique=True),
       hosts=st.lists(names, max_size=3, unique=True),
       v4=st.lists(ipv4, min_size=1, max_size=4, unique=True),
       v6=st.lists(ipv6, max_size=3, unique=True),
       filler=st.lists(fillers, max_size=6),
       data=st.data())
def test_every_value_is_replaced_consistently_and_nothing_else_changes(members, hosts, v4, v6, filler, data):
    hosts = [h for h in hosts if h not in members]
    assume(not {f.lower() for f in filler} & {*members, *hosts})
    values = members + hosts + v4 + v6
    # each value at least twice, among filler words, in two "files"
    words = data.draw(st.permutations(values * 2 + filler))
    seps = data.draw(st.lists(separators, min_size=len(words), max_size=len(words)))
    text = "".join(w + s for w, s in zip(words, seps, strict=True))
    half = len(words) // 2
    file_a = "".join(w + s for w, s in zip(words[:half], seps[:half], strict=True))
    file_b = "".join(w + s for w, s in zip(words[half:], seps[half:], strict=True))

    a = Anonymizer()
    a.add(MEMBER, members)
    a.add(HOST, hosts)
    out_a, out_b = a.text(file_a), a.text(file_b)
    out = out_a + out_b
    # nothing known is left (hosts compare without case)
    for v in members + v4:
        assert not present(v, out), v
    for h in hosts:
        assert not present(h, out, ignore_case=True), h
    for v in v6:
        assert all(ipaddress.ip_address(m) != ipaddress.ip_address(v) for m in _v6_in(out)), v
    # one value, one token; two values, two tokens (the mapping is a bijection)
    mapping = a.mapping()
    assert len(mapping) == len(values)
    assert sorted(mapping.values()) == sorted(
        [*members, *hosts, *v4, *(str(ipaddress.ip_address(v)) for v in v6)])
    # replacing each value by its token in the input gives the output: same input,
    # same token, in both files, and the filler and separators untouched
    tokens = {v: t for t, v in mapping.items()}
    expected = "".join(tokens.get(_key(w), w) + s for w, s in zip(words, seps, strict=True))
    assert out == expected
    # a second archive given the same files in the same order says the same
    b = Anonymizer()
    b.add(MEMBER, members)
    b.add(HOST, hosts)
    assert b.text(text) == out


def _key(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _v6_in(text: str) -> list[str]:
    found = []
    for candidate in re.findall(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]+", text):
        try:
            ipaddress.IPv6Address(candidate)
            found.append(candidate)
        except ValueError:
            pass
    return found
