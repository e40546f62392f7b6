"""Module logs: rotation at a size cap (every line exactly once, whole, in order, also
while a reader follows and while a real script writes) and tails read from the end."""
from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hacluster.modules.rotating_log import (MIN_MAX_BYTES, TAIL_BLOCK, Cursor, RotatingLog, read_since,
                                            read_tail, rotated_name, utc_timestamp)
from hacluster.modules.scripts import ScriptRunner


def every_line(path: Path, keep: int) -> list[str]:
    """The lines of the log and its rotated files, oldest first."""
    out: list[str] = []
    for n in range(keep, -1, -1):
        name = rotated_name(path, n)
        if name.exists():
            out += name.read_text().splitlines()
    return out


def files_of(path: Path, keep: int) -> list[Path]:
    return [rotated_name(path, n) for n in range(keep + 1) if rotated_name(path, n).exists()]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=120),
       st.integers(min_value=MIN_MAX_BYTES, max_value=3 * MIN_MAX_BYTES))
def test_rotation_keeps_every_line_once_whole_and_under_the_cap(lengths, cap):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "script.log"
        out = RotatingLog(path, cap, keep=1000)
        lines = [f"{i:05d} " + "x" * n for i, n in enumerate(lengths)]
        for line in lines:
            out.write_line(line.encode())
        out.close()
        assert every_line(path, 1000) == lines
        for f in files_of(path, 1000):
            assert f.stat().st_size <= cap
            assert f.read_bytes().endswith(b"\n")


def test_rotation_drops_the_oldest_beyond_keep(tmp_path):
    path = tmp_path / "module.log"
    out = RotatingLog(path, MIN_MAX_BYTES, keep=2)
    line = b"y" * 1000
    for i in range(40):
        out.write_line(b"%04d " % i + line)
    assert out.rotations > 2
    assert [f.name for f in files_of(path, 10)] == ["module.log", "module.log.1", "module.log.2"]
    got = every_line(path, 2)
    # what is left is the newest lines, in order, none missing between them
    numbers = [int(x[:4]) for x in got]
    assert numbers == list(range(numbers[0], 40))


def test_an_existing_file_counts_towards_the_cap(tmp_path):
    path = tmp_path / "module.log"
    path.write_bytes(b"a" * (MIN_MAX_BYTES - 10) + b"\n")
    out = RotatingLog(path, MIN_MAX_BYTES, keep=1)
    out.write_line(b"b" * 20)
    assert rotated_name(path, 1).read_bytes().startswith(b"aaa")
    assert path.read_bytes() == b"b" * 20 + b"\n"


def test_bad_caps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="minimum"):
        RotatingLog(tmp_path / "x", 100)
    with pytest.raises(ValueError, match="at least 1"):
        RotatingLog(tmp_path / "x", MIN_MAX_BYTES, keep=0)


def test_a_follower_sees_every_line_exactly_once_while_the_writer_rotates(tmp_path):
    """A reader in another thread follows the log (as `hacluster log -f` does through
    the daemon) while the writer writes and rotates: it gets every line once, in order."""
    path = tmp_path / "script.log"
    out = RotatingLog(path, MIN_MAX_BYTES, keep=100)
    total = 6_000
    seen: list[str] = []
    done = threading.Event()

    def follow() -> None:
        cursor = Cursor(0, 0, 0)
        while True:
            finished = done.is_set()
            chunk = read_since(path, cursor, keep=100, max_bytes=3000)
            assert not chunk.skipped, "lost lines to a rotation"
            seen.extend(chunk.lines)
            cursor = chunk.cursor or cursor
            if finished and not chunk.lines:
                return

    # before the first line the reader starts from the oldest file there is
    out.write_line(b"line 000000")
    reader = threading.Thread(target=follow)
    reader.start()
    for i in range(1, total):
        out.write_line(b"line %06d" % i)
    done.set()
    reader.join(60)
    assert not reader.is_alive()
    assert out.rotations > 10
    assert seen == [f"line {i:06d}" for i in range(total)]


def test_a_script_writing_while_its_log_rotates_loses_and_repeats_nothing(tmp_path):
    """A real script writes its output into the pipe the daemon reads; the log rotates
    many times underneath; every line is in exactly one file, whole."""
    mod = tmp_path / "mod"
    (mod / "bin").mkdir(parents=True)
    script = mod / "bin" / "start_prim"
    script.write_text("#!/bin/sh\ni=0\nwhile [ $i -lt 3000 ]; do echo \"out $i\"; i=$((i+1)); done\n")
    script.chmod(0o755)
    runner = ScriptRunner(mod, "web", tmp_path / "log" / "script.log", {}, 30.0,
                          log_max_bytes=MIN_MAX_BYTES, log_keep=1000)

    async def both() -> None:
        await asyncio.gather(runner.run("start_prim", "WAIT", "PRIM", "start"),
                             runner.run("start_prim", "WAIT", "PRIM", "start"))
    asyncio.run(both())
    runner.log.close()
    lines = every_line(runner.log_path, 1000)
    pattern = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z start_prim: out (\d+)$")
    numbers = []
    for line in lines:
        m = pattern.match(line)
        assert m, f"not a whole line: {line!r}"
        numbers.append(int(m.group(1)))
    assert sorted(numbers) == sorted(list(range(3000)) * 2)
    assert runner.log.rotations > 10
    assert all(f.stat().st_size <= MIN_MAX_BYTES for f in files_of(runner.log_path, 1000))


def test_a_tail_of_a_huge_file_reads_only_its_end(tmp_path):
    """A 4 GiB log (sparse: nothing to write) with a few lines at its end: the tail
    reads one block, not the file."""
    path = tmp_path / "script.log"
    with open(path, "wb") as f:
        f.truncate(4 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + b"".join(b"line %d\n" % i for i in range(50)))
    chunk = read_tail(path, 10)
    assert chunk.lines == [f"line {i}" for i in range(40, 50)]
    assert chunk.bytes_read <= TAIL_BLOCK
    assert chunk.cursor is not None and chunk.cursor.offset == path.stat().st_size


def test_a_tail_stops_at_its_byte_bound_without_newlines(tmp_path):
    path = tmp_path / "script.log"
    with open(path, "wb") as f:
        f.truncate(1 << 30)     # a gigabyte of one "line"
    chunk = read_tail(path, 100, max_bytes=256 << 10)
    assert chunk.bytes_read == 256 << 10
    assert chunk.lines == []


def test_a_tail_leaves_a_line_being_written_for_later(tmp_path):
    path = tmp_path / "module.log"
    path.write_bytes(b"one\ntwo\nthr")
    chunk = read_tail(path, 5)
    assert chunk.lines == ["one", "two"]
    assert chunk.cursor is not None and chunk.cursor.offset == 8
    with open(path, "ab") as f:
        f.write(b"ee\nfour\n")
    nxt = read_since(path, chunk.cursor)
    assert nxt.lines == ["three", "four"]


def test_a_tail_of_a_small_file_and_of_no_file(tmp_path):
    path = tmp_path / "module.log"
    assert read_tail(path, 5).lines == [] and read_tail(path, 5).cursor is None
    path.write_text("a\nb\nc\n")
    assert read_tail(path, 2).lines == ["b", "c"]
    assert read_tail(path, 10).lines == ["a", "b", "c"]


def test_a_follower_that_fell_behind_the_kept_files_is_told(tmp_path):
    path = tmp_path / "module.log"
    out = RotatingLog(path, MIN_MAX_BYTES, keep=1)
    out.write_line(b"first")
    cursor = read_tail(path, 10).cursor
    assert cursor is not None
    for i in range(20):
        out.write_line(b"%02d " % i + b"z" * 1000)
    chunk = read_since(path, cursor, keep=1)
    assert chunk.skipped
    assert chunk.lines and chunk.lines[-1].startswith("19 ")


def test_cursors_round_trip_and_bad_ones_are_refused():
    c = Cursor(1, 2, 3)
    assert Cursor.from_dict(c.to_dict()) == c
    for bad in (None, {"dev": 1}, {"dev": 1, "ino": 2, "offset": -1}, {"dev": "1", "ino": 2, "offset": 0},
                {"dev": 1, "ino": 2, "offset": 0, "head": "zz"}):
        with pytest.raises(ValueError, match="bad log cursor"):
            Cursor.from_dict(bad)


def test_one_time_format_utc_iso_8601():
    assert utc_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert utc_timestamp(1_800_000_000.2505) == "2027-01-15T08:00:00.250Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_timestamp())



def test_lines_that_came_in_just_before_a_rotation_are_read_once(tmp_path, monkeypatch):
    """The reader is at the end of a file when the writer appends to it and rotates it:
    it goes on in that file from where it stopped, not from where its last read began
    (that read's lines were given twice: seen once in a full run, the follower test)."""
    import hacluster.modules.rotating_log as rl
    path = tmp_path / "script.log"
    out = RotatingLog(path, MIN_MAX_BYTES, keep=5)
    for i in range(3):
        out.write_line(b"line %06d" % i)
    first = read_since(path, Cursor(0, 0, 0))
    for i in range(3, 6):
        out.write_line(b"line %06d" % i)
    real = rl._open_successor

    def late_line_then_successor(*args):
        if not late_line_then_successor.done:   # after the reader's read of 3..5
            late_line_then_successor.done = True
            out.write_line(b"line 000006")       # into the file being read
            out._rotate()
            out.write_line(b"line 000007")       # the next file
        return real(*args)

    late_line_then_successor.done = False
    monkeypatch.setattr(rl, "_open_successor", late_line_then_successor)
    second = read_since(path, first.cursor)
    assert late_line_then_successor.done
    assert first.lines + second.lines == [f"line {i:06d}" for i in range(8)]
