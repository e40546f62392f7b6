"""Issue 15 end to end: a returning secondary is reintegrated while an
application keeps writing through the primary's real FUSE mount, in the lab
(mount and receiver on two hosts). The writer works the way PostgreSQL's WAL
does: segments written under a temporary name, fsynced, renamed over older
ones, in a directory the secondary gets only at the end of the first pass
(the walk copies ``base/`` first, under a bandwidth cap)."""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from chaos.lab import wait_until
from chaos.replication_pair import node_pair
from tests.conftest import needs_root
from tests.lab.test_replication_lab import assert_same

pytestmark = [needs_root, pytest.mark.lab]

PORT = 7630
SECRET = "reintegration-lab-secret-0123456789abcdef"
FILES = 40
FILE_SIZE = 1 << 20


@pytest.fixture
def nodes(make_lab, tmp_path):
    a, b = node_pair(make_lab(["a", "b"]), tmp_path, SECRET, PORT)
    yield a, b
    a.close()
    b.close()


class WalWriter(threading.Thread):
    """Until stopped: a segment written under a temporary name, fsynced and
    renamed over an older one; 8 KiB writes into the previous segment; an
    appended log; now and then a new directory with a file, and an unlink."""

    def __init__(self, root: Path) -> None:
        super().__init__(name="wal-writer", daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        wal = self.root / "pg_wal"
        try:
            n = 0
            while not self.stop.is_set():
                tmp, seg = wal / f"xlogtemp.{n}", wal / f"seg{n % 8}"
                with open(tmp, "wb") as f:
                    f.write(os.urandom(64 * 1024))
                    os.fsync(f.fileno())
                os.rename(tmp, seg)
                prev = wal / f"seg{(n - 1) % 8}"
                if prev.exists():
                    with open(prev, "r+b") as f:
                        f.seek((n * 8192) % (64 * 1024))
                        f.write(b"w" * 8192)
                        os.fdatasync(f.fileno())
                with open(wal / "log", "ab") as f:
                    f.write(b"record %d\n" % n)
                if n % 10 == 9:
                    sub = wal / f"d{n}"
                    sub.mkdir()
                    (sub / "status").write_bytes(b"ready")
                    (wal / f"seg{(n + 4) % 8}").unlink(missing_ok=True)
                n += 1
                self.ops = n
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.mark.parametrize("ack_mode", ["apply", "receipt"])
def test_secondary_reintegrated_while_the_application_writes(nodes, ack_mode):
    """``receipt`` (the mirror module's async="second"): refusals come as late errors."""
    a, b = nodes
    for i in range(FILES):
        (a.root / "base").mkdir(exist_ok=True)
        (a.root / "base" / f"f{i:02d}").write_bytes(os.urandom(FILE_SIZE))
    (a.root / "pg_wal").mkdir()
    b.receive(min_epoch=1)
    b.receiver_proc.stop()           # b is away: a runs ALONE from the start
    a.mount(peer="b", epoch=1, alone=True, extra=("--bandwidth", "10000000", "--ack-mode", ack_mode))
    writer = WalWriter(a.root)
    writer.start()
    try:
        wait_until("writes while alone", lambda: writer.ops > 10 or writer.error, timeout=30)
        b.receive(min_epoch=1)       # b returns: reintegration while the writer goes on
        wait_until("a in sync", lambda: a.in_sync_lines() or writer.error, timeout=120)
        at_sync = writer.ops
        wait_until("writes after in-sync", lambda: writer.ops > at_sync + 20 or writer.error,
                   timeout=60)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, repr(writer.error)
    # A barrier, as an application would make one: acknowledged on receipt, the
    # last ops are applied over there only by the next fsync.
    with open(a.root / "pg_wal" / "log", "rb") as f:
        os.fsync(f.fileno())
    log = a.log("mount")
    assert "event=peer_lost" not in log, [l for l in log.splitlines() if "peer_lost" in l]
    figures = dict(re.findall(r"(\w+)=(\S+)", a.in_sync_lines()[-1]))
    # The scenario happened: live ops reached paths the secondary did not have yet.
    assert int(figures["refusals_recorded"]) > 0, figures
    assert int(figures["passes"]) >= 2, figures
    progress = [l for l in log.splitlines() if "event=reintegration_progress" in l]
    assert progress and all(" pass=" in l and " eta_s=" in l for l in progress), progress[:3]
    assert any("phase=final" in l for l in progress), progress[-3:]
    assert len(a.in_sync_lines()) == 1      # one reintegration, not one per refusal
    assert_same(a.real, b.real)
