"""The sender's peer-loss rules (DESIGN.md rule 3), with an in-memory channel
standing in for the network (the channel has its own tests)."""
import threading
import time

import pytest

from replication.channel import ReplicationRefused, StaleEpoch
from replication.ops import Op, OpKind
from replication.sender import ReplicationUnavailable, Sender, SenderState


class MemoryChannel:
    """Acks what ``ack`` says; ``wait`` times out for the rest."""

    def __init__(self, ack=True):
        self.ack = ack
        self.sent: list[Op] = []
        self.closed = False

    def send_op(self, op):
        if self.closed:
            raise ConnectionError("closed")
        self.sent.append(op)
        return len(self.sent)

    def wait(self, seq, timeout):
        if not self.ack:
            time.sleep(min(timeout, 0.05))
            raise TimeoutError(f"seq {seq} not acknowledged")

    def close(self):
        self.closed = True


class Recorder:
    def __init__(self, fail=False):
        self.ops: list[Op] = []
        self.fail = fail

    def record(self, op):
        if self.fail:
            raise OSError(28, "No space left on device")
        self.ops.append(op)


def write(i):
    return Op(OpKind.WRITE, f"f{i}", offset=i, data=b"x")


def test_connected_waits_for_the_ack_and_records_nothing():
    rec, hook = Recorder(), []
    s = Sender(rec, hook.append)
    ch = MemoryChannel()
    s.attach(ch)
    s.wait(s.submit(write(1)))
    assert ch.sent == [write(1)] and rec.ops == [] and hook == []
    assert s.status()["in_flight"] == 0


def test_lost_peer_records_unacknowledged_ops_then_calls_hook_then_answers():
    rec, order = Recorder(), []
    s = Sender(rec, lambda reason: order.append(("hook", len(rec.ops), reason)), ack_timeout_s=0.05)
    s.attach(MemoryChannel(ack=False))
    tickets = [s.submit(write(i)) for i in range(3)]
    s.wait(tickets[0])
    assert s.state is SenderState.ALONE
    # All three in-flight ops were recorded before the hook ran.
    assert order[0][0] == "hook" and order[0][1] == 3 and "no acknowledgement" in order[0][2]
    for t in tickets[1:]:
        s.wait(t)
    s.wait(s.submit(write(9)))  # ALONE: recorded, hook not called again
    assert [op.path for op in rec.ops] == ["f0", "f1", "f2", "f9"]
    assert len(order) == 1


def test_hook_failure_means_eio_for_everything_and_nothing_unrecorded():
    rec = Recorder()

    def hook(reason):
        raise RuntimeError("no quorum")

    s = Sender(rec, hook, ack_timeout_s=0.05)
    s.attach(MemoryChannel(ack=False))
    t = s.submit(write(1))
    with pytest.raises(ReplicationUnavailable, match="no quorum"):
        s.wait(t)
    with pytest.raises(ReplicationUnavailable):
        s.submit(write(2))
    assert [op.path for op in rec.ops] == ["f1", "f2"]
    assert s.state is SenderState.FAILED


def test_recorder_failure_is_eio():
    s = Sender(Recorder(fail=True), lambda r: None, alone=True)
    with pytest.raises(ReplicationUnavailable, match="cannot record"):
        s.submit(write(1))
    assert s.state is SenderState.FAILED


def test_no_receiver_yet_first_write_waits_for_the_hook():
    rec, hook = Recorder(), []
    s = Sender(rec, hook.append)
    s.wait(s.submit(write(1)))
    assert hook == ["send failed: no receiver connected"] and rec.ops == [write(1)]


def test_started_alone_never_calls_the_hook():
    rec, hook = Recorder(), []
    s = Sender(rec, hook.append, alone=True)
    s.wait(s.submit(write(1)))
    assert hook == [] and rec.ops == [write(1)]


def test_concurrent_writers_one_hook_call_and_no_answer_before_it_returned():
    rec = Recorder()
    hook_done = threading.Event()
    calls = []

    def hook(reason):
        calls.append(reason)
        time.sleep(0.3)  # the mirror module committing the in-sync change
        hook_done.set()

    s = Sender(rec, hook, ack_timeout_s=0.05)
    s.attach(MemoryChannel(ack=False))
    answered_early = []

    def writer(i):
        for j in range(5):
            with s.ordering_lock:
                t = s.submit(write(i * 10 + j))
            s.wait(t)
            if not hook_done.is_set():
                answered_early.append((i, j))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert len(calls) == 1
    assert answered_early == []
    assert sorted(op.path for op in rec.ops) == sorted(f"f{i * 10 + j}" for i in range(8)
                                                       for j in range(5))


def test_reattach_after_alone_replicates_again():
    rec, hook = Recorder(), []
    s = Sender(rec, hook.append, alone=True)
    s.wait(s.submit(write(1)))
    ch = MemoryChannel()
    s.attach(ch)
    s.wait(s.submit(write(2)))
    assert ch.sent == [write(2)] and rec.ops == [write(1)] and s.state is SenderState.CONNECTED


def test_clean_shutdown_with_everything_acknowledged_keeps_the_peer_in_sync():
    lost = []
    s = Sender(Recorder(), lost.append, ack_timeout_s=1.0)
    ch = MemoryChannel()
    s.attach(ch)
    s.wait(s.submit(write(1)))
    s.shutdown("stopping")
    assert lost == [] and ch.closed


def test_shutdown_with_an_unacknowledged_op_is_a_peer_loss():
    lost, rec = [], Recorder()
    s = Sender(rec, lost.append, ack_timeout_s=1.0)
    ch = MemoryChannel(ack=False)
    s.attach(ch)
    s.submit(write(1))
    s.shutdown("stopping")
    assert lost == ["stopping"] and rec.ops == [write(1)]


# ---- settling: a reintegration runs, the receiver's copy is not in sync yet --------------

class RefusingChannel(MemoryChannel):
    """Answers each op with the error ``refuse(op)`` gives (None: acknowledged)."""

    def __init__(self, refuse):
        super().__init__()
        self.refuse = refuse

    def wait(self, seq, timeout):
        error = self.refuse(self.sent[seq - 1])
        if error is not None:
            raise error


ENOENT = ReplicationRefused(2, "WRITE f1 @1+1: No such file or directory")


def settling_sender(refuse):
    lost, refused = [], []
    s = Sender(Recorder(), lost.append, ack_timeout_s=1.0, alone=True)
    s.on_refused = lambda op, error: refused.append((op, error.errno))
    s.attach(RefusingChannel(refuse), settling=True)
    return s, lost, refused


def test_settling_a_refusal_is_recorded_and_answered_not_a_lost_peer():
    s, lost, refused = settling_sender(lambda op: ENOENT if op.path == "f1" else None)
    for i in range(3):
        s.wait(s.submit(write(i)))
    assert lost == [] and refused == [(write(1), 2)]
    assert s.state is SenderState.CONNECTED
    assert s.status()["in_flight"] == 0 and s.status()["refusals_recorded"] == 1
    s.quiesce(1.0)      # nothing unanswered: returns at once


@pytest.mark.parametrize("error", [StaleEpoch(116, "epoch 1 is older than 2"),
                                   TimeoutError("no ack"), ConnectionError("reset")])
def test_settling_a_stale_epoch_timeout_or_transport_failure_is_still_a_lost_peer(error):
    s, lost, refused = settling_sender(lambda op: error)
    s.wait(s.submit(write(1)))
    assert refused == [] and len(lost) == 1 and s.state is SenderState.ALONE


def test_after_settled_a_refusal_is_a_lost_peer_again():
    s, lost, refused = settling_sender(lambda op: ENOENT)
    s.wait(s.submit(write(1)))
    s.settled()
    s.wait(s.submit(write(2)))
    assert [op for op, _ in refused] == [write(1)]
    assert len(lost) == 1 and "No such file" in lost[0] and s.state is SenderState.ALONE


def test_a_refusal_that_cannot_be_recorded_fails_the_write():
    s, lost, _ = settling_sender(lambda op: ENOENT)

    def full(op, error):
        raise OSError(28, "No space left on device")
    s.on_refused = full
    with pytest.raises(ReplicationUnavailable, match="cannot record"):
        s.wait(s.submit(write(1)))
    assert s.state is SenderState.FAILED and lost == []


def test_quiesce_waits_until_the_refused_op_is_recorded():
    """The in-sync transition must see every refusal recorded: quiesce returns
    only after the waiting thread's on_refused returned."""
    recording, release = threading.Event(), threading.Event()
    s, lost, refused = settling_sender(lambda op: ENOENT)

    def slow(op, error):
        recording.set()
        release.wait(10)
        refused.append(op)
    s.on_refused = slow
    ticket = s.submit(write(1))
    waiter = threading.Thread(target=s.wait, args=(ticket,))
    waiter.start()
    assert recording.wait(10)
    quiesced = threading.Event()
    q = threading.Thread(target=lambda: (s.quiesce(10), quiesced.set()))
    q.start()
    assert not quiesced.is_set() and refused == []   # still recording: not answered yet
    release.set()
    q.join(10)
    waiter.join(10)
    assert quiesced.is_set() and refused == [write(1)] and lost == []


def test_late_refusals_settling_known_op_recorded_else_a_loss_that_records_the_whole_tree():
    """Receipt mode: a refusal comes after the op was answered, by seq."""
    lost, refused, rec = [], [], Recorder()
    s = Sender(rec, lost.append, ack_timeout_s=1.0, alone=True)
    s.on_refused = lambda op, error: refused.append(op)
    ch = MemoryChannel()
    s.attach(ch, settling=True, late_errors=True)
    big = Op(OpKind.WRITE, "seg", offset=8192, data=b"w" * 8192)
    s.wait(s.submit(big))
    s.late_error(ch, 1, 2, "WRITE seg @8192+8192: No such file or directory")
    # Kept without its data, with what recording needs (the range).
    assert lost == [] and [(op.path, op.offset, op.length, op.data) for op in refused] == \
        [("seg", 8192, 8192, b"")]
    s.late_error(MemoryChannel(), 1, 2, "from an earlier connection")    # ignored
    assert lost == []
    s.settled()
    s.wait(s.submit(write(2)))
    s.late_error(ch, 2, 2, "WRITE f2: No such file or directory")
    assert len(lost) == 1 and s.state is SenderState.ALONE
    assert rec.ops == [Op(OpKind.CREATE, "")]      # not known any more: the whole tree


def test_late_stale_epoch_while_settling_is_a_loss():
    lost, rec = [], Recorder()
    s = Sender(rec, lost.append, ack_timeout_s=1.0, alone=True)
    s.on_refused = lambda op, error: pytest.fail("a stale epoch is not a refusal to record")
    ch = MemoryChannel()
    s.attach(ch, settling=True, late_errors=True)
    s.wait(s.submit(write(1)))
    s.late_error(ch, 1, 116, "epoch 1 is older than this receiver's epoch 2")
    assert len(lost) == 1 and [(op.path, op.offset, op.length) for op in rec.ops] == [("f1", 1, 1)]
