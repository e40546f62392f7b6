"""Every listener binds the member's own address, and a failed bind is fatal with one
line naming the address, the port and what the listener is for. Real sockets on
loopback; the lab tests (test_daemon_start_lab.py) run whole daemons."""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from hacluster.modules.fetch import ModuleFetchServer
from hacluster.node.control import ControlServer
from hacluster.node.peer_control import PeerControlServer
from raft.listen import ListenError, check_can_listen
from raft.member import RAFT_PURPOSE, RaftMember
from raft.settings import RaftSettings
from tests.conftest import free_ports

SECRET = "x" * 40


@pytest.fixture
def busy_port():
    """A port something listens on, on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_a_used_port_is_named_with_what_it_is_for(busy_port):
    with pytest.raises(ListenError) as e:
        check_can_listen("127.0.0.1", busy_port, RAFT_PURPOSE)
    assert _one_line(e) == (f"cannot listen on 127.0.0.1:{busy_port} for Raft, where the other "
                            "members connect: Address already in use; another process listens "
                            "there: a second daemon of this member?")


def test_an_address_not_on_this_host_is_named():
    # 192.0.2.0/24 is TEST-NET-1: never configured on a host.
    with pytest.raises(ListenError) as e:
        check_can_listen("192.0.2.7", 7400, RAFT_PURPOSE)
    assert _one_line(e).startswith("cannot listen on 192.0.2.7:7400 for Raft, where the other "
                                   "members connect: Cannot assign requested address; 192.0.2.7 "
                                   "is not an address of this host")


def test_a_name_that_does_not_resolve_is_named():
    with pytest.raises(ListenError, match=r"'no-such-host\.invalid' does not resolve"):
        check_can_listen("no-such-host.invalid", 7400, RAFT_PURPOSE)


def test_a_free_port_passes_and_stays_free():
    port = free_ports(1)[0]
    check_can_listen("127.0.0.1", port, RAFT_PURPOSE)
    with socket.create_server(("127.0.0.1", port)):
        pass        # the check did not keep it


def test_raft_binds_the_member_address_not_the_wildcard(tmp_path):
    port = free_ports(1)[0]
    member = RaftMember(f"127.0.0.1:{port}", [f"127.0.0.1:{port}"], tmp_path / "raft", SECRET,
                        RaftSettings())
    try:
        server = member.syncobj._SyncObj__transport._server
        assert server._TcpServer__socket.getsockname() == ("127.0.0.1", port)
        # The same port on another local address is still free: nothing holds 0.0.0.0.
        check_can_listen("127.0.0.2", port, RAFT_PURPOSE)
    finally:
        member.syncobj.destroy_synchronous()


def test_raft_on_a_used_port_fails_at_once_and_leaves_no_thread(tmp_path, busy_port):
    before = threading.active_count()
    with pytest.raises(ListenError) as e:
        RaftMember(f"127.0.0.1:{busy_port}", [f"127.0.0.1:{busy_port}"], tmp_path / "raft",
                   SECRET, RaftSettings())
    assert _one_line(e).startswith(f"cannot listen on 127.0.0.1:{busy_port} for Raft, where the "
                                   "other members connect: Address already in use")
    assert threading.active_count() == before     # pysyncobj's tick thread is gone


def test_peer_control_and_module_fetch_on_a_used_port_say_which(busy_port):
    async def start(server):
        await server.start()

    async def dispatch(request):
        return {}
    peer = PeerControlServer("127.0.0.1", busy_port, SECRET, dispatch)
    with pytest.raises(ListenError) as e:
        asyncio.run(start(peer))
    assert _one_line(e).startswith(f"cannot listen on 127.0.0.1:{busy_port} for peer control, "
                                   "where the other nodes send hacluster -H requests (Raft port + 3)")
    fetch = ModuleFetchServer("127.0.0.1", busy_port, SECRET, lambda digest: None)
    with pytest.raises(ListenError) as e:
        asyncio.run(start(fetch))
    assert _one_line(e).startswith(f"cannot listen on 127.0.0.1:{busy_port} for module fetch, "
                                   "where the data nodes fetch module packages (Raft port + 2)")


def test_a_control_socket_a_daemon_answers_on_is_not_taken_over(tmp_path):
    path = tmp_path / "control.sock"

    async def go():
        first = ControlServer(path, {})
        await first.start()
        try:
            with pytest.raises(ListenError, match="a running daemon answers there"):
                await ControlServer(path, {}).start()
        finally:
            await first.close()
        # A socket file left by a killed daemon (nobody answers) is replaced.
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(str(path))
        second = ControlServer(path, {})
        await second.start()
        await second.close()
    asyncio.run(go())


def test_a_replication_receiver_on_a_used_port_says_which_in_one_line(tmp_path, busy_port):
    import subprocess
    import sys
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    res = subprocess.run([sys.executable, "-m", "replication", "receive", "--root", str(tmp_path),
                          "--listen", f"127.0.0.1:{busy_port}", "--secret-file", str(secret),
                          "--state", str(tmp_path / "state")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr == (f"error: cannot listen on 127.0.0.1:{busy_port} for replication, where "
                          "the primary's mount connects: Address already in use\n")
