"""Activity-log bookkeeping: the pure core (hypothesis), the file, the report."""
from __future__ import annotations

import json
import os
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication import activity_log as al
from replication.dirty_bitmap import BitmapStore
from replication.activity_log import ActivityLog, ActivityState, NOTE, regions_of, replay


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 30), st.integers(1, 1 << 24))
def test_regions_cover_exactly_the_range(offset, length, size):
    regions = regions_of(offset, length, size)
    if length == 0:
        assert len(regions) == 0
        return
    assert regions[0] * size <= offset < (regions[0] + 1) * size
    assert regions[-1] * size <= offset + length - 1 < (regions[-1] + 1) * size


KEYS = st.sampled_from([("a", 0), ("a", 1), ("a", NOTE), ("b", 0), ("c", NOTE)])
ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("begin"), st.integers(0, 3), st.lists(KEYS, min_size=1, max_size=3)),
    st.tuples(st.just("flush"), st.integers(0, 3)),
    st.tuples(st.just("apply"), st.integers(0, 3)),
    st.tuples(st.just("end"), st.integers(0, 3)),
    st.tuples(st.just("clear"), st.floats(0, 5)),
    st.tuples(st.just("tick"), st.floats(0, 3)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ACTIONS, st.data())
def test_a_write_never_lands_in_a_region_that_is_not_durably_marked(actions, data):
    """Four writers; each begins, waits for durability, applies, ends. At every
    apply, any file a crash could leave (the fsynced prefix plus any part of
    what was written after it) replays with the writer's keys active."""
    state = ActivityState()
    file: list[tuple[str, list]] = []        # records written, in order
    synced = 0                               # len(file) known on disk
    writers: dict[int, tuple[list, int, bool]] = {}   # id -> keys, need, applied
    now = 0.0
    for action in actions:
        kind = action[0]
        if kind == "tick":
            now += action[1]
        elif kind == "begin" and action[1] not in writers:
            # as ActivityLog.begin: a path's active NOTE key covers its regions
            used = state.cover(action[2])
            assert all(k in used or (k[0], NOTE) in used for k in action[2])
            writers[action[1]] = (used, state.begin(used, now), False)
        elif kind == "flush":
            # Group commit: write everything pending, fsync (as ActivityLog does).
            records, seq = state.pending()
            file += [(s, k) for _, s, k in records]
            synced = len(file)
            state.written(seq)
        elif kind == "apply" and action[1] in writers:
            keys, need, _ = writers[action[1]]
            if state.durable_seq < need:
                continue                     # the writer is still waiting
            cut = data.draw(st.integers(synced, len(file)))
            assert set(keys) <= replay(file[:cut]), (keys, file, cut)
            writers[action[1]] = (keys, need, True)
        elif kind == "end" and action[1] in writers and writers[action[1]][2]:
            state.end(writers.pop(action[1])[0], now)
        elif kind == "clear":
            state.clear(state.cold(now, action[1]))
            # clears are written lazily, without fsync
            records, seq = state.pending()
            if all(s == "-" for _, s, _ in records):
                file += [(s, k) for _, s, k in records]
                state.written(seq)


def test_writes_to_a_path_whose_create_is_still_hot_cost_no_io(tmp_path):
    """A new small file: its create marks the whole path (NOTE); its writes are
    covered by that mark, so they add no record (no fsync) until it goes cold."""
    log = ActivityLog(str(tmp_path), epoch=3, region_size=1 << 20)
    log.end(log.begin_paths("d/new"))
    grown = os.path.getsize(log.path)
    for i in range(3):
        activity = log.begin_write("d/new", (5 << 20) * i, 4096)
        assert activity.keys == [("d/new", NOTE)]
        log.end(activity)
    assert os.path.getsize(log.path) == grown
    assert log.active() == {("d/new", NOTE)}
    log.close()


def test_second_write_to_an_active_region_costs_no_io(tmp_path):
    log = ActivityLog(str(tmp_path), epoch=3, region_size=1 << 20)
    size = os.path.getsize(log.path)
    log.end(log.begin_write("f", 0, 4096))
    grown = os.path.getsize(log.path)
    assert grown > size
    for i in range(10):
        log.end(log.begin_write("f", 4096 * i, 4096))
    assert os.path.getsize(log.path) == grown
    log.close()


def test_cold_regions_clear_only_when_quiescent(tmp_path):
    now = [0.0]
    log = ActivityLog(str(tmp_path), epoch=1, region_size=1 << 20, cold_s=1.0,
                      clock=lambda: now[0])
    busy = log.begin_write("f", 0, 10)
    log.end(log.begin_paths("g"))
    now[0] = 5.0
    assert log.clear_cold(lambda: False) == 0            # peer still owes acks
    assert log.clear_cold(lambda: True) == 1             # g; f still in progress
    assert log.active() == {("f", 0)}
    log.end(busy)
    assert log.clear_cold(lambda: True) == 0             # f just used
    now[0] = 7.0
    assert log.clear_cold(lambda: True) == 1
    log.close()
    assert al.parse_log(open(log.path, "rb").read(), log.path).keys == frozenset()


def test_keys_of_a_crashed_log_are_carried_and_reported(tmp_path):
    state = str(tmp_path)
    log = ActivityLog(state, epoch=4, region_size=1 << 20)
    log.begin_write("big", 5 << 20, 10)      # never ended: the node "crashes"
    log.begin_paths("x/y")
    # nothing closed; a new log of the same node carries the keys
    again = ActivityLog(state, epoch=5, region_size=1 << 20)
    assert again.active() == {("big", 5), ("x/y", NOTE)}
    os.makedirs(os.path.join(state, "changes", "bitmaps"))
    open(os.path.join(state, "changes", "journal"), "w").close()
    with open(os.path.join(state, "changes", "store.json"), "w") as f:
        json.dump({"trusted": True, "open": True}, f)
    report = al.read_report(state)
    assert report["valid"], report
    assert report["epoch"] == 5 and report["region_size"] == 1 << 20
    assert sorted(map(tuple, report["keys"])) == [("big", 5), ("x/y", NOTE)]
    assert al.check_report(report, 5) is None
    assert "epoch 5" in al.check_report(report, 4)


@pytest.mark.parametrize("damage", ["missing", "torn", "flipped", "version", "dirty_store"])
def test_report_refused_when_log_or_store_cannot_be_trusted(tmp_path, damage):
    state = str(tmp_path)
    log = ActivityLog(state, epoch=2, region_size=1 << 20)
    log.end(log.begin_write("f", 0, 1))
    log.close()
    os.makedirs(os.path.join(state, "changes", "bitmaps"))
    open(os.path.join(state, "changes", "journal"), "w").close()
    with open(os.path.join(state, "changes", "store.json"), "w") as f:
        json.dump({"trusted": True}, f)
    path = os.path.join(state, al.AL_FILE)
    data = open(path, "rb").read()
    if damage == "missing":
        os.unlink(path)
    elif damage == "torn":
        open(path, "wb").write(data[:-3])
    elif damage == "flipped":
        open(path, "wb").write(data.replace(b'"f"', b'"g"'))
    elif damage == "version":
        body = json.dumps({"h": {"v": 99, "epoch": 2, "region": 1, "tainted": False}}).encode()
        open(path, "wb").write(b"%08x %s\n" % (__import__("zlib").crc32(body), body))
    else:
        open(os.path.join(state, "changes", "bitmaps", "x.bm"), "wb").write(b"x")
    report = al.read_report(state)
    assert not report["valid"]
    assert report["reason"]
    assert al.check_report(report, 2) is not None


def test_damaged_log_taints_its_successor(tmp_path):
    state = str(tmp_path)
    with open(os.path.join(state, al.AL_FILE), "wb") as f:
        f.write(b"garbage\n")
    log = ActivityLog(state, epoch=3)
    assert log.tainted
    log.close()
    assert "tainted" in al.read_report(state)["reason"]


def test_compaction_keeps_the_active_set(tmp_path):
    log = ActivityLog(str(tmp_path), epoch=1, region_size=4096, compact_after=8)
    for i in range(50):
        log.end(log.begin_write("f", i * 4096, 1))
    parsed = al.parse_log(open(log.path, "rb").read(), log.path)
    assert parsed.keys == {("f", i) for i in range(50)}
    assert open(log.path, "rb").read().count(b"\n") <= 9
    log.close()


def test_promotion_bookkeeping(tmp_path):
    state = str(tmp_path)
    open(os.path.join(state, "baseline"), "w").close()
    assert al.prepare_promotion(state) is None           # never in sync as a receiver
    assert not os.path.exists(os.path.join(state, "baseline"))
    assert al.pending_epoch(state) is None
    al.mark_receiver_in_sync(state, 7)
    assert al.prepare_promotion(state) == 7
    assert al.pending_epoch(state) == 7
    assert not os.path.exists(os.path.join(state, al.IN_SYNC_FILE))
    assert al.prepare_promotion(state) is None           # the marker is used once
    assert al.pending_epoch(state) is None


def test_promotion_of_an_in_sync_receiver_clears_its_old_primary_sessions_crash_taint(tmp_path):
    """A node SIGKILLed as primary leaves its change store open (untrusted); resynced
    since as a receiver and promoted again, it must not compare every block for ever."""
    state = str(tmp_path / "rfs0")
    changes = os.path.join(state, al.CHANGES_DIR)
    pid = os.fork()
    if pid == 0:
        try:
            BitmapStore(changes).mark("f", 0, 4096)     # open, and never closed
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    probe = BitmapStore(changes)
    assert not probe.trusted()
    probe.close()
    al.mark_receiver_in_sync(state, 7)
    assert al.prepare_promotion(state) == 7
    store = BitmapStore(changes)
    assert store.trusted() and store.paths() == []
    store.close()


def test_promotion_of_a_receiver_not_in_sync_keeps_the_old_marks(tmp_path):
    state = str(tmp_path / "rfs0")
    changes = os.path.join(state, al.CHANGES_DIR)
    old = BitmapStore(changes)
    old.mark("f", 0, 4096)
    old.close()
    assert al.prepare_promotion(state) is None
    store = BitmapStore(changes)
    assert store.paths() == ["f"]
    store.close()
