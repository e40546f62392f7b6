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
from typing import Any, Callable, Iterable

import _socket
import socket

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import TCPNode

# pysyncobj 0.3.17 (win_inet_pton) replaces socket.inet_ntop with a Windows-only
# version on every OS; pyroute2 and others then fail to decode addresses.
socket.inet_ntop = _socket.inet_ntop

from . import durable_storage
from .cluster_state import ClusterState, Result
from .lease import LeaderLeaseClock
from .plain_data import check_plain
from .secure_channel import SecureTransport
from .settings import RaftSettings

log = logging.getLogger("hacluster.raft")

# pysyncobj's _RAFT_STATE
_LEADER = 2
_STATE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}

# Commands that change a lease and restart its clock on every member.
_RENEWING = ("acquire", "renew")

AppliedCallback = Callable[[str, tuple, Result], None]


class RaftCommandError(RuntimeError):
    """A command was not committed (no leader, leader changed, timeout)."""


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


OPS = ("bootstrap", "add_member", "remove_member", "acquire", "renew", "release",
       "expire", "set_eligible", "install_module", "uninstall_module", "set_intent",
       "set_failover", "set_in_sync", "name_good_copy", "leave_in_sync", "farm_join",
       "farm_leave", "renew_many")


def tick_wait(now: float, cap_s: float, deadlines: Iterable[float | None]) -> float:
    """How long the tick thread may block in poll: until the earliest timer that is
    due (``None`` = no such timer), at most ``cap_s``, never negative."""
    wait = cap_s
    for deadline in deadlines:
        if deadline is not None:
            wait = min(wait, deadline - now)
    return max(0.0, wait)


class _SyncObj(SyncObj):
    """pysyncobj with the durable journal, the authenticated transport, and a tick
    thread that sleeps until its next timer.

    pysyncobj's tick thread polls its sockets with a fixed timeout (autoTickPeriod)
    and looks at its timers after every wake-up: 50 idle wake-ups a second at 20 ms.
    Sockets and submitted commands wake the poll at once anyway, so the only reason
    to wake is a timer: the leader's next heartbeat, a follower's election deadline,
    or ``extra_wait`` (seconds to the leader's lease check; pysyncobj's timers use
    CLOCK_MONOTONIC_RAW, ours time.monotonic, so only durations cross). The poll now waits
    until the earliest of those, and ``autoTickPeriod`` only bounds the wait for the
    timers without a known deadline (reconnects, the one-second meta flush).
    """

    def __init__(self, self_address, peers, conf, consumers,
                 extra_wait: Callable[[], float | None] = lambda: None):
        self._extra_wait = extra_wait
        super().__init__(self_address, peers, conf, consumers=consumers,
                         transportClass=SecureTransport)
        # The tick thread calls self._poller.poll(autoTickPeriod) at the end of each
        # tick, after the tick's own work has moved the timers: the moment to decide.
        self._poll_sockets = self._poller.poll
        self._poller.poll = self._poll_until_next_timer

    def _poll_until_next_timer(self, timeout: float) -> None:
        now = monotonic_time()
        self._poll_sockets(tick_wait(now, timeout, self._deadlines(now)))

    def _deadlines(self, now: float) -> list[float | None]:
        if len(self._SyncObj__commandsQueue._FastQueue__queue):
            return [now]  # commands left over by a time-boxed tick: carry on at once
        if self._SyncObj__raftState == _LEADER:
            extra = self._extra_wait()
            return [self._SyncObj__newAppendEntriesTime, None if extra is None else now + extra]
        if self._SyncObj__connectedToAnyone():
            return [self._SyncObj__raftElectionDeadline]
        return []  # no election without a peer: the deadline may pass and stay passed

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


class RaftMember:
    def __init__(self, self_address: str, peers: list[str], data_dir: str | os.PathLike,
                 secret: str, settings: RaftSettings,
                 on_applied: AppliedCallback | None = None,
                 on_role_change: Callable[[str], None] | None = None) -> None:
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
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        check_journal_format(data)
        self.consumer = _StateConsumer(self._on_applied)
        conf = SyncObjConf(
            password=secret,
            journalFile=str(data / "raft.journal"),
            fullDumpFile=str(data / "raft.dump"),
            dynamicMembershipChange=True,
            useFork=False,  # forking a threaded asyncio process is unsafe
            onStateChanged=self._on_state_changed,
            **settings.syncobj_kwargs(),
        )
        self.syncobj = _SyncObj(self_address, [p for p in peers if p != self_address], conf,
                                [self.consumer], extra_wait=self._time_to_lease_check)
        self.syncobj.addOnTickCallback(self._on_tick)

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
        self.syncobj.sync_journal()
        now = time.monotonic()
        if self.lease_clock.leader_since is None or now < self._next_lease_check:
            return
        # Look again at the earliest expiry (the tick thread sleeps until then), and
        # at least every lease_check_period_s.
        next_check = now + self.settings.lease_check_period_s
        with self.consumer.lock:
            leases = [(r, dict(lease)) for r, lease in self.consumer.state.leases.items()]
        for resource, lease in leases:
            if lease["holder"] is None:
                continue
            expiry = self.lease_clock.expires_at(resource, lease["lease_s"])
            if expiry is None or now < expiry:
                if expiry is not None:
                    next_check = min(next_check, expiry)
                continue
            key = (resource, lease["epoch"], lease["seq"])
            if key in self._pending_expiry:
                continue
            self._pending_expiry.add(key)
            log.info("event=lease_expiry_proposed resource=%s holder=%s epoch=%d mono=%.6f",
                     resource, lease["holder"], lease["epoch"], now)
            self.consumer.command("expire", [resource, lease["epoch"], lease["seq"]],
                                 callback=lambda res, err, key=key: self._pending_expiry.discard(key))
        self._next_lease_check = next_check

    # ---- any thread -----------------------------------------------------------
    def submit(self, op: str, *args: Any) -> concurrent.futures.Future:
        """Propose a replicated command; the future gets its Result once committed
        and applied here, or RaftCommandError."""
        if op not in OPS:
            raise ValueError(f"unknown cluster state operation {op!r}")
        check_plain(list(args), f"{op} arguments")
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def done(result, err):
            if fut.done():
                return
            if err == FAIL_REASON.SUCCESS:
                fut.set_result(result)
            else:
                fut.set_exception(RaftCommandError(
                    f"{op} not committed: {_FAIL_NAMES.get(err, err)}"))

        self.consumer.command(op, list(args), callback=done)
        return fut

    def call(self, op: str, *args: Any, timeout: float = 5.0) -> Result:
        """Blocking submit (not for the tick thread or the event loop)."""
        try:
            return self.submit(op, *args).result(timeout)
        except concurrent.futures.TimeoutError:
            raise RaftCommandError(f"{op} not committed within {timeout} s") from None

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

    def change_peers(self, action: str, address: str) -> concurrent.futures.Future:
        """Raft configuration change (one at a time; pysyncobj refuses overlaps)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def done(result, err):
            if fut.done():
                return
            if err == FAIL_REASON.SUCCESS:
                fut.set_result(True)
            else:
                fut.set_exception(RaftCommandError(
                    f"raft {action} {address} not committed: {_FAIL_NAMES.get(err, err)}"))

        node = TCPNode(address)
        if action == "add":
            self.syncobj.addNodeToCluster(node, callback=done)
        elif action == "remove":
            self.syncobj.removeNodeFromCluster(node, callback=done)
        else:
            raise ValueError(action)
        return fut

    def destroy(self) -> None:
        self.syncobj.destroy()
