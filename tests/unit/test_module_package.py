import io
import os
import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from hacluster.modules.package import (
    ModulePackageError,
    check,
    check_bytes,
    digest,
    install,
    list_installed,
    package,
    read_userconfig,
    uninstall,
    with_userconfig,
)

USERCONFIG = b"""<!DOCTYPE safe>
<safe>
<service mode="mirror">
  <rfs><replicated dir="/var/lib/app"/></rfs>
</service>
</safe>
"""
FARM_USERCONFIG = b'<safe><service mode="farm"/></safe>'
SCRIPT = b"#!/bin/sh\nexit 0\n"


def make_folder(root: Path, userconfig: bytes = USERCONFIG) -> Path:
    src = root / "webapp"
    (src / "conf").mkdir(parents=True)
    (src / "bin").mkdir()
    (src / "conf" / "userconfig.xml").write_bytes(userconfig)
    for script in ("start_prim", "stop_prim"):
        (src / "bin" / script).write_bytes(SCRIPT)
        (src / "bin" / script).chmod(0o755)
    (src / "bin" / "common.sh").write_bytes(b"APP=1\n")
    (src / "bin" / "common.sh").chmod(0o644)
    (src / "data").mkdir()  # empty folders survive too
    return src


def zip_of(members: list[tuple], compress=zipfile.ZIP_DEFLATED) -> bytes:
    """members: (name, data) or (name, data, unix_mode) — mode includes the file type."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are made on purpose
        for member in members:
            name, data = member[0], member[1]
            mode = member[2] if len(member) > 2 else stat.S_IFREG | (0o755 if name.startswith("bin/") else 0o644)
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = compress
            info.create_system = 3
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def good_members(userconfig: bytes = USERCONFIG) -> list[tuple]:
    return [("conf/userconfig.xml", userconfig), ("bin/start_prim", SCRIPT), ("bin/stop_prim", SCRIPT)]


def snapshot(directory: Path) -> dict[str, bytes | None]:
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def test_package_round_trips_and_keeps_exec_bits(tmp_path):
    src = make_folder(tmp_path)
    out = tmp_path / "webapp.safe"
    hexdigest = package(src, out)
    data = out.read_bytes()
    assert hexdigest == digest(data)
    checked = check(data, "webapp.safe", "webapp")
    assert checked.digest == hexdigest and checked.config.mode == "mirror"
    assert {m.name for m in checked.members} == {
        "bin", "conf", "data", "bin/common.sh", "bin/start_prim", "bin/stop_prim", "conf/userconfig.xml"}

    modules = tmp_path / "modules"
    installed = install(data, modules, "webapp")
    assert (installed.name, installed.digest, installed.path) == ("webapp", hexdigest, modules / "webapp")
    assert installed.config.rfs is not None and installed.config.rfs.dirs == ("/var/lib/app",)
    assert (modules / "webapp.safe").read_bytes() == data
    for script in ("start_prim", "stop_prim"):
        assert stat.S_IMODE(os.stat(modules / "webapp" / "bin" / script).st_mode) == 0o750
    # Nothing for other users: <user> variables may hold credentials.
    assert stat.S_IMODE(os.stat(modules / "webapp" / "bin" / "common.sh").st_mode) == 0o640
    for path in [modules, *modules.rglob("*")]:
        assert not stat.S_IMODE(os.stat(path).st_mode) & 0o007, path
    assert (modules / "webapp" / "data").is_dir()
    assert (modules / "webapp" / "conf" / "userconfig.xml").read_bytes() == USERCONFIG
    # The installed scripts really run.
    assert os.system(str(modules / "webapp" / "bin" / "start_prim")) == 0
    assert [(m.name, m.digest) for m in list_installed(modules)] == [("webapp", hexdigest)]
    assert sorted(os.listdir(modules)) == ["webapp", "webapp.safe"]  # no staging leftovers


def test_same_folder_gives_the_same_digest(tmp_path):
    src = make_folder(tmp_path)
    first = package(src, tmp_path / "a.safe")
    os.utime(src / "bin" / "start_prim", (1_000_000_000, 1_000_000_000))  # timestamps do not matter
    assert package(src, tmp_path / "b.safe") == first
    (src / "bin" / "start_prim").write_bytes(SCRIPT + b"# changed\n")
    assert package(src, tmp_path / "c.safe") != first


def test_package_inside_its_own_folder_and_symlinks_inside(tmp_path):
    src = make_folder(tmp_path)
    os.symlink("common.sh", src / "bin" / "lib.sh")
    hexdigest = package(src, src / "webapp.safe")
    assert package(src, src / "webapp.safe") == hexdigest
    names = {m.name for m in check((src / "webapp.safe").read_bytes(), "p", "webapp").members}
    assert "bin/lib.sh" in names and "webapp.safe" not in names


def test_package_refuses_bad_folders(tmp_path):
    src = make_folder(tmp_path)
    os.symlink("/etc/passwd", src / "bin" / "passwd")
    with pytest.raises(ModulePackageError, match=r"bin/passwd: symlink points outside the module folder"):
        package(src, tmp_path / "x.safe")
    os.unlink(src / "bin" / "passwd")
    (src / "bin" / "stop_prim").chmod(0o644)
    with pytest.raises(ModulePackageError, match=r"bin/stop_prim: script is not executable"):
        package(src, tmp_path / "x.safe")
    (src / "conf" / "userconfig.xml").write_bytes(b'<safe><service mode="mirror" maxloop="x"/></safe>')
    with pytest.raises(ModulePackageError, match=r"conf/userconfig.xml:1: service@maxloop"):
        package(src, tmp_path / "x.safe")
    (src / "conf" / "userconfig.xml").unlink()
    with pytest.raises(ModulePackageError, match=r"no conf/userconfig.xml"):
        package(src, tmp_path / "x.safe")
    assert not (tmp_path / "x.safe").exists()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE safe [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
]>
<safe><service mode="mirror"><user><var name="X" value="&lol2;"/></user></service></safe>
"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE safe [ <!ENTITY s SYSTEM "file:///etc/shadow"> ]>
<safe><service mode="mirror"><user><var name="X" value="&s;"/></user></service></safe>
"""


def bomb() -> bytes:
    return zip_of(good_members() + [("data/zeros", b"\0" * (80 << 20))])


def many_members() -> bytes:
    return zip_of(good_members() + [(f"data/{i}", b"") for i in range(10_001)], compress=zipfile.ZIP_STORED)


def encrypted() -> bytes:
    data = bytearray(zip_of(good_members()))
    # Set the "encrypted" flag in the central directory entry of the first member.
    offset = data.find(b"PK\x01\x02")
    data[offset + 8] |= 0x1
    return bytes(data)


HOSTILE = [
    (lambda: zip_of(good_members() + [("../evil", b"x")]), r"'../evil': path escapes"),
    (lambda: zip_of(good_members() + [("bin/../../evil", b"x")]), r"'bin/../../evil': path escapes"),
    (lambda: zip_of(good_members() + [("/etc/cron.d/evil", b"x")]), r"'/etc/cron.d/evil': absolute path"),
    (lambda: zip_of(good_members() + [("C:/evil", b"x")]), r"'C:/evil': absolute path"),
    (lambda: zip_of(good_members() + [("bin\\..\\evil", b"x")]), r"backslash in member name"),
    (lambda: zip_of(good_members() + [("bin/link", b"/etc/passwd", stat.S_IFLNK | 0o777)]),
     r"bin/link: symlink members are not accepted"),
    (lambda: zip_of(good_members() + [("bin/fifo", b"", stat.S_IFIFO | 0o644)]),
     r"bin/fifo: device, fifo or socket members are not accepted"),
    (lambda: zip_of(good_members() + [("bin/dev", b"", stat.S_IFCHR | 0o644)]), r"bin/dev: device, fifo"),
    (lambda: zip_of(good_members() + [("bin/start_prim", b"again")]), r"bin/start_prim: duplicate member name"),
    (lambda: zip_of(good_members() + [("bin/start_prim/x", b"again")]), r"bin/start_prim is a file and a directory"),
    (bomb, r"data/zeros: compression ratio over 200:1"),
    (lambda: zip_of(good_members() + [(f"data/{i}", os.urandom(8192) + bytes((1 << 20) - 8192)) for i in range(70)]),
     r"package: \d+ bytes uncompressed is over the 67108864 byte limit"),
    (many_members, r"package: 10004 members is over the limit of 10000"),
    (encrypted, r"conf/userconfig.xml: encrypted members are not accepted"),
    (lambda: b"not a zip at all", r"package: not a zip file"),
    (lambda: zip_of(good_members(BILLION_LAUGHS)), r"webapp.safe:conf/userconfig.xml:3: xml: refused"),
    (lambda: zip_of(good_members(EXTERNAL_ENTITY)), r"webapp.safe:conf/userconfig.xml:2: xml: refused"),
    (lambda: zip_of(good_members(b"<safe><service mode='mirror'><rfs></safe>")),
     r"webapp.safe:conf/userconfig.xml:1: xml: mismatched tag"),
    (lambda: zip_of(good_members()[1:]), r"conf/userconfig.xml: missing"),
    (lambda: zip_of(good_members()[:2] + [("bin/stop_prim", SCRIPT, stat.S_IFREG | 0o644)]),
     r"bin/stop_prim: script is not executable"),
    (lambda: zip_of(good_members()[:2]), r"bin/stop_prim: missing: a mirror module needs bin/start_prim and"),
    (lambda: zip_of(good_members(FARM_USERCONFIG)), r"bin/start_both: missing: a farm module needs"),
]


@pytest.mark.parametrize("build, message", HOSTILE, ids=[m for _, m in HOSTILE])
def test_hostile_packages_are_refused_and_nothing_changes(tmp_path, build, message):
    modules = tmp_path / "modules"
    data = build()
    with pytest.raises(ModulePackageError, match=message) as info:
        check(data, "webapp.safe", "webapp")
    assert "\n" not in str(info.value) and str(info.value).startswith("webapp.safe")
    with pytest.raises(ModulePackageError, match=message):
        install(data, modules, "webapp")
    assert not modules.exists()

    # With an older version installed, it stays exactly as it was.
    old = zip_of(good_members())
    install(old, modules, "webapp")
    before = snapshot(modules)
    with pytest.raises(ModulePackageError, match=message):
        install(data, modules, "webapp")
    assert snapshot(modules) == before


def test_upgrade_replaces_the_old_version(tmp_path):
    modules = tmp_path / "modules"
    install(zip_of(good_members() + [("bin/old_only", SCRIPT)]), modules, "webapp")
    new = zip_of(good_members() + [("bin/transition", SCRIPT)])
    installed = install(new, modules, "webapp")
    assert installed.digest == digest(new)
    assert (modules / "webapp" / "bin" / "transition").exists()
    assert not (modules / "webapp" / "bin" / "old_only").exists()
    assert (modules / "webapp.safe").read_bytes() == new
    assert sorted(os.listdir(modules)) == ["webapp", "webapp.safe"]


def test_failed_rename_leaves_the_old_version(tmp_path, monkeypatch):
    modules = tmp_path / "modules"
    old = zip_of(good_members())
    install(old, modules, "webapp")
    before = snapshot(modules)
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".webapp.safe.new-"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(ModulePackageError, match=r"webapp.safe: install into .*: No space left on device"):
        install(zip_of(good_members() + [("bin/transition", SCRIPT)]), modules, "webapp")
    monkeypatch.undo()
    assert snapshot(modules) == before
    assert sorted(os.listdir(modules)) == ["webapp", "webapp.safe"]


def test_names_uninstall_and_list(tmp_path):
    modules = tmp_path / "modules"
    for bad in ("", "1app", "a" * 33, "../x", "a.b", "a/b"):
        with pytest.raises(ModulePackageError, match=r"invalid module name"):
            install(zip_of(good_members()), modules, bad)
    assert not modules.exists()
    assert list_installed(modules) == []
    install(zip_of(good_members()), modules, "b-app")
    install(zip_of(good_members(FARM_USERCONFIG)[:1] + [("bin/start_both", SCRIPT), ("bin/stop_both", SCRIPT)]),
            modules, "a_farm")
    assert [(m.name, m.config.mode) for m in list_installed(modules)] == [("a_farm", "farm"), ("b-app", "mirror")]
    uninstall(modules, "b-app")
    assert [m.name for m in list_installed(modules)] == ["a_farm"]
    assert sorted(os.listdir(modules)) == ["a_farm", "a_farm.safe"]
    with pytest.raises(ModulePackageError, match=r"b-app: not installed"):
        uninstall(modules, "b-app")


def test_an_upload_is_checked_with_every_error_and_its_userconfig_replaced(tmp_path):
    """The HTTPS API's install and editor: check_bytes reports every error (file:line),
    with_userconfig keeps every other member (content and exec bit)."""
    data = zip_of(good_members())
    assert check_bytes(data, "webapp.safe", "webapp").ok
    assert read_userconfig(data, "webapp.safe") == USERCONFIG.decode()
    bad = USERCONFIG.decode().replace('<replicated dir="/var/lib/app"/>', '<replicated/>')
    edited = with_userconfig(data, "webapp.safe", bad)
    report = check_bytes(edited, "webapp.safe", "webapp")
    assert not report.ok and all("webapp.safe:conf/userconfig.xml:" in e for e in report.errors), report
    assert "webapp.safe:conf/userconfig.xml:4: replicated@dir" in report.errors[0]
    good = with_userconfig(data, "webapp.safe", FARM_USERCONFIG.decode())
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        assert zf.read("bin/start_prim") == SCRIPT
        assert (zf.getinfo("bin/start_prim").external_attr >> 16) & 0o100
    # a farm module needs start_both/stop_both: two errors, both reported
    assert len(check_bytes(good, "webapp.safe", "webapp").errors) == 2
    not_zip = check_bytes(b"not a zip", "up.safe", "up")
    assert not not_zip.ok and "up.safe: package: not a zip file" in not_zip.errors[0]
    assert not check_bytes(data, "x.safe", "1bad").ok
    with pytest.raises(ModulePackageError):
        with_userconfig(b"junk", "x.safe", "<safe/>")
