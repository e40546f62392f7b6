"""The namespace lab, with real namespaces and real processes (needs root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from chaos.lab import REGISTRY_DIR, Lab, LabProcess, cleanup_all
from checkers.errd import process_start_ticks
from tests.conftest import REPO

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

PY = sys.executable
PORT = 7000

ECHO_SERVER = textwrap.dedent(f"""
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", {PORT}))
    s.listen()
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        with c:
            c.sendall(b"pong:" + c.recv(100))
""")

# argv[1] host, argv[2] timeout per attempt, argv[3] total seconds to keep retrying
TCP_CLIENT = textwrap.dedent(f"""
    import socket, sys, time
    deadline = time.monotonic() + float(sys.argv[3])
    while True:
        try:
            with socket.create_connection((sys.argv[1], {PORT}), timeout=float(sys.argv[2])) as c:
                c.sendall(b"ping")
                print(c.recv(100).decode())
                break
        except OSError as e:
            if time.monotonic() > deadline:
                print(repr(e))
                sys.exit(1)
            time.sleep(0.05)
""")

UDP_LISTENER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    data, peer = s.recvfrom(100)
    print("got", data.decode(), peer[0], flush=True)
""")

UDP_SENDER = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
        time.sleep(0.02)
""")


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def make(hosts: list[str], **kw: object) -> Lab:
        lab = Lab(hosts, workdir=tmp_path / f"lab{len(labs)}", **kw)
        labs.append(lab)
        return lab.start()

    yield make
    for lab in labs:
        lab.cleanup()


def lab_namespaces(lab_id: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"hclab-{lab_id}-")]


def dead(pid: int, start_ticks: int | None = None) -> bool:
    """Gone, a zombie (PID 1 here does not reap orphans), or a new process on that pid
    (another start time since boot: a wall-clock create_time moves when the clock is stepped)."""
    try:
        proc = psutil.Process(pid)
        if start_ticks is not None and process_start_ticks(pid) != start_ticks:
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ProcessLookupError):
        return True


def wait_for(pred: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def ready(p: LabProcess) -> bool:
    # a whole line: the log's header line quotes the argv, which contains the word too
    return "ready" in p.log_path.read_text().splitlines()


def serve(lab: Lab, host: str) -> LabProcess:
    p = lab.spawn(host, [PY, "-c", ECHO_SERVER], name="echo")
    assert wait_for(lambda: ready(p)), p.log_path.read_text()
    return p


def tcp(lab: Lab, src: str, dst: str, net: str | None = None, timeout: float = 0.5,
        retry: float = 0.0) -> bool:
    r = lab.run(src, [PY, "-c", TCP_CLIENT, lab.addr(dst, net), str(timeout), str(retry)],
                check=False, timeout=30)
    return r.returncode == 0 and r.stdout.strip() == "pong:ping"


def udp_arrives(lab: Lab, src: str, dst: str, port: int = 7001) -> bool:
    listener = lab.spawn(dst, [PY, "-c", UDP_LISTENER, str(port)], name=f"udp{port}")
    assert wait_for(lambda: ready(listener))
    lab.run(src, [PY, "-c", UDP_SENDER, lab.addr(dst), str(port)])
    try:
        listener.wait(1.0)
    except subprocess.TimeoutExpired:
        listener.kill()
        return False
    return f"got hello {lab.addr(src)}" in listener.log_path.read_text()


def test_hosts_reach_each_other(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(["n1", "n2"])
    assert lab.hosts["n1"].addr("lan") == lab.addr("n1") == lab.hosts["n1"].addrs["lan"]
    assert lab.addr("n1").startswith("10.213.") and lab.addr("n2").endswith(".2")
    assert lab.hosts["n2"].netns == f"hclab-{lab.id}-n2"
    lab.run("n1", ["ping", "-c", "1", "-W", "2", lab.addr("n2")])
    serve(lab, "n2")
    assert tcp(lab, "n1", "n2", retry=3)
    # no default route: nothing leaves the lab
    assert "default" not in lab.run("n1", ["ip", "route"]).stdout


@pytest.mark.parametrize("method", ["nft", "link"])
def test_cut_both_and_heal(make_lab: Callable[..., Lab], method: str) -> None:
    lab = make_lab(["n1", "n2"])
    serve(lab, "n1")
    serve(lab, "n2")
    assert tcp(lab, "n1", "n2", retry=3)
    lab.cut("n1", direction="both", method=method)
    assert not tcp(lab, "n1", "n2")
    if method == "nft":
        ruleset = lab.run("n1", ["nft", "list", "ruleset"]).stdout
        assert "table netdev hclab_cut" in ruleset
        # traffic inside the host (loopback) is untouched
        assert tcp(lab, "n1", "n1")
    lab.heal("n1")
    assert tcp(lab, "n1", "n2", retry=2)
    assert "hclab" not in lab.run("n1", ["nft", "list", "ruleset"]).stdout


@pytest.mark.parametrize("direction", ["out", "in"])
def test_one_way_cut(make_lab: Callable[..., Lab], direction: str) -> None:
    lab = make_lab(["n1", "n2"])
    serve(lab, "n1")
    serve(lab, "n2")
    lab.cut("n1", direction=direction)
    # cut "out": n1 cannot reach n2, n2's datagrams still reach n1; "in" the reverse
    blocked, allowed = (("n1", "n2"), ("n2", "n1")) if direction == "out" else \
        (("n2", "n1"), ("n1", "n2"))
    assert not tcp(lab, *blocked)
    assert udp_arrives(lab, *allowed)
    lab.heal()
    assert tcp(lab, "n1", "n2", retry=2) and tcp(lab, "n2", "n1", retry=2)


def test_block_is_one_way(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(["n1", "n2", "n3"])
    lab.block("n1", ["n2"])
    assert not udp_arrives(lab, "n1", "n2", port=7002)
    assert udp_arrives(lab, "n2", "n1", port=7003)
    assert udp_arrives(lab, "n1", "n3", port=7004)
    lab.heal("n2")  # healing the target also lifts blocks aimed at it
    assert udp_arrives(lab, "n1", "n2", port=7005)


def test_partition(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(["n1", "n2", "n3"])
    for h in ("n1", "n2", "n3"):
        serve(lab, h)
    lab.partition([["n1"], ["n2", "n3"]])
    assert tcp(lab, "n2", "n3") and tcp(lab, "n3", "n2")
    assert not tcp(lab, "n1", "n2") and not tcp(lab, "n2", "n1") and not tcp(lab, "n3", "n1")
    lab.heal()
    assert tcp(lab, "n1", "n2", retry=2) and tcp(lab, "n3", "n1", retry=2)


@pytest.mark.parametrize("method", ["nft", "link"])
def test_cut_one_network(make_lab: Callable[..., Lab], method: str) -> None:
    lab = make_lab(["n1", "n2"], networks=("lan", "repl"))
    assert lab.addr("n1", "repl").startswith("10.214.")
    assert lab.run("n1", ["ip", "-o", "addr", "show", "eth1"]).stdout.count(lab.addr("n1", "repl"))
    serve(lab, "n2")
    assert tcp(lab, "n1", "n2", "repl", retry=3)
    lab.cut("n1", method=method, net="repl")
    assert tcp(lab, "n1", "n2", "lan")
    assert not tcp(lab, "n1", "n2", "repl")
    lab.heal()
    assert tcp(lab, "n1", "n2", "repl", retry=2)


def test_process_control(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(["n1"])
    p = lab.spawn("n1", ["sleep", "1000"], name="sleeper")
    proc = psutil.Process(p.pid)
    # the Popen pid is the process itself (once `ip netns exec` has exec'd), in the namespace
    assert wait_for(lambda: proc.name() == "sleep", 2)
    assert os.stat(f"/proc/{p.pid}/ns/net").st_ino == os.stat(f"/run/netns/{lab.hosts['n1'].netns}").st_ino
    assert p.log_path == lab.host_dir("n1") / "sleeper.log" and p.log_path.exists()
    assert p.alive() and p in lab.processes
    p.pause()
    assert wait_for(lambda: proc.status() == psutil.STATUS_STOPPED, 2)
    p.resume()
    assert wait_for(lambda: proc.status() in (psutil.STATUS_SLEEPING, psutil.STATUS_RUNNING), 2)
    assert p.kill() == -signal.SIGKILL
    assert not p.alive()
    assert not psutil.pid_exists(p.pid)  # reaped, not a zombie

    q = lab.spawn("n1", ["sleep", "1000"], name="sleeper")
    q.pause()
    assert q.stop(timeout=5) == -signal.SIGTERM  # delivered although it was paused
    stubborn = lab.spawn("n1", [PY, "-c", "import signal, time\n"
                                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                "print('ready', flush=True)\ntime.sleep(1000)"], name="stubborn")
    assert wait_for(lambda: ready(stubborn))
    assert stubborn.stop(timeout=0.3) == -signal.SIGKILL
    out = lab.spawn("n1", ["sh", "-c", "echo to-stdout; echo to-stderr >&2"], name="sleeper")
    assert out.wait(5) == 0
    log_text = (lab.host_dir("n1") / "sleeper.log").read_text()
    assert "to-stdout" in log_text and "to-stderr" in log_text


def test_a_power_loss_leaves_no_kernel_state_acting_for_the_host(make_lab: Callable[..., Lab]) -> None:
    """kill_host is a power loss: the VIP, the farm's nft tables and shared-MAC
    membership a daemon had set up are gone, the lab's own address and fault
    tables stay (a real server boots with empty tables)."""
    lab = make_lab(["n1", "n2"])
    ns = lab.hosts["n1"].netns
    vip = lab.addr("n1").rsplit(".", 1)[0] + ".250"
    sh = lambda *a: subprocess.run(["ip", "netns", "exec", ns, *a], check=True,  # noqa: E731
                                   capture_output=True, text=True)
    sh("ip", "addr", "add", f"{vip}/32", "dev", "eth0")
    sh("ip", "maddr", "add", "03:bf:0a:00:00:fa", "dev", "eth0")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, text=True,
                   input="table inet hcfarm_x {\n chain pre {\n type filter hook prerouting "
                         "priority -300;\n }\n}\n")
    lab.cut("n1")                           # a lab fault table that must survive
    lab.spawn("n1", ["sleep", "1000"], name="sleeper")
    assert lab.kill_host("n1") == 1
    addrs = sh("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert vip not in addrs and lab.addr("n1") in addrs
    assert "03:bf:0a:00:00:fa" not in sh("ip", "maddr", "show", "dev", "eth0").stdout
    tables = sh("nft", "list", "tables").stdout
    assert "hcfarm_x" not in tables and "hclab_cut" in tables
    lab.heal("n1")
    serve(lab, "n1")
    assert tcp(lab, "n2", "n1", retry=3)


def test_cleanup(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(["n1", "n2"])
    procs = [lab.spawn(h, ["sleep", "1000"], name="s") for h in ("n1", "n2")]
    # a grandchild the lab never saw is found through its namespace
    lab.spawn("n1", ["sh", "-c", "sleep 1000 & echo $! ; wait"], name="forker")
    assert wait_for(lambda: (lab.host_dir("n1") / "forker.log").read_text().count("\n") >= 2)
    grandchild = int((lab.host_dir("n1") / "forker.log").read_text().splitlines()[-1])
    assert len(lab_namespaces(lab.id)) == 3 and lab.registry_path.exists()
    registry = json.loads(lab.registry_path.read_text())
    # processes are recorded by their start since boot, which a wall-clock step does not move
    assert registry["owner"]["start_ticks"] == process_start_ticks(os.getpid())
    assert {(r["pid"], r["start_ticks"]) for r in registry["processes"]} >= {
        (p.pid, process_start_ticks(p.pid)) for p in procs}
    lab.cleanup()
    assert lab_namespaces(lab.id) == []
    assert all(not p.alive() and not psutil.pid_exists(p.pid) for p in procs)
    assert wait_for(lambda: dead(grandchild), 2)
    assert not lab.registry_path.exists()
    assert lab.cleanup() == []  # idempotent


def test_a_recorded_process_is_still_known_after_a_wall_clock_step() -> None:
    """cleanup_all leaves a lab alone while its owner lives, and kills a recorded pid only
    while it is the recorded process. After a wall-clock step psutil's create_time has
    moved (it adds /proc/stat's boot time, re-read each call): by create_time a live
    owner looked gone. By start ticks it is still itself. The step is simulated where
    psutil reads the boot time; stepping the real clock would disturb the machine."""
    from unittest import mock

    import psutil._pslinux as pslinux

    from chaos.lab import _identity, _same_process

    proc = subprocess.Popen(["sleep", "1000"])
    try:
        recorded = _identity(proc.pid)
        stepped = pslinux.boot_time() + 5.0
        with mock.patch.object(pslinux, "boot_time", lambda: stepped):
            assert _same_process(proc.pid, recorded["create_time"], recorded["start_ticks"]) is not None
            assert _same_process(proc.pid, recorded["create_time"]) is None   # a record without start_ticks
        assert _same_process(proc.pid, None, recorded["start_ticks"] - 1) is None   # a reused pid
    finally:
        proc.kill()
        proc.wait()
    assert _same_process(proc.pid, None, recorded["start_ticks"]) is None


def test_a_lab_removes_the_work_folder_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """It holds the cluster's secrets and copies of data; one given to the lab stays."""
    monkeypatch.delenv("HCLAB_KEEP", raising=False)
    lab = Lab(["n1"]).start()
    try:
        lab.spawn("n1", ["sleep", "1000"], name="s")
        assert lab.workdir.is_dir() and lab.workdir.name.startswith(f"hclab-{lab.id}-")
    finally:
        lab.cleanup()
    assert not lab.workdir.exists()


def test_cleanup_after_failed_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lab = Lab(["n1", "n2"], workdir=tmp_path)
    real = Lab._setup_host

    def failing(self: Lab, host: object) -> None:
        if host.name == "n2":
            raise RuntimeError("boom")
        real(self, host)

    monkeypatch.setattr(Lab, "_setup_host", failing)
    with pytest.raises(RuntimeError, match="boom"):
        lab.start()
    assert lab_namespaces(lab.id) == [] and not lab.registry_path.exists()


def test_cleanup_all_abandoned_in_process(tmp_path: Path) -> None:
    lab = Lab(["n1"], workdir=tmp_path).start()
    p = lab.spawn("n1", ["sleep", "1000"], name="s")
    removed = cleanup_all()  # the lab object is never cleaned by the test itself
    assert lab_namespaces(lab.id) == []
    assert not p.alive()
    assert any(f"hclab-{lab.id}-n1" in r for r in removed)


def test_cleanup_all_after_crash(tmp_path: Path) -> None:
    # A test process that dies without any cleanup (os._exit skips atexit).
    script = textwrap.dedent("""
        import json, os, sys
        from chaos.lab import Lab
        lab = Lab(["n1", "n2"], workdir=sys.argv[1]).start()
        p = lab.spawn("n2", ["sleep", "1000"])
        print(json.dumps({"id": lab.id, "pid": p.pid, "start": p.identity["start_ticks"]}), flush=True)
        os._exit(0)
    """)
    r = subprocess.run([PY, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=30, check=True,
                       cwd=REPO)
    info = json.loads(r.stdout)
    assert len(lab_namespaces(info["id"])) == 3
    assert not dead(info["pid"], info["start"])
    # an unregistered hclab- namespace (registry lost) is removed too
    orphan = f"hclab-{info['id']}x-orphan"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    removed = cleanup_all()
    assert lab_namespaces(info["id"]) == [] and lab_namespaces(f"{info['id']}x") == []
    assert wait_for(lambda: dead(info["pid"], info["start"]), 2)
    assert not (REGISTRY_DIR / f"{info['id']}.json").exists()
    assert f"namespace {orphan}" in removed


def test_cli_cleanup() -> None:
    r = subprocess.run([PY, "-m", "chaos.lab", "cleanup"], capture_output=True, text=True,
                       timeout=30, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_nothing_in_root_namespace(make_lab: Callable[..., Lab]) -> None:
    def root_state() -> tuple[str, str]:
        addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
        return addrs.stdout, "\n".join(sorted(ln.split(":")[1] for ln in links.stdout.splitlines()))

    before = root_state()
    lab = make_lab(["n1", "n2"], networks=("lan", "repl"))
    assert lab.run("n1", ["ping", "-c", "1", "-W", "2", lab.addr("n2", "repl")]).returncode == 0
    addrs, links = root_state()
    assert "10.213." not in addrs and "10.214." not in addrs
    assert links == before[1]


def test_spawn_share_mounts_enters_only_the_network_namespace(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(["a"])
    private = lab.spawn("a", ["sleep", "1000"], name="private")
    shared = lab.spawn("a", ["sleep", "1000"], name="shared", share_mounts=True)

    def ns(pid: int | str, kind: str) -> str:
        deadline = time.monotonic() + 5
        while True:  # for a moment the pid is still `ip`/`nsenter`, before it execs
            link = os.readlink(f"/proc/{pid}/ns/{kind}")
            if pid == "self" or psutil.Process(int(pid)).name() == "sleep" or time.monotonic() > deadline:
                return link
            time.sleep(0.01)

    assert ns(shared.pid, "net") == ns(private.pid, "net") != ns("self", "net")
    assert ns(shared.pid, "mnt") == ns("self", "mnt")
    assert ns(private.pid, "mnt") != ns("self", "mnt")
