"""The replication channel against an attacker on the path (issue 17): a real
receiver and a real ChannelClient talk through a TCP relay that records every
byte and can modify, inject or forge in either direction. Nothing it does takes
effect; the data never crosses in clear. The record layer alone:
tests/unit/test_replication_secure_channel.py."""
from __future__ import annotations

import errno
import os
import socket
import stat
import threading

import pytest

from replication import frame as fr
from replication.channel import ChannelClient, ChannelError, FrameReader
from replication.ops import Op, OpKind
from replication.receiver import Receiver

SECRET = "correct horse battery staple"


class Relay:
    """client <-> relay <-> receiver. ``tamper[direction]`` (``"c2s"``/``"s2c"``)
    is called with each chunk once ``armed`` and returns what to forward."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.captured = {"c2s": bytearray(), "s2c": bytearray()}
        self.tamper: dict[str, object] = {}
        self.armed = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(self.target)
        self.socks += [client, server]
        threading.Thread(target=self._pump, args=(client, server, "c2s"), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, "s2c"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(65536):
                self.captured[direction] += data
                fn = self.tamper.get(direction)
                if fn is not None and self.armed.is_set():
                    data = fn(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for s in self.socks:
            s.close()


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    receiver = Receiver(str(root), SECRET, "127.0.0.1", 0, min_epoch=0).start()
    relay = Relay(receiver.address)
    client = ChannelClient(*relay.address, SECRET, 1, "apply", timeout=3)
    client.connect()
    yield receiver, relay, client, root
    client.close()
    relay.close()
    receiver.stop()


def test_the_data_never_crosses_in_clear(setup):
    _, relay, client, root = setup
    secret_data = os.urandom(64 * 1024)      # lz4 leaves random bytes as they are
    client.wait(client.send_op(Op(OpKind.CREATE, "payroll.db")))
    client.wait(client.send_op(Op(OpKind.WRITE, "payroll.db", data=secret_data)))
    assert (root / "payroll.db").read_bytes() == secret_data
    wire = bytes(relay.captured["c2s"])
    assert len(wire) > len(secret_data)
    assert secret_data[:32] not in wire and secret_data[-32:] not in wire
    assert b"payroll.db" not in wire, "paths are data too"


def test_a_modified_record_is_refused_and_nothing_is_applied(setup):
    receiver, relay, client, root = setup
    client.wait(client.send_op(Op(OpKind.CREATE, "f")))

    def flip(data: bytes) -> bytes:
        b = bytearray(data)
        b[len(b) // 2] ^= 0x01
        return bytes(b)
    relay.tamper["c2s"] = flip
    relay.armed.set()
    seq = client.send_op(Op(OpKind.WRITE, "f", data=b"rewritten by the attacker?" * 50))
    with pytest.raises(ChannelError):
        client.wait(seq, timeout=3)
    assert (root / "f").read_bytes() == b""


@pytest.mark.parametrize("op", [
    Op(OpKind.CREATE, "injected"),
    Op(OpKind.CREATE, "suid-shell", mode=stat.S_IFREG | 0o4755),
    Op(OpKind.MKNOD, "sda", mode=stat.S_IFBLK | 0o600, rdev=os.makedev(8, 0)),
], ids=["create", "setuid", "mknod"])
def test_injected_frames_are_refused(setup, op):
    receiver, relay, client, root = setup
    client.wait(client.send_op(Op(OpKind.CREATE, "f")))
    forged = fr.encode_op(op, 1, client.last_seq + 1)
    relay.tamper["c2s"] = lambda data: forged + data
    relay.armed.set()
    seq = client.send_op(Op(OpKind.WRITE, "f", data=b"x"))
    with pytest.raises(ChannelError):
        client.wait(seq, timeout=3)
    assert not (root / op.path).exists()
    assert sorted(os.listdir(root)) == ["f"]


def test_a_forged_ack_is_not_accepted(setup, monkeypatch):
    """The attacker drops the op on its way and answers with an ACK of its own: the
    client must not count the write as on the secondary."""
    receiver, relay, client, root = setup
    client.wait(client.send_op(Op(OpKind.CREATE, "f")))
    seq = client.last_seq + 1
    relay.tamper["c2s"] = lambda data: b""                      # swallowed
    relay.armed.set()
    got = client.send_op(Op(OpKind.WRITE, "f", data=b"only on the primary"))
    assert got == seq
    relay.socks[0].sendall(fr.encode_ack(seq, first_seq=seq, epoch=1))   # forged, to the client
    with pytest.raises(ChannelError):
        client.wait(seq, timeout=3)
    assert (root / "f").read_bytes() == b""


def test_a_replayed_record_is_refused(setup):
    receiver, relay, client, root = setup
    client.wait(client.send_op(Op(OpKind.CREATE, "f")))
    start = len(relay.captured["c2s"])
    client.wait(client.send_op(Op(OpKind.WRITE, "f", data=b"once")))
    record = bytes(relay.captured["c2s"][start:])
    relay.tamper["c2s"] = lambda data: data
    relay.armed.set()
    relay.socks[1].sendall(record)                              # the same bytes again
    seq = client.send_op(Op(OpKind.WRITE, "f", offset=4, data=b"!"))
    with pytest.raises(ChannelError):
        client.wait(seq, timeout=3)
    assert (root / "f").read_bytes() == b"once"


def test_a_hello_announcing_a_big_body_is_refused_before_it_is_read(tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    receiver = Receiver(str(root), SECRET, "127.0.0.1", 0).start()
    try:
        sock = socket.create_connection(receiver.address, timeout=5)
        big = fr.encode_hello(1, fr.AckMode.APPLY, os.urandom(2 * 1024 * 1024))
        sock.sendall(big[:fr.HEADER_SIZE])
        answer = FrameReader(sock).next_frame()
        assert answer is not None and answer.ftype == fr.FrameType.AUTH
        assert answer.header.status == errno.EPROTO and "2048" in answer.message
        sock.close()
    finally:
        receiver.stop()


def test_a_flood_of_unauthenticated_connections_is_bounded_and_the_sender_replicates(tmp_path):
    """~300 connections that never authenticate (from another address, a byte now and
    then): the receiver keeps at most a few of them, each for one handshake deadline,
    without its megabyte buffer; the real sender connects and replicates meanwhile."""
    from replication import channel
    root = tmp_path / "copy"
    root.mkdir()
    receiver = Receiver(str(root), SECRET, "127.0.0.1", 0).start()
    attackers = []
    try:
        threads_before = threading.active_count()
        for _ in range(300):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            try:
                s.connect(receiver.address)
                s.sendall(b"H")                 # a byte, as slowly as it likes
            except OSError:
                pass                            # refused at once: counted as bounded too
            attackers.append(s)
        extra = threading.active_count() - threads_before
        assert extra <= channel.PREAUTH_MAX_PER_HOST + 1, extra
        client = ChannelClient(*receiver.address, SECRET, 1, "apply", timeout=5)
        client.connect()
        try:
            client.wait(client.send_op(Op(OpKind.CREATE, "still-replicating")))
        finally:
            client.close()
        assert (root / "still-replicating").exists()
    finally:
        for s in attackers:
            s.close()
        receiver.stop()
