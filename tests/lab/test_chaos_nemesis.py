"""The disk-full nemesis's small file systems, really mounted (root): filled to ENOSPC and
unmounted, also on failure. Target selection (pure): tests/unit/test_chaos_nemesis.py."""
from __future__ import annotations


import pytest

from chaos.chaos_run import small_file_systems   # registers them all
from chaos.nemesis import (FILLER_NAME, fill_until_full, small_fs_dir)
from tests.conftest import needs_root


class _DataDirs:
    """Only what small_file_systems reads of a MirrorLab: node names and data dirs."""
    def __init__(self, base) -> None:
        self.nodes = ["n1", "n2"]
        self.base = base

    def data_dir(self, node: str):
        return self.base / node / "root" / "srv" / "kvdemo"


@needs_root
def test_small_file_systems_fill_to_enospc_and_are_unmounted(tmp_path):
    import os
    dirs = _DataDirs(tmp_path)
    with small_file_systems(dirs, size_mib=4) as mounted:
        assert mounted == [small_fs_dir(dirs, n) for n in dirs.nodes]
        assert all(os.path.ismount(p) for p in mounted)
        filler = mounted[0] / FILLER_NAME
        size = fill_until_full(filler)
        assert 3 << 20 < size <= 4 << 20
        with pytest.raises(OSError, match="No space left"):
            (mounted[0] / "more").write_bytes(b"x" * 8192)
        (mounted[1] / "room").write_bytes(b"x" * 8192)   # one file system per node
        filler.unlink()
        (mounted[0] / "more").write_bytes(b"x" * 8192)   # heal: room again
    assert not any(os.path.ismount(p) for p in mounted)


@needs_root
def test_small_file_systems_unmount_what_they_mounted_on_failure(tmp_path):
    import os
    dirs = _DataDirs(tmp_path)
    small_fs_dir(dirs, "n2").mkdir(parents=True)
    (small_fs_dir(dirs, "n2") / "stale").write_text("x")
    with pytest.raises(RuntimeError, match=r"small file system: .*n2/root/srv on n2 is not empty"):
        with small_file_systems(dirs, size_mib=4):
            pass
    assert not os.path.ismount(small_fs_dir(dirs, "n1"))
