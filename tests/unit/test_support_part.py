"""hacluster/node/support_part.py: a node's part built from real files, within its
size and time budgets, no credential in it, served in chunks by the part store."""
from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from hacluster import cli
from hacluster.node import cluster_config, support_part, support_snapshot as plan
from hacluster.node.support_part import PartStore, Skip, Source, build_part


def unpack(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


@pytest.fixture
def config(tmp_path):
    assert cli.main(["cluster", "init", "--name", "demo", "--node", "n1=127.0.0.1", "--node", "n2=127.0.0.2",
                     "--witness", "w=127.0.0.3", "--out", str(tmp_path / "cfg")]) == 0
    directory = tmp_path / "cfg" / "n1"
    (directory / "hooks.json").write_text(json.dumps(
        {"hooks": [{"on": ["*"], "url": "https://hooks.example/services/T0/SECRETPATH"}]}))
    (directory / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (directory / "notes.txt").write_text("mine\n")
    flags = {"state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
             "log_dir": str(tmp_path / "log")}
    return cluster_config.load(directory, flags=flags)


def test_a_part_holds_the_configuration_but_no_credential_and_says_what_it_left_out(config):
    secret = config.read_secret()
    credential = config.read_raft_secret()
    # a file that quotes the secret (a careless script): it is redacted, and counted
    leaky = Source("status/leaky.txt", "a test file", lambda: f"x={secret} y={credential}\n".encode())
    data = support_part.build_local(config, [leaky], note="no daemon here")
    files = unpack(data)
    manifest = json.loads(files.pop(plan.PART_MANIFEST))
    for name, content in files.items():
        assert secret.encode() not in content and credential.encode() not in content, name
    assert b"redacted" in files["status/leaky.txt"]
    assert {f["path"]: f.get("redacted") for f in manifest["files"]}["status/leaky.txt"] == 2
    assert json.loads(files["config/cluster.json"])["self"] == "n1"
    assert b"SECRETPATH" not in files["config/hooks.json"]
    assert b"https://hooks.example/(masked)" in files["config/hooks.json"]
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert "named like a secret" in skipped["config/secret"]
    assert "named like a secret" in skipped["config/tls.key"]
    assert "not a hacluster configuration file" in skipped["config/notes.txt"]
    assert skipped["status/cluster_status.json"] == "no daemon here"
    assert manifest["node"] == "n1" and manifest["built_by"] == "cli" and manifest["note"] == "no daemon here"
    assert {f["path"]: f["size"] for f in manifest["files"]} == {n: len(c) for n, c in files.items()}
    versions = json.loads(files["versions.json"])
    assert versions["libraries"]["pysyncobj"] and versions["uname"].startswith(os.uname().sysname)
    paths = json.loads(files["paths.json"])
    assert paths["state_dir"]["path"] == str(config.paths.state_dir)


def test_the_size_budget_leaves_out_what_does_not_fit_and_says_so():
    sources = [Source("a.txt", "A", lambda: b"a" * 600), Source("b.txt", "B", lambda: b"b" * 600),
               Source("c.txt", "C", lambda: b"c" * 300)]
    files = unpack(build_part("n1", sources, lambda: [], deadline=float("inf"), max_bytes=1000))
    manifest = json.loads(files[plan.PART_MANIFEST])
    assert [f["path"] for f in manifest["files"]] == ["a.txt", "c.txt"]
    assert "over the part's size budget" in manifest["skipped"][0]["reason"]
    assert manifest["skipped"][0]["path"] == "b.txt"


def test_the_time_budget_stops_reading_and_each_file_left_is_listed():
    now = [0.0]

    def slow(n: int) -> Source:
        def read() -> bytes:
            now[0] += 5.0       # each read takes 5 s on this clock
            return b"x"
        return Source(f"f{n}.txt", "slow", read)
    files = unpack(build_part("n1", [slow(n) for n in range(5)], lambda: [], deadline=12.0,
                             clock=lambda: now[0]))
    manifest = json.loads(files[plan.PART_MANIFEST])
    assert [f["path"] for f in manifest["files"]] == ["f0.txt", "f1.txt", "f2.txt"]
    assert [s["path"] for s in manifest["skipped"]] == ["f3.txt", "f4.txt"]
    assert all("time budget" in s["reason"] for s in manifest["skipped"])


def test_a_source_that_fails_is_left_out_with_its_reason_and_a_bad_name_never_enters(tmp_path):
    def gone() -> bytes:
        return (tmp_path / "nope").read_bytes()

    def skip() -> bytes:
        raise Skip("not running here")
    sources = [Source("gone.txt", "G", gone), Source("skip.txt", "S", skip),
               Source("../escape", "E", lambda: b"x"), Source("ok.txt", "O", lambda: b"fine")]
    files = unpack(build_part("n1", sources, lambda: [], deadline=float("inf")))
    manifest = json.loads(files.pop(plan.PART_MANIFEST))
    assert set(files) == {"ok.txt"}
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert "No such file or directory" in reasons["gone.txt"] and reasons["skip.txt"] == "not running here"


def test_the_tail_of_a_file_is_bounded_and_starts_at_a_line(tmp_path):
    path = tmp_path / "big.log"
    path.write_bytes(b"".join(b"line %06d\n" % i for i in range(100_000)))     # 1.2 MB
    tail = support_part.tail_bytes(path, 1000)
    assert len(tail) <= 1000 and tail.startswith(b"line ") and tail.endswith(b"line 099999\n")
    assert support_part.tail_bytes(path, 10 << 20) == path.read_bytes()


def test_the_daemon_log_comes_from_its_standard_error_when_that_is_a_file(tmp_path):
    log = tmp_path / "stderr"
    log.write_bytes(b"event=daemon_started\n")
    with open(log, "rb") as f:
        assert support_part.daemon_log("node", environ={}, stderr_fd=f.fileno()) == b"event=daemon_started\n"
    r, w = os.pipe()
    try:
        with pytest.raises(Skip, match="standard error is not a file"):
            support_part.daemon_log("node", environ={}, stderr_fd=r)
    finally:
        os.close(r)
        os.close(w)


def test_the_store_serves_a_part_in_chunks_then_forgets_it():
    store = PartStore(max_parts=2, keep_s=60, clock=lambda: 0.0)
    part_id = store.begin()
    assert store.chunk(part_id, 0) == {"id": part_id, "ready": False}
    data = os.urandom(plan.CHUNK_BYTES * 2 + 10)
    store.finish(part_id, data)
    got, offset = b"", 0
    while True:
        reply = store.chunk(part_id, offset)
        piece = base64.b64decode(reply["data"])
        got += piece
        offset += len(piece)
        if offset >= reply["size"]:
            break
    assert got == data
    with pytest.raises(KeyError, match="no snapshot part"):
        store.chunk(part_id, 0)


def test_the_store_is_bounded_and_parts_expire():
    now = [0.0]
    store = PartStore(max_parts=2, keep_s=60, clock=lambda: now[0])
    a, b = store.begin(), store.begin()
    with pytest.raises(ValueError, match="2 snapshot parts are being built"):
        store.begin()
    store.finish(a, b"built")
    c = store.begin()           # the built one makes room
    with pytest.raises(KeyError):
        store.chunk(a, 0)
    store.finish(b, None, "building it failed: disk")
    with pytest.raises(RuntimeError, match="disk"):
        store.chunk(b, 0)
    now[0] = 61.0
    with pytest.raises(KeyError, match="expired"):
        store.chunk(c, 0)
    with pytest.raises(ValueError, match="outside the part"):
        d = store.begin()
        store.finish(d, b"abc")
        store.chunk(d, 4)


def test_a_chunk_fits_in_a_peer_control_reply():
    from hacluster.node.peer_control import MAX_BODY_BYTES
    store = PartStore()
    part_id = store.begin()
    store.finish(part_id, os.urandom(plan.CHUNK_BYTES * 2))
    assert len(json.dumps({"ok": True, "result": store.chunk(part_id, 0)}).encode()) < MAX_BODY_BYTES


def test_disk_usage_counts_the_state_directory_and_free_space(config):
    state = config.paths.state_dir
    (state / "raft").mkdir(parents=True)
    (state / "raft" / "journal").write_bytes(b"x" * 100_000)
    usage = support_part.disk_usage(config.paths, deadline=float("inf"))
    assert usage["by_entry"]["raft"] >= 100_000 and usage["complete"] is True
    assert usage["filesystems"]["state_dir"]["free"] > 0
    assert "error" in usage["filesystems"]["log_dir"]       # not made yet
    assert Path(usage["state_dir"]) == state


def test_under_systemd_the_daemon_log_is_journald_s_for_its_unit_bounded(tmp_path, monkeypatch):
    # a journalctl on PATH that says what it was asked and prints more than the bound
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    journalctl = bin_dir / "journalctl"
    journalctl.write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\n"
                          "if [ \"$2\" = hacluster-witness ]; then echo 'No journal files' >&2; exit 1; fi\n"
                          "yes '2026-12-06T21:00:00+0000 host hacluster[1]: event=x' | head -c 3000000\n")
    journalctl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = support_part.daemon_log("node", environ={"INVOCATION_ID": "1"})
    assert (bin_dir / "args").read_text().split() == [
        "-u", "hacluster-node", "--since", plan.JOURNAL_SINCE, "-o", "short-iso", "--no-pager", "-n", "50000"]
    assert len(out) <= plan.TAIL_BYTES and out.startswith(b"2026-12-06T21:00:00+0000 host")
    with pytest.raises(Skip, match="journalctl -u hacluster-witness failed: No journal files"):
        support_part.daemon_log("witness", environ={"JOURNAL_STREAM": "8:1"})
    # asked of the command (no daemon): journald only where systemd runs, else said
    if not Path("/run/systemd/system").is_dir():
        with pytest.raises(Skip, match="no systemd journal on this host"):
            support_part.daemon_log("node", in_daemon=False)


def test_the_daemon_refuses_a_bad_or_unknown_part_in_one_line(config):
    import asyncio

    from hacluster.node.control import ControlError
    from hacluster.node_daemon import NodeDaemon
    daemon = NodeDaemon(config)
    with pytest.raises(ControlError, match="'id' must be a string and 'offset' an integer"):
        asyncio.run(daemon._snapshot_part({"id": "x", "offset": "0"}))
    with pytest.raises(ControlError, match="snapshot part of n1: no snapshot part nope on this node"):
        asyncio.run(daemon._snapshot_part({"id": "nope", "offset": 0}))
