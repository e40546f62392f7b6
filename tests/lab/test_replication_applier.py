"""Applying Ops to a real tree: Linux semantics, sparse files, confinement."""
import errno
import os
import stat

import pytest
import xxhash

from replication.applier import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, RENAME_EXCHANGE,
                                 RENAME_NOREPLACE, Applier)
from replication.ops import FSYNC_DATASYNC, UTIME_NOW, UTIME_OMIT, WRITE_SETS_TIMES, Op, OpKind
from replication.paths import PathError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def ap(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    applier = Applier(str(root))
    applier.path = root
    yield applier
    applier.close()


def run(ap, *ops):
    for op in ops:
        ap.apply(op)


def test_create_write_truncate_and_exact_modes(ap):
    old = os.umask(0o077)          # the receiver's umask must not change what was asked
    try:
        run(ap, Op(OpKind.MKDIR, "d", mode=0o775),
            Op(OpKind.CREATE, "d/f", mode=0o664),
            Op(OpKind.WRITE, "d/f", offset=0, data=b"hello world"),
            Op(OpKind.WRITE, "d/f", offset=6, data=b"WORLD!"),
            Op(OpKind.TRUNCATE, "d/f", length=9),
            Op(OpKind.CREATE, "d/setuid", mode=0o4755))
    finally:
        os.umask(old)
    assert (ap.path / "d" / "f").read_bytes() == b"hello WOR"
    assert stat.S_IMODE(os.stat(ap.path / "d").st_mode) == 0o775
    assert stat.S_IMODE(os.stat(ap.path / "d" / "f").st_mode) == 0o664
    assert stat.S_IMODE(os.stat(ap.path / "d" / "setuid").st_mode) == 0o4755


def test_create_on_an_existing_file_keeps_it(ap):
    (ap.path / "f").write_bytes(b"data")
    os.chmod(ap.path / "f", 0o600)
    run(ap, Op(OpKind.CREATE, "f", mode=0o777))
    assert (ap.path / "f").read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(ap.path / "f").st_mode) == 0o600


def test_errors_keep_linux_errnos(ap):
    cases = [(Op(OpKind.WRITE, "missing", data=b"x"), errno.ENOENT),
             (Op(OpKind.MKDIR, "d"), None), (Op(OpKind.MKDIR, "d"), errno.EEXIST),
             (Op(OpKind.CREATE, "d/f"), None), (Op(OpKind.RMDIR, "d"), errno.ENOTEMPTY),
             (Op(OpKind.UNLINK, "d"), errno.EISDIR),
             (Op(OpKind.WRITE, "d", data=b"x"), errno.EISDIR),
             (Op(OpKind.RMDIR, "d/f"), errno.ENOTDIR), (Op(OpKind.UNLINK, "nope"), errno.ENOENT),
             (Op(OpKind.RENAME, "nope", "x"), errno.ENOENT),
             (Op(OpKind.SYMLINK, "bad", "a\0b"), errno.EINVAL)]
    for op, err in cases:
        if err is None:
            ap.apply(op)
            continue
        with pytest.raises(OSError) as info:
            ap.apply(op)
        assert info.value.errno == err, op


def test_rename_replaces_and_renameat2_flags(ap):
    run(ap, Op(OpKind.CREATE, "a"), Op(OpKind.WRITE, "a", data=b"AAA"),
        Op(OpKind.CREATE, "b"), Op(OpKind.WRITE, "b", data=b"BBB"),
        Op(OpKind.CREATE, "c"), Op(OpKind.WRITE, "c", data=b"CCC"))
    ino_b = os.stat(ap.path / "b").st_ino
    ap.apply(Op(OpKind.RENAME, "b", "a"))                        # replaces a
    assert (ap.path / "a").read_bytes() == b"BBB" and not (ap.path / "b").exists()
    assert os.stat(ap.path / "a").st_ino == ino_b
    # the applier's cached fd for the old "a" must not receive later writes to "a"
    ap.apply(Op(OpKind.WRITE, "a", offset=3, data=b"+"))
    assert (ap.path / "a").read_bytes() == b"BBB+"
    with pytest.raises(FileExistsError):
        ap.apply(Op(OpKind.RENAME, "c", "a", mode=RENAME_NOREPLACE))
    ap.apply(Op(OpKind.RENAME, "c", "a", mode=RENAME_EXCHANGE))
    assert (ap.path / "a").read_bytes() == b"CCC" and (ap.path / "c").read_bytes() == b"BBB+"
    ap.apply(Op(OpKind.WRITE, "c", offset=0, data=b"b"))     # goes to the exchanged file
    assert (ap.path / "c").read_bytes() == b"bBB+"
    with pytest.raises(OSError) as info:
        ap.apply(Op(OpKind.RENAME, "a", "z", mode=0x80))
    assert info.value.errno == errno.EINVAL


def test_directory_rename_moves_cached_paths(ap):
    run(ap, Op(OpKind.MKDIR, "d", mode=0o755), Op(OpKind.CREATE, "d/f"),
        Op(OpKind.WRITE, "d/f", data=b"1"), Op(OpKind.RENAME, "d", "e"),
        Op(OpKind.MKDIR, "d", mode=0o755), Op(OpKind.CREATE, "d/f"),
        Op(OpKind.WRITE, "d/f", data=b"2"))
    assert (ap.path / "e" / "f").read_bytes() == b"1"
    assert (ap.path / "d" / "f").read_bytes() == b"2"


def test_link_symlink_and_unlink(ap):
    run(ap, Op(OpKind.CREATE, "f"), Op(OpKind.WRITE, "f", data=b"x"),
        Op(OpKind.LINK, "f", "g"), Op(OpKind.SYMLINK, "s", "f"),
        Op(OpKind.LINK, "s", "s2"))       # links the symlink itself, like linkat(flags=0)
    assert os.stat(ap.path / "f").st_ino == os.stat(ap.path / "g").st_ino
    assert os.stat(ap.path / "f").st_nlink == 2
    assert os.readlink(ap.path / "s") == "f"
    assert os.path.islink(ap.path / "s2")
    ap.apply(Op(OpKind.UNLINK, "f"))
    assert (ap.path / "g").read_bytes() == b"x"


@root_only
def test_mknod_fifo_regular_and_device(ap):
    run(ap, Op(OpKind.MKNOD, "fifo", mode=stat.S_IFIFO | 0o640),
        Op(OpKind.MKNOD, "reg", mode=stat.S_IFREG | 0o600),
        Op(OpKind.MKNOD, "null", mode=stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)))
    assert stat.S_ISFIFO(os.lstat(ap.path / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(ap.path / "fifo").st_mode) == 0o640
    assert stat.S_ISREG(os.lstat(ap.path / "reg").st_mode)
    st = os.lstat(ap.path / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    # data ops only ever open regular files: a device or FIFO is never written to
    for name in ("null", "fifo"):
        for op in (Op(OpKind.WRITE, name, data=b"x"), Op(OpKind.TRUNCATE, name, length=0),
                   Op(OpKind.FALLOCATE, name, length=10)):
            with pytest.raises(OSError) as info:
                ap.apply(op)
            assert info.value.errno == errno.EINVAL


@root_only
def test_chmod_chown_never_follow_symlinks(ap, tmp_path):
    target = tmp_path / "target"
    target.write_text("t")
    os.chmod(target, 0o644)
    run(ap, Op(OpKind.CREATE, "f", mode=0o600), Op(OpKind.SYMLINK, "l", str(target)),
        Op(OpKind.CHMOD, "f", mode=0o640), Op(OpKind.CHMOD, "l", mode=0o777),
        Op(OpKind.CHOWN, "f", uid=1234, gid=-1), Op(OpKind.CHOWN, "l", uid=4321, gid=4321),
        Op(OpKind.CHMOD, "", mode=0o711), Op(OpKind.CHOWN, "", uid=-1, gid=99))
    assert stat.S_IMODE(os.stat(ap.path / "f").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644            # link skipped
    assert os.stat(ap.path / "f").st_uid == 1234
    assert os.stat(ap.path / "f").st_gid == 0
    assert (os.lstat(ap.path / "l").st_uid, os.lstat(ap.path / "l").st_gid) == (4321, 4321)
    assert os.stat(target).st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(ap.path).st_mode) == 0o711
    assert os.stat(ap.path).st_gid == 99


@root_only
def test_create_carries_ownership_when_given(ap):
    run(ap, Op(OpKind.CREATE, "f", mode=0o2750, uid=5, gid=6),
        Op(OpKind.MKDIR, "d", mode=0o755, uid=7, gid=8), Op(OpKind.SYMLINK, "l", "f", uid=9))
    st = os.stat(ap.path / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (5, 6, 0o2750)  # set-gid kept
    assert (os.stat(ap.path / "d").st_uid, os.stat(ap.path / "d").st_gid) == (7, 8)
    assert os.lstat(ap.path / "l").st_uid == 9


def test_utimens_exact_now_omit_and_on_symlinks(ap, tmp_path):
    target = tmp_path / "t"
    target.write_text("t")
    os.utime(target, ns=(1_000_000_000, 2_000_000_000))
    run(ap, Op(OpKind.CREATE, "f"), Op(OpKind.SYMLINK, "l", str(target)),
        Op(OpKind.UTIMENS, "f", atime_ns=1_500_000_000_123_456_789,
           mtime_ns=1_600_000_000_987_654_321))
    st = os.stat(ap.path / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_500_000_000_123_456_789,
                                                1_600_000_000_987_654_321)
    ap.apply(Op(OpKind.UTIMENS, "f", atime_ns=UTIME_OMIT, mtime_ns=UTIME_NOW))
    st = os.stat(ap.path / "f")
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    # UTIME_NOW reached the kernel, which sets the change time and this mtime from one
    # reading of its clock (compared with time.time_ns() the test would depend on the
    # wall clock standing still).
    assert st.st_mtime_ns == st.st_ctime_ns != 1_600_000_000_987_654_321
    ap.apply(Op(OpKind.UTIMENS, "l", atime_ns=5, mtime_ns=-1_000_000_001))   # before 1970 too
    assert os.lstat(ap.path / "l").st_mtime_ns == -1_000_000_001
    assert os.stat(target).st_mtime_ns == 2_000_000_000                       # not followed
    ap.apply(Op(OpKind.UTIMENS, "", atime_ns=UTIME_OMIT, mtime_ns=42))
    assert os.stat(ap.path).st_mtime_ns == 42


def test_sparse_files_fallocate_punch_hole_truncate_up(ap):
    mib = 1 << 20
    run(ap, Op(OpKind.CREATE, "s"), Op(OpKind.TRUNCATE, "s", length=64 * mib))
    st = os.stat(ap.path / "s")
    assert st.st_size == 64 * mib and st.st_blocks * 512 < mib            # truncate up: sparse
    ap.apply(Op(OpKind.FALLOCATE, "s", mode=FALLOC_FL_KEEP_SIZE, offset=64 * mib, length=mib))
    st = os.stat(ap.path / "s")
    assert st.st_size == 64 * mib and st.st_blocks * 512 >= mib           # allocated past EOF
    ap.apply(Op(OpKind.FALLOCATE, "s", mode=0, offset=0, length=66 * mib))
    assert os.stat(ap.path / "s").st_size == 66 * mib                     # mode 0 extends
    run(ap, Op(OpKind.WRITE, "s", offset=0, data=b"\xff" * (2 * mib)),
        Op(OpKind.FALLOCATE, "s", mode=FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
           offset=4096, length=mib))
    with open(ap.path / "s", "rb") as fh:
        head = fh.read(2 * mib)
    assert head[:4096] == b"\xff" * 4096
    assert head[4096:4096 + mib] == bytes(mib)
    assert head[4096 + mib:] == b"\xff" * (mib - 4096)
    with pytest.raises(OSError) as info:
        ap.apply(Op(OpKind.FALLOCATE, "s", mode=FALLOC_FL_PUNCH_HOLE, offset=0, length=1))
    assert info.value.errno in (errno.EOPNOTSUPP, errno.EINVAL)   # punch needs KEEP_SIZE


def test_fsync_file_directory_and_tree(ap):
    run(ap, Op(OpKind.MKDIR, "d", mode=0o755), Op(OpKind.CREATE, "d/f"),
        Op(OpKind.WRITE, "d/f", data=b"x"), Op(OpKind.FSYNC, "d/f"), Op(OpKind.FSYNC, "d"),
        Op(OpKind.SYMLINK, "l", "nowhere"), Op(OpKind.FSYNC, "l"), Op(OpKind.FSYNC, ""))
    with pytest.raises(FileNotFoundError):
        ap.apply(Op(OpKind.FSYNC, "missing"))


def test_delete_removes_trees_without_following_symlinks(ap, tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "precious").write_text("keep")
    run(ap, Op(OpKind.MKDIR, "t", mode=0o755), Op(OpKind.MKDIR, "t/u", mode=0o755),
        Op(OpKind.CREATE, "t/u/f"), Op(OpKind.SYMLINK, "t/link", str(outside)),
        Op(OpKind.SYMLINK, "t/u/link2", str(outside / "sub")), Op(OpKind.CREATE, "lone"))
    ap.apply(Op(OpKind.DELETE, "t"))
    ap.apply(Op(OpKind.DELETE, "lone"))
    ap.apply(Op(OpKind.DELETE, "never-existed"))          # idempotent for resumed reintegration
    assert os.listdir(ap.path) == []
    assert (outside / "sub" / "precious").read_text() == "keep"


def _snapshot(path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    return out


ESCAPES = [
    Op(OpKind.WRITE, "evil/x", data=b"pwned"), Op(OpKind.CREATE, "evil/new", mode=0o644),
    Op(OpKind.TRUNCATE, "evil/file", length=0), Op(OpKind.MKDIR, "evil/dir"),
    Op(OpKind.MKNOD, "evil/fifo", mode=stat.S_IFIFO | 0o600), Op(OpKind.UNLINK, "evil/file"),
    Op(OpKind.RMDIR, "evil/sub"), Op(OpKind.DELETE, "evil/sub"), Op(OpKind.DELETE, "evil/file"),
    Op(OpKind.SYMLINK, "evil/l", "/"), Op(OpKind.CHMOD, "evil/file", mode=0o777),
    Op(OpKind.CHOWN, "evil/file", uid=1, gid=1), Op(OpKind.UTIMENS, "evil/file", mtime_ns=1),
    Op(OpKind.FALLOCATE, "evil/file", length=1 << 20), Op(OpKind.FSYNC, "evil/file"),
    Op(OpKind.RENAME, "evil/file", "stolen"), Op(OpKind.RENAME, "mine", "evil/planted"),
    Op(OpKind.LINK, "evil/file", "stolen"), Op(OpKind.LINK, "mine", "evil/planted"),
    Op(OpKind.WRITE, "../outside/file", data=b"x"), Op(OpKind.CREATE, "/tmp/hacluster-escape"),
    Op(OpKind.DELETE, "d/../../outside"),
]
THROUGH_THE_LINK = [   # ops on the symlink itself: refused or applied to the link only
    Op(OpKind.WRITE, "evil", data=b"x"), Op(OpKind.TRUNCATE, "evil", length=0),
    Op(OpKind.WRITE, "pw", data=b"x"), Op(OpKind.TRUNCATE, "pw", length=0),
    Op(OpKind.FALLOCATE, "pw", length=4096),
]


def _plant(ap, outside_dir):
    ap.apply(Op(OpKind.SYMLINK, "evil", str(outside_dir)))
    ap.apply(Op(OpKind.MKDIR, "d", mode=0o755))
    ap.apply(Op(OpKind.CREATE, "mine"))


@root_only
def test_symlink_escapes_are_refused_outside_untouched(ap, tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "file").write_text("secret")
    _plant(ap, outside)
    ap.apply(Op(OpKind.SYMLINK, "pw", str(outside / "file")))
    before = _snapshot(outside)
    for op in ESCAPES:
        with pytest.raises(OSError) as info:
            ap.apply(op)
        assert isinstance(info.value, PathError) or info.value.errno in (errno.ELOOP,), op
    for op in THROUGH_THE_LINK:
        with pytest.raises(OSError) as info:
            ap.apply(op)
        assert info.value.errno == errno.ELOOP, op
    ap.apply(Op(OpKind.CHMOD, "pw", mode=0o777))             # skipped: links have no mode
    ap.apply(Op(OpKind.CHOWN, "pw", uid=77, gid=77))          # the link's owner only
    ap.apply(Op(OpKind.UTIMENS, "pw", atime_ns=1, mtime_ns=1))
    ap.apply(Op(OpKind.DELETE, "evil"))                       # removes the link, not the dir
    assert _snapshot(outside) == before
    assert (outside / "file").read_text() == "secret"
    assert not os.path.exists("/tmp/hacluster-escape")


@root_only
def test_symlink_to_etc_cannot_be_used_to_write_there(ap):
    before = _snapshot("/etc") if os.path.getsize("/etc/passwd") else None
    ap.apply(Op(OpKind.SYMLINK, "etc", "/etc"))
    probe = "hacluster-replication-escape-probe"
    for op in (Op(OpKind.CREATE, f"etc/{probe}"), Op(OpKind.WRITE, f"etc/{probe}", data=b"x"),
               Op(OpKind.MKDIR, f"etc/{probe}"), Op(OpKind.SYMLINK, f"etc/{probe}", "/"),
               Op(OpKind.RENAME, "etc", f"etc/{probe}"), Op(OpKind.DELETE, f"etc/{probe}"),
               Op(OpKind.MKNOD, f"etc/{probe}", mode=stat.S_IFIFO)):
        with pytest.raises(OSError):
            ap.apply(op)
    leaked = os.path.lexists(f"/etc/{probe}")
    if leaked:   # clean up before failing
        os.system(f"rm -rf /etc/{probe}")
    assert not leaked
    assert _snapshot("/etc") == before


def test_tree_manifest_reports_without_following(ap, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "hidden").write_text("x")
    run(ap, Op(OpKind.MKDIR, "b", mode=0o750), Op(OpKind.CREATE, "b/f", mode=0o640),
        Op(OpKind.WRITE, "b/f", data=b"12345"), Op(OpKind.LINK, "b/f", "a"),
        Op(OpKind.SYMLINK, "c", str(tmp_path / "outside")),
        Op(OpKind.MKNOD, "b/p", mode=stat.S_IFIFO | 0o600),
        Op(OpKind.UTIMENS, "b/f", atime_ns=0, mtime_ns=123))
    entries = list(ap.tree_manifest())
    assert [e.path for e in entries] == ["a", "b", "b/f", "b/p", "c"]   # sorted, depth first
    by = {e.path: e for e in entries}
    assert [by[p].type for p in ("a", "b", "b/f", "b/p", "c")] == ["f", "d", "f", "p", "l"]
    assert by["b/f"].size == 5 and by["b/f"].mtime_ns == 123
    assert stat.S_IMODE(by["b/f"].mode) == 0o640 and stat.S_IMODE(by["b"].mode) == 0o750
    assert by["a"].ino == by["b/f"].ino and by["a"].nlink == 2
    assert by["c"].target == str(tmp_path / "outside") and by["b"].size == 0
    root = next(iter(ap.tree_manifest(include_root=True)))
    assert root.path == "" and root.type == "d"


def _naive_digests(path, bs):
    data = open(path, "rb").read()
    return [xxhash.xxh3_64_intdigest(data[i:i + bs]) for i in range(0, len(data), bs)]


def test_block_digests_match_the_data_including_holes(ap):
    mib = 1 << 20
    run(ap, Op(OpKind.CREATE, "s"), Op(OpKind.TRUNCATE, "s", length=20 * mib + 777),
        Op(OpKind.WRITE, "s", offset=3 * mib + 100, data=os.urandom(70_000)),
        Op(OpKind.WRITE, "s", offset=11 * mib, data=b"tail" * 1000),
        Op(OpKind.CREATE, "empty"), Op(OpKind.CREATE, "small"),
        Op(OpKind.WRITE, "small", data=b"abc"), Op(OpKind.CREATE, "holeend"),
        Op(OpKind.WRITE, "holeend", data=b"x"), Op(OpKind.TRUNCATE, "holeend", length=300_001))
    for name in ("s", "empty", "small", "holeend"):
        for bs in (4096, 65536, 1 << 20):
            assert ap.block_digests(name, bs) == _naive_digests(ap.path / name, bs), (name, bs)
    assert ap.block_digests("empty", 4096) == []
    tail = list(ap.iter_block_digests("s", 65536, start=11 * mib))
    assert tail == _naive_digests(ap.path / "s", 65536)[11 * 16:]
    with pytest.raises(OSError):
        list(ap.iter_block_digests("s", 65536, start=100))
    assert ap.read_block("s", 11 * mib, 8) == b"tailtail"
    assert ap.read_block("small", 1, 100) == b"bc"


def test_read_side_refuses_escapes_and_special_files(ap, tmp_path):
    (tmp_path / "o").write_text("x")
    run(ap, Op(OpKind.SYMLINK, "l", str(tmp_path / "o")), Op(OpKind.MKDIR, "d", mode=0o755),
        Op(OpKind.MKNOD, "p", mode=stat.S_IFIFO | 0o600))
    for path in ("l", "d", "p", "../o", "l/x"):
        with pytest.raises(OSError):
            ap.block_digests(path, 4096)
        with pytest.raises(OSError):
            ap.read_block(path, 0, 1)


def test_fd_cache_is_bounded_and_closed(ap):
    before = len(os.listdir("/proc/self/fd"))
    for i in range(200):
        run(ap, Op(OpKind.CREATE, f"f{i}"), Op(OpKind.WRITE, f"f{i}", data=b"x"))
    assert len(os.listdir("/proc/self/fd")) <= before + 64
    ap.close()
    assert len(os.listdir("/proc/self/fd")) == before - 1    # the root fd too


def test_a_write_can_carry_the_times_it_left(ap):
    run(ap, Op(OpKind.CREATE, "f"))
    ap.apply(Op(OpKind.WRITE, "f", data=b"data", mode=WRITE_SETS_TIMES,
                atime_ns=1_000_000_007, mtime_ns=1_600_000_000_123_456_789))
    st = os.stat(ap.path / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_007, 1_600_000_000_123_456_789)
    ap.apply(Op(OpKind.WRITE, "f", offset=4, data=b"more"))   # reintegration: no times
    assert os.stat(ap.path / "f").st_mtime_ns != 1_600_000_000_123_456_789


@pytest.fixture
def syncs(ap, monkeypatch):
    """(call, path relative to the root) of every fsync/fdatasync the applier makes."""
    calls = []
    inodes = {}

    def spy(name, real):
        def sync(fd):
            st = os.fstat(fd)
            calls.append((name, inodes.get(st.st_ino, "?")))
            return real(fd)
        return sync

    def refresh():
        inodes.clear()
        for dirpath, dirnames, filenames in os.walk(ap.path):
            for n in [""] + dirnames + filenames:
                full = os.path.join(dirpath, n)
                inodes[os.lstat(full).st_ino] = os.path.relpath(full, ap.path).lstrip(".")

    monkeypatch.setattr(os, "fsync", spy("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", spy("fdatasync", os.fdatasync))

    def fsync(*ops):
        run(ap, *ops[:-1])
        refresh()
        calls.clear()
        ap.apply(ops[-1])
        return list(calls)

    return fsync


def test_fsync_syncs_the_parent_only_when_its_entries_changed(ap, syncs):
    run(ap, Op(OpKind.MKDIR, "d", mode=0o755), Op(OpKind.CREATE, "d/f"),
        Op(OpKind.WRITE, "d/f", data=b"x"))
    assert syncs(Op(OpKind.FSYNC, "d/f")) == [("fsync", "d/f"), ("fsync", "d")]
    # nothing changed in d since: the file alone
    assert syncs(Op(OpKind.WRITE, "d/f", data=b"y"), Op(OpKind.FSYNC, "d/f")) == \
        [("fsync", "d/f")]
    # a new name in d, a rename anywhere: d again
    assert syncs(Op(OpKind.CREATE, "d/g"), Op(OpKind.FSYNC, "d/f")) == \
        [("fsync", "d/f"), ("fsync", "d")]
    assert syncs(Op(OpKind.CREATE, "h"), Op(OpKind.RENAME, "h", "i"), Op(OpKind.FSYNC, "d/f")) \
        == [("fsync", "d/f"), ("fsync", "d")]
    assert syncs(Op(OpKind.UNLINK, "d/g"), Op(OpKind.FSYNC, "d/f")) == \
        [("fsync", "d/f"), ("fsync", "d")]
    # a directory's own FSYNC covers its entries
    assert syncs(Op(OpKind.CREATE, "d/j"), Op(OpKind.FSYNC, "d")) == [("fsync", "d"), ("fsync", "")]
    assert syncs(Op(OpKind.FSYNC, "d/f")) == [("fsync", "d/f")]


def test_a_repeated_fsync_of_an_open_file_in_a_synced_directory_walks_no_path(ap, syncs,
                                                                             monkeypatch):
    """A database's commits fsync one log file over and over: once its entry is durable
    the applier syncs the descriptor it writes through, without opening the path's
    directories again; a namespace change in the directory, or a rename of the file,
    brings the walk (and the directory's sync) back."""
    from replication import applier as applier_mod
    walks = []
    real = applier_mod.parent_dir
    monkeypatch.setattr(applier_mod, "parent_dir",
                        lambda root, path: walks.append(path) or real(root, path))
    run(ap, Op(OpKind.MKDIR, "wal", mode=0o755), Op(OpKind.CREATE, "wal/log"),
        Op(OpKind.WRITE, "wal/log", data=b"a"))
    assert syncs(Op(OpKind.FSYNC, "wal/log", mode=FSYNC_DATASYNC)) == \
        [("fdatasync", "wal/log"), ("fsync", "wal")]
    walks.clear()
    for i in range(3):
        assert syncs(Op(OpKind.WRITE, "wal/log", offset=i, data=b"b"),
                     Op(OpKind.FSYNC, "wal/log", mode=FSYNC_DATASYNC)) == [("fdatasync", "wal/log")]
    assert walks == []
    assert syncs(Op(OpKind.CREATE, "wal/next"), Op(OpKind.FSYNC, "wal/log")) == \
        [("fsync", "wal/log"), ("fsync", "wal")]
    assert walks == ["wal/next", "wal/log"]
    walks.clear()
    assert syncs(Op(OpKind.RENAME, "wal/log", "wal/old"), Op(OpKind.CREATE, "wal/log"),
                 Op(OpKind.WRITE, "wal/log", data=b"c"), Op(OpKind.FSYNC, "wal/log")) == \
        [("fsync", "wal/log"), ("fsync", "wal")]
    assert (ap.path / "wal" / "log").read_bytes() == b"c"
    assert (ap.path / "wal" / "old").read_bytes() == b"bbb"


def test_fsync_datasync_uses_fdatasync_for_the_data(ap, syncs):
    run(ap, Op(OpKind.CREATE, "f"), Op(OpKind.WRITE, "f", data=b"x"))
    assert syncs(Op(OpKind.FSYNC, "f", mode=FSYNC_DATASYNC)) == [("fdatasync", "f"), ("fsync", "")]
