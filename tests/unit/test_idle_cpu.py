"""The pure parts of the idle-CPU work: the tick thread's wait, the leader's next
lease expiry, and the raw /proc parsing behind the errd scan."""
from __future__ import annotations

import math
import os
import subprocess
import time

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkers.errd import parse_cmdline, parse_stat, process_start_ticks, scan_processes
from raft.lease import LeaderLeaseClock
from raft.member import tick_wait

times = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(now=times, cap=st.floats(min_value=0, max_value=10),
       deadlines=st.lists(st.one_of(st.none(), times), max_size=5))
def test_tick_wait_never_sleeps_past_a_timer_or_the_cap(now, cap, deadlines):
    wait = tick_wait(now, cap, deadlines)
    assert 0.0 <= wait <= cap
    for d in deadlines:
        if d is not None:
            assert now + wait <= max(d, now) + 1e-9
    known = [d for d in deadlines if d is not None]
    if not known or min(known) - now >= cap:
        assert wait == cap


def test_tick_wait_examples():
    assert tick_wait(10.0, 0.1, []) == 0.1
    assert tick_wait(10.0, 0.1, [None, 10.03]) == 10.03 - 10.0
    assert tick_wait(10.0, 0.1, [9.0]) == 0.0          # overdue: do not sleep at all


def test_leader_expiry_time_matches_expired():
    clock = LeaderLeaseClock()
    assert clock.expires_at("r", 1.5) is None
    clock.became_leader(100.0)
    assert clock.expires_at("never-renewed", 1.5) == 101.5   # counts from the election
    clock.renewal_applied("r", 100.2)
    assert clock.expires_at("r", 1.5) == 101.7
    assert not clock.expired("r", 1.5, 101.69) and clock.expired("r", 1.5, 101.7)
    clock.stepped_down()
    assert clock.expires_at("r", 1.5) is None and not clock.expired("r", 1.5, 1e9)


def test_parse_cmdline_as_psutil_does():
    assert parse_cmdline(b"") == ()
    assert parse_cmdline(b"python\0-m\0chaos.kvapp\0") == ("python", "-m", "chaos.kvapp")
    assert parse_cmdline(b"a b\0c\0") == ("a b", "c")             # NUL-separated wins
    assert parse_cmdline(b"nginx: worker process\0") == ("nginx:", "worker", "process")  # rewritten


@given(comm=st.text(alphabet=st.characters(blacklist_characters="\0\n", blacklist_categories=("Cs",)),
                    max_size=15))
def test_parse_stat_takes_comm_up_to_the_last_parenthesis(comm):
    data = f"42 ({comm}) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0".encode()
    assert parse_stat(42, data) == (comm, 12345)


def test_scan_matches_psutil_for_a_real_process_and_knows_when_it_started():
    # The start time is compared on the clock since boot, never with a wall-clock time:
    # psutil's create_time re-reads the boot time of /proc/stat, which a step of the wall
    # clock moves (this test failed once by exactly 1 s when it compared the two).
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    proc = subprocess.Popen(["sleep", "27.1828"])
    try:
        mine = {s.pid: s for s in scan_processes()}[proc.pid]
        after = time.clock_gettime(time.CLOCK_BOOTTIME)
        ps = psutil.Process(proc.pid)
        assert mine.name == ps.name() == "sleep"
        assert mine.cmdline == tuple(ps.cmdline()) == ("sleep", "27.1828")
        assert math.floor(before * ticks_per_s) <= mine.start_ticks <= math.ceil(after * ticks_per_s)
        assert process_start_ticks(proc.pid) == mine.start_ticks
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(ProcessLookupError):
        process_start_ticks(proc.pid)
