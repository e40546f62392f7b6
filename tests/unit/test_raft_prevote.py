"""A member cut off from the others does not depose a healthy leader when it comes
back (Raft thesis §9.6 pre-vote and §4.2.3): the decisions, and members in this
process. Three real members in lab namespaces: tests/lab/test_raft_prevote.py."""
from __future__ import annotations

import time

from hypothesis import given, strategies as st
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode

from raft.member import (RaftCommandError, RaftMember, _SyncObj, grants_pre_vote,
                         ignores_vote_request, leader_is_current)
from raft.settings import RaftSettings

SECRET = "prevote-test-secret-0123456789abcdef0123"


# ---- the decision, pure ---------------------------------------------------------------
MIN = 0.3


def test_a_follower_believes_in_its_leader_for_the_minimum_election_timeout_only():
    assert leader_is_current(10.0, MIN, leading=False, last_leader_contact=9.8, peer_responses=[])
    assert not leader_is_current(10.0, MIN, leading=False, last_leader_contact=9.7,
                                 peer_responses=[])
    # No leader known (it timed out, or voted in a newer term): an election may go on.
    assert not leader_is_current(10.0, MIN, leading=False, last_leader_contact=None,
                                 peer_responses=[])


def test_a_leader_believes_in_itself_while_a_majority_answers():
    assert leader_is_current(10.0, MIN, leading=True, last_leader_contact=None,
                             peer_responses=[9.9, 2.0])          # itself + one of two
    assert not leader_is_current(10.0, MIN, leading=True, last_leader_contact=None,
                                 peer_responses=[9.5, 2.0])
    assert not leader_is_current(10.0, MIN, leading=True, last_leader_contact=None,
                                 peer_responses=[9.9, 2.0, 2.0, 2.0])   # 2 of 5


@given(now=st.floats(0, 1e6), contact_age=st.floats(0, 10), transfer=st.booleans())
def test_a_vote_request_is_dropped_exactly_while_the_leader_is_believed_alive(now, contact_age,
                                                                            transfer):
    contact = now - contact_age
    current = leader_is_current(now, MIN, leading=False, last_leader_contact=contact,
                                peer_responses=[])
    silent_for = now - contact
    assert ignores_vote_request(current, transfer) == (silent_for < MIN and not transfer)
    # Once the leader is silent for the minimum timeout, nothing here blocks an election.
    if silent_for >= MIN:
        assert grants_pre_vote(current, proposed_term=6, current_term=5,
                               candidate_log=(5, 40), own_log=(5, 40))


def test_a_pre_vote_needs_a_later_term_and_a_log_as_up_to_date():
    assert grants_pre_vote(False, 6, 5, (5, 40), (5, 40))
    assert not grants_pre_vote(True, 6, 5, (5, 40), (5, 40))     # a leader is alive
    assert not grants_pre_vote(False, 5, 5, (5, 40), (5, 40))    # not a later term
    assert not grants_pre_vote(False, 6, 5, (5, 39), (5, 40))    # shorter log
    assert not grants_pre_vote(False, 6, 5, (4, 90), (5, 40))    # older last term
    assert grants_pre_vote(False, 6, 5, (5, 41), (5, 40))


# ---- the handlers, on a real pysyncobj member fed messages -------------------------------
LEADER, CANDIDATE = TCPNode("127.0.0.1:9"), TCPNode("127.0.0.1:10")


def _voter():
    obj = _SyncObj("127.0.0.1:0", [LEADER.address, CANDIDATE.address],
                   SyncObjConf(autoTick=False, raftMinTimeout=MIN, raftMaxTimeout=0.6,
                               appendEntriesPeriod=0.05), [])
    sent: list[tuple[TCPNode, dict]] = []
    obj._SyncObj__transport.send = lambda node, message: sent.append((node, message))
    obj._SyncObj__onMessageReceived(LEADER, {"type": "append_entries", "term": 3,
                                             "commit_index": 1, "prevLogIdx": 1,
                                             "prevLogTerm": 0, "entries": []})
    return obj, sent


def _vote_request(term: int, **extra) -> dict:
    return {"type": "request_vote", "term": term, "last_log_index": 1, "last_log_term": 0,
            **extra}


def test_a_follower_that_hears_its_leader_ignores_a_vote_request_and_keeps_its_term():
    obj, sent = _voter()
    try:
        assert obj._getLeader() == LEADER and obj.raftCurrentTerm == 3
        obj._SyncObj__onMessageReceived(CANDIDATE, _vote_request(9))
        assert obj.raftCurrentTerm == 3 and obj._getLeader() == LEADER
        assert not [m for _, m in sent if m["type"] == "response_vote"]
        obj._SyncObj__onMessageReceived(CANDIDATE, {"type": "pre_vote_request", "term": 4,
                                                    "last_log_index": 1, "last_log_term": 0})
        assert sent[-1] == (CANDIDATE, {"type": "pre_vote_response", "term": 4, "granted": False,
                                        "voter_term": 3})
        # A transfer's election is the leader's wish: it is voted on.
        obj._SyncObj__onMessageReceived(CANDIDATE, _vote_request(4, transfer=True))
        assert obj.raftCurrentTerm == 4 and sent[-1] == (CANDIDATE, {"type": "response_vote",
                                                                     "term": 4})
    finally:
        obj.destroy()


def test_once_the_leader_is_silent_for_the_minimum_timeout_votes_are_granted():
    obj, sent = _voter()
    try:
        obj._last_leader_contact -= MIN            # the leader's last append is that old
        obj._SyncObj__onMessageReceived(CANDIDATE, {"type": "pre_vote_request", "term": 4,
                                                    "last_log_index": 1, "last_log_term": 0})
        assert sent[-1][1]["granted"] is True and obj.raftCurrentTerm == 3   # no term change
        obj._SyncObj__onMessageReceived(CANDIDATE, _vote_request(4))
        assert obj.raftCurrentTerm == 4 and sent[-1][1] == {"type": "response_vote", "term": 4}
    finally:
        obj.destroy()


def test_an_append_from_an_older_term_gets_the_newer_term_back():
    obj, sent = _voter()
    try:
        obj._SyncObj__onMessageReceived(LEADER, {"type": "append_entries", "term": 2,
                                                 "commit_index": 1, "prevLogIdx": 1,
                                                 "prevLogTerm": 0, "entries": []})
        assert sent[-1] == (LEADER, {"type": "term_notice", "term": 3})
        obj._SyncObj__onMessageReceived(CANDIDATE, {"type": "term_notice", "term": 7})
        assert obj.raftCurrentTerm == 7 and obj._getLeader() is None
    finally:
        obj.destroy()


def test_leadership_transfer_still_moves_the_leader(tmp_path):
    """RaftMember hands leadership over when its member is removed: the target's
    election must win although every voter hears the old leader."""
    from tests.conftest import free_ports

    addrs = [f"127.0.0.1:{port}" for port in free_ports(3)]
    members = [RaftMember(a, addrs, tmp_path / str(i), SECRET, RaftSettings())
               for i, a in enumerate(addrs)]
    try:
        def leader() -> RaftMember | None:
            views = {m.leader_address() for m in members}
            leaders = [m for m in members if m.is_leader()]
            return leaders[0] if len(views) == 1 and len(leaders) == 1 else None
        deadline = time.monotonic() + 20
        while (old := leader()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while True:       # the target must hold every entry: commit one, then hand over
            try:
                old.call("set_eligible", "x", None, 1.5, timeout=2.0)
                break
            except RaftCommandError:
                assert time.monotonic() < deadline
        old_term = old.raft_status()["term"]
        old.syncobj.transferLeadership()
        deadline = time.monotonic() + 5
        while (new := leader()) is None or new is old:
            assert time.monotonic() < deadline, "the transfer did not move the leader"
            time.sleep(0.02)
        assert new.raft_status()["term"] == old_term + 1
    finally:
        for m in members:
            m.destroy()
