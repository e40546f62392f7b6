"""What `hacluster cluster add-/remove-<role>` says when the daemon could not confirm
the change: a timeout does not mean "not committed" (a command that reached the
leader may still commit), a refusal sent nowhere does. A real control socket
answers with the daemon's own error texts."""
from __future__ import annotations

import asyncio
import threading

import pytest

from hacluster import cli
from hacluster.node.control import ControlError, ControlServer


@pytest.fixture
def daemon_answering(tmp_path, monkeypatch):
    """answer(error) -> config dir of member 'a' whose control socket fails every
    membership command with ``error``. Its runtime directory (the socket's) is given
    to the CLI in the environment."""
    monkeypatch.setenv("HACLUSTER_RUN_DIR", str(tmp_path / "a"))
    assert cli.main(["cluster", "init", "--name", "t", "--node", "a=10.0.0.1", "--node",
                     "b=10.0.0.2", "--witness", "w2=10.0.0.9", "--out", str(tmp_path)]) == 0
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servers = []

    def answer(error: str):
        async def fail(request):
            raise ControlError(error)
        server = ControlServer(tmp_path / "a" / "control.sock",
                               {"remove_member": fail, "add_member": fail})
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        servers.append(server)
        return tmp_path / "a"

    yield answer
    for server in servers:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_timeout_says_the_outcome_is_unknown_and_how_to_check(daemon_answering, capsys):
    config = daemon_answering("remove_member: not committed within 5.0 s (no quorum?)")
    assert cli.main(["--config", str(config), "cluster", "remove-witness", "w2"]) == 1
    line = _stderr_line(capsys)
    assert line.startswith("hacluster: remove-witness w2: no confirmation")
    assert "outcome unknown" in line and "may still commit" in line
    assert "hacluster cluster status" in line


def test_a_leader_change_says_the_outcome_is_unknown(daemon_answering, capsys):
    config = daemon_answering("add_member: outcome unknown: the leader changed before it "
                              "answered; it may still commit (check the cluster state)")
    assert cli.main(["--config", str(config), "cluster", "add-witness", "w3", "10.0.0.8"]) == 1
    line = _stderr_line(capsys)
    assert line.startswith("hacluster: add-witness w3: no confirmation") and "cluster status" in line


def test_a_definite_refusal_is_passed_on_unchanged(daemon_answering, capsys):
    error = "remove_member not committed: no Raft leader known (nothing sent)"
    config = daemon_answering(error)
    assert cli.main(["--config", str(config), "cluster", "remove-witness", "w2"]) == 1
    assert _stderr_line(capsys) == f"hacluster: {error}"
