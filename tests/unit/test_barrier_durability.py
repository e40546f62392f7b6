"""Durability at barriers (issue 19, DESIGN.md "The replication channel"): the
sender's rules with BARRIER durability, against an in-memory channel in async
ack mode whose acknowledgements the test hands out one by one (the channel's
own ordering is tested in test_replication_channel.py; the whole path, with a
real receiver and a FUSE mount, in test_barrier_durability_fs.py).

What a user may rely on: a non-barrier change is answered at once; a barrier
(FSYNC) is answered only when every op before it was answered by the receiver;
a barrier that cannot be acknowledged is answered only after the peer-loss
hook (the secondary's removal from the in-sync set) returned, with every
unacknowledged op recorded; a refusal of an earlier op is settled (while a
reintegration runs) or is a lost peer, before the barrier is answered."""
from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.ops import Op, OpKind
from replication.sender import Durability, ReplicationUnavailable, Sender, SenderState


class AsyncChannel:
    """Sends at once; answers only what ``ack_through``/``refuse`` say."""

    def __init__(self) -> None:
        self.sent: list[Op] = []
        self.closed = False
        self._answered = 0
        self.late_error_count = 0
        self.on_late_error = None
        self._cond = threading.Condition()

    def send_op(self, op: Op) -> int:
        if self.closed:
            raise ConnectionError("closed")
        self.sent.append(op)
        return len(self.sent)

    def wait(self, seq: int, timeout: float) -> None:   # async mode: never blocks
        return None

    @property
    def last_seq(self) -> int:
        return len(self.sent)

    @property
    def acked_through(self) -> int:
        with self._cond:
            return self._answered

    def wait_through(self, seq: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._answered < seq:
                if self.closed:
                    raise ConnectionError("closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"seq {seq} not acknowledged")
                self._cond.wait(left)

    def ack_through(self, seq: int) -> None:
        with self._cond:
            self._answered = max(self._answered, seq)
            self._cond.notify_all()

    def refuse(self, sender: Sender, seq: int, err: int = 2) -> None:
        """The receiver refused op ``seq`` (a late error, counted before any
        later answer arrives, as the real channel does), then answers it."""
        with self._cond:
            self.late_error_count += 1
        threading.Thread(target=sender.late_error, args=(self, seq, err, "refused"),
                         daemon=True).start()
        self.ack_through(seq)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class Recorder:
    def __init__(self) -> None:
        self.ops: list[Op] = []

    def record(self, op: Op) -> None:
        self.ops.append(op)


def write(i: int, size: int = 4096) -> Op:
    return Op(OpKind.WRITE, f"f{i}", offset=i * size, data=b"x" * size)


def fsync(i: int) -> Op:
    return Op(OpKind.FSYNC, f"f{i}")


def barrier_sender(timeout: float = 2.0, hook=None) -> tuple[Sender, AsyncChannel, Recorder, list]:
    rec, lost = Recorder(), []
    s = Sender(rec, hook or lost.append, ack_timeout_s=timeout, durability=Durability.BARRIER)
    ch = AsyncChannel()
    s.attach(ch, late_errors=True)
    return s, ch, rec, lost


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        try:
            fn(*args)
            out.append("ok")
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            out.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_non_barrier_change_is_answered_without_any_acknowledgement():
    s, ch, rec, lost = barrier_sender()
    for i in range(100):
        s.wait(s.submit(write(i)))          # nothing acknowledged: would block otherwise
    assert len(ch.sent) == 100 and rec.ops == [] and lost == []
    assert s.state is SenderState.CONNECTED


def test_a_barrier_waits_for_every_op_before_it_not_only_its_own():
    s, ch, rec, lost = barrier_sender()
    for i in range(3):
        s.wait(s.submit(write(i)))
    t, out = in_thread(s.wait, s.submit(fsync(0)))
    ch.ack_through(2)                       # the barrier (seq 4) and op 3 still unanswered
    t.join(0.2)
    assert out == []
    ch.ack_through(4)
    t.join(5)
    assert out == ["ok"] and lost == [] and rec.ops == []
    assert s.status()["in_flight"] == 0


def test_an_unacknowledged_barrier_is_answered_after_the_loss_is_committed():
    order: list = []
    rec = Recorder()
    s = Sender(rec, lambda reason: order.append(("hook", len(rec.ops))), ack_timeout_s=0.1,
               durability=Durability.BARRIER)
    ch = AsyncChannel()
    s.attach(ch, late_errors=True)
    for i in range(3):
        s.wait(s.submit(write(i)))
    ch.ack_through(1)
    s.wait(s.submit(fsync(2)))
    order.append("answered")
    # Ops 2, 3 and the barrier were recorded, then the hook ran, then the answer.
    assert order == [("hook", 3), "answered"]
    assert [op.kind for op in rec.ops] == [OpKind.WRITE, OpKind.WRITE, OpKind.FSYNC]
    assert all(op.data == b"" and op.length == 4096 for op in rec.ops[:2])   # kept light
    assert s.state is SenderState.ALONE


def test_when_the_loss_cannot_be_committed_the_barrier_fails_with_eio():
    def hook(reason: str) -> None:
        raise RuntimeError("no quorum")
    s, ch, rec, _ = barrier_sender(timeout=0.1, hook=hook)
    s.wait(s.submit(write(0)))
    with pytest.raises(ReplicationUnavailable):
        s.wait(s.submit(fsync(0)))
    assert s.state is SenderState.FAILED
    with pytest.raises(ReplicationUnavailable):     # and every change after it
        s.submit(write(1))


def test_an_in_sync_refusal_of_an_earlier_op_is_a_committed_loss_before_the_barrier_returns():
    hook_done = threading.Event()
    lost: list = []

    def hook(reason: str) -> None:
        time.sleep(0.1)                     # the commit takes a while
        lost.append(reason)
        hook_done.set()
    s, ch, rec, _ = barrier_sender(hook=hook)
    s.wait(s.submit(write(0)))
    s.wait(s.submit(write(1)))
    ticket = s.submit(fsync(1))
    ch.refuse(s, 1)
    ch.ack_through(3)
    s.wait(ticket)
    assert hook_done.is_set() and "late error for seq 1" in lost[0]
    assert s.state is SenderState.ALONE
    assert Op(OpKind.CREATE, "") in rec.ops     # the op is no longer known: the whole tree


def test_while_settling_a_refusal_is_recorded_and_the_barrier_succeeds():
    refused: list = []
    s, ch, rec, lost = barrier_sender()
    s.on_refused = lambda op, err: refused.append(op)
    s.attach(ch, settling=True, late_errors=True)
    s.wait(s.submit(write(0)))
    s.wait(s.submit(write(1)))
    ticket = s.submit(fsync(1))
    ch.refuse(s, 2)
    ch.ack_through(3)
    s.wait(ticket)
    assert [op.path for op in refused] == ["f1"] and lost == []
    assert s.state is SenderState.CONNECTED


def test_clean_shutdown_waits_for_streamed_ops_and_keeps_the_peer():
    s, ch, rec, lost = barrier_sender()
    for i in range(5):
        s.wait(s.submit(write(i)))
    threading.Timer(0.05, ch.ack_through, args=(5,)).start()
    s.shutdown("swap")
    assert lost == [] and rec.ops == [] and s.state is SenderState.ALONE


def test_shutdown_with_streamed_ops_never_answered_is_a_loss_that_records_them():
    s, ch, rec, lost = barrier_sender(timeout=0.1)
    for i in range(5):
        s.wait(s.submit(write(i)))
    ch.ack_through(2)
    s.shutdown("stop")
    assert len(lost) == 1 and [op.path for op in rec.ops] == ["f2", "f3", "f4"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["write", "fsync", "ack"]), st.integers(0, 7)),
                min_size=1, max_size=60))
def test_in_flight_holds_exactly_the_unanswered_ops_and_never_their_data(steps):
    """Whatever the interleaving of streamed writes, barriers the receiver has
    answered and acknowledgements: what a loss would record is a superset of
    the unanswered ops (never less), and no op's data is kept."""
    s, ch, rec, lost = barrier_sender(timeout=5.0)
    for kind, n in steps:
        if kind == "write":
            s.wait(s.submit(write(n)))
        elif kind == "fsync":
            ticket = s.submit(fsync(n))
            ch.ack_through(ticket.seq)
            s.wait(ticket)
        else:
            ch.ack_through(min(ch.last_seq, ch.acked_through + n))
    unanswered = set(range(ch.acked_through + 1, ch.last_seq + 1))
    with s._lock:
        kept = dict(s._in_flight)
    assert unanswered <= set(kept)
    assert all(not op.data for op in kept.values())
    s.detach("test over")
    assert {op.path for op in rec.ops} >= {ch.sent[q - 1].path for q in unanswered}
    assert lost == ["test over"]


class DurableChannel(AsyncChannel):
    """AsyncChannel whose receiver also reports a durable mark."""

    def __init__(self) -> None:
        super().__init__()
        self.durable_through = -1


def test_a_barrier_on_a_path_the_durable_mark_covers_needs_no_round_trip():
    """PostgreSQL fsyncs every file of its data directory when it starts after a
    crash: a file nothing touched since the receiver's last durable mark is
    answered at once (nothing sent); a file written since, or one whose
    directory's entries changed since, or anything while ops are unanswered,
    is a real barrier."""
    s, ch, rec, lost = barrier_sender()
    ch = DurableChannel()
    s.attach(ch, late_errors=True)
    s.wait(s.submit(write(0)))                       # f0, seq 1
    s.wait(s.submit(Op(OpKind.CREATE, "d/new")))     # d/new and d's entries, seq 2
    ch.ack_through(2)
    assert s.submit(fsync(9)).seq is not None        # no durable mark yet: sent
    ch.ack_through(3)
    ch.durable_through = 1                           # f0 on disk over there, d/new not yet
    sent = len(ch.sent)
    for path in ("f0", "other", "d"):
        ticket = s.submit(Op(OpKind.FSYNC, path)) if path != "d" else None
        if path in ("f0", "other"):
            assert ticket.seq is None and not ticket.barrier
            s.wait(ticket)
    assert len(ch.sent) == sent
    assert s.submit(Op(OpKind.FSYNC, "d/new")).seq is not None   # written after the mark
    assert s.submit(Op(OpKind.FSYNC, "d")).seq is not None       # its entries too
    assert s.submit(Op(OpKind.FSYNC, "")).seq is not None        # the whole tree too
    ch.durable_through = 5
    s.wait(s.submit(write(1)))                                   # unanswered: real barriers
    assert s.submit(Op(OpKind.FSYNC, "f0")).seq is not None
    assert s.status()["barriers_answered_by_durable_mark"] == 2
    assert lost == [] and rec.ops == []


def test_while_settling_and_before_the_mark_covers_the_reintegration_barriers_go_out():
    s, ch, rec, lost = barrier_sender()
    ch = DurableChannel()
    s.on_refused = lambda op, err: None
    s.attach(ch, settling=True, late_errors=True)
    ch.durable_through = 0
    assert s.submit(fsync(0)).seq is not None                    # settling
    for _ in range(3):
        ch.send_op(write(7))                                     # the reintegration's own ops
    ch.ack_through(ch.last_seq)
    s.settled()
    assert s.submit(fsync(1)).seq is not None                    # mark below what it sent
    ch.ack_through(ch.last_seq)
    ch.durable_through = ch.last_seq
    assert s.submit(fsync(1)).seq is None


class BatchChannel(DurableChannel):
    """A DurableChannel that also sends several ops at once; ``batches`` keeps each."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.batches: list[list[Op]] = []
        self.fail = fail

    def send_ops(self, ops):
        if self.fail or self.closed:
            raise ConnectionError("connection lost")
        self.batches.append(list(ops))
        return [self.send_op(op) for op in ops]


def test_a_batch_goes_out_together_and_its_barrier_waits_for_all_of_it():
    s, _, rec, lost = barrier_sender()
    ch = BatchChannel()
    s.attach(ch, late_errors=True)
    tickets = s.submit_many([write(0), write(1), fsync(1)])
    assert ch.batches == [[write(0), write(1), fsync(1)]]
    assert [t.seq for t in tickets] == [1, 2, 3]
    assert [t.barrier for t in tickets] == [False, False, True]
    t, out = in_thread(s.wait, tickets[2])
    ch.ack_through(2)
    t.join(0.2)
    assert out == []                       # its own answer still missing
    ch.ack_through(3)
    t.join(5)
    assert out == ["ok"] and lost == [] and rec.ops == []
    assert s.status()["in_flight"] == 0 and s.status()["ops_sent"] == 3


def test_a_barrier_first_in_a_batch_may_still_be_answered_by_the_durable_mark():
    s, _, rec, lost = barrier_sender()
    ch = BatchChannel()
    s.attach(ch, late_errors=True)
    ch.durable_through = 0                 # everything before the session is durable there
    tickets = s.submit_many([fsync(5), write(0), write(1)])
    assert tickets[0].seq is None and not tickets[0].barrier     # nothing sent for it
    assert ch.batches == [[write(0), write(1)]]
    # a barrier behind ops of its own batch never finds them answered: it is sent
    tickets = s.submit_many([write(2), fsync(7)])
    assert ch.batches[-1] == [write(2), fsync(7)] and tickets[1].seq == 4
    assert lost == [] and rec.ops == []


def test_a_batch_that_cannot_be_sent_is_recorded_before_the_loss_is_committed():
    order: list = []
    rec = Recorder()
    s = Sender(rec, lambda reason: order.append(("hook", len(rec.ops), reason)),
               ack_timeout_s=0.5, durability=Durability.BARRIER)
    ch = BatchChannel(fail=True)
    s.attach(ch, late_errors=True)
    tickets = s.submit_many([write(0), write(1), fsync(1)])
    assert all(t.seq is None for t in tickets)
    for t in tickets:
        s.wait(t)
    assert order and order[0][1] == 3 and "connection lost" in order[0][2]
    assert rec.ops == [write(0), write(1), fsync(1)] and s.state is SenderState.ALONE
    # alone: a later batch is recorded, nothing sent
    s.submit_many([write(3), write(4)])
    assert rec.ops[-2:] == [write(3), write(4)] and ch.batches == []


def test_the_whole_tree_durable_is_told_only_while_nothing_changed_since_the_mark():
    """Sender.tree_durable: False at every submission and every change of channel or
    state; True when a barrier finds the whole tree covered by the durable mark (the
    C data plane then answers fsyncs of the handles it owns by the local sync)."""
    told: list[bool] = []
    s, _, rec, lost = barrier_sender(timeout=0.2)
    s.tree_durable = told.append
    ch = BatchChannel()
    s.attach(ch, late_errors=True)
    assert told[-1] is False
    s.wait(s.submit(write(0)))
    ch.ack_through(1)
    assert s.submit(fsync(0)).seq is not None and told[-1] is False   # no mark yet
    ch.ack_through(2)
    ch.durable_through = 0                   # the write to f0 (seq 1) not covered yet
    assert s.submit(fsync(3)).seq is None and told[-1] is False   # f3 durable, tree not
    ch.durable_through = 1
    assert s.submit(fsync(3)).seq is None and told[-1] is True    # all of it
    s.submit_many([write(1), write(2)])
    assert told[-1] is False                 # a change: off before it is answered
    ch.ack_through(4)
    ch.durable_through = 4
    assert s.submit(fsync(9)).seq is None and told[-1] is True
    s.detach("stopped")                      # a loss: off
    assert told[-1] is False and lost == ["stopped"]


def test_an_answered_full_fsync_counts_its_file_as_durable_over_there():
    """The receiver fsynced the file and its directory after applying everything
    before: a later barrier on it needs no round trip, even before the next durable
    mark; a datasync does not count (times may not be durable), nor does a change
    made after the fsync was sent."""
    told: list[bool] = []
    s, _, rec, lost = barrier_sender()
    ch = BatchChannel()
    s.attach(ch, late_errors=True)
    s.tree_durable = told.append
    ch.durable_through = 0                         # the session's start: all on disk there
    s.wait(s.submit(write(0)))                     # f0, seq 1
    s.wait(s.submit(Op(OpKind.CREATE, "d/new")))   # d/new and d's entries, seq 2
    t = s.submit(Op(OpKind.FSYNC, "f0", mode=1))   # fdatasync, seq 3
    ch.ack_through(3)
    s.wait(t)
    t = s.submit(fsync(0))
    assert t.seq == 4                              # the datasync did not count
    ch.ack_through(4)
    assert told[-1] is False
    s.wait(t)
    assert s.submit(fsync(0)).seq is None          # the full fsync did
    assert told[-1] is False                       # d/new and d still unknown there
    t = s.submit(Op(OpKind.FSYNC, "d/new"))        # seq 5: covers d/new and d's entries
    s.wait(s.submit(write(1)))                     # f1 written after it was sent: seq 6
    ch.ack_through(6)
    s.wait(t)
    assert s.submit(Op(OpKind.FSYNC, "d/new")).seq is None
    assert s.submit(Op(OpKind.FSYNC, "d")).seq is None
    t = s.submit(fsync(1))
    assert t.seq == 7
    ch.ack_through(7)
    s.wait(t)
    assert s.submit(fsync(1)).seq is None and told[-1] is True   # nothing left unknown
    assert lost == [] and rec.ops == []

