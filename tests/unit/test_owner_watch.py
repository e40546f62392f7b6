"""replication/owner_watch.py: a mount stops the moment its owner dies, unless the owner
granted it a maintenance hold, and then at the hold's end; a new owner may adopt it."""
import subprocess
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from replication.owner_watch import OwnerWatch, must_stop


@given(alive=st.booleans(), hold=st.one_of(st.none(), st.floats(-10, 10)), now=st.floats(-10, 10))
def test_a_mount_serves_on_only_for_a_live_owner_or_within_its_hold(alive, hold, now):
    stop = must_stop(alive, hold, now)
    assert stop == (not alive and (hold is None or now >= hold))


def _owner() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"])


def _watch(owner: subprocess.Popen, tmp_path) -> tuple[OwnerWatch, threading.Event]:
    stopped = threading.Event()
    watch = OwnerWatch(owner.pid, str(tmp_path / "mount.log"), stop=stopped.set)
    watch._orphan_output = lambda: None       # keep this test process's own stdout
    return watch, stopped


def test_without_a_hold_the_mount_stops_when_its_owner_dies(tmp_path):
    owner = _owner()
    watch, stopped = _watch(owner, tmp_path)
    watch.start()
    try:
        assert not stopped.wait(0.3)
        owner.kill()
        owner.wait()
        assert stopped.wait(5)
    finally:
        owner.kill()


def test_a_hold_keeps_it_serving_until_its_end_and_a_new_owner_adopts_it(tmp_path):
    owner, successor = _owner(), _owner()
    watch, stopped = _watch(owner, tmp_path)
    try:
        watch.answer({"hold_until": time.monotonic() + 0.6})
        watch.start()
        owner.kill()
        owner.wait()
        assert not stopped.wait(0.3)            # within the hold
        watch.answer({"hold_until": None, "owner_pid": successor.pid})
        assert not stopped.wait(0.6)            # adopted: past the old hold, still serving
        successor.kill()
        successor.wait()
        assert stopped.wait(5)                  # its new owner died without a hold
    finally:
        owner.kill()
        successor.kill()


def test_the_hold_running_out_without_an_owner_stops_it(tmp_path):
    owner = _owner()
    watch, stopped = _watch(owner, tmp_path)
    try:
        watch.answer({"hold_until": time.monotonic() + 0.4})
        owner.kill()
        owner.wait()
        watch.start()
        assert stopped.wait(5)
        assert time.monotonic() >= watch.hold_until
    finally:
        owner.kill()


def test_nonsense_in_an_answer_changes_nothing(tmp_path):
    owner = _owner()
    watch, _ = _watch(owner, tmp_path)
    try:
        watch.answer({"hold_until": 12.5})
        for junk in ("x", None, 3, {"hold_until": "soon"}, {"hold_until": True, "owner_pid": "1"}):
            watch.answer(junk)
        assert watch.hold_until == 12.5 and watch._owner_pid == owner.pid
        # an answer that grants nothing (an owner that knows no holds) takes the hold back
        watch.answer({"owner_pid": True})
        assert watch.hold_until is None and watch._owner_pid == owner.pid
    finally:
        owner.kill()
