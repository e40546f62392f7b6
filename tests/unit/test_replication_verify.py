"""python -m replication verify against a real receiver on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.lab import wait_until

from replication import channel
from replication.__main__ import main
from replication import frame as fr
from replication.channel import ChannelClient, ChannelClosed
from replication.ops import Op, OpKind
from replication.primary_link import ChannelRemote
from replication.receiver import Receiver
from replication.reintegration import Reintegration
from tests.conftest import REPO

SECRET = "correct horse battery staple"
BLOCK = 64 * 1024


@pytest.fixture(autouse=True)
def fresh_refusal_log():
    channel._last_refusal.clear()     # refusals are rate-limited per peer and reason


@pytest.fixture
def pair(tmp_path):
    """A local tree and a receiver holding an identical copy (made by a real reintegration)."""
    local, copy = tmp_path / "local", tmp_path / "copy"
    local.mkdir()
    copy.mkdir()
    (local / "big").write_bytes(os.urandom(4 * BLOCK))
    (local / "sub").mkdir()
    (local / "sub" / "small").write_text("hello\n")
    (local / "sub" / "link").symlink_to("small")
    receiver = Receiver(str(copy), SECRET, "127.0.0.1", 0).start()
    client = ChannelClient(*receiver.address, SECRET, 1, "apply", timeout=5)
    client.connect()
    Reintegration(str(local), ChannelRemote(client, 5.0), block_size=BLOCK).run()
    client.close()
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    yield local, copy, receiver, secret_file
    receiver.stop()


def verify_args(pair, *extra):
    local, _, receiver, secret_file = pair
    host, port = receiver.address
    return ["verify", "--root", str(local), "--peer", f"{host}:{port}",
            "--secret-file", str(secret_file), "--block-size", str(BLOCK), *extra]


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            digest = (hashlib.sha256(Path(path).read_bytes()).hexdigest()
                      if os.path.isfile(path) and not os.path.islink(path) else "")
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def keep_mtime(path: Path):
    """Change a file's content without changing its mtime (content-only difference)."""
    st = os.stat(path)
    return lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_identical_copies_exit_0(pair, capsys):
    assert main(verify_args(pair)) == 0
    out = capsys.readouterr().out.splitlines()
    size = 4 * BLOCK + len("hello\n")
    assert out == [f"verify: copies identical (2 files, {size} bytes)"]


def test_changed_block_missing_file_and_extra_file_are_each_reported(pair, capsys):
    local, copy, _, _ = pair
    restore = keep_mtime(copy / "big")
    with open(copy / "big", "r+b") as f:
        f.seek(2 * BLOCK + 10)
        f.write(b"CHANGED")
    restore()
    restore_dir = keep_mtime(copy / "sub")
    (copy / "sub" / "small").unlink()
    restore_dir()
    restore_root = keep_mtime(copy)
    (copy / "extra").write_text("only on the copy\n")
    restore_root()
    before = snapshot(local), snapshot(copy)

    assert main(verify_args(pair)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "verify: 3 differences in 3 files"
    assert out[:-1] == [
        "big: content differs in 1 range(s), 65536 bytes (offset+length: 131072+65536)",
        "extra: only on the peer (there: file)",
        "sub/small: missing on the peer (here: file)",
    ]
    assert (snapshot(local), snapshot(copy)) == before, "verify changed a copy"


def test_json_report(pair, capsys):
    local, copy, _, _ = pair
    (copy / "sub" / "small").write_text("HELLO\n")
    assert main(verify_args(pair, "--json")) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["identical"] is False and doc["files"] == 2
    kinds = {(d["path"], d["kind"]) for d in doc["differences"]}
    assert ("sub/small", "content") in kinds
    content = next(d for d in doc["differences"] if d["kind"] == "content")
    assert content["ranges"] == [[0, 6]]

    (copy / "sub" / "small").write_text("hello\n")
    os.utime(copy / "sub" / "small", ns=(0, os.stat(local / "sub" / "small").st_mtime_ns))
    os.utime(copy / "sub", ns=(0, os.stat(local / "sub").st_mtime_ns))
    assert main(verify_args(pair, "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["identical"] is True and doc["differences"] == []


def test_errors_exit_2_with_one_line(pair, tmp_path, capsys):
    local, _, receiver, secret_file = pair
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not the secret\n")
    args = verify_args(pair)
    args[args.index("--secret-file") + 1] = str(wrong)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: verify ")

    receiver.set_min_epoch(5)
    assert main(verify_args(pair)) == 2          # epoch 1 is stale now
    assert "epoch 1 is older" in capsys.readouterr().err

    args = verify_args(pair)
    args[args.index("--root") + 1] = str(tmp_path / "nope")
    assert main(args) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_verify_does_not_raise_the_receivers_epoch(pair):
    _, _, receiver, _ = pair
    receiver.set_min_epoch(3)
    assert main(verify_args(pair, "--epoch", "3")) == 0
    assert receiver.min_epoch == 3


def test_command_line_exit_codes(pair):
    _, copy, _, _ = pair

    def run():
        return subprocess.run([sys.executable, "-m", "replication", *verify_args(pair)],
                              cwd=REPO, capture_output=True, text=True, timeout=30)

    done = run()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("verify: copies identical")
    (copy / "extra").write_text("x")
    done = run()
    assert done.returncode == 1
    assert "extra: only on the peer (there: file)" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "replication", *verify_args(pair, "--block-size", "100")],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--block-size must be a positive multiple of 4096" in bad.stderr


def test_metadata_and_many_ranges_are_reported(pair, capsys):
    local, copy, _, _ = pair
    os.chmod(copy / "sub" / "small", 0o600)
    os.chmod(local / "sub" / "small", 0o644)
    restore = keep_mtime(copy / "big")
    with open(copy / "big", "r+b") as f:
        for block in range(4):
            f.seek(block * BLOCK)
            original = f.read(1)
            f.seek(block * BLOCK)
            f.write(bytes([original[0] ^ 0xFF]))   # always a change (random content may hold "X")
    restore()
    assert main(verify_args(pair)) == 1
    out = capsys.readouterr().out.splitlines()
    assert "sub/small: mode differs (here '0o644', peer '0o600')" in out
    assert ("big: content differs in 1 range(s), 262144 bytes (offset+length: 0+262144)" in out)
    assert out[-1] == "verify: 2 differences in 2 files"


# ---- query-only connections: verify next to a connected primary -----------------------------

def _primary(receiver):
    client = ChannelClient(*receiver.address, SECRET, 1, "apply", timeout=5)
    client.connect()
    return client


def test_verify_runs_while_a_primary_is_connected(pair, capsys):
    local, copy, receiver, _ = pair
    primary = _primary(receiver)
    try:
        # a readable mode: the receiver applies it as given, and this test may run unprivileged
        primary.wait(primary.send_op(Op(OpKind.CREATE, "live", mode=0o644)))
        sessions = receiver.status()["sessions"]
        assert main(verify_args(pair)) == 1          # "live" exists only there
        assert "live: only on the peer" in capsys.readouterr().out
        status = receiver.status()
        assert status["connected"] and status["sessions"] == sessions
        wait_until("the verify's connection ended",
                   lambda: receiver.status()["query_connections"] == 0, timeout=5)
        primary.wait(primary.send_op(Op(OpKind.WRITE, "live", data=b"still the primary")))
    finally:
        primary.close()
    assert (copy / "live").read_bytes() == b"still the primary"


def test_an_older_receiver_is_refused_before_it_drops_its_primary(pair, capsys, monkeypatch):
    _, _, receiver, _ = pair
    primary = _primary(receiver)
    try:
        # a receiver that encrypts but knows no query-only connections (its HELLO)
        monkeypatch.setattr(channel, "accept_features",
                            lambda offered: int(channel.Feature.NEGOTIATE | channel.Feature.AEAD))
        assert main(verify_args(pair)) == 2
        err = capsys.readouterr().err
        assert "is an older version without query-only connections" in err
        assert receiver.status()["connected"]
        primary.wait(primary.send_op(Op(OpKind.CREATE, "after")))
    finally:
        primary.close()


def test_a_query_only_connection_sends_no_ops(pair):
    local, copy, receiver, _ = pair
    primary = _primary(receiver)
    client = ChannelClient(*receiver.address, SECRET, 1, "apply", timeout=5, query_only=True)
    client.connect()
    try:
        assert client.features & fr.Feature.QUERY_ONLY
        assert {e.path for e in client.query_tree()} >= {"big", "sub"}
        with pytest.raises(ChannelClosed, match="sends no ops"):
            client.send_op(Op(OpKind.CREATE, "nope"))
        with client._send_lock:                       # a hand-made op frame all the same
            client._send([fr.encode_op(Op(OpKind.CREATE, "nope"), 1, 1)])
        with pytest.raises(ChannelClosed, match="query-only connection sent OP"):
            client.ping()
        assert not (copy / "nope").exists()
        primary.wait(primary.send_op(Op(OpKind.CREATE, "primary-still-there")))
    finally:
        client.close()
        primary.close()
