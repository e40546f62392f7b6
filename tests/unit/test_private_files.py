"""Files holding the secret or state are for the daemon's user only (issue 17,
item 5): the secret written without following links, state directories 0700, the
Raft journal and dumps 0600. Read only if ours (chown needs root): tests/lab/test_private_files.py."""
import os
import stat
import time

import pytest

from hacluster.node import cluster_config
from hacluster.node.cluster_config import SECRET_FILE, ConfigError


def test_write_secret_never_follows_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    d = tmp_path / "cfg"
    d.mkdir()
    (d / (SECRET_FILE + ".tmp")).symlink_to(victim)
    cluster_config.write_secret(d, "s" * 40)
    assert victim.read_text() == "precious\n"
    assert (d / SECRET_FILE).read_text() == "s" * 40 + "\n"
    assert not (d / SECRET_FILE).is_symlink()
    assert stat.S_IMODE((d / SECRET_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.fixture
def member_dir(tmp_path):
    members = {"n1": {"address": "10.0.0.1:7400", "role": "node"}}
    from raft.settings import RaftSettings
    return cluster_config.write_member_dir(tmp_path, "c", "n1", members, "x" * 40, RaftSettings())


def test_read_secret_refuses_a_symlink(member_dir, tmp_path):
    path = member_dir / SECRET_FILE
    real = tmp_path / "elsewhere"
    real.write_text("y" * 40)
    os.chmod(real, 0o600)
    path.unlink()
    path.symlink_to(real)
    with pytest.raises(ConfigError, match="a symlink is not accepted"):
        cluster_config.load(member_dir).read_secret()


def test_config_directory_is_private(member_dir):
    assert stat.S_IMODE(member_dir.stat().st_mode) == 0o700
    os.chmod(member_dir, 0o755)
    cluster_config.load(member_dir).write()
    assert stat.S_IMODE(member_dir.stat().st_mode) == 0o700


def test_raft_journal_and_its_directory_are_private(tmp_path):
    from raft.member import RaftMember
    from raft.settings import RaftSettings
    from tests.conftest import free_ports

    (port,) = free_ports(1)
    addr = f"127.0.0.1:{port}"
    data = tmp_path / "data" / "raft"
    # Log compaction after a few entries, so a dump is written too.
    m = RaftMember(addr, [addr], data, "z" * 40,
                   RaftSettings(log_compaction_entries=3, log_compaction_min_time_s=0.01))
    try:
        deadline = time.monotonic() + 10
        while not m.is_leader():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for i in range(10):
            assert m.call("set_eligible", f"r{i}", None, 1.5)["ok"]
        while not (data / "raft.dump").exists():
            assert time.monotonic() < deadline + 20, sorted(p.name for p in data.iterdir())
            time.sleep(0.05)
    finally:
        m.destroy()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    # A dump being written (raft.dump.tmp) has the umask's mode until it is renamed;
    # the 0700 directory keeps it private meanwhile.
    files = sorted(p for p in data.iterdir() if p.name.startswith("raft.") and p.suffix != ".tmp")
    assert {"raft.journal", "raft.journal.meta", "raft.dump"} <= {p.name for p in files}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p.name, oct(p.stat().st_mode))
