"""The lab shapes a chaos run can build: which hosts, which voters, which networks.

A nemesis names its shape (``Nemesis.lab_shape``); the runner builds one lab per shape
in use and runs that shape's episodes on it. Every shape has the same two data nodes
n1, n2, a first witness w (the one the state sampler shows as ``roles.witness``) and a
client c, so the checks and the timeline read the same everywhere.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .lab import Lab
from .lab_cluster import LabCluster
from .lab_mirror import MirrorLab
from .lab_module import start_cluster

log = logging.getLogger("chaos.lab_shapes")

NODES = ("n1", "n2")
WORKLOADS = ("kv", "pg")
CLIENT = "c"


@dataclass(frozen=True)
class LabShape:
    """How to build one kind of mirror lab. ``lab_kwargs`` go to ``Lab``,
    ``mirror_kwargs`` to ``MirrorLab``; more than one witness gets a cluster of its own
    (``LabCluster``) handed to the MirrorLab."""
    name: str
    witnesses: tuple[str, ...]
    lab_kwargs: dict[str, Any] = field(default_factory=dict)
    mirror_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def hosts(self) -> tuple[str, ...]:
        return (*NODES, *self.witnesses, CLIENT)

    @property
    def voters(self) -> tuple[str, ...]:
        return (*NODES, *self.witnesses)

    def lab(self) -> Lab:
        """The (not yet started) lab of this shape."""
        return Lab(list(self.hosts), **self.lab_kwargs)

    def mirror(self, lab: Lab, workload: str = "kv") -> MirrorLab:
        """The (not yet started) mirror module on a started lab of this shape, running
        ``workload``: kv (the demo key/value app) or pg (PostgreSQL)."""
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}; have {', '.join(WORKLOADS)}")
        cls = MirrorLab
        if workload == "pg":
            from .pg_module import PgMirrorLab
            cls = PgMirrorLab
        if len(self.witnesses) == 1:
            return cls(lab, NODES, self.witnesses[0], CLIENT, **self.mirror_kwargs)
        cluster = LabCluster(lab, list(NODES), list(self.witnesses))
        return cls(lab, NODES, self.witnesses[0], CLIENT, cluster=cluster, **self.mirror_kwargs)

    def start(self, mirror: MirrorLab, prim: str = NODES[0]) -> MirrorLab:
        """Start the cluster (when the shape owns it) and the module, ``prim`` first."""
        if len(self.witnesses) > 1:
            start_cluster(mirror.cluster, mirror.root)
        log.info("event=lab_shape_start shape=%s hosts=%s", self.name, ",".join(self.hosts))
        return mirror.start(prim=prim)


STANDARD = LabShape("standard", ("w",))
# Five voters (two data nodes, three witnesses): room for a majorities ring and for
# membership changes that keep a quorum while one voter is cut off.
FIVE_VOTERS = LabShape("five_voters", ("w", "w2", "w3"))
# A second bridge that carries only the replication channel (the flow nemeses).
TWO_NETWORKS = LabShape("two_networks", ("w",), lab_kwargs={"networks": ("lan", "repl")},
                        mirror_kwargs={"flow_network": "repl"})

SHAPES: dict[str, LabShape] = {s.name: s for s in (STANDARD, FIVE_VOTERS, TWO_NETWORKS)}


def shape(name: str) -> LabShape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown lab shape {name!r}; have {', '.join(SHAPES)}") from None


def plan_by_shape(plan: list[str], shape_of: Callable[[str], str]) -> list[tuple[str, list[tuple[int, str]]]]:
    """The episode plan grouped by lab shape: ``[(shape, [(index, nemesis), ...]), ...]``,
    shapes in the order they first appear, episodes in plan order within each shape.
    Indexes are the plan's, so every episode keeps the seeded rng it has without
    grouping (``episode_rng(seed, index, name)``)."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for index, name in enumerate(plan):
        groups.setdefault(shape_of(name), []).append((index, name))
    return list(groups.items())
