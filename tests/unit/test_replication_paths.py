"""Path confinement on the receiver: refusal of unsafe names, no symlink followed."""
import errno
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.paths import (NAME_MAX, PathError, check_relative, open_dir, open_parent,
                               parent_dir)


@pytest.mark.parametrize("path", ["a", "a/b/c", "dir.with.dots/..hidden", "...", "a/.b",
                                  "x" * NAME_MAX, "\udcff\udcfe",   # non-UTF-8 name bytes
                                  "spaces and\nnewline"])
def test_accepts_plain_relative_paths(path):
    assert check_relative(path) == path


@pytest.mark.parametrize("path,err,reason", [
    ("", errno.EINVAL, "empty path"),
    ("/etc/passwd", errno.EINVAL, "absolute"),
    ("..", errno.EINVAL, "'..'"),
    ("../x", errno.EINVAL, "'..'"),
    ("a/../../x", errno.EINVAL, "'..'"),
    ("a/..", errno.EINVAL, "'..'"),
    ("./a", errno.EINVAL, "'.'"),
    ("a/./b", errno.EINVAL, "'.'"),
    ("a//b", errno.EINVAL, "empty component"),
    ("a/", errno.EINVAL, "empty component"),
    ("a\0b", errno.EINVAL, "NUL"),
    ("x" * (NAME_MAX + 1), errno.ENAMETOOLONG, "over 255"),
    ("a/" * 2100 + "b", errno.ENAMETOOLONG, "over 4096"),
])
def test_refuses_unsafe_paths_with_a_clear_error(path, err, reason):
    with pytest.raises(PathError) as info:
        check_relative(path)
    assert info.value.errno == err
    assert reason in str(info.value)
    assert "path refused" in str(info.value)


component = st.sampled_from(["a", "b", ".", "..", "", "c.d", "..."])


@given(st.lists(component, max_size=6), st.booleans())
def test_accepted_paths_never_leave_the_root(comps, absolute):
    path = ("/" if absolute else "") + "/".join(comps)
    try:
        check_relative(path)
    except PathError:
        return
    assert not path.startswith("/")
    assert os.path.normpath(path) == path
    assert not set(path.split("/")) & {"", ".", ".."}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("keep")
    (root / "escape").symlink_to(outside)          # a directory link pointing outside
    (root / "inside").symlink_to(root / "a")       # even pointing inside: never followed
    (root / "a" / "file").write_text("x")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield root, outside, fd
    os.close(fd)


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_open_parent_walks_real_directories(tree):
    root, _, fd = tree
    pfd, name = open_parent(fd, "a/b/new")
    try:
        assert name == "new"
        assert os.path.samestat(os.fstat(pfd), os.stat(root / "a" / "b"))
    finally:
        os.close(pfd)


@pytest.mark.parametrize("path", ["escape/secret", "escape/x/y", "inside/file"])
def test_symlink_in_the_parent_chain_is_refused(tree, path):
    _, outside, fd = tree
    with pytest.raises(PathError) as info:
        open_parent(fd, path)
    assert info.value.errno == errno.ELOOP
    assert "is a symlink (never followed)" in str(info.value)
    assert path.split("/")[0] in str(info.value)
    assert os.listdir(outside) == ["secret"]


def test_final_symlink_is_returned_not_followed(tree):
    root, _, fd = tree
    with parent_dir(fd, "escape") as (pfd, name):
        assert pfd == fd and name == "escape"      # top level: no extra fd
        assert os.readlink(name, dir_fd=pfd) == str(root.parent / "outside")


def test_missing_or_file_parent_keeps_its_errno(tree):
    _, _, fd = tree
    with pytest.raises(FileNotFoundError):
        open_parent(fd, "nope/x")
    with pytest.raises(NotADirectoryError):
        open_parent(fd, "a/file/x")


def test_no_descriptor_leaks(tree):
    _, _, fd = tree
    before = _open_fds()
    for _ in range(20):
        with parent_dir(fd, "a/b/c") as (pfd, _name):
            assert pfd != fd
        with pytest.raises(PathError):
            with parent_dir(fd, "a/../x"):
                pass
        with pytest.raises(PathError):
            open_parent(fd, "inside/b/x")
        os.close(open_dir(fd, "a/b"))
        os.close(open_dir(fd, ""))
    assert _open_fds() == before


@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["a/b", "..", "a//b", "/x", "ok"])),
                max_size=30))
def test_check_relative_answers_the_same_whether_or_not_it_remembered_the_path(paths):
    """check_relative remembers the paths it found safe (a receiver checks the same
    few over and over): asking again answers as the first time did, a refused path is
    never remembered, and what it remembers stays bounded."""
    from replication import paths as paths_mod
    paths_mod._CHECKED.clear()      # (a full set is emptied: each example starts afresh)

    def answer(p):
        try:
            return ("ok", check_relative(p))
        except PathError as exc:
            return ("refused", exc.errno, exc.reason)

    first = [answer(p) for p in paths]
    assert [answer(p) for p in paths] == first
    assert all(p in paths_mod._CHECKED for p, a in zip(paths, first) if a[0] == "ok")
    assert not any(p in paths_mod._CHECKED for p, a in zip(paths, first) if a[0] == "refused")
    assert len(paths_mod._CHECKED) <= paths_mod._CHECKED_MAX


def test_the_remembered_paths_are_bounded():
    from replication import paths as paths_mod
    for i in range(paths_mod._CHECKED_MAX + 10):
        check_relative(f"d/{i}")
    assert len(paths_mod._CHECKED) <= paths_mod._CHECKED_MAX
    assert check_relative("d/7") == "d/7"
    with pytest.raises(PathError):
        check_relative("d/../x")
