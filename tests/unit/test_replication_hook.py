"""The replication hook client against a real Unix-socket server playing the owner.
Through a real FUSE mount (root): tests/lab/test_replication_hook.py."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from chaos.lab import wait_until
from replication import hook_client
from replication.hook_client import HookClient, HookFailed
from replication.ops import Op, OpKind
from replication.sender import ReplicationUnavailable, Sender, SenderState


class Owner:
    """Answers each JSON line as ``behaviour(request)`` says: a dict to send,
    "silent" to never answer, "close" to hang up, or raw bytes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[dict] = []
        self.behaviour = lambda req: {"ok": True, "result": None}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                conn.close()
                return
            buf += chunk
        request = json.loads(buf)
        self.requests.append(request)
        answer = self.behaviour(request)
        if answer == "silent":
            self._held.append(conn)
            return
        if answer != "close":
            conn.sendall(answer if isinstance(answer, bytes) else (json.dumps(answer) + "\n").encode())
        conn.close()

    def cmds(self) -> list[str]:
        return [r["cmd"] for r in self.requests]

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def owner(tmp_path):
    o = Owner(str(tmp_path / "owner.sock"))
    yield o
    o.close()


def test_peer_lost_ok_sends_the_request_and_returns(owner, caplog):
    caplog.set_level("INFO", logger="replication.hook")
    hook = HookClient(owner.path, "db", 7, timeout_s=2.0)
    hook.peer_lost("no acknowledgement: timed out")
    assert owner.requests == [{"cmd": "replication_peer_lost", "module": "db", "epoch": 7,
                               "reason": "no acknowledgement: timed out"}]
    assert any("event=hook_peer_lost ok=true seconds=" in r.getMessage() for r in caplog.records)


def test_peer_lost_refused_raises_with_the_owners_message(owner, caplog):
    owner.behaviour = lambda req: {"ok": False, "error": "no quorum: cannot commit"}
    hook = HookClient(owner.path, "db", 7, timeout_s=2.0)
    with pytest.raises(HookFailed, match="refused replication_peer_lost: no quorum: cannot commit"):
        hook.peer_lost("x")
    assert any("event=hook_peer_lost ok=false" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("answer, message", [
    ("silent", "did not answer replication_peer_lost within 0.3 s"),
    ("close", "closed the connection without answering"),
    (b"not json\n", "invalid JSON"),
    ({"result": 1}, "refused replication_peer_lost"),
])
def test_peer_lost_without_a_clear_ok_raises(owner, answer, message):
    owner.behaviour = lambda req: answer
    hook = HookClient(owner.path, "db", 7, timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(HookFailed, match=message):
        hook.peer_lost("x")
    assert time.monotonic() - started < 2.0


def test_peer_lost_with_no_socket_raises(tmp_path):
    hook = HookClient(str(tmp_path / "nobody.sock"), "db", 7, timeout_s=0.3)
    with pytest.raises(HookFailed, match="nothing listening on owner socket .*nobody.sock"):
        hook.peer_lost("x")


def test_in_sync_returns_at_once_and_retries_until_the_owner_takes_it(owner, monkeypatch):
    monkeypatch.setattr(hook_client, "IN_SYNC_RETRY_S", 0.05)
    owner.behaviour = lambda req: {"ok": False, "error": "busy"}
    hook = HookClient(owner.path, "db", 3, timeout_s=1.0)
    started = time.monotonic()
    hook.in_sync()
    assert time.monotonic() - started < 0.2
    wait_until("3 in-sync attempts", lambda: len(owner.requests) >= 3, 5)
    owner.behaviour = lambda req: {"ok": True, "result": None}
    wait_until("the in-sync thread to end", lambda: not any(t.is_alive() for t in hook._threads), 5)
    count = len(owner.requests)
    time.sleep(0.2)
    assert len(owner.requests) == count      # stopped retrying once ok
    assert set(owner.cmds()) == {"replication_in_sync"}
    assert owner.requests[-1] == {"cmd": "replication_in_sync", "module": "db", "epoch": 3}
    hook.stop()


def test_in_sync_retries_while_the_socket_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(hook_client, "IN_SYNC_RETRY_S", 0.05)
    path = str(tmp_path / "later.sock")
    hook = HookClient(path, "db", 3, timeout_s=1.0)
    hook.in_sync()
    time.sleep(0.2)
    late = Owner(path)      # the owner (re)starts: it must still learn it
    try:
        wait_until("in-sync at the late owner", lambda: late.cmds() == ["replication_in_sync"], 5)
    finally:
        hook.stop()
        late.close()


def test_peer_lost_cancels_a_pending_in_sync_and_is_never_overtaken(owner, monkeypatch):
    monkeypatch.setattr(hook_client, "IN_SYNC_RETRY_S", 0.05)
    refuse_in_sync = threading.Event()
    refuse_in_sync.set()
    owner.behaviour = lambda req: ({"ok": False, "error": "busy"}
                                   if req["cmd"] == "replication_in_sync" and refuse_in_sync.is_set()
                                   else {"ok": True, "result": None})
    hook = HookClient(owner.path, "db", 3, timeout_s=1.0)
    hook.in_sync()
    wait_until("2 in-sync attempts", lambda: len(owner.requests) >= 2, 5)
    hook.peer_lost("gone")
    refuse_in_sync.clear()
    time.sleep(0.3)
    cmds = owner.cmds()
    # After the loss, the stale in-sync is never delivered.
    assert cmds[-1] == "replication_peer_lost"
    assert "replication_peer_lost" not in cmds[:-1]
    hook.stop()


def test_progress_is_best_effort(owner, tmp_path, monkeypatch):
    monkeypatch.setattr(hook_client, "PROGRESS_INTERVAL_S", 0.05)
    hook = HookClient(owner.path, "db", 3, timeout_s=1.0)
    assert hook.progress({"phase": "reintegrating", "bytes_done": 10})
    assert owner.requests[0] == {"cmd": "replication_progress", "module": "db", "epoch": 3,
                                 "progress": {"phase": "reintegrating", "bytes_done": 10}}
    owner.behaviour = lambda req: "silent"
    started = time.monotonic()
    assert not hook.progress({"x": 1})
    assert time.monotonic() - started < hook_client.PROGRESS_TIMEOUT_S + 0.5
    assert not HookClient(str(tmp_path / "none.sock"), "db", 3).progress({"x": 1})

    # The periodic reporter sends only while status() says a reintegration runs.
    owner.behaviour = lambda req: {"ok": True, "result": None}
    owner.requests.clear()
    running = threading.Event()
    hook.report_progress(lambda: {"phase": "reintegrating"} if running.is_set() else None)
    time.sleep(0.3)
    assert owner.requests == []
    running.set()
    wait_until("2 progress reports", lambda: len(owner.requests) >= 2, 5)
    hook.stop()


def write(i: int) -> Op:
    return Op(OpKind.WRITE, f"f{i}", offset=i, data=b"x")


class SilentChannel:
    """A receiver that never acknowledges (the network channel has its own tests)."""

    def __init__(self):
        self.closed = False

    def send_op(self, op):
        if self.closed:
            raise ConnectionError("closed")
        return 1

    def wait(self, seq, timeout):
        time.sleep(min(timeout, 0.05))
        raise TimeoutError(f"seq {seq} not acknowledged")

    def close(self):
        self.closed = True


class Recorder:
    def __init__(self):
        self.ops = []

    def record(self, op):
        self.ops.append(op)


def test_sender_with_a_refusing_owner_fails_the_next_writes(owner):
    owner.behaviour = lambda req: {"ok": False, "error": "no quorum"}
    hook = HookClient(owner.path, "db", 5, timeout_s=1.0)
    rec = Recorder()
    sender = Sender(rec, hook.peer_lost, ack_timeout_s=0.05)
    sender.attach(SilentChannel())
    with pytest.raises(ReplicationUnavailable, match="no quorum"):
        sender.wait(sender.submit(write(1)))
    assert sender.state is SenderState.FAILED
    with pytest.raises(ReplicationUnavailable):
        sender.submit(write(2))
    assert [op.path for op in rec.ops] == ["f1", "f2"]    # recorded, but not acknowledged
    assert owner.cmds() == ["replication_peer_lost"]
    assert owner.requests[0]["epoch"] == 5 and "no acknowledgement" in owner.requests[0]["reason"]


def test_sender_with_an_accepting_owner_goes_alone(owner):
    hook = HookClient(owner.path, "db", 5, timeout_s=1.0)
    rec = Recorder()
    sender = Sender(rec, hook.peer_lost, ack_timeout_s=0.05)
    sender.attach(SilentChannel())
    sender.wait(sender.submit(write(1)))
    assert sender.state is SenderState.ALONE
    sender.wait(sender.submit(write(2)))
    assert [op.path for op in rec.ops] == ["f1", "f2"]
    assert owner.cmds() == ["replication_peer_lost"]


def test_sender_with_no_owner_listening_fails_writes(tmp_path):
    hook = HookClient(str(tmp_path / "gone.sock"), "db", 5, timeout_s=0.3)
    sender = Sender(Recorder(), hook.peer_lost, ack_timeout_s=0.05)
    sender.attach(SilentChannel())
    with pytest.raises(ReplicationUnavailable, match="nothing listening"):
        sender.wait(sender.submit(write(1)))


def test_mount_cli_checks_the_hook_options(capsys):
    from replication.__main__ import main

    base = ["mount", "--root", "/nonexistent", "--peer", "127.0.0.1:1", "--secret-file", "/x",
            "--state", "/nonexistent"]
    with pytest.raises(SystemExit):
        main(base + ["--hook-socket", "/run/x.sock"])
    assert "--hook-socket needs --module NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--module", "db"])
    assert "--module is only used with --hook-socket" in capsys.readouterr().err


def test_primary_link_reports_in_sync_then_a_refused_loss_fails_writes(owner, tmp_path):
    """PrimaryLink against a real receiver, with the hook as its owner callbacks."""
    import os

    from replication.primary_link import PrimaryLink
    from replication.receiver import Receiver

    secret = "correct horse battery staple"
    local, copy = tmp_path / "local", tmp_path / "copy"
    local.mkdir()
    copy.mkdir()
    (local / "data").write_bytes(b"hello" * 1000)
    owner.behaviour = lambda req: ({"ok": False, "error": "no quorum"}
                                   if req["cmd"] == "replication_peer_lost"
                                   else {"ok": True, "result": None})
    receiver = Receiver(str(copy), secret, "127.0.0.1", 0).start()
    hook = HookClient(owner.path, "db", 1, timeout_s=1.0)
    root_fd = os.open(local, os.O_PATH | os.O_DIRECTORY)
    link = PrimaryLink(root_fd, *receiver.address, secret, 1, str(tmp_path / "state"),
                       ack_timeout_s=0.3, retry_s=0.1,
                       peer_lost=hook.peer_lost, on_in_sync=hook.in_sync)
    try:
        link.start()
        wait_until("in-sync at the owner", lambda: "replication_in_sync" in owner.cmds(), 10)
        assert (copy / "data").read_bytes() == b"hello" * 1000
        receiver.stop()
        with open(local / "data", "r+b") as f:
            f.write(b"HELLO")
        with pytest.raises(ReplicationUnavailable, match="no quorum"):
            with link.sender.ordering_lock:
                ticket = link.sender.submit(Op(OpKind.WRITE, "data", offset=0, data=b"HELLO"))
            link.sender.wait(ticket)
        assert owner.cmds()[-1] == "replication_peer_lost"
        assert link.sender.state is SenderState.FAILED
    finally:
        link.stop()
        hook.stop()
        receiver.stop()
        os.close(root_fd)
