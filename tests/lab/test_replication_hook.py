"""The replication mount's command line with a hook socket, end to end through a real
FUSE mount (root). The hook client alone: tests/unit/test_replication_hook.py."""
from __future__ import annotations

import os

import pytest

from chaos.lab import wait_until
from tests.conftest import REPO
from tests.unit.test_replication_hook import Owner


@pytest.fixture
def owner(tmp_path):
    o = Owner(str(tmp_path / "owner.sock"))
    yield o
    o.close()


# fusermount3 comes with the Makefile's fuse3 package: missing is a failure, not a skip
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                    reason="needs root and /dev/fuse")
def test_mount_cli_with_hook_socket_end_to_end(owner, tmp_path):
    """python -m replication mount --hook-socket: the owner learns in-sync, and
    when it refuses the loss, the application's write fails with EIO."""
    import errno
    import subprocess
    import sys

    from replication.receiver import Receiver

    secret = "correct horse battery staple"
    prim, copy, state = tmp_path / "prim", tmp_path / "copy", tmp_path / "state"
    prim.mkdir()
    copy.mkdir()
    (tmp_path / "secret").write_text(secret)
    owner.behaviour = lambda req: ({"ok": False, "error": "no quorum"}
                                   if req["cmd"] == "replication_peer_lost"
                                   else {"ok": True, "result": None})
    receiver = Receiver(str(copy), secret, "127.0.0.1", 0).start()
    host, port = receiver.address
    out = open(tmp_path / "mount.log", "w")
    mount = subprocess.Popen(
        [sys.executable, "-m", "replication", "mount", "--root", str(prim),
         "--peer", f"{host}:{port}", "--secret-file", str(tmp_path / "secret"),
         "--state", str(state), "--ack-timeout", "0.5", "--status-interval", "0",
         "--epoch", "4", "--hook-socket", owner.path, "--module", "db", "--hook-timeout", "2"],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until("the mount", lambda: "event=mounted" in (tmp_path / "mount.log").read_text(), 15)
        wait_until("in-sync at the owner", lambda: "replication_in_sync" in owner.cmds(), 15)
        assert {"cmd": "replication_in_sync", "module": "db", "epoch": 4} in owner.requests
        with open(prim / "a", "w") as f:
            f.write("replicated")
            f.flush()
            os.fsync(f.fileno())    # a barrier: on the copy when it returns
        assert (copy / "a").read_text() == "replicated"
        receiver.stop()
        with pytest.raises(OSError) as failed:     # the barrier is not acknowledged
            with open(prim / "b", "w") as f:
                f.write("never acknowledged")
                f.flush()
                os.fsync(f.fileno())
        assert failed.value.errno == errno.EIO
        peer_lost = [r for r in owner.requests if r["cmd"] == "replication_peer_lost"]
        assert peer_lost and peer_lost[0]["module"] == "db" and peer_lost[0]["epoch"] == 4
    finally:
        # A clean shutdown is not what this test is about (see the report on SIGTERM).
        mount.kill()
        mount.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(prim)], capture_output=True)
        receiver.stop()
        out.close()
