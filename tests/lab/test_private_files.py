"""The secret is read only if the daemon's user owns it (issue 17, item 5; chown needs
root). The rest of the private files: tests/unit/test_private_files.py."""
import os

import pytest

from hacluster.node import cluster_config
from hacluster.node.cluster_config import SECRET_FILE, ConfigError


def one_line(error: Exception) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text


@pytest.fixture
def member_dir(tmp_path):
    members = {"n1": {"address": "10.0.0.1:7400", "role": "node"}}
    from raft.settings import RaftSettings
    return cluster_config.write_member_dir(tmp_path, "c", "n1", members, "x" * 40, RaftSettings())


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_read_secret_checks_the_owner(member_dir):
    path = member_dir / SECRET_FILE
    os.chown(path, 12345, 12345)
    with pytest.raises(ConfigError) as e:
        cluster_config.load(member_dir).read_secret()
    assert one_line(e.value) == (f"{path}: cluster secret is owned by uid 12345, must be owned by "
                                 f"the user running hacluster (uid {os.geteuid()})")
