"""The majorities ring on real namespaces: after the nemesis starts, each of five voters
reaches exactly its two ring neighbours (both ways), the client what its variant says;
heal gives everyone back (needs root)."""
from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from chaos.nemesis import MajoritiesRing, Roles, ring_neighbours
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

VOTERS = ["n1", "n2", "w", "w2", "w3"]
ROLES = Roles("n1", "n2", "w", "c", ("w", "w2", "w3"))


def _reach(lab, src: str, dst: str) -> bool:
    res = lab.run(src, ["ping", "-c", "2", "-i", "0.2", "-W", "0.5", "-q", lab.addr(dst)],
                  check=False, timeout=10)
    return res.returncode == 0


def _reachability(lab, hosts: list[str]) -> dict[tuple[str, str], bool]:
    pairs = list(itertools.permutations(hosts, 2))
    with ThreadPoolExecutor(len(pairs)) as pool:
        return dict(zip(pairs, pool.map(lambda p: _reach(lab, *p), pairs)))


def _seed_with(view: str) -> int:
    return next(s for s in range(100)
                if MajoritiesRing().choose(random.Random(s), ROLES)["client"] == view)


@pytest.mark.parametrize("view", ["all", "primary-side"])
def test_ring_each_voter_reaches_exactly_its_two_neighbours(make_lab, view):
    lab = make_lab([*VOTERS, "c"])
    nemesis = MajoritiesRing()
    ctx = SimpleNamespace(lab=lab, roles=ROLES, rng=random.Random(_seed_with(view)))
    nemesis.start(ctx)
    ring = nemesis.targets["ring"]
    near = ring_neighbours(ring)
    reach = _reachability(lab, [*VOTERS, "c"])
    for a in VOTERS:
        assert {b for b in VOTERS if b != a and reach[a, b]} == set(near[a]), (a, ring)
    client_sees = set(VOTERS) if view == "all" else {"n1", *near["n1"]}
    assert {b for b in VOTERS if reach["c", b]} == client_sees
    assert {b for b in VOTERS if reach[b, "c"]} == client_sees
    nemesis.heal(ctx)
    assert all(_reachability(lab, [*VOTERS, "c"]).values())
    assert [e.action for e in nemesis.events] == ["ring", "heal"]
