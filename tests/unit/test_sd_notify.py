"""systemd's notification protocol, against a real AF_UNIX datagram socket, and the
two decisions behind READY=1 and WATCHDOG=1 (the lab test runs a whole daemon)."""
from __future__ import annotations

import os
import socket

import pytest

from hacluster.node.sd_notify import Notifier, raft_up, watchdog_due


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock, str(tmp_path / "notify")
    sock.close()


def test_messages_reach_the_socket_as_systemd_reads_them(listener):
    sock, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "PATH": "/bin"}
    n = Notifier(environ)
    assert n.enabled and n.watchdog_s == 4.0
    # Read and removed: the daemon's children must not speak for the unit.
    assert environ == {"PATH": "/bin"}
    n.ready("member n1 of cluster lab; Raft leader n2")
    n.watchdog()
    n.stopping("stopping: stopped", 331.5)
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=member n1 of cluster lab; Raft leader n2"]
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert sock.recv(4096).decode().split("\n") == ["STOPPING=1", "STATUS=stopping: stopped",
                                                    "EXTEND_TIMEOUT_USEC=331500000"]


def test_an_abstract_socket_name_is_written_with_an_at_sign():
    name = f"hacluster-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("waiting")
        assert sock.recv(4096) == b"STATUS=waiting"


def test_outside_systemd_nothing_is_sent_and_nothing_fails():
    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None
    n.ready("x")
    n.watchdog()


def test_a_watchdog_meant_for_another_process_is_not_ours(listener):
    _, path = listener
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                     "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                     "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 1.0


def test_a_socket_that_went_away_is_said_once_and_the_daemon_goes_on(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    n.watchdog()
    n.watchdog()
    assert len([r for r in caplog.records if "event=sd_notify_failed" in r.getMessage()]) == 1


def test_ready_means_a_leader_known_this_member_in_the_membership_and_caught_up():
    members = {"n1": {}, "n2": {}}
    assert raft_up("10.0.0.2:7400", members, "n1", caught_up=True)
    assert not raft_up(None, members, "n1", caught_up=True)              # no leader yet
    assert not raft_up("10.0.0.2:7400", {}, "n1", caught_up=True)        # bootstrap not applied
    assert not raft_up("10.0.0.2:7400", members, "n3", caught_up=True)   # not (yet) a member
    assert not raft_up("10.0.0.2:7400", members, "n1", caught_up=False)  # still replaying


def test_the_watchdog_is_fed_every_half_interval_and_only_while_raft_ticks():
    # interval 10 s: fed at most every 5 s ...
    assert watchdog_due(now=105.0, last_sent=100.0, interval_s=10.0, raft_ticked_at=104.9)
    assert not watchdog_due(now=104.0, last_sent=100.0, interval_s=10.0, raft_ticked_at=103.9)
    # ... and not when Raft's tick thread has not turned since the last feed.
    assert not watchdog_due(now=120.0, last_sent=100.0, interval_s=10.0, raft_ticked_at=99.0)
