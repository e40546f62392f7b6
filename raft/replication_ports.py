"""The replication ports of mirror modules, allocated by the cluster state at install.

A mirror module needs one TCP port per replicated directory, the same on its two
nodes: the secondary's receiver listens there, the primary's mount connects there.
They used to be a hash of the module's name into 200 slots of 4 ports: two modules
clashed in about one cluster in five at ten modules, and a fifth directory ran into
the next slot, with nothing to say so.

Now ``install_module`` hands a mirror module a block of consecutive ports, the
lowest one free in ``REPLICATION_PORTS``, and commits it with the module: every
member applies the same entry, so all agree, and no port is ever handed out twice.
Why in Raft rather than a deterministic function of the names: only the committed
list of modules knows which ports are taken, and a module keeps its ports for its
life (an upgrade with as many directories keeps them) whatever is installed later.
The ports of the members' own services (Raft port to Raft port + 3) are never
handed out. A module installed by a version before this one has no ports in the
state and keeps its hashed slot (``legacy_ports``), which the allocation avoids.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

FIRST_PORT = 7610
REPLICATION_PORTS = range(FIRST_PORT, FIRST_PORT + 800)     # 7610-8409
MAX_PER_MODULE = 64                                          # replicated directories
MEMBER_PORTS = 4      # a member's Raft port P, P+1 (unused), P+2 module fetch, P+3 peer control
_LEGACY_SLOTS, _LEGACY_SLOT_PORTS = 200, 4


def legacy_ports(module: str) -> range:
    """The hashed slot of a module installed before ports were allocated."""
    first = FIRST_PORT + (zlib.crc32(module.encode()) % _LEGACY_SLOTS) * _LEGACY_SLOT_PORTS
    return range(first, first + _LEGACY_SLOT_PORTS)


def member_ports(address: str) -> range:
    """The ports a member's own listeners use, from its Raft address host:port."""
    port = int(address.rsplit(":", 1)[1])
    return range(port, port + MEMBER_PORTS)


def allocate(count: int, taken: Iterable[int], ports: range = REPLICATION_PORTS) -> list[int] | None:
    """The lowest block of ``count`` consecutive ports of ``ports`` of which none is
    taken; None when there is no such block."""
    taken = set(taken)
    run = 0
    for port in ports:
        run = 0 if port in taken else run + 1
        if run == count:
            return list(range(port - count + 1, port + 1))
    return None


def ports_of(module: str, entry: Mapping[str, Any]) -> list[int]:
    """Module ``module``'s replication ports, one per replicated directory in order,
    from its entry in the cluster state (a module from before: its hashed slot)."""
    ports = entry.get("replication_ports")
    return list(ports) if ports else list(legacy_ports(module))
