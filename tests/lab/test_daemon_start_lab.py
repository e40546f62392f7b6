"""How a daemon starts on a server, with real daemons in the lab: an address that is
not up yet and a port already taken stop it at once with one line (systemd restarts
it, RestartSec), and under systemd it says READY=1, feeds the watchdog and asks for
its stop time on a real NOTIFY_SOCKET."""
from __future__ import annotations

import socket
import sys

import pytest

from chaos.lab_cluster import RAFT_PORT
from hacluster.modules.registry import FETCH_PORT_OFFSET
from hacluster.node.cluster_config import HTTP_PORT_OFFSET
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def _daemon_lines(proc) -> list[str]:
    return proc.log_path.read_text(errors="replace").splitlines()


def test_a_member_whose_address_is_not_up_exits_with_one_clear_line(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    lab = cluster.lab
    address = lab.addr("n1")
    lab.run("n1", ["ip", "addr", "del", f"{address}/24", "dev", "eth0"])
    cluster.start("n2")
    cluster.start("w")
    proc = cluster.start("n1")
    assert proc.wait(timeout=30) == 1
    lines = _daemon_lines(proc)
    assert lines[-1] == (f"hacluster: cannot listen on {address}:{RAFT_PORT} for Raft, where the "
                         f"other members connect: Cannot assign requested address; {address} is "
                         "not an address of this host: not configured yet, or the wrong address "
                         "in cluster.json")
    assert not [ln for ln in lines if "event=daemon_started" in ln]
    assert not [ln for ln in lines if "Traceback" in ln]
    # The address comes up; the next start (systemd's restart) joins the cluster.
    lab.run("n1", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
    cluster.start("n1")
    cluster.wait_for("n1 ready", lambda: cluster.events("n1", "daemon_ready"), timeout=30)
    assert cluster.wait_leader() in cluster.members


def test_a_second_daemon_on_a_used_port_fails_fast_and_the_first_goes_on(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"])
    cluster.wait_for("n1 ready", lambda: cluster.events("n1", "daemon_ready"))
    first = cluster.procs["n1"]
    argv = [sys.executable, "-m", "hacluster", "-c", str(cluster.config_dir("n1")),
            *cluster.path_flags("n1"), "node", "run"]
    second = cluster.lab.spawn("n1", argv, name="hacluster-second")
    assert second.wait(timeout=30) == 1
    address = cluster.lab.addr("n1")
    assert _daemon_lines(second)[-1] == (
        f"hacluster: cannot listen on {address}:{RAFT_PORT} for Raft, where the other members "
        "connect: Address already in use; another process listens there: a second daemon of "
        "this member?")
    assert first.alive()
    assert cluster.status("n1")["node"] == "n1"      # its control socket was not taken over
    # nor its pid file
    assert int((cluster.run_dir("n1") / "hacluster-node.pid").read_text()) == first.pid


@pytest.mark.parametrize("offset, purpose", [
    (FETCH_PORT_OFFSET, "module fetch, where the data nodes fetch module packages (Raft port + 2)"),
    (HTTP_PORT_OFFSET, ("the HTTP endpoints (metrics, readiness), where monitoring and load "
                        "balancers connect (Raft port + 4, or http in cluster.json)"))])
def test_a_taken_port_stops_the_node_naming_it(make_cluster, offset, purpose):
    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    address = cluster.lab.addr("n2")
    port = RAFT_PORT + offset
    squatter = cluster.lab.spawn("n2", [sys.executable, "-c", (
        "import socket, time\n"
        f"s = socket.create_server(({address!r}, {port}))\n"
        "print('listening', flush=True)\n"
        "time.sleep(600)\n")], name="squatter")
    try:
        cluster.wait_for("squatter listening",
                         lambda: "listening" in squatter.log_path.read_text(errors="replace"))
        proc = cluster.start("n2")
        assert proc.wait(timeout=30) == 1
        assert _daemon_lines(proc)[-1] == (
            f"hacluster: cannot listen on {address}:{port} for {purpose}: Address already in "
            "use; another process listens there: a second daemon of this member?")
    finally:
        squatter.kill()


def test_ready_watchdog_and_stop_reach_the_notify_socket(make_cluster, tmp_path):
    cluster = make_cluster(["n1", "n2"], ["w"], start=False)
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    messages: list[list[str]] = []

    def receive_until(wanted: str) -> None:
        while not any(wanted in m for m in messages):
            messages.append(sock.recv(65536).decode().split("\n"))

    try:
        # As systemd starts it with WatchdogSec=2s: fed every second at most.
        proc = cluster.start("n1", env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        cluster.start("n2")
        cluster.start("w")
        receive_until("READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert any(line.startswith("STATUS=member n1 of cluster lab; Raft leader ") for line in ready)
        assert cluster.status("n1")["leader"] in cluster.members
        # The watchdog keeps being fed from the lease loop: two more feeds after READY.
        for _ in range(2):
            count = sum(m == ["WATCHDOG=1"] for m in messages)
            while sum(m == ["WATCHDOG=1"] for m in messages) == count:
                messages.append(sock.recv(65536).decode().split("\n"))
        proc.signal(15)
        receive_until("STOPPING=1")
        stopping = next(m for m in messages if "STOPPING=1" in m)
        extend = next(int(line.split("=", 1)[1]) for line in stopping
                      if line.startswith("EXTEND_TIMEOUT_USEC="))
        assert extend >= 1_500_000          # at least the lease, handed back at stop
        assert proc.wait(timeout=30) == 0
    finally:
        sock.close()
