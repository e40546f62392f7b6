"""The committed membership as this member last applied it: ``members.json`` in its
state directory, written atomically (``replication.durable_file``) by the daemon once
it is caught up with the leader, after every membership change it applies.

Which member list a daemon starts from (``starting_members``): ``cluster.json``'s is the
bootstrap, what ``cluster init`` or ``cluster add-node`` wrote, and the daemon never
rewrites it; once this member has joined, Raft's committed membership is the truth, and
``members.json`` is that as last applied here, so it wins. It is needed at all because
pysyncobj must be handed its peers' addresses before it replays its journal.

A member removed from the cluster records that here when its daemon leaves. Started
again on the same state, it refuses: a member added back starts from an empty state
directory, like any new member (its old journal ends with its own removal).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raft.membership import MembershipError, check_members

from replication.durable_file import atomic_write

Members = dict[str, dict[str, Any]]    # name -> address, role (, links)


class MemberCacheError(ValueError):
    """members.json that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class CachedMembers:
    cluster: str
    members: Members
    removed: bool = False         # this member was removed from the cluster


def to_json(cached: CachedMembers) -> str:
    return json.dumps({"cluster": cached.cluster, "members": cached.members,
                       "removed": cached.removed}, indent=2, sort_keys=True) + "\n"


def parse(text: str, where: str) -> CachedMembers:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise MemberCacheError(f"{where}:{e.lineno}:{e.colno}: invalid JSON: {e.msg} (written "
                               "by the daemon; remove it and the next start writes it again "
                               "from Raft)") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cluster"), str) \
            or not isinstance(raw.get("members"), dict):
        raise MemberCacheError(f"{where}: expected an object with 'cluster' and 'members'")
    try:
        check_members(raw["members"])
    except MembershipError as e:
        raise MemberCacheError(f"{where}: members: {e}") from None
    # as cluster_config reads them: the heartbeat networks' addresses (links) too
    members: Members = {n: {"address": m["address"], "role": m["role"],
                            **({"links": list(m["links"])} if m.get("links") else {})}
                        for n, m in raw["members"].items()}
    return CachedMembers(raw["cluster"], members, bool(raw.get("removed", False)))


def read(path: Path) -> CachedMembers | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse(text, str(path))


def write(path: Path, cached: CachedMembers) -> None:
    atomic_write(path, to_json(cached), mode=0o600)


def starting_members(static: Members, cluster: str, self_name: str,
                     cached: CachedMembers | None, where: Any) -> tuple[Members, str]:
    """The members a daemon starts from and where they came from ("state" or
    "config"), by the rule in the module doc; ``where``: the members.json path, for
    the errors."""
    if cached is None:
        return static, "config"
    if cached.cluster != cluster:
        raise MemberCacheError(
            f"{where}: this state belongs to cluster {cached.cluster!r}, the configuration to "
            f"{cluster!r}: a member of a new cluster starts from an empty state directory "
            f"(move {Path(where).parent} away)")
    if cached.removed or self_name not in cached.members:
        raise MemberCacheError(
            f"{where}: member {self_name!r} was removed from cluster {cluster!r} and this is "
            f"its old state; a member added again starts from an empty state directory: "
            f"mv {Path(where).parent} {Path(where).parent}.removed, then start it again")
    return cached.members, "state"
