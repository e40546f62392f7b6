"""RaftMember pieces that need no cluster."""
import pytest

from raft.member import OPS, _StateConsumer
from raft.plain_data import NotPlainData


def test_an_apply_that_raises_becomes_a_refusal_not_a_frozen_log():
    applied = []
    consumer = _StateConsumer(lambda op, args, result: applied.append((op, result)))
    # A method missing on this member's code (or any exception) must not propagate into
    # pysyncobj, which would retry the entry forever.
    result = consumer._apply("no_such_operation", 1)
    assert result["ok"] is False and "no_such_operation failed" in result["error"]
    assert applied == [("no_such_operation", result)]
    # The state machine still works afterwards.
    assert consumer._apply("bootstrap", {"a": {"address": "10.0.0.1:7400", "role": "node"}})["ok"]


def test_submit_refuses_unknown_ops_and_non_plain_arguments():
    from raft.member import RaftMember

    member = RaftMember.__new__(RaftMember)  # no pysyncobj: submit checks before sending
    with pytest.raises(ValueError, match="unknown cluster state operation"):
        member.submit("drop_tables")
    with pytest.raises(NotPlainData, match="acquire arguments"):
        member.submit("acquire", "demo", object(), 1.5)
    assert "acquire" in OPS


def test_importing_raft_keeps_a_working_inet_ntop():
    import socket

    import raft.member  # noqa: F401  (pysyncobj patches socket on import)
    assert socket.inet_ntop(socket.AF_INET, bytes([10, 0, 0, 1])) == "10.0.0.1"


def test_one_replicated_method_so_new_operations_never_renumber_the_journal():
    # pysyncobj numbers @replicated methods by sorted name; with the operation named
    # inside the entry, a journal replays the same way after operations are added.
    names = {n.split("_v")[0] for n in dir(_StateConsumer)
             if getattr(getattr(_StateConsumer, n, None), "replicated", False)}
    assert names == {"command"}
    applied = []
    consumer = _StateConsumer(lambda op, args, result: applied.append(op))
    refused = consumer._apply("to_dict")          # a ClusterState method, not an operation
    assert refused["ok"] is False and "not a cluster state operation" in refused["error"]


def test_raft_data_of_another_entry_format_is_refused_with_a_clear_error(tmp_path):
    from raft.member import JOURNAL_FORMAT, check_journal_format

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    check_journal_format(fresh)                       # new directory: marked, accepted
    assert (fresh / "format").read_text() == JOURNAL_FORMAT
    check_journal_format(fresh)                       # and accepted again
    old = tmp_path / "old"
    old.mkdir()
    (old / "raft.journal").write_bytes(b"\0" * 64)    # a journal without a format marker
    with pytest.raises(ValueError, match="older hacluster"):
        check_journal_format(old)
    (fresh / "format").write_text("hacluster-raft 3 something else\n")
    with pytest.raises(ValueError, match=r"format 'hacluster-raft 3"):
        check_journal_format(fresh)


def test_log_compaction_writes_a_dump_that_a_restart_reads(tmp_path):
    """pysyncobj pickles the SyncObj's attributes into its dump; one holding the
    poller made every dump fail, so the journal was never compacted."""
    import time

    from raft.member import RaftMember
    from raft.settings import RaftSettings
    from tests.conftest import free_ports

    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    settings = RaftSettings(log_compaction_entries=3, log_compaction_min_time_s=0.01)

    def started():
        m = RaftMember(addr, [addr], tmp_path, "c" * 40, settings)
        deadline = time.monotonic() + 10
        while not m.is_leader():
            assert time.monotonic() < deadline, "never became leader"
            time.sleep(0.02)
        return m

    m = started()
    try:
        for i in range(10):
            assert m.call("set_eligible", f"r{i}", None, 1.5)["ok"]
        deadline = time.monotonic() + 20
        while not (tmp_path / "raft.dump").exists():
            assert time.monotonic() < deadline, sorted(p.name for p in tmp_path.iterdir())
            time.sleep(0.05)
    finally:
        m.destroy()
    m = started()
    try:
        deadline = time.monotonic() + 10
        while not all(f"r{i}" in m.snapshot()["leases"] for i in range(10)):
            assert time.monotonic() < deadline, m.snapshot()
            time.sleep(0.05)
    finally:
        m.destroy()


def test_the_leader_expires_a_lease_not_renewed_for_a_full_lease(tmp_path):
    """raft.lease.check_expiry wired into a real single-voter member: an acquired lease
    that nobody renews is expired by the leader, fenced by the lease's epoch and seq,
    and never earlier than a full lease after the acquire was submitted."""
    import threading
    import time

    from raft.member import RaftMember
    from raft.settings import RaftSettings
    from tests.conftest import free_ports

    address = f"127.0.0.1:{free_ports(1)[0]}"
    expired = threading.Event()
    applied: list[tuple[str, tuple, dict, float]] = []

    def on_applied(op, args, result):
        applied.append((op, args, result, time.monotonic()))
        if op == "expire" and result.get("ok"):
            expired.set()

    member = RaftMember(address, [address], tmp_path, "secret", RaftSettings(), on_applied=on_applied)
    lease_s = 0.3
    try:
        assert member.call("bootstrap", {"a": {"address": address, "role": "node"}}, timeout=10)["ok"]
        submitted = time.monotonic()
        assert member.call("acquire", "mod", "a", lease_s)["ok"]
        acquired = member.snapshot()["leases"]["mod"]
        assert expired.wait(30), "the leader never expired an unrenewed lease"
    finally:
        member.destroy()
    expiries = [(args, at) for op, args, result, at in applied if op == "expire" and result["ok"]]
    assert len(expiries) == 1
    args, at = expiries[0]
    assert list(args) == ["mod", acquired["epoch"], acquired["seq"]]
    assert at >= submitted + lease_s
