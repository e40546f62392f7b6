"""Which cluster nodes run a module, and on which addresses a mirror replicates (pure).

A cluster can carry several modules on different sets of its nodes (farm+mirror,
active/active, N-1 with a shared spare). A mirror module's two nodes are the
servers of its *first* ``<heart>`` heartbeat (SafeKit's way of naming them), a
farm's are the nodes of its ``<farm><lan>``; a module that names none runs on every
data node (then a mirror needs exactly two). Servers are matched to members by name,
else by the host part of the member's address.

Replication runs between the two nodes' Raft address hosts, unless a heartbeat is
marked ``ident="flow"``: then its ``<server addr>`` list gives each node's
replication address, mapped to nodes *by position*:

- the flow heartbeat is the first one: its servers name the nodes, so each node
  replicates on the address it is named by (a member name stands for that
  member's address host);
- else, if the first heartbeat lists servers: the flow heartbeat's i-th server
  belongs to the node named by the first heartbeat's i-th server;
- else (the module runs on the cluster's two data nodes): the flow servers are the
  two nodes' addresses in the order of the node names.

Position rather than "which address is configured here" so that every node derives
the same table from the same file, without I/O. The mirror driver still checks that
its own replication address is on one of its interfaces, which catches a list given
in the wrong order.
"""
from __future__ import annotations

from .userconfig import ModuleConfig


class ModuleNodesError(ValueError):
    """The module's configuration names nodes this cluster cannot give it."""


def _host(member: dict[str, str]) -> str:
    return member["address"].rsplit(":", 1)[0]


def _owner(wanted: str, members: dict[str, dict[str, str]], what: str) -> str:
    by_host = {_host(m): n for n, m in members.items()}
    name = wanted if wanted in members else by_host.get(wanted)
    if name is None:
        raise ModuleNodesError(f"{what} {wanted!r} is not a member of this cluster "
                               f"(members: {', '.join(sorted(members))})")
    if members[name]["role"] != "node":
        raise ModuleNodesError(f"{what} {wanted!r} is {name}, a {members[name]['role']}: "
                               "only data nodes run modules")
    return name


def _resolve(wanted: list[str], members: dict[str, dict[str, str]], what: str) -> list[str]:
    nodes: list[str] = []
    for w in wanted:
        name = _owner(w, members, what)
        if name not in nodes:
            nodes.append(name)
    return sorted(nodes)


def _mirror_nodes(config: ModuleConfig, members: dict[str, dict[str, str]]) -> list[str]:
    servers = list(config.heart.node_servers)
    nodes = (_resolve(servers, members, "heartbeat server") if servers
             else sorted(n for n, m in members.items() if m["role"] == "node"))
    if len(nodes) != 2:
        where = "its first <heartbeat> servers name" if servers else "this cluster has"
        raise ModuleNodesError(f"a mirror module runs on exactly two data nodes; {where} "
                               f"{len(nodes)} ({', '.join(nodes) or 'none'})")
    return nodes


def _flow_table(config: ModuleConfig, members: dict[str, dict[str, str]],
                nodes: list[str]) -> dict[str, str] | None:
    flow = config.heart.flow
    if flow is None or not flow.servers:
        return None
    first = config.heart.nets[0]
    if flow is first:
        owners = [_owner(s, members, "heartbeat server") for s in flow.servers]
        hosts = [_host(members[s]) if s in members else s for s in flow.servers]
    elif first.servers:
        owners = [_owner(s, members, "heartbeat server") for s in first.servers]
        hosts = list(flow.servers)
    else:
        owners, hosts = sorted(nodes), list(flow.servers)
    if len(hosts) != len(owners):
        raise ModuleNodesError(f"the flow heartbeat {flow.name!r} lists {len(hosts)} servers for "
                               f"{len(owners)} nodes: give one replication address per node, "
                               "in the order of the first heartbeat's servers")
    table = dict(zip(owners, hosts, strict=True))
    missing = [n for n in nodes if n not in table]
    if missing:
        raise ModuleNodesError(f"the flow heartbeat {flow.name!r} gives no replication address "
                               f"to {', '.join(missing)}")
    return {n: table[n] for n in nodes}


def module_nodes(config: ModuleConfig, members: dict[str, dict[str, str]]) -> list[str]:
    """The data nodes that run this module, sorted; ModuleNodesError if unusable
    (for a mirror, that includes a flow heartbeat that gives them no addresses)."""
    if config.mode == "farm":
        if config.farm_nodes:
            return _resolve([n.name if n.name in members else n.addr for n in config.farm_nodes],
                            members, "farm node")
        return sorted(n for n, m in members.items() if m["role"] == "node")
    nodes = _mirror_nodes(config, members)
    _flow_table(config, members, nodes)
    return nodes


def replication_hosts(config: ModuleConfig, members: dict[str, dict[str, str]],
                      nodes: list[str]) -> dict[str, str]:
    """For the mirror's two ``nodes``: node -> the host its replication listens on / is
    reached at. The flow heartbeat's addresses if it gives them, else the nodes' Raft
    address hosts. ModuleNodesError if the flow heartbeat does not fit the nodes."""
    unknown = [n for n in nodes if n not in members]
    if unknown:
        raise ModuleNodesError(f"{', '.join(unknown)} is not a member of this cluster "
                               f"(members: {', '.join(sorted(members))})")
    table = _flow_table(config, members, list(nodes))
    return table if table is not None else {n: _host(members[n]) for n in nodes}
