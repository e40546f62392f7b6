"""Channel + receiver over real sockets on 127.0.0.1, applying into tmp dirs."""
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import xxhash

from chaos.lab import wait_until

from replication import channel
from replication import frame as fr
from replication.applier import Applier
from replication.channel import (AuthError, ChannelClient, ChannelClosed, PeerTimeout,
                                 ReplicationRefused, StaleEpoch)
from replication.ops import WRITE_SETS_TIMES, Op, OpKind
from replication import receiver as receiver_mod
from replication.receiver import Receiver
from tests.conftest import REPO

SECRET = "correct horse battery staple"


@pytest.fixture(autouse=True)
def fresh_refusal_log():
    channel._last_refusal.clear()     # refusals are rate-limited per peer and reason


@pytest.fixture
def make_receiver(tmp_path):
    receivers = []

    def make(min_epoch=0, name="copy"):
        root = tmp_path / name
        root.mkdir()
        r = Receiver(str(root), SECRET, "127.0.0.1", 0, min_epoch=min_epoch).start()
        r.path = root
        receivers.append(r)
        return r

    yield make
    for r in receivers:
        r.stop()


@pytest.fixture
def receiver(make_receiver):
    return make_receiver()


@pytest.fixture
def connect():
    clients = []

    def make(r, epoch=1, ack_mode="apply", secret=SECRET, **kw):
        c = ChannelClient(r.address[0], r.address[1], secret, epoch, ack_mode, timeout=5, **kw)
        c.connect()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def send_all(client, ops):
    seqs = [client.send_op(op) for op in ops]
    for s in seqs:
        client.wait(s)
    return seqs


def send_raw(client, data):
    """Put hand-made bytes on an authenticated connection as the next op."""
    with client._send_lock:
        seq = client._next_seq
        with client._cond:
            client._outstanding.add(seq)
        client._send([data])
        client._next_seq = seq + 1
    return seq


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def manifest(root):
    """What must be identical between two copies (not inode numbers or dir mtimes)."""
    out = []
    with Applier(str(root)) as ap:
        for e in ap.tree_manifest():
            digest = xxhash.xxh3_64_hexdigest(open(os.path.join(root, e.path), "rb").read()) \
                if e.type == "f" else ""
            out.append((e.path, e.type, e.size, e.mode, e.uid, e.gid, e.target, e.nlink,
                        e.mtime_ns if e.type != "d" else 0, digest))
    return out


SCENARIO = [
    Op(OpKind.MKDIR, "docs", mode=0o755), Op(OpKind.MKDIR, "docs/deep", mode=0o700),
    Op(OpKind.CREATE, "docs/a.txt", mode=0o644),
    Op(OpKind.WRITE, "docs/a.txt", offset=0, data=b"first version\n" * 1000),
    Op(OpKind.WRITE, "docs/a.txt", offset=5, data=b"XXXX"),
    Op(OpKind.CREATE, "docs/deep/b.bin", mode=0o600),
    Op(OpKind.WRITE, "docs/deep/b.bin", offset=1 << 20, data=os.urandom(300_000)),
    Op(OpKind.TRUNCATE, "docs/deep/b.bin", length=(1 << 20) + 100_000),
    Op(OpKind.CREATE, "new", mode=0o640), Op(OpKind.WRITE, "new", data=b"replacement"),
    Op(OpKind.RENAME, "new", "docs/a.txt"),
    Op(OpKind.LINK, "docs/a.txt", "hard"), Op(OpKind.SYMLINK, "sym", "docs/a.txt"),
    Op(OpKind.CHMOD, "docs/deep/b.bin", mode=0o4750),
    Op(OpKind.MKNOD, "fifo", mode=stat.S_IFIFO | 0o600),
    Op(OpKind.FALLOCATE, "docs/deep/b.bin", mode=3, offset=4096, length=65536),
    Op(OpKind.CREATE, "gone"), Op(OpKind.UNLINK, "gone"),
    Op(OpKind.MKDIR, "empty", mode=0o755), Op(OpKind.RMDIR, "empty"),
    Op(OpKind.UTIMENS, "docs/a.txt", atime_ns=1, mtime_ns=1_700_000_000_000_000_001),
    Op(OpKind.UTIMENS, "sym", atime_ns=1, mtime_ns=1_600_000_000_000_000_000),
    Op(OpKind.UTIMENS, "docs/deep/b.bin", atime_ns=2, mtime_ns=1_500_000_000_000_000_000),
    Op(OpKind.UTIMENS, "fifo", atime_ns=3, mtime_ns=1_400_000_000_000_000_000),
    Op(OpKind.FSYNC, "docs/a.txt"), Op(OpKind.FSYNC, ""),
]


def test_ops_round_trip_and_trees_match(receiver, connect, tmp_path):
    if os.geteuid() == 0:
        SCENARIO_ROOT = SCENARIO + [Op(OpKind.CHOWN, "hard", uid=1000, gid=1000)]
    else:
        SCENARIO_ROOT = SCENARIO
    c = connect(receiver)
    send_all(c, SCENARIO_ROOT)
    local = tmp_path / "local"
    local.mkdir()
    with Applier(str(local)) as ap:
        for op in SCENARIO_ROOT:
            ap.apply(op)
    assert manifest(receiver.path) == manifest(local)
    assert (receiver.path / "docs" / "a.txt").read_bytes() == b"replacement"
    st = receiver.status()
    assert st["ops_applied"] == len(SCENARIO_ROOT) and st["errors"] == 0
    assert st["connected"] and st["epoch"] == 1 and st["ack_mode"] == "apply"
    assert st["last_seq"] == c.last_seq


def test_pipelined_writes_apply_in_order(receiver, connect):
    c = connect(receiver)
    c.wait(c.send_op(Op(OpKind.CREATE, "log")))
    seqs = [c.send_op(Op(OpKind.WRITE, "log", offset=(i % 10) * 8, data=b"%08d" % i))
            for i in range(1000)]
    assert seqs == list(range(seqs[0], seqs[0] + 1000))
    c.wait(seqs[-1])
    c.drain()
    assert c.unacked == 0
    assert (receiver.path / "log").read_bytes() == b"".join(b"%08d" % i for i in range(990, 1000))


def test_concurrent_senders_share_one_channel(receiver, connect):
    c = connect(receiver)
    errors = []

    def worker(n):
        try:
            c.wait(c.send_op(Op(OpKind.CREATE, f"t{n}")))
            for i in range(200):
                c.wait(c.send_op(Op(OpKind.WRITE, f"t{n}", offset=i * 4, data=b"%04d" % i)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = b"".join(b"%04d" % i for i in range(200))
    for n in range(4):
        assert (receiver.path / f"t{n}").read_bytes() == expected
    assert c.last_seq == 4 * 201


@pytest.fixture
def gate(receiver):
    """Hold the receiver's apply thread on ops whose path starts with 'slow'."""
    gate = threading.Event()
    entered = threading.Event()
    real = receiver.applier.apply

    def apply(op):
        if op.path.startswith("slow"):
            entered.set()
            assert gate.wait(10)
        real(op)

    receiver.applier.apply = apply
    yield gate, entered
    gate.set()


def test_ack_mode_apply_waits_for_the_apply(receiver, connect, gate):
    release, entered = gate
    c = connect(receiver, ack_mode="apply")
    seq = c.send_op(Op(OpKind.CREATE, "slow"))
    assert entered.wait(5)
    with pytest.raises(PeerTimeout, match=f"no ack for seq {seq}"):
        c.wait(seq, timeout=0.2)
    release.set()
    c.wait(seq)
    assert (receiver.path / "slow").exists()


def test_ack_mode_receipt_acks_before_apply_but_not_fsync(receiver, connect, gate):
    release, entered = gate
    c = connect(receiver, ack_mode="receipt")
    s1 = c.send_op(Op(OpKind.CREATE, "slow"))
    s2 = c.send_op(Op(OpKind.WRITE, "slow", data=b"x"))
    s3 = c.send_op(Op(OpKind.FSYNC, "slow"))
    c.wait(s1)
    c.wait(s2)                                  # received, not applied yet
    assert entered.wait(5) and not (receiver.path / "slow").exists()
    with pytest.raises(PeerTimeout):
        c.wait(s3, timeout=0.2)                 # durability is never acked on receipt
    release.set()
    c.wait(s3)
    assert (receiver.path / "slow").read_bytes() == b"x"


def test_receipt_mode_reports_late_apply_errors(receiver, connect):
    late = []
    got = threading.Event()
    c = connect(receiver, ack_mode="receipt",
                on_late_error=lambda *e: (late.append(e), got.set()))
    seq = c.send_op(Op(OpKind.WRITE, "missing/file", data=b"x"))
    c.wait(seq)                                  # receipt ack: the error comes later
    assert got.wait(5)
    assert late[0][0] == seq and late[0][1] == errno.ENOENT
    assert list(c.late_errors) == late


def test_async_mode_does_not_wait_but_drains(receiver, connect, gate):
    release, entered = gate
    c = connect(receiver, ack_mode="async")
    seqs = [c.send_op(Op(OpKind.CREATE, "slow"))]
    seqs += [c.send_op(Op(OpKind.WRITE, "slow", offset=i, data=b"a")) for i in range(50)]
    t0 = time.monotonic()
    for s in seqs:
        c.wait(s)                                # returns at once in async mode
    assert time.monotonic() - t0 < 0.5 and c.unacked > 0
    with pytest.raises(PeerTimeout):
        c.drain(timeout=0.2)
    release.set()
    c.drain()
    assert c.unacked == 0 and (receiver.path / "slow").read_bytes() == b"a" * 50


def _still_serving(receiver, connect, name="after"):
    c = connect(receiver, epoch=receiver.min_epoch)
    send_all(c, [Op(OpKind.CREATE, name), Op(OpKind.WRITE, name, data=b"ok")])
    assert (receiver.path / name).read_bytes() == b"ok"


def test_corrupted_payload_is_refused_and_channel_reset(receiver, connect, caplog):
    c = connect(receiver)
    c.wait(c.send_op(Op(OpKind.CREATE, "f")))
    bad = bytearray(fr.encode_op(Op(OpKind.WRITE, "f", data=os.urandom(5000)), 1, c.last_seq + 1))
    bad[-100] ^= 0x10
    seq = send_raw(c, bytes(bad))
    with pytest.raises(ReplicationRefused, match="payload digest mismatch") as info:
        c.wait(seq)
    assert info.value.errno == errno.EBADMSG
    wait_for(lambda: c.closed is not None)
    assert "reset the channel" in str(c.closed)
    with pytest.raises(ChannelClosed):
        c.send_op(Op(OpKind.WRITE, "f", data=b"more"))
    assert (receiver.path / "f").read_bytes() == b""          # nothing applied
    assert any("event=frame_refused" in r.getMessage() and "seq=%d" % seq in r.getMessage()
               for r in caplog.records)
    _still_serving(receiver, connect)


def test_corrupted_header_resets_the_channel(receiver, connect):
    c = connect(receiver)
    bad = bytearray(fr.encode_op(Op(OpKind.CREATE, "x"), 1, 1))
    bad[30] ^= 0x01
    seq = send_raw(c, bytes(bad))
    with pytest.raises(ChannelClosed, match="header checksum mismatch"):
        c.wait(seq)
    assert not (receiver.path / "x").exists()
    _still_serving(receiver, connect)


def test_oversize_header_claiming_a_gigabyte(receiver, connect):
    c = connect(receiver)
    frame_bytes = bytearray(fr.encode_op(Op(OpKind.WRITE, "f", data=b"x"), 1, 1))
    fields = list(fr._HDR.unpack_from(frame_bytes))
    fields[18] = fields[19] = 1 << 30                       # payload_len, raw_len
    frame_bytes[:fr._HDR.size] = fr._HDR.pack(*fields)
    frame_bytes[fr._HDR.size:fr.HEADER_SIZE] = fr._CHK.pack(
        xxhash.xxh3_64_intdigest(bytes(frame_bytes[:fr._HDR.size])))
    seq = send_raw(c, bytes(frame_bytes[:fr.HEADER_SIZE]))  # and no body ever comes
    with pytest.raises(ReplicationRefused, match=r"exceeds MAX_PAYLOAD"):
        c.wait(seq)
    wait_for(lambda: c.closed is not None)
    assert receiver.status()["errors"] >= 1
    _still_serving(receiver, connect)


def test_stale_epochs_are_refused(make_receiver, connect):
    r = make_receiver(min_epoch=5)
    with pytest.raises(StaleEpoch, match="epoch 3 is older than this receiver's epoch 5"):
        connect(r, epoch=3)
    c = connect(r, epoch=5)
    stale = fr.encode_op(Op(OpKind.CREATE, "old"), 4, c.last_seq + 1)   # frame of epoch 4
    with pytest.raises(StaleEpoch, match="epoch 4 is older") as info:
        c.wait(send_raw(c, stale))
    assert info.value.errno == errno.ESTALE
    assert not (r.path / "old").exists()
    c.wait(c.send_op(Op(OpKind.CREATE, "ok")))                        # same channel goes on
    assert (r.path / "ok").exists()
    r.set_min_epoch(7)                                                # Raft moved on
    wait_for(lambda: c.closed is not None)
    assert isinstance(c.closed, StaleEpoch)
    with pytest.raises(StaleEpoch):
        c.send_op(Op(OpKind.CREATE, "late"))
    assert not (r.path / "late").exists()
    c7 = connect(r, epoch=7)
    c7.wait(c7.send_op(Op(OpKind.CREATE, "new-primary")))
    assert (r.path / "new-primary").exists()


@pytest.mark.parametrize("op", [
    Op(OpKind.CREATE, "../x"), Op(OpKind.WRITE, "/etc/passwd", data=b"root::0:0::/:/bin/sh\n"),
    Op(OpKind.CREATE, "a/../../x"), Op(OpKind.CREATE, "link/planted"),
    Op(OpKind.RENAME, "inside", "../x"), Op(OpKind.LINK, "inside", "link/planted"),
    Op(OpKind.WRITE, "link", data=b"x"), Op(OpKind.DELETE, "link/victim"),
], ids=lambda op: op.describe())
def test_path_escapes_are_refused(receiver, connect, tmp_path, op):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    os.symlink(outside, receiver.path / "link")
    (receiver.path / "inside").write_text("in")
    passwd = open("/etc/passwd", "rb").read()
    c = connect(receiver)
    with pytest.raises(ReplicationRefused, match="path refused|symlink|not a regular") as info:
        c.wait(c.send_op(op))
    assert info.value.errno in (errno.EINVAL, errno.ELOOP)
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "keep"
    assert not (tmp_path / "x").exists() and open("/etc/passwd", "rb").read() == passwd
    c.wait(c.send_op(Op(OpKind.CREATE, "fine")))          # the channel is still in service
    assert (receiver.path / "fine").exists()


def test_wrong_or_missing_secret(receiver, connect, caplog):
    for secret in ("not the secret", ""):
        with pytest.raises(AuthError, match="refused us: authentication failed: wrong or "
                                            "missing cluster secret"):
            connect(receiver, secret=secret)
    lines = [r.getMessage() for r in caplog.records if r.name == "replication.channel"]
    assert any(line.startswith("event=peer_refused peer=127.0.0.1:") and
               'reason="authentication failed: wrong or missing cluster secret"' in line
               for line in lines)
    assert receiver.status()["sessions"] == 0
    _still_serving(receiver, connect)


def test_impostor_receiver_is_detected(tmp_path, connect):
    root = tmp_path / "other"
    root.mkdir()
    other = Receiver(str(root), "another secret", "127.0.0.1", 0).start()
    try:
        with pytest.raises(AuthError, match="refused us"):
            connect(other)      # the receiver refuses: the sender's proof does not verify
    finally:
        other.stop()


def test_non_protocol_peer_is_refused(receiver, connect, caplog):
    with socket.create_connection(receiver.address) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 200)
        s.settimeout(5)
        reply = s.recv(65536)
    assert fr.decode_frame(reply).header.status == errno.EPROTO
    assert any("not a replication peer" in r.getMessage() and "bad magic" in r.getMessage()
               for r in caplog.records)
    _still_serving(receiver, connect)


def test_newer_sender_replaces_older_and_older_is_refused(receiver, connect):
    c1 = connect(receiver, epoch=3)
    c1.wait(c1.send_op(Op(OpKind.CREATE, "one")))
    c2 = connect(receiver, epoch=4)
    wait_for(lambda: c1.closed is not None)
    assert "replaced by a sender with epoch 4" in str(c1.closed)
    with pytest.raises(StaleEpoch, match="epoch 3 is older"):
        connect(receiver, epoch=3)
    c2.wait(c2.send_op(Op(OpKind.CREATE, "two")))
    c3 = connect(receiver, epoch=4)                    # equal epoch: replaces too
    wait_for(lambda: c2.closed is not None)
    c3.wait(c3.send_op(Op(OpKind.CREATE, "three")))
    assert sorted(os.listdir(receiver.path)) == ["one", "three", "two"]
    assert receiver.status()["sessions"] == 3


def test_queries_for_reintegration(receiver, connect):
    c = connect(receiver)
    data = os.urandom(300_000)
    c.send_op(Op(OpKind.MKDIR, "d", mode=0o755))
    c.send_op(Op(OpKind.CREATE, "d/f"))
    c.send_op(Op(OpKind.WRITE, "d/f", data=data))      # queries see every op sent before them
    tree = c.query_tree()
    assert [(e.path, e.type, e.size) for e in tree] == [("d", "d", 0), ("d/f", "f", 300_000)]
    assert c.query_tree(include_root=True)[0].path == ""
    digests = c.query_digests("d/f", 65536)
    assert digests == [xxhash.xxh3_64_intdigest(data[i:i + 65536])
                       for i in range(0, len(data), 65536)]
    assert c.query_digests("d/f", 65536, start=131072) == digests[2:]
    assert c.read_block("d/f", 1000, 5000) == data[1000:6000]
    with pytest.raises(ReplicationRefused) as info:
        c.query_digests("d/missing", 4096)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(ReplicationRefused, match="path refused"):
        c.read_block("../etc/passwd", 0, 100)
    assert c.ping() < 1.0


def test_big_answers_are_chunked(receiver, connect, monkeypatch):
    monkeypatch.setattr(receiver_mod, "TREE_CHUNK_BYTES", 2048)
    monkeypatch.setattr(receiver_mod, "DIGESTS_PER_REPLY", 3)
    replies = []
    c = connect(receiver)
    real_handle = c._handle
    c._handle = lambda f: (replies.append(f) if f.ftype == fr.FrameType.REPLY else None,
                           real_handle(f))
    names = [f"dir{d}/file-{i:04d}" for d in range(3) for i in range(100)]
    for d in range(3):
        c.send_op(Op(OpKind.MKDIR, f"dir{d}", mode=0o755))
    for n in names:
        c.send_op(Op(OpKind.CREATE, n))
    data = os.urandom(10 * 4096 + 1)
    c.send_op(Op(OpKind.WRITE, names[0], data=data))
    tree = c.query_tree()
    assert len(replies) > 5 and all(f.header.flags & fr.Flag.MORE for f in replies[:-1])
    assert [e.path for e in tree] == sorted(names[:100] + names[100:200] + names[200:]
                                            + ["dir0", "dir1", "dir2"],
                                            key=lambda p: p.split("/"))
    replies.clear()
    digests = c.query_digests(names[0], 4096)
    assert len(replies) == 4 and len(digests) == 11
    assert digests[-1] == xxhash.xxh3_64_intdigest(data[-1:])


def test_cli_receive_serves_reports_and_stops(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    root = tmp_path / "cli"
    root.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "replication", "receive", "--root", str(root), "--listen",
         f"127.0.0.1:{port}", "--secret-file", str(secret), "--status-interval", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("event=listening")
        c = ChannelClient("127.0.0.1", port, SECRET, 2, timeout=5)
        c.connect()
        c.wait(c.send_op(Op(OpKind.CREATE, "via-cli")))
        proc.send_signal(signal.SIGUSR1)
        line = proc.stdout.readline()
        assert line.startswith("event=status ") and "ops_applied=1" in line
        assert "connected=true" in line and "epoch=2" in line
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (root / "via-cli").exists()
    assert "event=receiver_stopped" in proc.stderr.read()


def test_a_bug_in_one_op_does_not_stop_the_session(receiver, connect):
    real = receiver.applier.apply

    def apply(op):
        if op.path == "boom":
            raise RuntimeError("simulated bug")
        real(op)

    receiver.applier.apply = apply
    c = connect(receiver)
    with pytest.raises(ReplicationRefused, match="simulated bug") as info:
        c.wait(c.send_op(Op(OpKind.CREATE, "boom")))
    assert info.value.errno == errno.EIO
    c.wait(c.send_op(Op(OpKind.CREATE, "next")))
    assert (receiver.path / "next").exists()


def test_replication_stands_alone():
    code = ("import sys, replication.receiver, replication.__main__; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hacluster', 'raft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_an_unencodable_op_is_refused_locally_and_the_channel_goes_on(receiver, connect):
    c = connect(receiver)
    with pytest.raises(fr.FrameError, match="out of range"):
        c.send_op(Op(OpKind.WRITE, "f", offset=-1, data=b"x"))
    c.wait(c.send_op(Op(OpKind.CREATE, "f")))
    c.drain(timeout=2)
    assert c.unacked == 0 and c.last_seq == 1


# ---- features, and peers from before them --------------------------------------------------

def test_a_current_pair_agrees_on_write_times(receiver, connect):
    c = connect(receiver)
    assert c.features == (fr.Feature.WRITE_TIMES | fr.Feature.ACTIVITY_LOG | fr.Feature.AEAD
                          | fr.Feature.DURABLE_MARK)
    c.wait(c.send_op(Op(OpKind.CREATE, "f")))
    before = receiver.status()["ops_applied"]
    c.wait(c.send_op(Op(OpKind.WRITE, "f", data=b"x", mode=WRITE_SETS_TIMES, atime_ns=5,
                        mtime_ns=1_600_000_000_000_000_001)))
    assert receiver.status()["ops_applied"] == before + 1    # no separate UTIMENS
    assert os.stat(receiver.path / "f").st_mtime_ns == 1_600_000_000_000_000_001


def test_a_receiver_without_write_times_gets_a_separate_utimens(receiver, connect, monkeypatch):
    # a receiver that knows features and encryption, but not WRITE_TIMES
    monkeypatch.setattr(channel, "accept_features",
                        lambda offered: int(fr.Feature.NEGOTIATE | fr.Feature.AEAD))
    c = connect(receiver)
    assert c.features == fr.Feature.AEAD
    c.wait(c.send_op(Op(OpKind.CREATE, "f")))
    before = receiver.status()["ops_applied"]
    seq = c.send_op(Op(OpKind.WRITE, "f", data=b"x", mode=WRITE_SETS_TIMES, atime_ns=5,
                       mtime_ns=1_600_000_000_000_000_001))
    c.wait(seq)
    assert receiver.status()["ops_applied"] == before + 2
    assert (receiver.path / "f").read_bytes() == b"x"
    assert os.stat(receiver.path / "f").st_mtime_ns == 1_600_000_000_000_000_001
    # the WRITE's own error is reported, not hidden behind its UTIMENS's
    seq = c.send_op(Op(OpKind.WRITE, "missing/f", data=b"x", mode=WRITE_SETS_TIMES,
                       mtime_ns=1))
    with pytest.raises(ReplicationRefused) as info:
        c.wait(seq)
    assert info.value.errno == errno.ENOENT and "WRITE missing/f" in str(info.value)
    _still_serving(receiver, connect)


def test_a_client_without_encryption_is_refused_and_nothing_is_applied(receiver, connect):
    """A client from before encryption (no feature word; it would send ops in clear
    after AUTH) is refused at the handshake: every frame on the channel is sealed."""
    sock = socket.create_connection(receiver.address, timeout=5)
    try:
        reader = channel.FrameReader(sock)
        nonce_c = os.urandom(channel.NONCE_SIZE)
        sock.sendall(fr.encode_hello(1, fr.AckMode.APPLY, nonce_c))
        refusal = reader.next_frame()
        assert refusal.ftype == fr.FrameType.AUTH and refusal.header.status == errno.EPROTO
        assert "encrypted" in refusal.message and "upgrade" in refusal.message
        sock.sendall(fr.encode_op(Op(OpKind.CREATE, "old-client"), 1, 1))
    finally:
        sock.close()
    assert not (receiver.path / "old-client").exists()
    _still_serving(receiver, connect)


# ---- who reads the socket ------------------------------------------------------------------

def test_synchronous_waits_read_their_own_acks(receiver, connect, monkeypatch):
    """With the ack thread held off for good, waiters still get every answer."""
    monkeypatch.setattr(channel, "IDLE_GRACE_S", 3600.0)
    c = connect(receiver)
    c.wait(c.send_op(Op(OpKind.CREATE, "f")))
    for i in range(200):
        c.wait(c.send_op(Op(OpKind.WRITE, "f", offset=i, data=b"x")))
    assert c.ping() > 0
    assert [e.path for e in c.query_tree()] == ["f"]
    assert (receiver.path / "f").read_bytes() == b"x" * 200


def test_when_nobody_waits_the_ack_thread_reads(receiver, connect, gate):
    release, entered = gate
    c = connect(receiver, ack_mode="async")
    c.send_op(Op(OpKind.CREATE, "slow"))
    for i in range(20):
        c.send_op(Op(OpKind.WRITE, "slow", offset=i, data=b"a"))
    assert entered.wait(5) and c.unacked > 0
    release.set()
    wait_for(lambda: c.unacked == 0)          # no wait(), no drain(): the ack thread read them
    receiver.set_min_epoch(5)
    wait_for(lambda: isinstance(c.closed, StaleEpoch))   # an EPOCH frame nobody asked for


def test_late_error_hooks_run_on_the_ack_thread(receiver, connect):
    threads = []
    got = threading.Event()
    c = connect(receiver, ack_mode="receipt",
                on_late_error=lambda *e: (threads.append(threading.current_thread().name),
                                          got.set()))
    c.wait(c.send_op(Op(OpKind.WRITE, "missing/file", data=b"x")))
    c.wait(c.send_op(Op(OpKind.FSYNC, "")))   # this waiter may read the late error itself
    assert got.wait(5)
    assert threads[0].startswith("repl-acks-")


def test_an_op_arriving_while_the_apply_thread_works_waits_its_turn(receiver, connect, gate):
    """Ops are applied by the reading thread only when nothing is queued or being
    applied: a lone op behind held work is queued, not applied ahead of it."""
    release, entered = gate
    c = connect(receiver)
    with c._send_lock:                      # two frames in one send: the first is not alone
        first = c._next_seq
        frames = fr.encode_op(Op(OpKind.CREATE, "slow"), 1, first) + \
            fr.encode_op(Op(OpKind.WRITE, "slow", data=b"1"), 1, first + 1)
        with c._cond:
            c._outstanding.update((first, first + 1))
        c._send([frames])
        c._next_seq = first + 2
    assert entered.wait(5)                  # the apply thread is held on "slow"
    lone = c.send_op(Op(OpKind.RENAME, "slow", "renamed"))
    with pytest.raises(PeerTimeout):
        c.wait(lone, timeout=0.3)
    assert not (receiver.path / "renamed").exists()
    release.set()
    c.wait(lone)
    assert (receiver.path / "renamed").read_bytes() == b"1"
    assert not (receiver.path / "slow").exists()


def test_a_barrier_waits_while_the_receiver_progresses_and_not_once_it_stops(receiver, connect):
    """wait_through's timeout is on progress: ops the receiver applies one by
    one, each well within the timeout but all of them together far beyond it,
    do not make a barrier fail; a receiver that stops answering does."""
    steps = threading.Semaphore(0)
    real = receiver.applier.apply

    def apply(op):
        if op.path.startswith("step"):
            assert steps.acquire(timeout=10)
        real(op)
    receiver.applier.apply = apply
    c = connect(receiver, ack_mode="async")
    seqs = [c.send_op(Op(OpKind.CREATE, f"step{i}")) for i in range(15)]
    stop = threading.Event()

    def release_one_by_one():
        for _ in seqs:
            if stop.wait(0.15):
                return
            steps.release()
    t = threading.Thread(target=release_one_by_one, daemon=True)
    t.start()
    c.wait_through(seqs[-1], timeout=1.0)     # 15 x 0.15 s: longer than the timeout
    t.join(5)
    assert c.acked_through >= seqs[-1]
    stuck = c.send_op(Op(OpKind.CREATE, "step-never"))
    with pytest.raises(PeerTimeout, match=f"ops up to seq {stuck}"):
        c.wait_through(stuck, timeout=0.3)
    stop.set()
    steps.release()


def test_the_receiver_reports_how_far_its_copy_is_durable(receiver, connect):
    """Feature.DURABLE_MARK: a first mark (0) after a syncfs at the session's
    start, then, after ops were applied, the seq of the last one once a syncfs
    that followed it returned."""
    c = connect(receiver, ack_mode="async")
    assert c.features & fr.Feature.DURABLE_MARK
    wait_until("the first durable mark", lambda: c.durable_through >= 0, timeout=10)
    seq = c.send_op(Op(OpKind.CREATE, "f"))
    seq = c.send_op(Op(OpKind.WRITE, "f", data=b"x" * 5000))
    c.drain(timeout=5)
    wait_until("a durable mark covering the write", lambda: c.durable_through >= seq, timeout=10)
    assert (receiver.path / "f").read_bytes() == b"x" * 5000


def _count_sends(monkeypatch):
    """The sends made by the calling thread (not the pings of the client's own)."""
    sends = []
    real = channel.send_parts
    me = threading.get_ident()

    def counting(sock, parts, sealer=None):
        if threading.get_ident() == me:
            sends.append(len(parts))
        return real(sock, parts, sealer)

    monkeypatch.setattr(channel, "send_parts", counting)
    return sends


def test_a_batch_goes_in_one_send_and_each_op_is_answered_for_itself(receiver, connect,
                                                                      monkeypatch):
    c = connect(receiver)
    c.wait(c.send_op(Op(OpKind.CREATE, "f")))
    sends = _count_sends(monkeypatch)
    before = receiver.status()["ops_applied"]
    seqs = c.send_ops([Op(OpKind.WRITE, "f", offset=i * 4, data=b"%04d" % i) for i in range(5)]
                      + [Op(OpKind.WRITE, "missing/f", data=b"x"),
                         Op(OpKind.WRITE, "f", offset=20, data=b"tail"),
                         Op(OpKind.FSYNC, "f")])
    assert len(sends) == 1                        # one send for eight ops
    assert seqs == list(range(seqs[0], seqs[0] + 8))
    for i, seq in enumerate(seqs):
        if i == 5:
            with pytest.raises(ReplicationRefused) as info:
                c.wait(seq)
            assert info.value.errno == errno.ENOENT
        else:
            c.wait(seq)
    assert (receiver.path / "f").read_bytes() == b"00000001000200030004tail"
    assert receiver.status()["ops_applied"] == before + 7
    _still_serving(receiver, connect)


def test_a_batch_to_a_receiver_without_write_times_keeps_each_writes_error(receiver, connect,
                                                                           monkeypatch):
    monkeypatch.setattr(channel, "accept_features",
                        lambda offered: int(fr.Feature.NEGOTIATE | fr.Feature.AEAD))
    c = connect(receiver)
    c.wait(c.send_op(Op(OpKind.CREATE, "f")))
    seqs = c.send_ops([Op(OpKind.WRITE, "f", data=b"x", mode=WRITE_SETS_TIMES, atime_ns=5,
                          mtime_ns=1_600_000_000_000_000_001),
                       Op(OpKind.WRITE, "missing/f", data=b"x", mode=WRITE_SETS_TIMES,
                          mtime_ns=1)])
    assert seqs[1] == seqs[0] + 2                 # each WRITE went with its UTIMENS
    c.wait(seqs[0])
    with pytest.raises(ReplicationRefused) as info:
        c.wait(seqs[1])
    assert info.value.errno == errno.ENOENT and "WRITE missing/f" in str(info.value)
    assert os.stat(receiver.path / "f").st_mtime_ns == 1_600_000_000_000_000_001


def test_an_async_batch_with_a_refusal_is_answered_in_order(receiver, connect):
    late = []
    c = connect(receiver, ack_mode="async", on_late_error=lambda *e: late.append(e))
    seqs = c.send_ops([Op(OpKind.CREATE, "g"), Op(OpKind.WRITE, "nowhere/g", data=b"x"),
                       Op(OpKind.WRITE, "g", data=b"after"), Op(OpKind.FSYNC, "g")])
    c.wait_through(seqs[-1], 5)
    # the refusal came before the barrier's answer: counted by the time it returns
    assert c.late_error_count == 1 and late[0][0] == seqs[1]
    assert (receiver.path / "g").read_bytes() == b"after"
