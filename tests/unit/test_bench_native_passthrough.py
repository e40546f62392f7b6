"""bench/native_passthrough.py's report and bench/fuse_requests.py's counting (pure);
the measurements themselves mount, and run by hand (python -m bench native-passthrough)."""
from __future__ import annotations

from bench.fuse_requests import CountingReplicator, describe
from bench.native_passthrough import SOURCE, report_lines
from replication.ops import Op, OpKind


def test_report_gives_each_fuse_layer_against_the_disk_and_native_against_python() -> None:
    r = {"local_seq_MBps": 1000.0, "python_fuse_seq_MBps": 400.0, "native_fuse_seq_MBps": 800.0,
         "local_small_files_per_s": 3000.0, "python_fuse_small_files_per_s": 1000.0,
         "native_fuse_small_files_per_s": 2500.0,
         "local_sync_4k_p50_ms": 1.0, "python_fuse_sync_4k_p50_ms": 1.5, "native_fuse_sync_4k_p50_ms": 1.2}
    lines = report_lines(r)
    assert "python_fuse_seq_MBps: 400 MB/s (0.40 x vs local_seq_MBps)" in lines
    assert "  native/python for seq: 2.00 x" in lines
    assert "native_fuse_small_files_per_s: 2500 /s (0.83 x vs local_small_files_per_s)" in lines
    assert "python_fuse_sync_4k_p50_ms: 1.500 ms (1.50 x vs local_sync_4k_p50_ms)" in lines
    assert "  native/python for sync_4k_p50: 0.80 x" in lines


def test_the_native_source_is_shipped_beside_the_bench() -> None:
    assert SOURCE.is_file() and "fuse_main" in SOURCE.read_text()


def test_counting_replicator_counts_kinds_and_write_sizes_and_starts_over() -> None:
    c = CountingReplicator()
    c.submit(Op(OpKind.WRITE, "a", data=b"x" * 10))
    c.submit(Op(OpKind.WRITE, "a", offset=10, data=b"y" * 4))
    c.submit(Op(OpKind.FSYNC, "a"))
    kinds, sizes = c.take()
    assert kinds == {"WRITE": 2, "FSYNC": 1} and sizes == [10, 4]
    assert c.take() == ({}, [])
    assert describe("w", 1.0, kinds, sizes, per=1).endswith("WRITE sizes min 4 median 7 max 10 (n=2)")
