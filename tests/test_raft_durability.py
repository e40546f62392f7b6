"""No committed entry is lost when every member is SIGKILLed at once and restarted,
and the journal is on disk (fsynced) before it is relied on."""
import json
import os
import sys
import time
from pathlib import Path

import pytest

from raft import durable_storage
from tests.conftest import needs_root

PROC = str(Path(__file__).parent.parent / "chaos" / "raft_member_proc.py")
SECRET = "durability-test-secret-0123456789abcdef"


def _state(data: Path):
    try:
        return json.loads((data / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@needs_root
@pytest.mark.lab
def test_sigkill_every_member_then_restart_loses_no_committed_entry(make_lab):
    hosts = ["a", "b", "c"]
    lab = make_lab(hosts)
    addrs = {h: f"{lab.addr(h)}:7400" for h in hosts}
    peers = ",".join(addrs.values())
    data = {h: lab.workdir / h / "raft" for h in hosts}

    def start(h, commit=0):
        argv = [sys.executable, PROC, "--addr", addrs[h], "--peers", peers,
                "--data", str(data[h]), "--secret", SECRET]
        if commit:
            argv += ["--commit", str(commit)]
        return lab.spawn(h, argv, name=f"raft-{h}")

    procs = {h: start(h, commit=100000 if h == "a" else 0) for h in hosts}
    log_a = procs["a"].log_path

    def acked():
        return [int(line.split()[1]) for line in log_a.read_text().splitlines()
                if line.startswith("acked ")]

    deadline = time.monotonic() + 30
    while len(acked()) < 300:
        assert time.monotonic() < deadline, "the cluster did not commit 300 entries"
        time.sleep(0.05)
    # Kill every member while entries are still being committed.
    for p in procs.values():
        p.kill()
    committed = acked()
    assert committed == list(range(len(committed)))

    for h in hosts:
        (data[h] / "state.json").unlink()
    procs = {h: start(h) for h in hosts}
    expected = {f"r{i}" for i in committed}
    deadline = time.monotonic() + 30
    missing = {}
    while True:
        missing = {}
        for h in hosts:
            st = _state(data[h])
            leases = set(st["state"]["leases"]) if st and st["caught_up"] else set()
            if expected - leases:
                missing[h] = len(expected - leases)
        if not missing:
            break
        assert time.monotonic() < deadline, f"committed entries missing after restart: {missing}"
        time.sleep(0.1)


def test_journal_sync_writes_entries_and_meta_durably(tmp_path, monkeypatch):
    durable_storage.install()
    path = str(tmp_path / "raft.journal")
    journal = durable_storage.DurableFileJournal(path)
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])

    journal.add(b"\x00cmd-1", 2, 1)
    assert journal.dirty
    journal.sync()
    assert not journal.dirty and fsynced, "sync() must fsync the journal"
    count = len(fsynced)
    journal.sync()
    assert len(fsynced) == count, "a clean journal is not fsynced again"

    journal.setCurrentTerm(7, "10.0.0.1:7400")  # vote: stored durably before it is sent
    assert len(fsynced) > count
    journal._destroy()

    reopened = durable_storage.DurableFileJournal(path)
    assert [e[1] for e in reopened[0:len(reopened)]] == [2]
    assert reopened.getCurrentTerm() == 7
    assert reopened.getVotedForNodeId() == "10.0.0.1:7400"
    reopened._destroy()
