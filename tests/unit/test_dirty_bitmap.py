"""replication/dirty_bitmap.py: the pure bitmap against a set-of-blocks model,
and the store's durability, trust and namespace bookkeeping."""
from __future__ import annotations

import os
import signal
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication import dirty_bitmap
from replication.dirty_bitmap import (BitmapStore, DirtyBitmap, JournalEntry, StoreClosed,
                                      changed_paths, under)
from replication.ops import Op, OpKind

BS = 8

bitmap_ops = st.lists(st.one_of(
    st.tuples(st.just("mark"), st.integers(0, 300), st.integers(0, 100)),
    st.tuples(st.just("truncate"), st.integers(0, 300)),
    st.tuples(st.just("clear"), st.integers(0, 40), st.integers(0, 20)),
    st.tuples(st.just("expand"), st.integers(0, 300)),
), max_size=30)


def flatten(runs):
    return [first + i for first, count in runs for i in range(count)]


def run_model(ops):
    """Apply ops to a DirtyBitmap and to a plain model, checking each answer."""
    bitmap, blocks, low_water = DirtyBitmap(BS), set(), None
    for op in ops:
        if op[0] == "mark":
            _, offset, length = op
            touched = set(range(offset // BS, (offset + length - 1) // BS + 1)) if length else set()
            assert flatten(bitmap.mark(offset, length)) == sorted(touched - blocks)
            blocks |= touched
        elif op[0] == "truncate":
            size = op[1]
            moved = bitmap.truncate(size)
            assert moved == (low_water is None or size < low_water)
            blocks = {b for b in blocks if b * BS < size}
            low_water = size if moved else low_water
        elif op[0] == "clear":
            _, first, count = op
            bitmap.clear(first, count)
            blocks -= set(range(first, first + count))
        else:
            stale_end = op[1]
            bitmap.expand_low_water(stale_end)
            if low_water is not None and stale_end > low_water:
                blocks |= set(range(low_water // BS, (stale_end - 1) // BS + 1))
            low_water = None
        assert sorted(bitmap.blocks()) == sorted(blocks)
        assert bitmap.low_water == low_water
    return bitmap, blocks, low_water


@given(bitmap_ops)
def test_bitmap_follows_the_set_model(ops):
    bitmap, blocks, _ = run_model(ops)
    assert flatten(bitmap.runs()) == sorted(blocks)
    assert bitmap.count() == len(blocks)
    assert all(bitmap.is_dirty(b) == (b in blocks) for b in range(60))
    assert DirtyBitmap(BS, bitmap.to_bytes(), bitmap.low_water) == bitmap


@given(bitmap_ops, bitmap_ops)
def test_union_is_the_union_of_both_models(ops_a, ops_b):
    a, blocks_a, low_a = run_model(ops_a)
    b, blocks_b, low_b = run_model(ops_b)
    a.update(b)
    assert set(a.blocks()) == blocks_a | blocks_b
    lows = [w for w in (low_a, low_b) if w is not None]
    assert a.low_water == (min(lows) if lows else None)


def test_mark_returns_nothing_when_already_dirty():
    bitmap = DirtyBitmap(1 << 20)
    assert bitmap.mark(5, 10) == [(0, 1)]
    assert bitmap.mark(100, 1000) == []
    assert bitmap.mark((1 << 20) - 1, 2) == [(1, 1)]
    assert bitmap.mark(0, 0) == []


def test_union_needs_the_same_block_size():
    with pytest.raises(ValueError, match="block sizes differ"):
        DirtyBitmap(8).update(DirtyBitmap(16))


# ---- the store ------------------------------------------------------------------

store_ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(["a", "b", "d/x", "d/y"]),
              st.integers(0, 200), st.integers(1, 50)),
    st.tuples(st.just("truncate"), st.sampled_from(["a", "b", "d/x"]), st.integers(0, 200)),
    st.tuples(st.just("rename"), st.sampled_from(["a", "b", "d", "d/x"]),
              st.sampled_from(["a", "b", "e", "d/y"])),
    st.tuples(st.just("unlink"), st.sampled_from(["a", "b", "d/x"])),
    st.tuples(st.just("chmod"), st.sampled_from(["a", "d"])),
), max_size=25)


def as_op(step) -> Op:
    if step[0] == "write":
        return Op(OpKind.WRITE, step[1], offset=step[2], data=b"x" * step[3])
    if step[0] == "truncate":
        return Op(OpKind.TRUNCATE, step[1], length=step[2])
    if step[0] == "rename":
        return Op(OpKind.RENAME, step[1], step[2])
    if step[0] == "unlink":
        return Op(OpKind.UNLINK, step[1])
    return Op(OpKind.CHMOD, step[1], mode=0o600)


def model_store(steps):
    """Expected bitmaps by path after these ops (renames move whole subtrees)."""
    bitmaps: dict[str, DirtyBitmap] = {}
    for step in steps:
        op = as_op(step)
        if op.kind == OpKind.WRITE:
            bitmaps.setdefault(op.path, DirtyBitmap(BS)).mark(op.offset, len(op.data))
        elif op.kind == OpKind.TRUNCATE:
            bitmaps.setdefault(op.path, DirtyBitmap(BS)).truncate(op.length)
        elif op.kind == OpKind.RENAME and not (under(op.path2, op.path)
                                               or under(op.path, op.path2)):
            moved = {p: bitmaps.pop(p) for p in list(bitmaps)
                     if p == op.path or p.startswith(op.path + "/")}
            for p in [p for p in bitmaps if p == op.path2 or p.startswith(op.path2 + "/")]:
                del bitmaps[p]
            bitmaps.update({op.path2 + p[len(op.path):]: b for p, b in moved.items()})
        elif op.kind == OpKind.UNLINK:
            bitmaps.pop(op.path, None)
    return bitmaps


def contents(store: BitmapStore) -> dict[str, DirtyBitmap]:
    return {path: store.bitmap(path) for path in store.paths()}


@settings(max_examples=40, deadline=None)
@given(store_ops)
def test_store_round_trip_and_namespace_moves(steps):
    with tempfile.TemporaryDirectory() as state:
        store = BitmapStore(state, block_size=BS)
        for step in steps:
            store.record(as_op(step))
        expected = model_store(steps)
        assert contents(store) == expected
        journal = store.journal()
        store.close()
        reopened = BitmapStore(state, block_size=999)      # the stored block size wins
        assert reopened.trusted() and reopened.block_size == BS
        assert contents(reopened) == expected
        assert reopened.journal() == journal
        assert len(journal) == sum(step[0] in ("rename", "unlink", "chmod") for step in steps)
        reopened.close()


@settings(max_examples=25, deadline=None)
@given(store_ops)
def test_crash_keeps_durable_marks_but_is_not_trusted(steps):
    with tempfile.TemporaryDirectory() as state:
        before = BitmapStore(state, block_size=BS)
        before.close()
        pid = os.fork()
        if pid == 0:            # the primary: records, then is SIGKILLed (no close)
            try:
                store = BitmapStore(state)
                for step in steps:
                    store.record(as_op(step))
            finally:
                os.kill(os.getpid(), signal.SIGKILL)
        os.waitpid(pid, 0)
        crashed = BitmapStore(state)
        assert not crashed.trusted()
        assert crashed.generation == before.generation + 1
        assert contents(crashed) == model_store(steps)
        assert crashed.journal() == [JournalEntry(as_op(s).kind, as_op(s).path, as_op(s).path2)
                                     for s in steps if s[0] in ("rename", "unlink", "chmod")]
        crashed.close()
        again = BitmapStore(state)
        assert not again.trusted(), "the taint survives a clean restart"
        again.reset()
        assert again.trusted() and again.paths() == [] and again.journal() == []
        again.close()
        reopened = BitmapStore(state)
        assert reopened.trusted()
        reopened.close()


def test_a_write_that_flips_no_bit_does_no_io(tmp_path, monkeypatch):
    store = BitmapStore(str(tmp_path), block_size=4096)
    syncs = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    monkeypatch.setattr(dirty_bitmap.os, "fsync",
                        lambda fd: (syncs.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(dirty_bitmap.os, "fdatasync",
                        lambda fd: (syncs.append("fdatasync"), real_fdatasync(fd)))
    store.mark("f", 0, 100)
    assert syncs.count("fsync") == 2        # new bitmap file + its directory
    syncs.clear()
    store.mark("f", 10, 4000)
    store.mark("f", 4095, 1)
    assert syncs == []
    store.mark("f", 4096, 1)
    assert syncs == ["fdatasync"]


def test_rename_exchange_swaps_and_delete_drops_subtrees(tmp_path):
    store = BitmapStore(str(tmp_path), block_size=BS)
    store.mark("a", 0, 1)
    store.mark("d/b", 8, 1)
    store.record(Op(OpKind.RENAME, "a", "d", mode=dirty_bitmap.RENAME_EXCHANGE))
    assert store.paths() == ["a/b", "d"]
    store.record(Op(OpKind.DELETE, "a"))
    assert store.paths() == ["d"]
    store.record(Op(OpKind.RMDIR, "d"))
    assert store.paths() == []


def test_clear_and_drop_after_resend(tmp_path):
    store = BitmapStore(str(tmp_path), block_size=BS)
    store.mark("f", 0, 40)
    store.clear("f", 1, 2)
    assert list(store.bitmap("f").blocks()) == [0, 3, 4]
    store.close()
    store = BitmapStore(str(tmp_path))
    assert list(store.bitmap("f").blocks()) == [0, 3, 4]
    store.drop("f")
    assert store.bitmap("f") is None and store.paths() == []


def test_fallocate_marks_or_journals(tmp_path):
    store = BitmapStore(str(tmp_path), block_size=BS)
    store.record(Op(OpKind.FALLOCATE, "f", mode=2, offset=8, length=8))     # punch hole
    store.record(Op(OpKind.FALLOCATE, "g", mode=dirty_bitmap.FALLOC_FL_COLLAPSE_RANGE,
                    offset=8, length=8))
    store.record(Op(OpKind.FSYNC, "f"))
    assert list(store.bitmap("f").blocks()) == [1]
    assert store.journal() == [JournalEntry(OpKind.FALLOCATE, "g")]


def test_torn_journal_line_is_dropped(tmp_path):
    store = BitmapStore(str(tmp_path))
    store.record(Op(OpKind.UNLINK, "a"))
    store.record(Op(OpKind.MKDIR, "we\nird\udcff", mode=0o755))
    with open(tmp_path / "journal", "ab") as f:
        f.write(b'{"k": 7, "p": "half')
    reopened = BitmapStore(str(tmp_path))
    assert reopened.journal() == [JournalEntry(OpKind.UNLINK, "a"),
                                  JournalEntry(OpKind.MKDIR, "we\nird\udcff")]
    reopened.record(Op(OpKind.UNLINK, "b"))
    reopened.close()
    assert BitmapStore(str(tmp_path)).journal()[-1] == JournalEntry(OpKind.UNLINK, "b")


def test_closed_store_refuses(tmp_path):
    store = BitmapStore(str(tmp_path))
    store.close()
    with pytest.raises(StoreClosed):
        store.mark("f", 0, 1)


def test_changed_paths_ignores_metadata_and_symlink_targets():
    entries = [JournalEntry(OpKind.CHMOD, "m"), JournalEntry(OpKind.LINK, "old", "new"),
               JournalEntry(OpKind.SYMLINK, "s", "../target"),
               JournalEntry(OpKind.RENAME, "a", "b"), JournalEntry(OpKind.CREATE, "c")]
    assert changed_paths(entries) == {"old", "new", "s", "a", "b", "c"}
