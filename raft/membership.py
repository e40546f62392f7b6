"""Membership rules, pure: which cluster shapes and changes are safe (DESIGN.md rule 4)."""
from __future__ import annotations

import ipaddress
import re

ROLES = ("node", "witness")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")


class MembershipError(ValueError):
    """A membership change that is refused; the message says why."""


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise MembershipError(
            f"invalid member name {name!r}: use lower-case letters, digits, '.', '_' or '-' (max 63)"
        )
    return name


def check_address(address: object) -> str:
    """``host:port`` with an IPv4 address or a host name and a port 1-65535."""
    if not isinstance(address, str) or address.count(":") != 1:
        raise MembershipError(f"invalid address {address!r}: expected host:port")
    host, port = address.split(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise MembershipError(f"invalid address {address!r}: bad host {host!r}") from None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise MembershipError(f"invalid address {address!r}: bad port {port!r}")
    return address


MAX_LINKS = 7


def check_links(links: object, name: str) -> list[str]:
    """A member's addresses on its other heartbeat networks (``links``, in network
    order after the Raft address's): IPv4 addresses, no port (the Raft port is used
    on every network)."""
    if links is None:
        return []
    if not isinstance(links, list) or len(links) > MAX_LINKS:
        raise MembershipError(f"member {name!r}: links must be a list of at most {MAX_LINKS} "
                              f"addresses (one per extra heartbeat network), got {links!r}")
    for host in links:
        # An address, not a name: the Raft thread connects to it and must not wait on DNS.
        try:
            if not isinstance(host, str):
                raise ValueError(host)
            ipaddress.IPv4Address(host)
        except ValueError:
            raise MembershipError(f"member {name!r}: bad link address {host!r} "
                                  "(an IPv4 address, without port)") from None
    return list(links)


def _hosts(name: str, m: dict) -> list[str]:
    return [str(m["address"]).rsplit(":", 1)[0], *check_links(m.get("links"), name)]


def shape_error(members: dict[str, dict]) -> str | None:
    """Why a set of voters is unsafe, or None. Every member (node or witness) votes."""
    voters = len(members)
    witnesses = sum(1 for m in members.values() if m["role"] == "witness")
    if voters == 0:
        return "a cluster needs at least one member"
    if voters == 2 and witnesses == 0:
        return ("two voters without a witness: losing either one would stop the cluster; "
                "add a witness first (hacluster cluster add-witness)")
    return None


def check_members(members: dict[str, dict]) -> None:
    """A whole member table, as `cluster init` writes it."""
    seen: dict[str, str] = {}
    for name, m in members.items():
        check_name(name)
        if not isinstance(m, dict):
            raise MembershipError(f"member {name!r}: expected an object with address and role, got {m!r}")
        check_address(m.get("address"))
        if m.get("role") not in ROLES:
            raise MembershipError(f"member {name!r}: invalid role {m.get('role')!r}")
        if m["address"] in seen:
            raise MembershipError(f"duplicate address {m['address']}: members {seen[m['address']]!r} and {name!r}")
        seen[m["address"]] = name
        check_links(m.get("links"), name)
    _check_link_hosts(members)
    err = shape_error(members)
    if err:
        raise MembershipError(err)


def _check_link_hosts(members: dict[str, dict]) -> None:
    """A link address may belong to one member only (it identifies the member's
    connections), and never be another member's Raft host."""
    owner: dict[str, str] = {}
    for name, m in members.items():
        for host in _hosts(name, m)[1:]:
            if host in owner and owner[host] != name:
                raise MembershipError(f"link address {host} given to members {owner[host]!r} "
                                      f"and {name!r}")
            owner[host] = name
    for name, m in members.items():
        host = _hosts(name, m)[0]
        if owner.get(host, name) != name:
            raise MembershipError(f"link address {host} of member {owner[host]!r} is the Raft "
                                  f"host of member {name!r}")


def check_add(members: dict[str, dict], name: str, address: str, role: str,
              links: list[str] | None = None) -> None:
    check_name(name)
    check_address(address)
    check_links(links, name)
    if role not in ROLES:
        raise MembershipError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
    if name in members:
        raise MembershipError(f"member {name!r} already exists (address {members[name]['address']})")
    for other, m in members.items():
        if m["address"] == address:
            raise MembershipError(f"duplicate address {address}: already used by member {other!r}")
    after = dict(members)
    after[name] = {"address": address, "role": role, **({"links": list(links)} if links else {})}
    _check_link_hosts(after)
    err = shape_error(after)
    if err:
        raise MembershipError(f"refusing to add {role} {name!r}: {err}")


def check_remove(members: dict[str, dict], live: set[str], name: str, role: str) -> None:
    """``live``: members currently holding their liveness lease."""
    if not isinstance(name, str) or name not in members:
        known = ", ".join(sorted(members)) or "none"
        raise MembershipError(f"unknown member {name!r} (members: {known})")
    actual = members[name]["role"]
    if actual != role:
        raise MembershipError(f"{name!r} is a {actual}, not a {role}: use remove-{actual}")
    after = {n: m for n, m in members.items() if n != name}
    err = shape_error(after)
    if err:
        raise MembershipError(f"refusing to remove {role} {name!r}: {err}")
    alive = sorted(n for n in after if n in live)
    if len(alive) <= len(after) / 2:
        raise MembershipError(
            f"refusing to remove {role} {name!r}: the remaining {len(after)} voters would have "
            f"only {len(alive)} alive ({', '.join(alive) or 'none'}), no quorum"
        )
