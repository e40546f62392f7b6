"""Copy identities (DESIGN rule 6), the edge: the record in a trusted.* xattr (root) and
a bare mount point (a real tmpfs). The record and the rules: tests/unit/test_copy_identity.py."""
from __future__ import annotations

import os
import subprocess

import pytest

from replication.copy_identity import (
    IdentityError, check_mount_point,
    new_record, read_local,
    read_record, write_record)

C, M = "prod", "db"


A, B = "a" * 32, "b" * 32


# ---- promotion ------------------------------------------------------------------------------


# ---- the xattr on a real directory -------------------------------------------------------------
@pytest.fixture
def xdir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    try:
        os.setxattr(d, "trusted.hacluster.probe", b"1")
    except OSError as e:
        pytest.skip(f"trusted.* xattrs need root and a file system that has them: {e}")
    return str(d)


def test_stamp_and_read_back(xdir):
    assert read_record(xdir) is None
    r = new_record(C, M, 4)
    write_record(xdir, r)
    assert read_record(xdir) == r
    assert read_local([xdir])[0].record == r


def test_a_directory_recreated_by_hand_has_no_record(xdir):
    write_record(xdir, new_record(C, M, 4))
    os.rmdir(xdir)
    os.mkdir(xdir)
    assert read_record(xdir) is None


def test_a_damaged_record_on_disk_is_reported(xdir):
    os.setxattr(xdir, "trusted.hacluster.identity", b"{not json")
    with pytest.raises(IdentityError, match="damaged identity record"):
        read_record(xdir)


def test_bare_mount_point_detected(tmp_path):
    d = tmp_path / "mnt"
    d.mkdir()
    assert "not a mount point" in check_mount_point(str(d))
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        assert check_mount_point(str(d)) is None
    finally:
        subprocess.run(["umount", str(d)], check=True)
