"""chaos.kvapp: the real server process with the real client. The log format:
tests/unit/test_kvapp.py."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_workload import KvWriter, failover_gap, read_all, request_json, wait_answer
from chaos.kvapp import encode_record, replay
from tests.conftest import REPO, needs_root


# -- the log format -----------------------------------------------------------------------


# -- the real server ----------------------------------------------------------------------

class KvProc:
    """A kvapp process on 127.0.0.1 with an OS-chosen port, read from its start line."""

    def __init__(self, data: Path, node: str = "n1", epoch: int = 1, pidfile: Path | None = None,
                 port: int = 0, env: dict | None = None, extra: list[str] | None = None) -> None:
        argv = [sys.executable, "-m", "chaos.kvapp", "--data", str(data),
                "--listen", f"127.0.0.1:{port}"]
        argv += ["--node", node, "--epoch", str(epoch)] if extra is None else extra
        if pidfile:
            argv += ["--pidfile", str(pidfile)]
        self.proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.start_line = ""
        self.early_stderr: list[str] = []
        for line in self.proc.stderr:
            self.early_stderr.append(line)
            if "event=kvapp_started" in line:
                self.start_line = line
                break
        else:
            self.proc.wait(5)
            return
        self.port = int(re.search(r"listen=[\d.]+:(\d+)", line).group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def rest_of_stderr(self) -> str:
        return "".join(self.early_stderr) + self.proc.stderr.read()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def kvapps():
    started: list[KvProc] = []

    def start(*args, **kw) -> KvProc:
        p = KvProc(*args, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def test_put_get_keys_health_and_restart(tmp_path, kvapps):
    pidfile = tmp_path / "kv.pid"
    app = kvapps(tmp_path, node="n1", epoch=7, pidfile=pidfile)
    assert "node=n1 epoch=7 records=0" in app.start_line
    assert pidfile.read_text().strip() == str(app.proc.pid)
    status, body = request_json(app.url, "PUT", "/kv/a%20b", b"hello world")
    assert (status, body) == (200, {"ok": True, "key": "a b", "node": "n1", "epoch": 7})
    assert request_json(app.url, "PUT", "/kv/c", "ünï".encode())[0] == 200
    assert request_json(app.url, "PUT", "/kv/c", b"second")[0] == 200
    assert request_json(app.url, "GET", "/kv/a%20b") == (
        200, {"key": "a b", "value": "hello world", "node": "n1", "epoch": 7})
    status, body = request_json(app.url, "GET", "/kv/nope")
    assert status == 404 and body["error"] == "no such key"
    assert request_json(app.url, "GET", "/keys")[1] == {"keys": ["a b", "c"], "node": "n1", "epoch": 7}
    assert request_json(app.url, "GET", "/health")[1] == {"node": "n1", "epoch": 7, "records": 3}
    assert app.stop() == 0
    assert not pidfile.exists()
    # The acknowledged writes are on disk: a restart (new epoch from the env) reads them back.
    app2 = kvapps(tmp_path, extra=[], env={"HACLUSTER_NODE": "n2", "HACLUSTER_EPOCH": "8"})
    assert "node=n2 epoch=8 records=3" in app2.start_line
    assert read_all(app2.url, ["a b", "c", "zz"]) == {"a b": "hello world", "c": "second", "zz": None}


def test_torn_tail_is_dropped_and_appends_stay_clean(tmp_path, kvapps):
    log = tmp_path / "kv.log"
    log.write_bytes(encode_record("a", "1") + encode_record("b", "2")[:7])
    app = kvapps(tmp_path)
    assert "records=1" in app.start_line
    assert request_json(app.url, "PUT", "/kv/c", b"3")[0] == 200
    app.stop()
    assert log.read_bytes() == encode_record("a", "1") + encode_record("c", "3")
    app2 = kvapps(tmp_path)
    assert "records=2" in app2.start_line


def test_corruption_in_the_middle_refuses_to_start(tmp_path, kvapps):
    (tmp_path / "kv.log").write_bytes(encode_record("a", "1") + b"0000dead x y\n"
                                      + encode_record("b", "2"))
    app = kvapps(tmp_path)
    assert app.proc.wait(5) == 1
    err = app.rest_of_stderr().strip().splitlines()
    assert len(err) == 1 and "kv.log: corrupt record at line 2" in err[0]


@needs_root
def test_disk_full_answers_503_and_nothing_half_applied(kvapps):
    mnt = Path(tempfile.mkdtemp(prefix="kvapp-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    app = None
    try:
        app = kvapps(mnt)
        assert request_json(app.url, "PUT", "/kv/before", b"1")[0] == 200
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        status, body = request_json(app.url, "PUT", "/kv/during", b"x" * 8192)
        assert status == 503 and "No space left" in body["error"] and body["ok"] is False
        assert request_json(app.url, "GET", "/kv/during")[0] == 404
        filler.unlink()
        assert request_json(app.url, "PUT", "/kv/after", b"3")[0] == 200
        app.stop()
        assert (mnt / "kv.log").read_bytes() == encode_record("before", "1") + encode_record("after", "3")
    finally:
        if app is not None:
            app.kill()  # its open log would keep the mount busy
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def test_writer_survives_a_crash_and_restart_without_losing_acks(tmp_path, kvapps):
    app = kvapps(tmp_path, node="n1", epoch=1)
    url, port = app.url, app.port
    writer = KvWriter(url, timeout=0.5).start()
    try:
        time.sleep(0.4)
        t_fault = time.monotonic()
        app.kill()  # SIGKILL mid-stream: the in-flight write may or may not be on disk
        time.sleep(0.3)
        kvapps(tmp_path, node="n2", epoch=2, port=port)
        wait_answer(url, timeout=10)
        time.sleep(0.3)
    finally:
        writer.stop()
    acks = writer.acks
    assert {a.epoch for a in acks} == {1, 2}
    assert writer.failures, "the writer must have seen the outage"
    # the write that failed was retried with the same key and then acknowledged
    first_failed = writer.failures[0].key
    assert any(a.key == first_failed and a.epoch == 2 for a in acks)
    keys = [f"rec-{i:06d}" for i in range(1, len(acks) + 1)]
    assert [a.key for a in acks] == keys  # one ack per record, in order
    assert lost_acked_writes(acks, read_all(url, keys)) == []
    assert epoch_violations(writer.answers) == []
    gap = failover_gap(writer.answers, t_fault)
    assert gap is not None and 0.3 <= gap < 10


def test_concurrent_puts_all_land_in_a_valid_log(tmp_path, kvapps):
    app = kvapps(tmp_path)
    statuses: list[int] = []

    def put_many(t: int) -> None:
        for i in range(25):
            statuses.append(request_json(app.url, "PUT", f"/kv/t{t}-{i}", f"v{t}-{i}".encode())[0])

    threads = [threading.Thread(target=put_many, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert statuses == [200] * 100
    assert app.stop() == 0
    table, count, good = replay((tmp_path / "kv.log").read_bytes())
    assert count == 100 and table == {f"t{t}-{i}": f"v{t}-{i}" for t in range(4) for i in range(25)}
