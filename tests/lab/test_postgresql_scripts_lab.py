"""The modules/postgresql scripts against a real PostgreSQL 15 on a real FUSE mount: what
they must do when the mount is stopped under a running server, as a lost lease does (the
mount goes first, to fence its writes, then stop_prim)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from replication.mount import mount_in_thread
from tests.conftest import REPO, needs_root

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SCRIPTS = REPO / "modules" / "postgresql" / "bin"

pytestmark = [needs_root, pytest.mark.skipif(
    not (PG_BIN / "postgres").exists() or not os.path.exists("/dev/fuse"),
    reason="needs PostgreSQL 15 (make test installs it) and /dev/fuse")]


class Accepting:
    """Nothing replicated: these tests are about the scripts and the mount's life."""

    def submit(self, op):
        return None

    def wait(self, ticket) -> None:
        return None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


@pytest.fixture
def served_pg():
    """A module's directory (PG_DIR) under a FUSE mount, PostgreSQL started on it by
    start_prim; the environment the scripts get; everything stopped after."""
    base = Path(tempfile.mkdtemp(prefix="hc-pgscripts-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    srv = base / "srv" / "pgmod"
    srv.mkdir(parents=True)
    env = {**os.environ, "HACLUSTER_ROOT_PREFIX": "", "HACLUSTER_MODULE": "pgscripts",
           "HACLUSTER_NODE": "n1", "PG_DIR": str(srv), "PG_PORT": "5497", "PG_LISTEN": "",
           "PG_STOP_TIMEOUT": "20"}
    run = Path("/run/hacluster-pgscripts")
    m = mount_in_thread(str(srv), Accepting(), native=True)
    pid = None
    try:
        r = subprocess.run([str(SCRIPTS / "start_prim"), "WAIT", "ALONE", "start"], env=env,
                           capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        pid = int((srv / "data" / "postmaster.pid").read_text().split()[0])
        yield srv, env, m, pid
    finally:
        if pid is not None and alive(pid):
            os.kill(pid, 9)
            for _ in range(500):
                if not alive(pid):
                    break
                time.sleep(0.01)
        try:
            m.unmount()
        except Exception:  # noqa: BLE001 - already detached by the test
            pass
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


def test_stop_prim_stops_a_server_whose_mount_was_stopped_under_it(served_pg):
    srv, env, m, pid = served_pg
    assert alive(pid)
    subprocess.run(["umount", "-l", str(srv)], check=True)   # the mount stopped first
    # the server's directory now reads relative to the detached mount
    assert os.readlink(f"/proc/{pid}/cwd") != str(srv / "data")
    r = subprocess.run([str(SCRIPTS / "stop_prim"), "PRIM", "WAIT", "force"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for _ in range(500):
        if not alive(pid):
            break
        time.sleep(0.01)
    assert not alive(pid), f"postgres {pid} still running after stop_prim: {r.stdout}"
