"""ScriptRunner with real shell scripts in a temporary module folder."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import uvloop

from chaos.lab import wait_until
from checkers.errd import process_start_ticks
from hacluster.modules.scripts import ScriptRunner

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (\w+): (.*)$")


@pytest.fixture
def module(tmp_path):
    mod = tmp_path / "mod"
    (mod / "bin").mkdir(parents=True)
    return mod


def script(mod: Path, name: str, body: str) -> None:
    path = mod / "bin" / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def runner(mod: Path, timeout_s: float = 10.0, **kw) -> ScriptRunner:
    return ScriptRunner(mod, "web", mod.parent / "log" / "scripts.log",
                        {"MYVAR": "hello world"}, timeout_s, **kw)


def log_lines(r: ScriptRunner) -> list[tuple[str, str]]:
    out = []
    for raw in r.log_path.read_text().splitlines():
        m = LINE.match(raw)
        assert m, f"log line without timestamp and script name: {raw!r}"
        out.append((m.group(1), m.group(2)))
    return out


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    return wait_until(f"pid {pid} to be gone", lambda: gone(pid), timeout=timeout)


def test_args_env_stdin_and_process_group_reach_the_script(module):
    script(module, "start_prim", """
echo "args=$1|$2|$3"
echo "safemodule=$SAFEMODULE module=$HACLUSTER_MODULE dir=$HACLUSTER_MODULE_DIR"
echo "myvar=$MYVAR extra=$EXTRA path_set=${PATH:+yes}"
if read line; then echo "stdin=data"; else echo "stdin=eof"; fi
echo "leader=$(cut -d' ' -f5 /proc/$$/stat)/$$"
echo "cwd=$(pwd)"
""")
    r = runner(module)
    res = asyncio.run(r.run("start_prim", "ALONE", "PRIM", "start", extra_env={"EXTRA": "x1"}))
    assert res.ok and res.returncode == 0 and not res.timed_out and not res.forced
    lines = log_lines(r)
    assert {name for name, _ in lines} == {"start_prim"}
    text = [t for _, t in lines]
    assert text[0] == "args=ALONE|PRIM|start"
    assert text[1] == f"safemodule=web module=web dir={module}"
    assert text[2] == "myvar=hello world extra=x1 path_set=yes"
    assert text[3] == "stdin=eof"
    pgid, pid = text[4].removeprefix("leader=").split("/")
    assert pgid == pid          # its own process group
    assert text[5] == f"cwd={module}"


def test_timeout_kills_the_script_and_its_children_and_keeps_its_output(module):
    script(module, "start_both", 'sleep 100 &\necho "child=$!"\necho before-sleep\nsleep 100\n')
    r = runner(module, timeout_s=0.3)
    started = time.monotonic()
    res = asyncio.run(r.run("start_both", "WAIT", "UP", "start"))
    assert res.timed_out and not res.ok and res.returncode == -15
    assert 0.3 <= res.duration_s < 2.0 and time.monotonic() - started < 3.0
    text = [t for _, t in log_lines(r)]
    assert "before-sleep" in text
    child = int(next(t for t in text if t.startswith("child=")).split("=")[1])
    assert wait_gone(child), "the script's background child survived the timeout"


def test_timeout_sigkills_a_script_that_ignores_sigterm(module):
    script(module, "start_second", "trap '' TERM\necho trapped\nwhile :; do sleep 0.05; done\n")
    r = runner(module, timeout_s=0.3, kill_grace_s=0.3)
    res = asyncio.run(r.run("start_second", "WAIT", "SECOND", "start"))
    assert res.timed_out and res.returncode == -9
    assert res.duration_s < 2.0
    assert ("start_second", "trapped") in log_lines(r)


def test_per_call_timeout_overrides_the_default(module):
    script(module, "transition", "sleep 1\n")
    r = runner(module, timeout_s=0.1)
    res = asyncio.run(r.run("transition", "PRIM", "PRIM", "start", timeout_s=3.0))
    assert res.ok and res.duration_s >= 1.0


def test_failing_stop_script_is_run_again_with_force(module):
    script(module, "stop_prim", 'echo "action=$3"\n[ "$3" = force ]\n')
    r = runner(module)
    res = asyncio.run(r.run_stop("stop_prim", "PRIM", "STOP", "stop"))
    assert res.ok and res.forced and res.returncode == 0
    assert [t for _, t in log_lines(r)] == ["action=stop", "action=force"]


def test_stop_script_that_succeeds_is_not_forced(module):
    script(module, "stop_both", 'echo "action=$3"\n')
    r = runner(module)
    res = asyncio.run(r.run_stop("stop_both", "UP", "STOP", "stop"))
    assert res.ok and not res.forced
    assert [t for _, t in log_lines(r)] == ["action=stop"]


def test_timed_out_stop_script_is_forced_and_a_failing_force_is_a_failure(module):
    script(module, "stop_second", '[ "$3" = force ] && { echo "force fails"; exit 3; }\nsleep 100\n')
    r = runner(module, timeout_s=0.2)
    res = asyncio.run(r.run_stop("stop_second", "SECOND", "STOP", "stop"))
    assert res.forced and not res.ok and res.returncode == 3 and not res.timed_out
    assert ("stop_second", "force fails") in log_lines(r)


def test_missing_script_is_a_skipped_success(module):
    r = runner(module)
    res = asyncio.run(r.run("prestart", "STOP", "WAIT", "start"))
    assert res.ok and res.skipped and res.returncode == 0
    assert asyncio.run(r.run_stop("poststop", "WAIT", "STOP", "stop")).ok
    assert not r.log_path.exists()


def test_output_order_is_kept_across_stdout_stderr_and_runs(module):
    script(module, "start_prim", 'i=0\nwhile [ $i -lt 200 ]; do\n'
           '  if [ $((i % 2)) = 0 ]; then echo "line $i"; else echo "line $i" >&2; fi\n'
           '  i=$((i + 1))\ndone\nprintf "no newline at end"\n')
    script(module, "transition", 'echo "second script"\n')
    r = runner(module)

    async def both():
        await r.run("start_prim", "ALONE", "PRIM", "start")
        await r.run("transition", "PRIM", "PRIM", "start")

    asyncio.run(both())
    lines = log_lines(r)
    assert lines == ([("start_prim", f"line {i}") for i in range(200)]
                     + [("start_prim", "no newline at end"), ("transition", "second script")])


def test_background_child_does_not_hold_the_run_and_kill_leftovers_stops_it(module):
    # Like a start_prim that launches the application in the background.
    script(module, "start_prim", 'sh -c \'sleep 0.3; echo app-says-hi; exec sleep 100\' &\n'
           'echo "app=$!"\n')
    r = runner(module)

    async def scenario():
        res = await r.run("start_prim", "ALONE", "PRIM", "start")
        assert res.ok and res.duration_s < 1.0
        await asyncio.sleep(0.6)      # the app's later output still reaches the log
        return await r.kill_leftovers()

    assert asyncio.run(scenario()) == 1
    text = [t for _, t in log_lines(r)]
    app = int(next(t for t in text if t.startswith("app=")).split("=")[1])
    assert "app-says-hi" in text
    assert wait_gone(app)
    assert asyncio.run(r.kill_leftovers()) == 0


def test_kill_leftovers_never_hits_a_reused_pid(module):
    # A live process group that is not ours, recorded with another start time
    # (what a reused PID looks like): it must survive.
    other = subprocess.Popen(["sleep", "100"], start_new_session=True)
    try:
        r = runner(module)
        r._groups[other.pid] = process_start_ticks(other.pid) - 1
        assert asyncio.run(r.kill_leftovers()) == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_bad_input_is_refused_with_a_clear_error(module):
    with pytest.raises(ValueError, match="unknown script 'rm -rf'"):
        asyncio.run(runner(module).run("rm -rf", "a", "b", "c"))
    with pytest.raises(ValueError, match="'start_prim' is not a stop script"):
        asyncio.run(runner(module).run_stop("start_prim", "a", "b", "c"))
    with pytest.raises(ValueError, match="invalid environment variable name 'A=B'"):
        ScriptRunner(module, "web", module / "log", {"A=B": "x"}, 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        ScriptRunner(module, "web", module / "log", {}, 0)


def test_script_that_cannot_be_executed_fails(module):
    path = module / "bin" / "start_prim"
    path.write_text("#!/bin/sh\necho never\n")
    path.chmod(0o644)
    res = asyncio.run(runner(module).run("start_prim", "ALONE", "PRIM", "start"))
    assert not res.ok and res.returncode == 126


def test_cancelled_run_does_not_leave_the_script_running(module):
    script(module, "start_prim", 'echo "pid=$$"\nsleep 100\n')
    r = runner(module, timeout_s=30)

    async def scenario():
        task = asyncio.ensure_future(r.run("start_prim", "ALONE", "PRIM", "start"))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    pid = int(next(t for _, t in log_lines(r) if t.startswith("pid=")).split("=")[1])
    assert wait_gone(pid)
    assert os.path.exists(r.log_path)


def test_runs_on_uvloop_too(module):
    # The daemon runs on uvloop: exit detection must not depend on asyncio's own loop.
    script(module, "start_prim", 'sleep 100 &\necho "app=$!"\n')
    script(module, "stop_prim", 'echo "stop $3"\nsleep 100\n')
    r = runner(module, timeout_s=0.3)

    async def scenario():
        started = await r.run("start_prim", "ALONE", "PRIM", "start")
        stopped = await r.run_stop("stop_prim", "PRIM", "STOP", "stop")
        return started, stopped, await r.kill_leftovers()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as run:
        started, stopped, killed = run.run(scenario())
    assert started.ok and started.duration_s < 1.0
    assert stopped.forced and stopped.timed_out and not stopped.ok
    assert killed == 1
    text = [t for _, t in log_lines(r)]
    assert text[1:] == ["stop stop", "stop force"]
    assert wait_gone(int(text[0].split("=")[1]))


def test_kill_leftovers_still_knows_its_group_after_a_wall_clock_step(module):
    """A script still running when the wall clock is stepped is still ours: its group
    is killed. (psutil's create_time adds the boot time of /proc/stat, which a step
    moves by whole seconds; this runner compared create_times and then left the group
    alone.) The step is simulated where psutil reads the boot time: stepping the
    machine's real clock would disturb everything else running on it."""
    from unittest import mock

    import psutil._pslinux as pslinux

    script(module, "start_prim", "echo started\nexec sleep 100\n")
    r = runner(module, timeout_s=60.0)
    stepped_boot_time = pslinux.boot_time() + 1.0

    async def scenario():
        run = asyncio.create_task(r.run("start_prim", "ALONE", "PRIM", "start"))
        await asyncio.to_thread(wait_until, "the script to start",
                                lambda: "started" in r.log_path.read_text() if r.log_path.exists() else False)
        with mock.patch.object(pslinux, "boot_time", lambda: stepped_boot_time):
            killed = await r.kill_leftovers()
        if not killed:
            run.cancel()  # left running: stop it (run kills its group when cancelled)
        return killed, (await asyncio.gather(run, return_exceptions=True))[0]

    killed, result = asyncio.run(scenario())
    assert killed == 1, "the script's group was taken for another one and left running"
    assert not result.ok and not result.timed_out and "started" in result.last_line
