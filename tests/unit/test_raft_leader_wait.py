"""Commands submitted while no Raft leader is known: they wait a bounded time,
and one the caller gave up on is never committed later (pysyncobj's own
commandsWaitLeader queue forwarded it whenever a leader appeared)."""
import time

import pytest
from pysyncobj import FAIL_REASON

from raft.member import RaftCommandError, RaftMember, command_failure
from raft.settings import RaftSettings
from tests.conftest import free_ports

SECRET = "leader-wait-test-secret-0123456789abcdef"




@pytest.fixture
def trio(tmp_path):
    """start(name) -> a RaftMember of a three-member cluster on 127.0.0.1."""
    addrs = {n: f"127.0.0.1:{p}" for n, p in zip("abc", free_ports(3))}
    started: dict[str, RaftMember] = {}

    def start(name: str) -> RaftMember:
        started[name] = RaftMember(addrs[name], list(addrs.values()), tmp_path / name, SECRET,
                                   RaftSettings())
        return started[name]

    yield start
    for m in started.values():
        m.destroy()


def _commit_eventually(member: RaftMember, resource: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert member.call("set_eligible", resource, None, 1.5, timeout=2.0)["ok"]
            return
        except RaftCommandError:
            assert time.monotonic() < deadline, f"{resource} never committed"


def test_a_command_given_up_without_a_leader_is_never_committed_later(trio):
    a = trio("a")
    time.sleep(0.3)
    assert a.leader_address() is None           # b and c are not running: no leader

    started = time.monotonic()
    with pytest.raises(RaftCommandError, match="nothing sent") as timed_out:
        a.call("set_eligible", "gave-up", None, 1.5, timeout=0.8)
    assert not timed_out.value.outcome_unknown
    assert time.monotonic() - started < 2.0
    cancelled = a.submit("set_eligible", "cancelled", None, 1.5, leader_wait_s=60)
    assert cancelled.cancel()
    refused = a.submit("set_eligible", "refused", None, 1.5, leader_wait_s=0.3)
    with pytest.raises(RaftCommandError, match="no Raft leader known"):
        refused.result(5)

    trio("b"), trio("c")
    _commit_eventually(a, "after-heal")
    time.sleep(1.0)                              # room for a late forward to commit
    leases = a.snapshot()["leases"]
    assert "after-heal" in leases
    assert not {"gave-up", "cancelled", "refused"} & set(leases), sorted(leases)


def test_a_command_submitted_during_the_election_commits_once_a_leader_is_known(trio):
    a = trio("a")
    time.sleep(0.3)
    waited = a.submit("set_eligible", "waited", None, 1.5, leader_wait_s=30)
    time.sleep(0.3)
    assert not waited.done()                    # held, not refused at once
    trio("b"), trio("c")
    assert waited.result(30)["ok"]
    assert "waited" in a.snapshot()["leases"]


def test_failure_messages_say_whether_the_command_may_still_commit():
    unknown = command_failure("renew", FAIL_REASON.LEADER_CHANGED)
    assert unknown.outcome_unknown and "outcome unknown" in str(unknown)
    assert "may still commit" in str(unknown)
    for err in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.DISCARDED, FAIL_REASON.NOT_LEADER,
                FAIL_REASON.REQUEST_DENIED, FAIL_REASON.QUEUE_FULL):
        definite = command_failure("renew", err)
        assert not definite.outcome_unknown and str(definite).startswith("renew not committed: ")
    assert "nothing sent" in str(command_failure("renew", FAIL_REASON.MISSING_LEADER))
