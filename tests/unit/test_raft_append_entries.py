"""A follower's append_entries (Raft §5.3) on a real pysyncobj member (raft.member._SyncObj)
fed messages directly: entries already in the log are skipped, the log is truncated
only from the first conflict, never when everything matches, and the success answer
proves only prevLogIdx + len(entries). (pysyncobj deleted everything after prevLogIdx:
a stale or re-sent shorter batch removed committed entries.)"""
from __future__ import annotations

import pysyncobj.pickle as ps_pickle
from hypothesis import HealthCheck, given, settings, strategies as st
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode

from raft.member import _SyncObj

LEADER = TCPNode("127.0.0.1:9")


def follower() -> tuple[_SyncObj, list[dict]]:
    """A member whose log is [noop(1, term 0)], talking to nobody: its answers are kept."""
    obj = _SyncObj("127.0.0.1:0", [LEADER.address],
                   SyncObjConf(autoTick=False, dynamicMembershipChange=True), [])
    sent: list[dict] = []
    obj._SyncObj__transport.send = lambda node, message: sent.append(message)
    return obj, sent


def entry(idx: int, term: int, payload: bytes = b"") -> tuple[bytes, int, int]:
    return (b"\x01" + payload + b"#%d.%d" % (idx, term), idx, term)   # a no-op command


def append(obj: _SyncObj, term: int, prev: tuple[int, int], entries: list, commit: int) -> None:
    obj._SyncObj__onMessageReceived(LEADER, {
        "type": "append_entries", "term": term, "commit_index": commit,
        "prevLogIdx": prev[0], "prevLogTerm": prev[1], "entries": list(entries)})


def log_of(obj: _SyncObj) -> list[tuple[int, int]]:
    journal = obj._SyncObj__raftLog
    return [(e[1], e[2]) for e in journal[0:len(journal)]]


def test_a_stale_shorter_batch_keeps_the_later_entries_and_proves_only_its_own():
    obj, sent = follower()
    try:
        append(obj, 1, (1, 0), [entry(2, 1), entry(3, 1), entry(4, 1)], commit=4)
        assert log_of(obj) == [(1, 0), (2, 1), (3, 1), (4, 1)]
        assert obj.raftCommitIndex == 4
        append(obj, 1, (1, 0), [entry(2, 1)], commit=2)            # re-sent, shorter
        assert log_of(obj) == [(1, 0), (2, 1), (3, 1), (4, 1)]
        assert sent[-1] == {"type": "next_node_idx", "next_node_idx": 3, "reset": False,
                            "success": True}
        assert obj.raftCommitIndex == 4                           # never goes back
        append(obj, 1, (2, 1), [], commit=4)                       # a heartbeat behind the log
        assert log_of(obj) == [(1, 0), (2, 1), (3, 1), (4, 1)] and sent[-1]["next_node_idx"] == 3
        assert obj._getLeader() == LEADER and obj.raftCurrentTerm == 1
    finally:
        obj.destroy()


def test_a_conflict_truncates_from_the_first_differing_entry_only():
    obj, sent = follower()
    try:
        append(obj, 1, (1, 0), [entry(2, 1), entry(3, 1), entry(4, 1)], commit=2)
        append(obj, 2, (1, 0), [entry(2, 1), entry(3, 2)], commit=2)   # 2 matches, 3 differs
        assert log_of(obj) == [(1, 0), (2, 1), (3, 2)]
        assert sent[-1]["success"] and sent[-1]["next_node_idx"] == 4
        assert obj.raftCurrentTerm == 2
        append(obj, 2, (2, 1), [entry(3, 2), entry(4, 2)], commit=4)   # 3 matches, 4 is new
        assert log_of(obj) == [(1, 0), (2, 1), (3, 2), (4, 2)] and obj.raftCommitIndex == 4
    finally:
        obj.destroy()


def test_a_stale_batch_does_not_roll_back_a_membership_change_after_it():
    obj, _ = follower()
    newcomer = TCPNode("127.0.0.1:10")
    add = (b"\x02" + ps_pickle.dumps(["add", newcomer.id, newcomer]), 3, 1)
    try:
        append(obj, 1, (1, 0), [entry(2, 1), add], commit=3)
        assert newcomer in obj.otherNodes
        append(obj, 1, (1, 0), [entry(2, 1)], commit=3)
        assert newcomer in obj.otherNodes and log_of(obj)[-1] == (3, 1)
    finally:
        obj.destroy()


def test_a_mismatched_previous_entry_is_still_refused():
    obj, sent = follower()
    try:
        append(obj, 1, (1, 0), [entry(2, 1)], commit=1)
        append(obj, 2, (2, 2), [entry(3, 2)], commit=1)
        assert log_of(obj) == [(1, 0), (2, 1)] and sent[-1]["success"] is False
    finally:
        obj.destroy()


# ---- the property ----------------------------------------------------------------------
@st.composite
def logs_and_message(draw):
    """A leader log, a follower log sharing a prefix of it, and one append_entries
    carrying a slice of the leader log."""
    leader_terms = draw(st.lists(st.integers(1, 4), min_size=0, max_size=8).map(sorted))
    leader = [(i + 2, t) for i, t in enumerate(leader_terms)]
    shared = draw(st.integers(0, len(leader)))
    # Terms the leader's log does not have: by Raft's log matching property, an entry
    # equal in index and term to one of the leader's would mean equal logs up to it.
    suffix_terms = draw(st.lists(st.integers(5, 8), max_size=5).map(sorted))
    follower_log = leader[:shared] + [(shared + 2 + i, t) for i, t in enumerate(suffix_terms)]
    prev = draw(st.integers(1, len(leader) + 1))          # index of prevLogIdx
    count = draw(st.integers(0, len(leader) + 1 - prev))
    return leader, follower_log, shared, prev, count


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs_and_message())
def test_after_an_append_the_log_agrees_with_the_leader_and_keeps_what_matched(case):
    leader, follower_log, shared, prev, count = case
    obj, sent = follower()
    try:
        if follower_log:
            append(obj, 9, (1, 0), [entry(i, t) for i, t in follower_log], commit=1)
        before = log_of(obj)
        term_of = {1: 0, **dict(leader)}
        entries = [entry(i, term_of[i]) for i in range(prev + 1, prev + 1 + count)]
        append(obj, 9, (prev, term_of[prev]), entries, commit=prev + count)
        after = log_of(obj)
        full_leader = [(1, 0)] + leader
        if prev > shared + 1 and before[prev - 1:prev] != full_leader[prev - 1:prev]:
            assert after == before and sent[-1]["success"] is False     # refused
            return
        last_new = prev + count
        assert sent[-1]["success"] and sent[-1]["next_node_idx"] == last_new + 1
        assert after[:last_new] == full_leader[:last_new]
        if before[:last_new] == full_leader[:last_new]:
            assert after == before                        # everything matched: nothing deleted
        else:
            assert after == full_leader[:last_new]        # truncated at the conflict only
        assert obj.raftCommitIndex <= max(1, last_new)
    finally:
        obj.destroy()


# ---- three real members ----------------------------------------------------------------
def test_concurrent_commits_on_three_members_never_truncate_a_journal(tmp_path, caplog):
    """The leader sends entries ahead of the acknowledgements and moves a follower's
    next index back when an older one arrives, so followers get batches they already
    hold: pysyncobj then truncated (and logged CRITICAL) on every such batch."""
    import logging
    import threading
    import time

    from raft.member import RaftCommandError, RaftMember
    from raft.settings import RaftSettings

    from tests.conftest import free_ports

    addrs = [f"127.0.0.1:{port}" for port in free_ports(3)]
    caplog.set_level(logging.WARNING, logger="pysyncobj")
    members = [RaftMember(a, addrs, tmp_path / str(i), "append-test-secret-0123456789abcdef",
                          RaftSettings()) for i, a in enumerate(addrs)]
    try:
        def commit_all(member: RaftMember, prefix: str, n: int) -> None:
            done = 0
            deadline = time.monotonic() + 60
            while done < n and time.monotonic() < deadline:
                try:
                    member.call("set_eligible", f"{prefix}{done}", None, 1.5, timeout=2.0)
                    done += 1
                except RaftCommandError:
                    time.sleep(0.05)
        threads = [threading.Thread(target=commit_all, args=(members[i % 3], f"t{i}-", 40))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        expected = {f"t{i}-{k}" for i in range(6) for k in range(40)}
        deadline = time.monotonic() + 10
        while any(expected - set(m.snapshot()["leases"]) for m in members):
            assert time.monotonic() < deadline, "a member misses committed entries"
            time.sleep(0.1)
        truncations = [r.getMessage() for r in caplog.records if "truncating" in r.getMessage()]
        assert truncations == []
    finally:
        for m in members:
            m.destroy()
