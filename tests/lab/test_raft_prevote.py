"""A member cut off from the others does not depose a healthy leader when it comes
back (Raft thesis §9.6 pre-vote and §4.2.3): three real members in lab namespaces.
The decisions: tests/unit/test_raft_prevote.py."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_root

SECRET = "prevote-test-secret-0123456789abcdef0123"

# One RaftMember; its Raft view written to <data>/status.json every 20 ms.
MEMBER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from raft.member import RaftMember
from raft.settings import RaftSettings
addr, peers, data = sys.argv[2], sys.argv[3].split(","), sys.argv[4]
member = RaftMember(addr, peers, data, sys.argv[5], RaftSettings())
path = os.path.join(data, "status.json")
while True:
    st = member.raft_status()
    with open(path + ".tmp", "w") as f:
        json.dump({"role": st["role"], "term": st["term"], "leader": st["leader"],
                   "commit_index": st["commit_index"]}, f)
    os.replace(path + ".tmp", path)
    time.sleep(0.02)
"""


def _status(data: Path) -> dict | None:
    try:
        return json.loads((data / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@needs_root
@pytest.mark.lab
def test_a_member_cut_off_for_several_election_timeouts_rejoins_without_an_election(make_lab):
    hosts = ["a", "b", "c"]
    lab = make_lab(hosts)
    addrs = {h: f"{lab.addr(h)}:7400" for h in hosts}
    data = {h: lab.host_dir(h) / "raft" for h in hosts}
    for h in hosts:
        data[h].mkdir(parents=True, exist_ok=True)
        lab.spawn(h, [sys.executable, "-c", MEMBER, str(REPO), addrs[h], ",".join(addrs.values()),
                      str(data[h]), SECRET], name="raft")

    def settled() -> tuple[str, int] | None:
        views = [_status(data[h]) for h in hosts]
        if any(v is None for v in views):
            return None
        pairs = {(v["leader"], v["term"]) for v in views}
        if len(pairs) != 1 or None in next(iter(pairs)):
            return None
        return next(iter(pairs))

    deadline = time.monotonic() + 20
    stable_since, agreed = time.monotonic(), None
    while True:                          # one leader and term for a whole second
        now_agreed = settled()
        if now_agreed is None or now_agreed != agreed:
            stable_since, agreed = time.monotonic(), now_agreed
        elif time.monotonic() - stable_since > 1.0:
            break
        assert time.monotonic() < deadline, [_status(data[h]) for h in hosts]
        time.sleep(0.05)
    leader, term = agreed
    cut = next(h for h in hosts if addrs[h] != leader)
    others = [h for h in hosts if h != cut]

    lab.cut(cut)
    time.sleep(4.0)                      # > 6 election timeouts (0.3-0.6 s)
    cut_off = _status(data[cut])
    lab.heal()
    changes = set()
    until = time.monotonic() + 4.0
    while time.monotonic() < until:
        for h in others:
            v = _status(data[h])
            changes.add((v["leader"], v["term"]))
        time.sleep(0.02)
    assert changes == {(leader, term)}, f"the majority's leader or term changed: {changes}"
    assert cut_off["term"] == term, f"the cut-off member raised its term: {cut_off}"
    deadline = time.monotonic() + 5
    while (v := _status(data[cut]))["leader"] != leader or v["term"] != term:
        assert time.monotonic() < deadline, f"the healed member did not follow {leader}: {v}"
        time.sleep(0.05)
