"""Anonymize a support snapshot's text (pure): IP addresses, host names, member names
and the cluster name become tokens, the same input the same token everywhere in one
archive (one ``Anonymizer`` per archive), so that a support engineer can still follow
one address or one node from file to file.

- IPv4 and IPv6 addresses are found by their shape and checked with ``ipaddress``
  (a time such as ``21:32:58`` or a MAC address is not an IPv6 address and stays);
  loopback and unspecified addresses (``127.0.0.1``, ``::1``, ``0.0.0.0``, ``::``) name
  no one and stay readable.
- Names are the ones the caller knows (``add``): members (as written, case-sensitive),
  host names (case-insensitive, as DNS compares them; a fully qualified name also gives
  its first label), the cluster. They are replaced where they stand as a whole word
  (not inside a longer word made of letters, digits or ``_``); the longest name wins
  where several start at the same place (``n1.example.com`` before ``n1``).
- Tokens are ``IP-1``, ``IPV6-1``, ``HOST-1``, ``MEMBER-1``, ``CLUSTER-1`` numbered in
  the order they are first met. The text is rewritten in one pass, so a token is never
  rewritten again.

What it cannot know stays: a name it was not given, an address written in another
form (hexadecimal, a reverse-DNS name). The manifest says so.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable

MEMBER, HOST, CLUSTER = "MEMBER", "HOST", "CLUSTER"
IPV4_TOKEN, IPV6_TOKEN = "IP", "IPV6"
CATEGORIES = (IPV4_TOKEN, IPV6_TOKEN, HOST, MEMBER, CLUSTER)
MEMO_MAX = 100_000

_WORD = "A-Za-z0-9_"
_IPV4 = r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])"
_IPV6 = (r"(?<![" + _WORD + r":.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
         r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})(?:%[A-Za-z0-9_.-]+)?(?![" + _WORD + r":])")


def _kept(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Addresses that name no host: left as they are."""
    return address.is_loopback or address.is_unspecified


class Anonymizer:
    """One per archive: ``add`` the names it must hide, then ``text`` every file."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}          # name (hosts lower-cased) -> category
        self._tokens: dict[tuple[str, str], str] = {}   # (category, key) -> token
        self._counts: dict[str, int] = {c: 0 for c in CATEGORIES}
        self._pattern: re.Pattern[str] | None = None
        # what each matched text became: logs repeat the same few addresses (and times
        # shaped like addresses) a million times; parse each once
        self._done: dict[tuple[str | None, str], str] = {}

    def add(self, category: str, names: Iterable[str]) -> None:
        """Names to replace (``MEMBER``, ``HOST`` or ``CLUSTER``). A name already given
        keeps its first category (one name, one token)."""
        if category not in (MEMBER, HOST, CLUSTER):
            raise ValueError(f"unknown category {category!r} (one of {MEMBER}, {HOST}, {CLUSTER})")
        for name in names:
            if not name or not isinstance(name, str) or _is_address(name):
                continue        # an address is found by its shape, as an address
            candidates = [name]
            if category == HOST:
                candidates = [name.lower()]
                first = name.split(".", 1)[0].lower()
                # a fully qualified name's first label, when it is a name (not a number)
                if first != name.lower() and re.search("[a-z]", first):
                    candidates.append(first)
            for c in candidates:
                if c not in self._names:
                    self._names[c] = category
                    self._pattern = None
                    self._done.clear()

    def token(self, category: str, key: str) -> str:
        """The token of ``key`` (made on first use)."""
        found = self._tokens.get((category, key))
        if found is None:
            self._counts[category] += 1
            found = self._tokens[(category, key)] = f"{category}-{self._counts[category]}"
        return found

    def mapping(self) -> dict[str, str]:
        """Token -> what it replaced: for the administrator's own records, never for
        the archive (it would undo the anonymization)."""
        return {token: key for (_, key), token in sorted(self._tokens.items(), key=lambda kv: kv[1])}

    def counts(self) -> dict[str, int]:
        """How many distinct values of each category were replaced."""
        return {c: n for c, n in self._counts.items() if n}

    def _compiled(self) -> re.Pattern[str]:
        if self._pattern is None:
            parts = [f"(?P<ipv4>{_IPV4})", f"(?P<ipv6>{_IPV6})"]
            exact = sorted((n for n, c in self._names.items() if c != HOST), key=lambda n: (-len(n), n))
            hosts = sorted((n for n, c in self._names.items() if c == HOST), key=lambda n: (-len(n), n))
            # One alternation of every name, longest first, case-insensitive for hosts
            # only; a host that is as long as a member name comes after it (same place).
            words = [(len(n), 0, re.escape(n)) for n in exact] + \
                    [(len(n), 1, f"(?i:{re.escape(n)})") for n in hosts]
            words.sort(key=lambda w: (-w[0], w[1]))
            if words:
                alternatives = "|".join(w[2] for w in words)
                parts.insert(0, f"(?P<name>(?<![{_WORD}])(?:{alternatives})(?![{_WORD}]))")
            self._pattern = re.compile("|".join(parts))
        return self._pattern

    def text(self, text: str) -> str:
        """``text`` with every known name and every address replaced by its token."""
        return self._compiled().sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        key = (match.lastgroup, match.group(0))
        done = self._done.get(key)
        if done is None:
            if len(self._done) >= MEMO_MAX:
                self._done.clear()
            done = self._done[key] = self._replacement(match.lastgroup, match.group(0))
        return done

    def _replacement(self, group: str | None, found: str) -> str:
        if group == "name":
            category = self._names.get(found)
            if category is None or category == HOST:   # hosts match case-insensitively
                return self.token(HOST, found.lower())
            return self.token(category, found)
        if group == "ipv6":
            bare = found.split("%", 1)[0]
            colons = bare.count(":")
            if "::" not in bare and not (colons == 7 or (colons == 6 and "." in bare)):
                return found    # a time (21:32:58), a MAC address: not an IPv6 address
        try:
            address = ipaddress.ip_address(found.split("%", 1)[0])
        except ValueError:
            return found        # the shape of an address, not one (a time, a MAC address)
        if _kept(address):
            return found
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped       # ::ffff:10.0.0.1 is 10.0.0.1: one token
            if _kept(address):
                return found
            return f"::ffff:{self.token(IPV4_TOKEN, str(address))}"
        if isinstance(address, ipaddress.IPv4Address):
            return self.token(IPV4_TOKEN, str(address))
        # IPv4-mapped and compressed forms of one address get one token
        return self.token(IPV6_TOKEN, str(address) + ("%" + found.split("%", 1)[1] if "%" in found else ""))


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
