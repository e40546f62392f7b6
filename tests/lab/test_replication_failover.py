"""Change of primary with the activity log, end to end: real mounts and
receivers on two lab hosts, the old primary's mount SIGKILLed mid-stream, the
other side promoted (``prepare_promotion``, as the mirror module does), more
writes there, then the old primary returns as a receiver."""
from __future__ import annotations

import os
import re

import pytest

from chaos.lab import wait_until
from chaos.replication_pair import ReplicationNode, node_pair
from replication import activity_log
from tests.conftest import needs_root
from tests.lab.test_replication_lab import Writer, assert_records, assert_same

pytestmark = [needs_root, pytest.mark.lab]

PORT = 7620
SECRET = "failover-lab-secret-0123456789abcdef0123"
FILES = 40
FILE_SIZE = 1 << 20


@pytest.fixture
def nodes(make_lab, tmp_path):
    a, b = node_pair(make_lab(["a", "b"]), tmp_path, SECRET, PORT)
    yield a, b
    a.close()
    b.close()


def crash_a_then_promote_b(a: ReplicationNode, b: ReplicationNode):
    """a primary (epoch 1) in sync with b; a's mount killed while a stream of
    writes runs; b promoted (epoch 2) and written to; returns the acked records."""
    for i in range(FILES):
        (a.root / f"f{i:02d}").write_bytes(os.urandom(FILE_SIZE))
    b.receive(min_epoch=1)
    a.mount(peer="b", epoch=1, alone=False)
    wait_until("a in sync", lambda: a.in_sync_lines(), timeout=60)
    writer = Writer(a.root / "stream")
    writer.start()
    wait_until("writes", lambda: len(writer.acked) > 300, timeout=30)
    a.mount_proc.kill()                      # the old primary's mount dies mid-stream
    writer.join(10)
    assert writer.error is not None
    acked = list(writer.acked)
    a.unmount()
    b.receiver_proc.stop()                   # b stops receiving, to become primary
    assert activity_log.prepare_promotion(str(b.state)) == 1
    b.mount(peer="a", epoch=2, alone=True)
    with open(b.root / "f07", "r+b") as f:   # the new primary writes before a returns
        f.seek(300_000)
        f.write(b"new primary " * 1000)
    (b.root / "made-on-b").write_bytes(b"hello")
    return acked


def in_sync_figures(node: ReplicationNode) -> dict[str, str]:
    line = node.in_sync_lines()[-1]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def test_failover_resyncs_only_activity_regions_and_dirty_marks(nodes):
    a, b = nodes
    acked = crash_a_then_promote_b(a, b)
    a.receive(min_epoch=2)                   # the old primary returns as secondary
    wait_until("b in sync with a", lambda: b.in_sync_lines(), timeout=60)
    assert "event=activity_log_used" in b.log("mount"), b.log("mount")
    figures = in_sync_figures(b)
    tree_size = FILES * FILE_SIZE + (a.real / "stream").stat().st_size
    assert figures["force_digests"] == "False"
    assert int(figures["bytes_read"]) < tree_size / 4, (figures, tree_size)
    assert_same(b.real, a.real)
    assert_records(b.real / "stream", acked)
    assert (a.real / "made-on-b").read_bytes() == b"hello"


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_failover_falls_back_to_full_digest_without_a_trustworthy_log(nodes, damage):
    a, b = nodes
    acked = crash_a_then_promote_b(a, b)
    path = a.state / activity_log.AL_FILE
    if damage == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x55
        path.write_bytes(bytes(data))
    a.receive(min_epoch=2)
    wait_until("b in sync with a", lambda: b.in_sync_lines(), timeout=90)
    assert "event=activity_log_refused" in b.log("mount")
    figures = in_sync_figures(b)
    assert figures["force_digests"] == "True"
    assert int(figures["bytes_read"]) >= FILES * FILE_SIZE
    assert_same(b.real, a.real)
    assert_records(b.real / "stream", acked)
