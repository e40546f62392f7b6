"""No committed entry is lost when every member is SIGKILLed at once and restarted (lab).
The journal's fsyncs: tests/unit/test_raft_durability.py."""
import json
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_root

PROC = str(REPO / "chaos" / "raft_member_proc.py")
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
