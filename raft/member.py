"""A Raft member on pysyncobj holding the replicated ``ClusterState``.

Threads: pysyncobj runs its own tick thread; replicated methods are applied
there, and so are the lease keeper and the journal sync (on-tick callbacks),
so the leader-side lease clock needs no lock. Callers on other threads submit
commands (``submit`` → concurrent Future) and read snapshots under a lock.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import _socket
import socket

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import TCPNode
from pysyncobj.syncobj import _RAFT_STATE

# pysyncobj 0.3.17 (win_inet_pton) replaces socket.inet_ntop with a Windows-only
# version on every OS; pyroute2 and others then fail to decode addresses.
socket.inet_ntop = _socket.inet_ntop

from . import durable_storage
from .cluster_state import FEATURE_LEVEL, ClusterState, Result
from .commands import OPS
from .lease import LeaderLeaseClock, check_expiry
from .listen import ListenError, listen_error
from .plain_data import check_plain
from .link_transport import LinkedTransport, LinkPlan
from .links import heartbeat_key, member_paths
from .settings import RaftSettings

log = logging.getLogger("hacluster.raft")

# pysyncobj's _RAFT_STATE
_LEADER = 2
_STATE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}

# Commands that change a lease and restart its clock on every member.
_RENEWING = ("acquire", "renew")

AppliedCallback = Callable[[str, tuple, Result], None]
# What the Raft listener is for, in a failed bind's message (raft.listen).
RAFT_PURPOSE = "Raft, where the other members connect"


class RaftCommandError(RuntimeError):
    """A command was not confirmed. ``outcome_unknown`` False: it was not committed
    and never will be (nothing sent, refused, overwritten); True: it reached a
    leader that may still commit it (leader changed, no answer in time), so only
    the committed state tells."""

    def __init__(self, message: str, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


# pysyncobj failures after which the command may still be committed.
_OUTCOME_UNKNOWN = (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME)
_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "the command queue is full",
    FAIL_REASON.MISSING_LEADER: "no Raft leader known (nothing sent)",
    FAIL_REASON.DISCARDED: "discarded (a new leader wrote another entry in its place)",
    FAIL_REASON.NOT_LEADER: "the member it was sent to is no longer the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before it answered",
    FAIL_REASON.REQUEST_DENIED: "refused by the leader",
    FAIL_REASON.UNKNOWN_OUTCOME: "the leader's answer came too late to match",
}


def command_failure(op: str, err: int) -> RaftCommandError:
    """The error for a pysyncobj failure code, worded by what it says about the outcome."""
    reason = _FAIL_TEXT.get(err, _FAIL_NAMES.get(err, str(err)))
    if err in _OUTCOME_UNKNOWN:
        return RaftCommandError(f"{op}: outcome unknown: {reason}; it may still commit "
                                "(check the cluster state)", outcome_unknown=True)
    return RaftCommandError(f"{op} not committed: {reason}")


def _settle(fut: concurrent.futures.Future, result: Any = None,
            error: BaseException | None = None) -> None:
    """Answer a future unless it is answered or cancelled (the caller gave up)."""
    try:
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass


class _Submission:
    """A command on its way. ``waiting_for_leader``: held here, not in pysyncobj's
    queue, so cancelling ``fut`` guarantees it is never sent."""

    __slots__ = ("op", "args", "fut", "give_up_at", "waiting_for_leader")

    def __init__(self, op: str, args: list, give_up_at: float) -> None:
        self.op = op
        self.args = args
        self.fut: concurrent.futures.Future = concurrent.futures.Future()
        self.give_up_at = give_up_at
        self.waiting_for_leader = False


class _StateConsumer(SyncObjConsumer):
    """The replicated state machine: ``command(op, args)`` entries applied on every
    member in log order."""

    def __init__(self, on_applied: Callable[[str, tuple, Result], None]) -> None:
        super().__init__()
        self.state = ClusterState()
        self.lock = threading.Lock()
        self._on_applied = on_applied

    def _apply(self, op: str, *args: Any) -> Result:
        with self.lock:
            try:
                if op not in OPS:
                    raise ValueError("not a cluster state operation of this version")
                result = getattr(self.state, op)(*args)
            except Exception as e:  # noqa: BLE001
                # pysyncobj retries an entry whose apply raised, forever, on every
                # member: one malformed entry would freeze the cluster. The same
                # input fails the same way everywhere, so a refusal stays deterministic.
                log.error("event=apply_failed op=%s error=%r", op, str(e))
                result = {"ok": False, "error": f"{op} failed: {e}"}
        self._on_applied(op, args, result)
        return result

    @replicated
    def command(self, op, args):
        # One replicated method, the operation named inside the entry: pysyncobj
        # numbers replicated methods by their sorted names, so with one method per
        # operation a new operation would renumber the others, and a journal written
        # by the previous version would replay as different operations.
        return self._apply(op, *args)

    def _serialize(self):
        with self.lock:
            return self.state.to_dict()

    def _deserialize(self, data):
        with self.lock:
            self.state = ClusterState.from_dict(data)


def tick_wait(now: float, cap_s: float, deadlines: Iterable[float | None]) -> float:
    """How long the tick thread may block in poll: until the earliest timer that is
    due (``None`` = no such timer), at most ``cap_s``, never negative."""
    wait = cap_s
    for deadline in deadlines:
        if deadline is not None:
            wait = min(wait, deadline - now)
    return max(0.0, wait)


# ---- elections: pure decisions (time passed in) -------------------------------------
def leader_is_current(now: float, min_election_timeout_s: float, *, leading: bool,
                      last_leader_contact: float | None, peer_responses: list[float]) -> bool:
    """Raft thesis §4.2.3: does this member have reason to think a leader is alive?
    A follower: it heard the leader's append_entries within the minimum election
    timeout (``last_leader_contact`` None: no leader known). The leader: a majority,
    itself included, answered it within that time (``peer_responses``: the last
    answer of each other voter)."""
    if leading:
        recent = 1 + sum(1 for t in peer_responses if now - t < min_election_timeout_s)
        return recent > (len(peer_responses) + 1) / 2
    return last_leader_contact is not None and now - last_leader_contact < min_election_timeout_s


def log_at_least_as_up_to_date(candidate: tuple[int, int], own: tuple[int, int]) -> bool:
    """Raft §5.4.1 on (last log term, last log index)."""
    return candidate >= own


def grants_pre_vote(leader_current: bool, proposed_term: int, current_term: int,
                    candidate_log: tuple[int, int], own_log: tuple[int, int]) -> bool:
    """Thesis §9.6: would this member vote for the candidate at ``proposed_term``?
    Never while it believes in a live leader (so a member coming back from a
    partition cannot start an election that deposes it)."""
    return (not leader_current and proposed_term > current_term
            and log_at_least_as_up_to_date(candidate_log, own_log))


def ignores_vote_request(leader_current: bool, transfer: bool) -> bool:
    """§4.2.3: a RequestVote while a leader is believed alive is dropped (no vote, no
    term change), unless a leadership transfer asked for this election."""
    return leader_current and not transfer


class _RaftTransport(LinkedTransport):
    """Lets the member add fields to what pysyncobj sends (the transfer mark)."""

    def send(self, node, message):
        return super().send(node, self._syncObj.outgoing(message))


class _PreVoteRound:
    __slots__ = ("term", "grants")

    def __init__(self, term: int) -> None:
        self.term = term
        self.grants: set = set()


class _SyncObj(SyncObj):
    """pysyncobj (0.3.17 as vendored here) with the durable journal, the authenticated
    transport, Raft's append rule on followers (see _trim_matching_entries),
    pre-vote with leader stickiness against disruptive members (see _before_tick),
    and a tick thread that sleeps until its next timer.

    pysyncobj's tick thread polls its sockets with a fixed timeout (autoTickPeriod)
    and looks at its timers after every wake-up: 50 idle wake-ups a second at 20 ms.
    Sockets and submitted commands wake the poll at once anyway, so the only reason
    to wake is a timer: the leader's next heartbeat, a follower's election deadline,
    or ``extra_wait`` (seconds to the leader's lease check; pysyncobj's timers use
    CLOCK_MONOTONIC_RAW, ours time.monotonic, so only durations cross). The poll now waits
    until the earliest of those, and ``autoTickPeriod`` only bounds the wait for the
    timers without a known deadline (reconnects, the one-second meta flush).

    Private pysyncobj state is reached by its mangled names (``_SyncObj__x``)."""

    # pysyncobj's private state that this class also assigns (pysyncobj has no types).
    _SyncObj__raftElectionDeadline: float
    _SyncObj__raftLeader: Any
    _SyncObj__raftCommitIndex: int

    def __init__(self, self_address, peers, conf, consumers,
                 extra_wait: Callable[[], float | None] = lambda: None,
                 link_plan: LinkPlan | None = None):
        self._extra_wait = extra_wait
        self.link_plan = link_plan        # read by the transport's constructor
        self._last_leader_contact = None      # monotonic time of the last accepted append
        self._pre_vote: _PreVoteRound | None = None
        self._pre_vote_won_at_term: int | None = None
        self._transfer_election = False
        # What each peer last said of the command set it applies ("fl" in its messages;
        # a version before feature levels sends none: 0), and when (monotonic).
        self.peer_levels: dict[str, tuple[int, float]] = {}
        super().__init__(self_address, peers, conf, consumers=consumers,
                         transportClass=_RaftTransport)
        # The tick thread calls self._poller.poll(autoTickPeriod) at the end of each
        # tick, after the tick's own work has moved the timers: the moment to decide.
        self._poll_sockets = self._poller.poll
        self._poller.poll = self._poll_until_next_timer
        # pysyncobj's dump (log compaction) pickles every attribute of the SyncObj not
        # present at the end of its __init__: this one holds the poller (select.poll,
        # unpicklable), and every dump failed ("Failed to store full dump").
        self._SyncObj__properies.add("_poll_sockets")

    def _SyncObj__onMessageReceived(self, node, message):  # noqa: N802 (pysyncobj's name)
        level = message.get("fl", 0)
        self.peer_levels[str(getattr(node, "address", node))] = (
            level if isinstance(level, int) and not isinstance(level, bool) else 0,
            monotonic_time())
        kind = message.get("type")
        if kind in self._OWN_MESSAGES:
            getattr(self, self._OWN_MESSAGES[kind])(node, message)
            return
        if kind == "request_vote" and ignores_vote_request(self._leader_current(monotonic_time()),
                                                           bool(message.get("transfer"))):
            return
        if kind == "append_entries":
            if message["term"] < self._SyncObj__raftCurrentTerm:
                self._notify_stale_leader(node)
                return  # pysyncobj ignores it too
            self._last_leader_contact = monotonic_time()
            self._pre_vote = None
            self._pre_vote_won_at_term = None
            message = self._trim_matching_entries(node, message)
            if message is None:
                return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    _OWN_MESSAGES = {"pre_vote_request": "_on_pre_vote_request",
                     "pre_vote_response": "_on_pre_vote_response",
                     "term_notice": "_on_term_notice"}

    def outgoing(self, message: dict) -> dict:
        # Every message says which command set this member applies (raft.commands
        # FEATURE_LEVEL); older versions read the keys they know and ignore this one.
        message = dict(message, fl=FEATURE_LEVEL)
        if self._transfer_election and message.get("type") == "request_vote":
            message["transfer"] = True
        return message

    # ---- elections (thesis §9.6 pre-vote, §4.2.3) --------------------------------------
    def _onTick(self, timeToWait=0.0):  # noqa: N802, N803 (pysyncobj's names)
        self._before_tick()
        try:
            SyncObj._onTick(self, timeToWait)
        finally:
            self._transfer_election = False

    def _before_tick(self) -> None:
        """pysyncobj starts an election (term + 1) when its timer runs out; a member
        cut off from the others kept doing so, and its higher term deposed the leader
        when it came back. Here the timer first starts a pre-vote round; only when a
        majority says it would vote (none of them hears a leader) does the timer run
        out for pysyncobj. An election asked for by a leadership transfer goes at
        once, marked so that voters who still hear the old leader take part."""
        if self._SyncObj__raftState == _RAFT_STATE.LEADER or self._SyncObj__selfNode is None:
            self._pre_vote = None
            return
        now = monotonic_time()
        if self._SyncObj__raftElectionDeadline >= now or not self._SyncObj__connectedToAnyone():
            return
        if self._SyncObj__transferInProgress:
            self._transfer_election = True
            return
        if not self._SyncObj__otherNodes:
            return
        if self._pre_vote_won_at_term == self._SyncObj__raftCurrentTerm:
            self._pre_vote_won_at_term = None
            return
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()
        if self._SyncObj__raftLeader is not None:
            # As pysyncobj's election start does: no leader heard for a timeout is no
            # leader (commands are not forwarded to it; those waiting on it fail).
            self._SyncObj__raftLeader = None
            self._SyncObj__onLeaderChanged()
        self._pre_vote = _PreVoteRound(self._SyncObj__raftCurrentTerm + 1)
        request = {"type": "pre_vote_request", "term": self._pre_vote.term,
                   "last_log_index": self._SyncObj__getCurrentLogIndex(),
                   "last_log_term": self._SyncObj__getCurrentLogTerm()}
        for node in self._SyncObj__otherNodes:
            self._SyncObj__transport.send(node, request)

    def _leader_current(self, now: float) -> bool:
        leading = self._SyncObj__raftState == _RAFT_STATE.LEADER
        responses = self._SyncObj__lastResponseTime
        return leader_is_current(
            now, self._SyncObj__conf.raftMinTimeout, leading=leading,
            last_leader_contact=(self._last_leader_contact
                                 if self._SyncObj__raftLeader is not None else None),
            peer_responses=[responses.get(n, 0.0) for n in self._SyncObj__otherNodes])

    def _on_pre_vote_request(self, node, message: dict) -> None:
        if self._SyncObj__selfNode is None:
            return
        current = self._SyncObj__raftCurrentTerm
        granted = grants_pre_vote(
            self._leader_current(monotonic_time()), message["term"], current,
            (message["last_log_term"], message["last_log_index"]),
            (self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex()))
        self._SyncObj__transport.send(node, {"type": "pre_vote_response", "term": message["term"],
                                             "granted": granted, "voter_term": current})

    def _on_pre_vote_response(self, node, message: dict) -> None:
        if message.get("voter_term", 0) > self._SyncObj__raftCurrentTerm:
            # A member is at a later term (we were away): catch up, as Raft does on any
            # message with a higher term, so our next round can be granted.
            self._adopt_term(message["voter_term"])
            return
        r = self._pre_vote
        if (r is None or not message.get("granted") or message["term"] != r.term
                or self._SyncObj__raftCurrentTerm + 1 != r.term
                or self._SyncObj__raftState == _RAFT_STATE.LEADER):
            return
        r.grants.add(node)
        others = self._SyncObj__otherNodes
        if 1 + len(r.grants & others) > (len(others) + 1) / 2:
            self._pre_vote = None
            self._pre_vote_won_at_term = self._SyncObj__raftCurrentTerm
            self._SyncObj__raftElectionDeadline = 0  # pysyncobj's election, next tick

    def _notify_stale_leader(self, node) -> None:
        """An append_entries from a leader at an older term. Pre-vote keeps our term
        from running ahead, but a split vote can leave us one term ahead of the leader
        that won; that leader ignores our votes (§4.2.3) and we ignore its appends:
        tell it our term, so it steps down and a new election includes us."""
        self._SyncObj__transport.send(node, {"type": "term_notice",
                                             "term": self._SyncObj__raftCurrentTerm})

    def _on_term_notice(self, node, message: dict) -> None:
        if message["term"] > self._SyncObj__raftCurrentTerm:
            log.info("event=raft_term_notice from=%s term=%d own_term=%d", node.address,
                     message["term"], self._SyncObj__raftCurrentTerm)
            self._adopt_term(message["term"])

    def _adopt_term(self, term: int) -> None:
        # What pysyncobj does on a request_vote with a higher term, minus the vote.
        self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
        self._SyncObj__raftLeader = None
        self._pre_vote = None
        self._pre_vote_won_at_term = None

    # ---- append_entries on a follower (Raft §5.3) -----------------------------------
    def _trim_matching_entries(self, node, message: dict) -> dict | None:
        """pysyncobj's follower deletes every entry after prevLogIdx before appending,
        even entries equal to the new ones: a stale or re-sent shorter batch removed
        committed entries from this journal. Raft: skip new entries already here with
        the same index and term, truncate only from the first conflict, never when all
        match. Returns the message for pysyncobj with the matching prefix dropped, or
        None when it was answered here (everything matched and the local log is longer,
        where pysyncobj would truncate)."""
        if (message["term"] < self._SyncObj__raftCurrentTerm or "prevLogIdx" not in message
                or message.get("transmission") is not None):
            return message  # ignored, an install or a split entry: pysyncobj as it is
        prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        prev = self._SyncObj__getEntries(prev_idx, 1)
        if not prev or prev[0][2] != prev_term:
            return message  # pysyncobj refuses it
        entries = message.get("entries") or []
        local = self._SyncObj__getEntries(prev_idx + 1, len(entries)) if entries else []
        matched = 0
        for new, old in zip(entries, local, strict=False):   # local may be shorter
            if new[1] != old[1] or new[2] != old[2]:
                break
            matched += 1
        last_new = entries[matched - 1][1] if matched else prev_idx
        if matched < len(entries) or self._SyncObj__getCurrentLogIndex() == last_new:
            # A conflict or new entries after the matching ones (pysyncobj truncates from
            # the conflict, which is right), or nothing after them to delete.
            if matched == 0:
                return message
            trimmed = dict(message, entries=entries[matched:], prevLogIdx=last_new,
                           prevLogTerm=entries[matched - 1][2])
            return trimmed
        self._acknowledge_matching_append(node, message, last_new)
        return None

    def _acknowledge_matching_append(self, node, message: dict, last_new: int) -> None:
        """What pysyncobj 0.3.17's append_entries branch does for an accepted message
        whose entries are all here already, minus the deletion: follow the sender,
        reset the election timer, answer success for prevLogIdx + len(entries) only
        (later local entries are not proven to match), and advance the commit index
        no further than that."""
        term = message["term"]
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__transferInProgress = False
        if not self._SyncObj__transferInProgress:
            self._SyncObj__raftElectionDeadline = monotonic_time() + self._SyncObj__generateRaftTimeout()
        if self._SyncObj__raftLeader != node:
            self._SyncObj__onLeaderChanged()
        self._SyncObj__raftLeader = node
        if term > self._SyncObj__raftCurrentTerm:
            self._SyncObj__setCurrentTerm(term, None)
        self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
        leader_commit = message["commit_index"]
        self._SyncObj__leaderCommitIndex = leader_commit
        self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=last_new + 1, success=True)
        commit = max(self._SyncObj__raftCommitIndex, min(leader_commit, last_new))
        self._SyncObj__raftCommitIndex = commit
        self._SyncObj__raftLog.setRaftCommitIndex(commit)

    def _poll_until_next_timer(self, timeout: float) -> None:
        now = monotonic_time()
        self._poll_sockets(tick_wait(now, timeout, self._deadlines(now)))

    def _deadlines(self, now: float) -> list[float | None]:
        if len(self._SyncObj__commandsQueue._FastQueue__queue):
            return [now]  # commands left over by a time-boxed tick: carry on at once
        links = self._SyncObj__transport.next_timer()   # heartbeats on several networks
        if self._SyncObj__raftState == _LEADER:
            extra = self._extra_wait()
            return [self._SyncObj__newAppendEntriesTime, None if extra is None else now + extra,
                    links]
        if self._SyncObj__connectedToAnyone():
            return [self._SyncObj__raftElectionDeadline, links]
        return [links]  # no election without a peer: the deadline may pass and stay passed

    def sync_journal(self) -> None:
        journal = self._SyncObj__raftLog
        if getattr(journal, "dirty", False):
            journal.sync()


JOURNAL_FORMAT = "hacluster-raft 2 command(op, args)\n"


def check_journal_format(data: Path) -> None:
    """Refuse a Raft data directory written with another entry format: pysyncobj
    would fail on every entry of it, forever, on its tick thread. A new directory
    gets the current format."""
    marker = data / "format"
    has_journal = any(data.glob("raft.journal*")) or any(data.glob("raft.dump*"))
    if marker.exists():
        found = marker.read_text()
        if found != JOURNAL_FORMAT:
            raise ValueError(f"{data}: Raft data in format {found.strip()!r}, this hacluster "
                             f"writes {JOURNAL_FORMAT.strip()!r}; move the directory away to "
                             "rejoin with an empty log (the cluster state comes from the peers)")
        return
    if has_journal:
        raise ValueError(f"{data}: Raft data of an older hacluster (one replicated method per "
                         "operation); move the directory away to rejoin with an empty log "
                         "(the cluster state comes from the peers)")
    tmp = data / "format.tmp"
    tmp.write_text(JOURNAL_FORMAT)
    durable_storage.durable_replace(str(tmp), str(marker))


def syncobj_conf_kwargs(secret: str, data: Path, settings: RaftSettings,
                        on_state_changed: Callable[[int, int], None], *,
                        bind_address: str | None = None) -> dict[str, Any]:
    """Everything RaftMember sets in pysyncobj's SyncObjConf (which ignores names it
    does not know, so tests/unit/test_pysyncobj_contract.py checks each one is read)."""
    return dict(
        password=secret,
        journalFile=str(data / "raft.journal"),
        fullDumpFile=str(data / "raft.dump"),
        dynamicMembershipChange=True,
        useFork=False,  # forking a threaded asyncio process is unsafe
        onStateChanged=on_state_changed,
        # pysyncobj's own wait for a leader has no bound and cannot be cancelled: a
        # command could commit long after its caller was told "not committed".
        # submit() waits instead, bounded, and drops what the caller gave up on.
        commandsWaitLeader=False,
        # The member's own address, not pysyncobj's wildcard (0.0.0.0 / ::).
        **({"bindAddress": bind_address} if bind_address else {}),
        **settings.syncobj_kwargs(),
    )


class RaftMember:
    def __init__(self, self_address: str, peers: list[str], data_dir: str | os.PathLike,
                 secret: str, settings: RaftSettings,
                 on_applied: AppliedCallback | None = None,
                 on_role_change: Callable[[str], None] | None = None,
                 members: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``members``: the member table (name -> address, role, links); with links
        (several heartbeat networks) Raft reaches each peer over any of them
        (raft.link_transport)."""
        if not secret:
            raise ValueError("a cluster secret is mandatory")
        durable_storage.install()
        self.address = self_address
        self.settings = settings
        self._on_applied_cb = on_applied
        self._on_role_change_cb = on_role_change
        self.lease_clock = LeaderLeaseClock()
        self._pending_expiry: set[tuple[str, int, int]] = set()
        self._next_lease_check = 0.0
        self.role = "follower"
        # Commands that met no leader, re-sent by the tick thread once one is known.
        self._awaiting_leader: list[_Submission] = []
        self._awaiting_lock = threading.Lock()
        data = Path(data_dir)
        durable_storage.private_dir(data)
        check_journal_format(data)
        self.consumer = _StateConsumer(self._on_applied)
        # Monotonic time of the tick thread's last tick: what tells a watchdog that
        # Raft still turns (the thread ticks at least every tick_period_s).
        self.last_tick = time.monotonic()
        conf = SyncObjConf(**syncobj_conf_kwargs(secret, data, settings, self._on_state_changed,
                                                 bind_address=self_address))
        plan = None
        if members and any(m.get("links") for m in members.values()):
            plan = LinkPlan.from_members(self_address, members, heartbeat_key(secret),
                                         settings.link_heartbeat_s, settings.link_timeout_s)
        self.syncobj = _SyncObj(self_address, [p for p in peers if p != self_address], conf,
                                [self.consumer], extra_wait=self._time_to_lease_check,
                                link_plan=plan)
        self._fail_unless_bound(self_address)
        self.syncobj.addOnTickCallback(self._on_tick)

    def _fail_unless_bound(self, self_address: str) -> None:
        """pysyncobj's tick thread binds once before the constructor returns and, when
        that fails, retries every second for ever without a word: the member would
        run deaf. Here it stops, with the reason (raft.listen.ListenError)."""
        transport = self.syncobj._SyncObj__transport
        if transport.ready:
            return
        error = getattr(transport._server, "bind_error", None)
        self.syncobj.destroy_synchronous()
        host, port = self_address.rsplit(":", 1)
        if error is None:
            raise ListenError(f"cannot listen on {host}:{port} for {RAFT_PURPOSE}")
        raise listen_error(host, int(port), RAFT_PURPOSE, error)

    # ---- tick thread --------------------------------------------------------
    def _on_applied(self, op: str, args: tuple, result: Result) -> None:
        if result.get("ok") and op in _RENEWING:
            self.lease_clock.renewal_applied(args[0], time.monotonic())
        elif result.get("ok") and op == "renew_many":
            now = time.monotonic()
            for resource, one in result["results"].items():
                if one.get("ok"):
                    self.lease_clock.renewal_applied(resource, now)
        if (op == "remove_member" and result.get("ok") and result.get("address") == self.address
                and self.is_leader()):
            # pysyncobj's leader cannot remove itself from the Raft configuration:
            # hand leadership over so the next leader can.
            log.info("event=leadership_transfer reason=\"this member was removed\"")
            self.syncobj.transferLeadership()
        if self._on_applied_cb is not None:
            self._on_applied_cb(op, args, result)

    def _on_state_changed(self, old: int, new: int) -> None:
        now = time.monotonic()
        if new == _LEADER:
            self.lease_clock.became_leader(now)
        elif old == _LEADER:
            self.lease_clock.stepped_down()
            self._pending_expiry.clear()
        self.role = _STATE_NAMES.get(new, str(new))
        if self._on_role_change_cb is not None:
            self._on_role_change_cb(self.role)

    def _time_to_lease_check(self) -> float | None:
        if self.lease_clock.leader_since is None:
            return None
        return self._next_lease_check - time.monotonic()

    def _on_tick(self) -> None:
        self.last_tick = time.monotonic()
        self.syncobj.sync_journal()
        now = time.monotonic()
        if self._awaiting_leader:
            self._resend_awaiting_leader(now)
        if self.lease_clock.leader_since is None or now < self._next_lease_check:
            return
        with self.consumer.lock:
            leases = {r: dict(lease) for r, lease in self.consumer.state.leases.items()}
        check = check_expiry(leases, self.lease_clock, now, self.settings.lease_check_period_s,
                             self._pending_expiry)
        for one in check.expire:
            self._pending_expiry.add(one.key)
            log.info("event=lease_expiry_proposed resource=%s holder=%s epoch=%d mono=%.6f",
                     one.resource, one.holder, one.epoch, now)
            self.consumer.command("expire", [one.resource, one.epoch, one.seq],
                                 callback=lambda res, err, key=one.key: self._pending_expiry.discard(key))
        # The tick thread sleeps until then (see _time_to_lease_check).
        self._next_lease_check = check.next_check_at

    def _resend_awaiting_leader(self, now: float) -> None:
        with self._awaiting_lock:
            waiting, self._awaiting_leader = self._awaiting_leader, []
        has_leader = self.syncobj._getLeader() is not None
        for sub in waiting:
            if has_leader:
                self._send(sub)
            elif now >= sub.give_up_at:
                _settle(sub.fut, error=command_failure(sub.op, FAIL_REASON.MISSING_LEADER))
            elif not sub.fut.done():
                with self._awaiting_lock:
                    self._awaiting_leader.append(sub)

    def _send(self, sub: _Submission) -> None:
        # Cleared before the cancellation check: a caller that cancels and then sees
        # waiting_for_leader still set knows the command was never sent.
        sub.waiting_for_leader = False
        if sub.fut.done():
            return  # the caller gave up while it waited for a leader

        def done(result, err):
            if sub.fut.done():
                return
            if err == FAIL_REASON.SUCCESS:
                _settle(sub.fut, result)
            elif err == FAIL_REASON.MISSING_LEADER and time.monotonic() < sub.give_up_at:
                # pysyncobj reports this before sending anything (election, cut off).
                sub.waiting_for_leader = True
                with self._awaiting_lock:
                    self._awaiting_leader.append(sub)
            else:
                _settle(sub.fut, error=command_failure(sub.op, err))

        self.consumer.command(sub.op, sub.args, callback=done)

    # ---- any thread -----------------------------------------------------------
    def submit(self, op: str, *args: Any, leader_wait_s: float | None = None) -> concurrent.futures.Future:
        """Propose a replicated command; the future gets its Result once committed
        and applied here, or RaftCommandError. While no leader is known the command
        waits here up to ``leader_wait_s`` (default: settings.leader_wait_s) and is
        then refused unsent; cancelling the future while it waits means it is never
        sent. Once sent to a leader it may commit even after the caller gave up."""
        return self._submit(op, args, leader_wait_s).fut

    def _submit(self, op: str, args: tuple, leader_wait_s: float | None) -> _Submission:
        if op not in OPS:
            raise ValueError(f"unknown cluster state operation {op!r}")
        check_plain(list(args), f"{op} arguments")
        wait = self.settings.leader_wait_s if leader_wait_s is None else leader_wait_s
        sub = _Submission(op, list(args), time.monotonic() + wait)
        self._send(sub)
        return sub

    def call(self, op: str, *args: Any, timeout: float = 5.0) -> Result:
        """Blocking submit (not for the tick thread or the event loop); waits for a
        leader as long as for the answer."""
        sub = self._submit(op, args, leader_wait_s=timeout)
        try:
            return sub.fut.result(timeout)
        except concurrent.futures.TimeoutError:
            pass
        if sub.fut.cancel() and sub.waiting_for_leader:
            raise RaftCommandError(f"{op} not committed within {timeout} s: no Raft leader "
                                   "(nothing sent)") from None
        raise RaftCommandError(f"{op}: no answer within {timeout} s; outcome unknown, it may "
                               "still commit (check the cluster state)", outcome_unknown=True) from None

    def snapshot(self) -> dict[str, Any]:
        with self.consumer.lock:
            return self.consumer.state.to_dict()

    def is_leader(self) -> bool:
        """Local view only: for display and to pick who proposes, never to decide."""
        return self.syncobj._isLeader()

    def caught_up(self) -> bool:
        """Has applied everything the leader had committed when we (re)joined."""
        return self.syncobj.isReady()

    def leader_address(self) -> str | None:
        leader = self.syncobj._getLeader()
        return leader.address if leader is not None else None

    def raft_status(self) -> dict[str, Any]:
        st = self.syncobj.getStatus()
        return {
            "role": _STATE_NAMES.get(st.get("state"), str(st.get("state"))),
            "term": st.get("raft_term"),
            "commit_index": st.get("commit_idx"),
            "last_applied": st.get("last_applied"),
            "leader": self.leader_address(),
            "has_quorum": st.get("has_quorum"),
            "log_len": st.get("log_len"),
            "peers": {str(k)[len("partner_node_status_server_"):]: v
                      for k, v in st.items() if str(k).startswith("partner_node_status_server_")},
        }

    def peer_feature_levels(self, max_age_s: float) -> dict[str, int]:
        """Raft address -> the feature level that peer sent within ``max_age_s``."""
        now = monotonic_time()
        return {address: level for address, (level, at) in list(self.syncobj.peer_levels.items())
                if now - at <= max_age_s}

    def set_link_members(self, members: Mapping[str, Mapping[str, Any]]) -> None:
        """The member table changed: paths to peers over every heartbeat network."""
        self.syncobj._SyncObj__transport.set_peers(
            {str(m["address"]): tuple(member_paths(m)) for m in members.values()
             if m["address"] != self.address})

    def link_status(self) -> dict[str, list[dict[str, object]]]:
        """Per peer (Raft address), per shared network: address, alive, last heard."""
        return self.syncobj._SyncObj__transport.link_status()

    def change_peers(self, action: str, address: str) -> concurrent.futures.Future:
        """Raft configuration change (one at a time; pysyncobj refuses overlaps)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def done(result, err):
            if fut.done():
                return
            if err == FAIL_REASON.SUCCESS:
                _settle(fut, True)
            else:
                _settle(fut, error=command_failure(f"raft {action} {address}", err))

        node = TCPNode(address)
        if action == "add":
            self.syncobj.addNodeToCluster(node, callback=done)
        elif action == "remove":
            self.syncobj.removeNodeFromCluster(node, callback=done)
        else:
            raise ValueError(action)
        return fut

    def destroy(self) -> None:
        """Stop Raft and wait until its tick thread has closed the listener and the
        journal: a member started again on the same port right after (a restart in the
        same process) finds it free, since a failed first bind is fatal. Not from the
        tick thread itself (an on-applied callback), which cannot wait for itself."""
        if threading.current_thread() is self.syncobj._SyncObj__thread:
            self.syncobj.destroy()
        else:
            self.syncobj.destroy_synchronous()
