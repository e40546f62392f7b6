"""Which cluster nodes run a module (pure).

A cluster can carry several modules on different sets of its nodes (farm+mirror,
active/active, N-1 with a shared spare). A mirror module's two nodes are the
servers of its ``<heart>`` heartbeat (SafeKit's way of naming them), a farm's are
the nodes of its ``<farm><lan>``; a module that names none runs on every data
node (then a mirror needs exactly two). Servers are matched to members by name,
else by the host part of the member's address.
"""
from __future__ import annotations

from .userconfig import ModuleConfig


class ModuleNodesError(ValueError):
    """The module's configuration names nodes this cluster cannot give it."""


def _resolve(wanted: list[str], members: dict[str, dict[str, str]], what: str) -> list[str]:
    by_host = {m["address"].rsplit(":", 1)[0]: n for n, m in members.items()}
    nodes = []
    for w in wanted:
        name = w if w in members else by_host.get(w)
        if name is None:
            raise ModuleNodesError(f"{what} {w!r} is not a member of this cluster "
                                   f"(members: {', '.join(sorted(members))})")
        if members[name]["role"] != "node":
            raise ModuleNodesError(f"{what} {w!r} is {name}, a {members[name]['role']}: "
                                   "only data nodes run modules")
        if name not in nodes:
            nodes.append(name)
    return sorted(nodes)


def module_nodes(config: ModuleConfig, members: dict[str, dict[str, str]]) -> list[str]:
    """The data nodes that run this module, sorted; ModuleNodesError if unusable."""
    data_nodes = sorted(n for n, m in members.items() if m["role"] == "node")
    if config.mode == "farm":
        if config.farm_nodes:
            return _resolve([n.name if n.name in members else n.addr for n in config.farm_nodes],
                            members, "farm node")
        return data_nodes
    servers = [s for net in config.heart.nets for s in net.servers]
    nodes = _resolve(servers, members, "heartbeat server") if servers else data_nodes
    if len(nodes) != 2:
        where = "its <heart> servers name" if servers else "this cluster has"
        raise ModuleNodesError(f"a mirror module runs on exactly two data nodes; {where} "
                               f"{len(nodes)} ({', '.join(nodes) or 'none'})")
    return nodes
