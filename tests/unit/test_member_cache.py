"""The committed membership kept in the state directory (hacluster.node.member_cache):
which member list a daemon starts from, and what it refuses."""
from __future__ import annotations

from pathlib import Path

import pytest

from hacluster.node.member_cache import (CachedMembers, MemberCacheError, parse, read,
                                         starting_members, to_json, write)

STATIC = {"a": {"address": "10.0.0.1:7400", "role": "node"},
          "b": {"address": "10.0.0.2:7400", "role": "node"},
          "w": {"address": "10.0.0.3:7400", "role": "witness"}}
JOINED = {**STATIC, "c": {"address": "10.0.0.4:7400", "role": "node", "links": ["10.0.1.4"]}}
WHERE = Path("/var/lib/hacluster/members.json")


def test_the_configuration_is_the_bootstrap():
    assert starting_members(STATIC, "prod", "a", None, WHERE) == (STATIC, "config")


def test_the_committed_membership_wins_once_joined():
    cached = CachedMembers("prod", JOINED)
    assert starting_members(STATIC, "prod", "a", cached, WHERE) == (JOINED, "state")


def test_a_removed_member_is_refused_with_the_command():
    removed = CachedMembers("prod", {n: m for n, m in JOINED.items() if n != "c"}, removed=True)
    with pytest.raises(MemberCacheError) as e:
        starting_members(JOINED, "prod", "c", removed, WHERE)
    assert "was removed from cluster 'prod'" in str(e.value)
    assert str(e.value).endswith("mv /var/lib/hacluster /var/lib/hacluster.removed, then start it again")


def test_another_clusters_state_is_refused():
    with pytest.raises(MemberCacheError, match="belongs to cluster 'old'"):
        starting_members(STATIC, "prod", "a", CachedMembers("old", STATIC), WHERE)


def test_written_atomically_private_and_read_back(tmp_path):
    path = tmp_path / "members.json"
    assert read(path) is None
    write(path, CachedMembers("prod", JOINED))
    assert read(path) == CachedMembers("prod", JOINED)
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["members.json"]     # no temporary left
    assert parse(to_json(CachedMembers("prod", STATIC, True)), "x") == CachedMembers("prod", STATIC, True)


@pytest.mark.parametrize("text, match", [
    ("{", "invalid JSON"),
    ('{"cluster": "prod"}', "expected an object with 'cluster' and 'members'"),
    ('{"cluster": "prod", "members": {"a": {"address": "x", "role": "king"}}}', "members: "),
])
def test_a_damaged_file_is_refused_naming_it(text, match):
    with pytest.raises(MemberCacheError, match=match) as e:
        parse(text, str(WHERE))
    assert str(e.value).startswith(str(WHERE))
