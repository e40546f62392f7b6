"""Real probes: sockets, processes, sysfs, ICMP and ARP; and the runner's loop."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from checkers.errd import ErrdWatch, ProcSpec, scan_processes
from checkers.intf import IntfDecision, read_interface
from checkers.ip import vip_configured
from checkers.ping import ping_method, ping_once
from checkers.resource import ResourceTable, is_active
from checkers.runner import Check, CheckRunner
from checkers.tcp import TcpDecision, probe_tcp
from tests.conftest import needs_root


def test_tcp_probe_against_a_real_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert asyncio.run(probe_tcp("127.0.0.1", port, 1.0))
    assert not asyncio.run(probe_tcp("127.0.0.1", port, 1.0))  # closed: refused at once


def test_tcp_probe_send_expect_detects_a_stopped_server():
    server = subprocess.Popen([sys.executable, "-c", (
        "import socket\ns=socket.create_server(('127.0.0.1',0));print(s.getsockname()[1],flush=True)\n"
        "while True:\n c,_=s.accept();c.recv(10);c.sendall(b'PONG');c.close()")],
        stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        assert asyncio.run(probe_tcp("127.0.0.1", port, 1.0, send=b"PING", expect=b"PONG"))
        server.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        assert not asyncio.run(probe_tcp("127.0.0.1", port, 0.3, send=b"PING", expect=b"PONG"))
        assert time.monotonic() - started < 1.0
    finally:
        server.kill()
        server.wait()


def test_errd_sees_a_real_process_start_and_die():
    spec = ProcSpec("sleep", argregex="31\\.4159")
    watch = ErrdWatch(spec)
    assert watch.observe(scan_processes()).value == "down"
    proc = subprocess.Popen(["sleep", "31.4159"])
    try:
        deadline = time.monotonic() + 5    # a loaded machine may show it a scan later
        while (seen := watch.observe(scan_processes())).value != "up" \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (seen.value, seen.count) == ("up", 1)
        assert seen.started[0][0] == proc.pid
    finally:
        proc.kill()
        proc.wait()
    gone = watch.observe(scan_processes())
    assert gone.value == "down" and gone.died[0][0] == proc.pid


def test_intf_reads_loopback():
    sample = read_interface("lo")
    assert sample.exists and sample.carrier is True
    assert IntfDecision().observe_sample(sample) == "up"
    assert not read_interface("nosuchif0").exists
    with pytest.raises(ValueError):
        read_interface("../etc")


def test_vip_configured_on_loopback():
    assert vip_configured("127.0.0.1")
    assert vip_configured("127.0.0.1", "lo")
    assert not vip_configured("127.0.0.1", "nosuchif0")
    assert not vip_configured("192.0.2.77")


def test_ping_loopback_with_whatever_this_process_may_use():
    method = ping_method()
    if method is None:
        pytest.skip("neither ping_group_range nor root allows ICMP here")
    assert ping_once("127.0.0.1", 1.0, method)


@needs_root
def test_ping_raw_and_datagram_sockets_in_the_lab(make_lab):
    lab = make_lab(["a", "b"])
    env = {"PYTHONPATH": os.getcwd()}

    def ping(method):
        code = ("from checkers.ping import ping_method,ping_once;"
                f"print(ping_method(), ping_once({lab.addr('b')!r}, 0.5, {method!r}))")
        return lab.run("a", [sys.executable, "-c", code], env=env).stdout.split()

    lab.run("a", ["sysctl", "-qw", "net.ipv4.ping_group_range=1 0"])  # per namespace
    assert ping("raw") == ["raw", "True"]
    lab.run("a", ["sysctl", "-qw", "net.ipv4.ping_group_range=0 0"])  # our group may now
    assert ping("dgram") == ["dgram", "True"]
    lab.cut("b")
    assert ping("dgram") == ["dgram", "False"]
    assert ping("raw") == ["dgram", "False"]


def test_runner_polls_reports_changes_and_deactivates():
    async def scenario():
        changes = []
        table = ResourceTable()
        runner = CheckRunner(table, changes.append)
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            port = server.getsockname()[1]
            tcp = TcpDecision()
            runner.add(Check("tcp.svc", 0.05, lambda: probe_tcp("127.0.0.1", port, 0.5), tcp.observe,
                             when="prim", reset=tcp.reset, blocking=False))
            runner.add(Check("intf.lo", 0.05, lambda: read_interface("lo"), IntfDecision().observe_sample))
            runner.add(Check("errd.hang", 0.05, lambda: time.sleep(1), lambda obs: "down" if obs is None else "up",
                             timeout_s=0.1))
            state = "PRIM"
            runner.set_active(lambda c: is_active(c.when, state))
            runner.start()
            deadline = time.monotonic() + 5
            while not {"tcp.svc", "intf.lo", "errd.hang"} <= {r.name for r in changes}:
                assert time.monotonic() < deadline, changes
                await asyncio.sleep(0.02)
            # the loop stayed responsive while a blocking probe hung in the pool
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 0.1
        while table.value("tcp.svc") != "down":  # listener closed
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        state = "SECOND"
        runner.set_active(lambda c: is_active(c.when, state))
        assert table.value("tcp.svc") == "init" and table.value("intf.lo") == "up"
        await runner.stop()
        return changes, table

    changes, table = asyncio.run(scenario())
    assert [r.value for r in changes if r.name == "tcp.svc"] == ["up", "down", "init"]
    assert table.value("errd.hang") == "down"


@needs_root
def test_arp_probe_finds_a_duplicate_vip_in_the_lab(make_lab):
    lab = make_lab(["a", "b"])
    base = lab.addr("a").rsplit(".", 1)[0]
    vip = f"{base}.200"
    code = ("import json,sys;from checkers.ip import probe_ip;"
            f"s=probe_ip({vip!r},'eth0',0.5);print(json.dumps([s.configured,list(s.duplicate_macs)]))")
    env = {"PYTHONPATH": os.getcwd()}

    def probe():
        return json.loads(lab.run("a", [sys.executable, "-c", code], env=env).stdout)

    lab.run("a", ["ip", "addr", "add", f"{vip}/24", "dev", "eth0"])
    assert probe() == [True, []]
    lab.run("b", ["ip", "addr", "add", f"{vip}/24", "dev", "eth0"])
    b_mac = lab.run("b", ["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    assert probe() == [True, [b_mac]]
    lab.run("a", ["ip", "addr", "del", f"{vip}/24", "dev", "eth0"])
    assert probe() == [False, []]
