"""chaos.kvapp: the log format (pure), and its command line's refusals. The real server
process with the real client: tests/lab/test_kvapp.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.kvapp import CorruptLogError, decode_record, encode_record, replay
from tests.conftest import REPO

text_st = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
records_st = st.lists(st.tuples(text_st.filter(bool), text_st), min_size=1, max_size=10)


# -- the log format -----------------------------------------------------------------------


@given(text_st.filter(bool), text_st)
def test_record_round_trips_any_text(key, value):
    line = encode_record(key, value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_record(line[:-1]) == (key, value)


@given(records_st)
def test_replay_gives_the_last_value_per_key(records):
    data = b"".join(encode_record(k, v) for k, v in records)
    table, count, good = replay(data)
    assert table == dict(records) and count == len(records) and good == len(data)


@given(records_st, st.data())
def test_a_torn_last_record_is_cut_off(records, data):
    prefix = b"".join(encode_record(k, v) for k, v in records[:-1])
    last = encode_record(*records[-1])
    cut = data.draw(st.integers(1, len(last) - 1))  # crash somewhere inside the last write
    table, count, good = replay(prefix + last[:cut])
    assert good == len(prefix) and count == len(records) - 1
    assert table == dict(records[:-1])


@given(records_st, st.data())
def test_corruption_before_the_last_record_refuses(records, data):
    records = records + [("tail", "t")]
    lines = [encode_record(k, v) for k, v in records]
    i = data.draw(st.integers(0, len(lines) - 2))
    pos = data.draw(st.integers(0, len(lines[i]) - 2))  # not the newline
    damaged = bytearray(lines[i])
    damaged[pos] = ord("#") if damaged[pos] != ord("#") else ord("!")
    lines[i] = bytes(damaged)
    with pytest.raises(CorruptLogError, match=f"line {i + 1} "):
        replay(b"".join(lines), "x/kv.log")


def test_a_bad_last_line_followed_by_a_partial_one_refuses():
    data = encode_record("a", "1") + b"garbage\n" + encode_record("b", "2")[:5]
    with pytest.raises(CorruptLogError, match="line 2"):
        replay(data)


@pytest.mark.parametrize("args, what", [
    (["--node", "n1"], "--epoch"),
    (["--epoch", "1"], "--node"),
    (["--node", "n1", "--epoch", "-3"], "--epoch"),
])
def test_bad_flags_are_named(tmp_path, args, what):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACLUSTER_")}
    res = subprocess.run([sys.executable, "-m", "chaos.kvapp", "--data", str(tmp_path),
                          "--listen", "127.0.0.1:0", *args], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=10)
    assert res.returncode == 2 and what in res.stderr.strip().splitlines()[-1]


def test_missing_data_dir_and_bad_listen(tmp_path):
    res = subprocess.run([sys.executable, "-m", "chaos.kvapp", "--data", str(tmp_path / "no"),
                          "--listen", "127.0.0.1:0", "--node", "n", "--epoch", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=10)
    assert res.returncode == 1
    assert res.stderr.strip() == f"kvapp: data directory {tmp_path / 'no'} does not exist"
    res = subprocess.run([sys.executable, "-m", "chaos.kvapp", "--data", str(tmp_path),
                          "--listen", "nohost", "--node", "n", "--epoch", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=10)
    assert res.returncode == 2 and "--listen must be HOST:PORT" in res.stderr
