"""The hardened Raft transport on a real RaftMember (pysyncobj, loopback sockets):
what a connection without the secret may send, and for how long."""
import socket
import struct
import time
import zlib

import pytest

import pysyncobj.pickle as pickle
from pysyncobj.encryptor import getEncryptor
from raft.hardened_transport import HardenedTransport, TransportLimits
from raft.member import RaftMember
from raft.settings import RaftSettings
from tests.conftest import free_ports

SECRET = "transport-unit-secret-0123456789abcdef0123"


@pytest.fixture(params=[0.5])
def member(request, tmp_path, monkeypatch):
    """A single-member cluster, leader; ``request.param``: the handshake deadline."""
    monkeypatch.setattr(HardenedTransport, "limits",
                        TransportLimits(handshake_deadline_s=request.param, preauth_per_address=3))
    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    m = RaftMember(addr, [addr], tmp_path, SECRET, RaftSettings())
    deadline = time.monotonic() + 10
    while not m.is_leader():
        assert time.monotonic() < deadline, "the member never became leader"
        time.sleep(0.02)
    yield m, port
    m.destroy()


def _closed_by_member(sock, timeout=10.0):
    """True once the member has closed the connection (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _token(message, secret=SECRET):
    data = zlib.compress(pickle.dumps(message), 3)
    token = getEncryptor(secret).encrypt_at_time(data, int(time.monotonic()))
    return struct.pack("i", len(token)) + token


def test_a_length_bomb_is_refused_before_its_body_is_buffered(member):
    m, port = member
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(struct.pack("i", 2 ** 31 - 1) + b"\0" * 4096)
    assert _closed_by_member(s)
    assert m.is_leader() and m.call("set_eligible", "r", None, 1.5)["ok"]


def test_a_negative_length_is_refused(member):
    m, port = member
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(struct.pack("i", -5))
    assert _closed_by_member(s)


def test_a_replayed_token_does_not_lift_the_limit(member):
    """A valid first message (as one captured on the wire would be) passes Fernet, but
    only a message carrying this connection's random key proves the secret: the next
    announcement is still held to the pre-authentication limit."""
    m, port = member
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(_token(b"k" * 32))
    s.settimeout(5)
    assert s.recv(4096)  # the member answered with its own random key
    s.sendall(struct.pack("i", 1 << 20) + b"\0" * 65536)
    assert _closed_by_member(s)


def test_silent_connections_are_closed_at_the_handshake_deadline(member):
    m, port = member
    s = socket.create_connection(("127.0.0.1", port))
    assert _closed_by_member(s)
    assert m.is_leader()


@pytest.mark.parametrize("member", [600.0], indirect=True)
def test_connections_in_handshake_are_capped_per_address(member):
    m, port = member
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    # Accepted in order: the fourth is over the cap (the deadline is far away).
    extra = socket.create_connection(("127.0.0.1", port))
    assert _closed_by_member(extra)
    for s in held:
        s.close()


def test_peers_with_the_secret_still_replicate(tmp_path):
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    members = [RaftMember(a, addrs, tmp_path / a.replace(":", "_"), SECRET, RaftSettings())
               for a in addrs]
    try:
        deadline = time.monotonic() + 20
        while not any(x.is_leader() for x in members):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        leader = next(x for x in members if x.is_leader())
        # Entries bigger than pysyncobj's 64 KiB batch and than the pre-auth limit.
        big = "x" * 200_000
        assert leader.call("set_eligible", big, None, 1.5, timeout=10)["ok"]
        for x in members:
            while big not in str(x.snapshot()):
                assert time.monotonic() < deadline + 20
                time.sleep(0.05)
    finally:
        for x in members:
            x.destroy()


def test_the_open_files_limit_is_raised_within_the_hard_limit():
    import subprocess
    import sys

    # In a child with soft 256 / hard 4096: raised to the hard limit (under 65536).
    code = ("import resource; from raft.hardened_transport import raise_open_files_limit; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); "
            "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(4096, 4096) (4096, 4096)"
