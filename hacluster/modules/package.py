"""``.safe`` module packages: build, check, install, list, uninstall.

A ``.safe`` is a zip holding ``conf/userconfig.xml`` and ``bin/`` scripts (plus anything
else the module needs) at its top level. Packages reach a node from the CLI or from a
peer, so :func:`check` treats every byte as hostile before :func:`install` writes any.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import stat
import struct
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .scripts import SCRIPTS
from .userconfig import ModuleConfig, UserConfigError, load_userconfig, parse_userconfig
from raft.durable_storage import private_dir
from replication.durable_file import durable_replace, fsync_dir

log = logging.getLogger("hacluster.module_package")

USERCONFIG = "conf/userconfig.xml"
REQUIRED_SCRIPTS = {"mirror": ("start_prim", "stop_prim"), "farm": ("start_both", "stop_both")}
MAX_TOTAL_BYTES = 64 << 20
MAX_MEMBERS = 10_000
MAX_RATIO = 200
# Below this size a member cannot blow up by much, and short repetitive text files
# (configs, scripts) legitimately compress more than 200:1.
RATIO_MIN_BYTES = 64 << 10
FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # zip's epoch: the same folder always gives the same bytes
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_DRIVE = re.compile(r"[A-Za-z]:")


class ModulePackageError(ValueError):
    """A package or module that cannot be used; the message names package and member
    (the first error). ``errors``: every error found; ``warnings``: those of its
    userconfig.xml (both for ``hacluster module check``)."""

    def __init__(self, message: str, errors: tuple[str, ...] | None = None,
                 warnings: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else (message,)
        self.warnings = warnings


@dataclass(frozen=True)
class CheckReport:
    """What ``hacluster module check`` prints: every error and every warning, each
    naming file (and line, in userconfig.xml)."""
    path: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    mode: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    mode: int  # permission bits (0o777 at most)
    is_dir: bool


@dataclass(frozen=True)
class CheckedModule:
    name: str
    digest: str
    config: ModuleConfig
    members: tuple[Member, ...]


@dataclass(frozen=True)
class InstalledModule:
    name: str
    digest: str
    path: Path
    config: ModuleConfig


def digest(data: bytes) -> str:
    """The sha256 hex digest that names a package's content."""
    return hashlib.sha256(data).hexdigest()


def check_module_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ModulePackageError(
            f"invalid module name {name!r}: a letter then up to 31 letters, digits, '_' or '-'")
    return name


# --- package ---------------------------------------------------------------------------

def _zip_folder(src: Path, skip: Path | None) -> bytes:
    """The package bytes of module folder ``src`` (``skip``: a file not to include)."""
    if not (src / USERCONFIG).is_file():
        raise ModulePackageError(f"{src}: no {USERCONFIG} in the module folder")
    root = src.resolve()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for rel in _walk(src, root):
            path = src / rel
            if rel.endswith("/"):
                info = zipfile.ZipInfo(rel, FIXED_DATE)
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
                zf.writestr(info, b"")
                continue
            if skip is not None and path.resolve() == skip:
                continue  # the package being written inside its own folder
            info = zipfile.ZipInfo(rel, FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.create_system = 3  # unix, so that readers honour the mode bits
            with open(path, "rb") as f:
                zf.writestr(info, f.read(), compresslevel=9)
    return buffer.getvalue()


def _folder_name(src: Path) -> str:
    name = src.resolve().name
    return name if _NAME.fullmatch(name) else "module"


def check_path(path: str | Path) -> CheckReport:
    """``hacluster module check``: a module folder, a ``.safe`` or a userconfig.xml,
    checked as ``module package`` and ``module install`` would, collecting every
    error and warning instead of stopping at the first. Reads only."""
    p = Path(path)
    try:
        if p.is_dir():
            data = _zip_folder(p, None)
            checked, _ = _read_package(data, str(p), _folder_name(p),
                                      config_source=str(p / USERCONFIG), every_error=True)
        elif p.suffix == ".safe":
            if p.stat().st_size > MAX_TOTAL_BYTES:
                raise ModulePackageError(f"{p}: {p.stat().st_size} bytes is over the {MAX_TOTAL_BYTES} byte limit")
            checked, _ = _read_package(p.read_bytes(), str(p), p.name.removesuffix(".safe")
                                      if _NAME.fullmatch(p.name.removesuffix(".safe")) else "module",
                                      every_error=True)
        else:
            module_dir = p.resolve().parent.parent
            try:
                cfg = load_userconfig(p, module_dir.name if _NAME.fullmatch(module_dir.name) else "module")
            except UserConfigError as e:
                raise ModulePackageError(str(e), e.errors, e.warnings) from None
            return CheckReport(str(p), (), cfg.warnings, cfg.mode)
    except ModulePackageError as e:
        return CheckReport(str(p), e.errors, e.warnings)
    except OSError as e:
        return CheckReport(str(p), (f"{p}: cannot read ({e.strerror})",), ())
    return CheckReport(str(p), (), checked.config.warnings, checked.config.mode)


def check_bytes(safe_bytes: bytes, source: str, name: str) -> CheckReport:
    """``check_path`` for package bytes (an upload): every error and warning, each
    naming ``source`` and the member (and line, in userconfig.xml). Reads only."""
    try:
        check_module_name(name)
        checked, _ = _read_package(safe_bytes, source, name, every_error=True)
    except ModulePackageError as e:
        return CheckReport(source, e.errors, e.warnings)
    return CheckReport(source, (), checked.config.warnings, checked.config.mode)


def read_userconfig(safe_bytes: bytes, source: str) -> str:
    """The text of a package's conf/userconfig.xml (what an editor shows)."""
    try:
        with zipfile.ZipFile(io.BytesIO(safe_bytes)) as zf:
            return zf.read(USERCONFIG).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise ModulePackageError(f"{source}: {USERCONFIG}: unreadable ({e})") from None


def with_userconfig(safe_bytes: bytes, source: str, userconfig: str) -> bytes:
    """The package ``safe_bytes`` with its conf/userconfig.xml replaced by ``userconfig``,
    every other member as it was (name, mode, content); the result is not checked here
    (``check_bytes`` / ``install`` do)."""
    out = io.BytesIO()
    try:
        with zipfile.ZipFile(io.BytesIO(safe_bytes)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = userconfig.encode() if info.filename == USERCONFIG else src.read(info)
                copy = zipfile.ZipInfo(info.filename, FIXED_DATE)
                copy.external_attr = info.external_attr
                copy.create_system = info.create_system
                copy.compress_type = zipfile.ZIP_DEFLATED if not info.is_dir() else zipfile.ZIP_STORED
                dst.writestr(copy, data, compresslevel=9 if not info.is_dir() else None)
            if USERCONFIG not in src.namelist():
                raise ModulePackageError(f"{source}: {USERCONFIG}: missing")
    except (zipfile.BadZipFile, ValueError, OSError, RuntimeError, zlib.error) as e:
        raise ModulePackageError(f"{source}: unreadable ({e})") from None
    return out.getvalue()


def package(src_dir: str | Path, out_path: str | Path) -> str:
    """Zip the module folder ``src_dir`` into ``out_path``; return the sha256 hex digest.

    Symlinks to files inside the folder are stored as the files they point to (a
    package holds no symlinks); anything pointing outside is refused. The result is
    checked like any received package before it is written.
    """
    src = Path(src_dir)
    out = Path(out_path)
    data = _zip_folder(src, out.resolve())
    check(data, str(out), _folder_name(src))
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        durable_replace(str(tmp), str(out))
    finally:
        tmp.unlink(missing_ok=True)
    return digest(data)


def _walk(src: Path, root: Path) -> list[str]:
    """Member names under ``src`` in a fixed order; directories end with '/'."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        base = Path(dirpath)
        for d in list(dirnames):
            full = base / d
            rel = full.relative_to(src).as_posix()
            if full.is_symlink():
                raise ModulePackageError(f"{src}: {rel}: symlinked directories are not packaged")
            names.append(rel + "/")
        for fname in sorted(filenames):
            full = base / fname
            rel = full.relative_to(src).as_posix()
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(root):
                    raise ModulePackageError(f"{src}: {rel}: symlink points outside the module folder")
                if not target.is_file():
                    raise ModulePackageError(f"{src}: {rel}: symlink does not point to a regular file")
            elif not stat.S_ISREG(full.lstat().st_mode):
                raise ModulePackageError(f"{src}: {rel}: not a regular file, directory or symlink")
            names.append(rel)
    return sorted(names)


# --- check -----------------------------------------------------------------------------

def check(safe_bytes: bytes, source: str, name: str) -> CheckedModule:
    """Validate a package completely (layout, sizes, CRCs, userconfig, scripts).

    Raises ModulePackageError naming ``source`` and the member at fault.
    """
    check_module_name(name)
    checked, _ = _read_package(safe_bytes, source, name)
    return checked


def _read_package(safe_bytes: bytes, source: str, name: str, *, config_source: str | None = None,
                  every_error: bool = False) -> tuple[CheckedModule, dict[str, bytes]]:
    """``config_source``: how messages name the userconfig.xml (default
    ``SOURCE:conf/userconfig.xml``). ``every_error``: go on past the first error of the
    userconfig or scripts to report them all (ModulePackageError.errors)."""
    def fail(member: str, problem: str) -> ModulePackageError:
        # One line of bounded length, whatever a hostile member name or zipfile's
        # message (which quotes header bytes) holds.
        return ModulePackageError(f"{source}: {_shown(member, 120)}: {_shown(problem, 300)}")

    if len(safe_bytes) > MAX_TOTAL_BYTES:
        raise fail("package", f"{len(safe_bytes)} bytes is over the {MAX_TOTAL_BYTES} byte limit")
    _count_members(safe_bytes, fail)
    try:
        zf = zipfile.ZipFile(io.BytesIO(safe_bytes))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error,
            NotImplementedError) as exc:
        raise fail("package", f"not a zip file ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise fail("package", f"{len(infos)} members is over the limit of {MAX_MEMBERS}")
        members = [_check_member(info, fail) for info in infos]
        total = sum(m.size for m in members)
        if total > MAX_TOTAL_BYTES:
            raise fail("package", f"{total} bytes uncompressed is over the {MAX_TOTAL_BYTES} byte limit")
        _check_names(members, fail)
        contents: dict[str, bytes] = {}
        for info, member in zip(infos, members, strict=True):
            if member.is_dir:
                continue
            try:
                # ZipExtFile stops at the declared size and checks the CRC, so a
                # member cannot deliver more than the header claimed.
                with zf.open(info) as f:
                    data = f.read(member.size + 1)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError,
                    zlib.error, NotImplementedError, struct.error) as exc:
                raise fail(member.name, f"unreadable ({exc})") from None
            if len(data) != member.size:
                raise fail(member.name, "size does not match its header")
            contents[member.name] = data
    if USERCONFIG not in contents:
        raise fail(USERCONFIG, "missing: a module needs conf/userconfig.xml")
    errors: list[str] = []
    warnings: tuple[str, ...] = ()
    config: ModuleConfig | None = None
    try:
        config = parse_userconfig(contents[USERCONFIG], config_source or f"{source}:{USERCONFIG}", name)
        warnings = config.warnings
    except UserConfigError as exc:
        if not every_error:
            raise ModulePackageError(str(exc), exc.errors, exc.warnings) from None
        errors += exc.errors
        warnings = exc.warnings
    by_name = {m.name: m for m in members}
    for script in SCRIPTS:
        found = by_name.get(f"bin/{script}")
        if found is not None and (found.is_dir or not found.mode & 0o100):
            errors.append(str(fail(found.name, "script is not executable (set its exec bit before packaging)")))
    if config is not None:
        for script in REQUIRED_SCRIPTS[config.mode]:
            if f"bin/{script}" not in by_name:
                errors.append(str(fail(f"bin/{script}", f"missing: a {config.mode} module needs "
                                       f"{' and '.join('bin/' + s for s in REQUIRED_SCRIPTS[config.mode])}")))
    if errors or config is None:
        raise ModulePackageError(errors[0], tuple(errors), warnings)
    return CheckedModule(name, digest(safe_bytes), config, tuple(members)), contents


_EOCD = struct.Struct("<4s4H2LH")        # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL_HEADER_SIZE = 46
_NAME_LENGTHS = struct.Struct("<3H")       # name, extra, comment lengths at offset 28


def _count_members(data: bytes, fail) -> None:
    """Refuse a package with more than MAX_MEMBERS entries before zipfile builds an
    object for every one of them (500k entries: 33 s and 300 MB). Both the count the
    end record declares and the entries actually present (zipfile reads the central
    directory to its end whatever the count says) are checked, stopping at the limit.
    Malformed records are left to zipfile to report."""
    pos = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
    if pos < 0 or len(data) - pos < _EOCD.size:
        return
    _, _, _, _, declared, cd_size, _, _ = _EOCD.unpack_from(data, pos)
    end = pos
    locator = pos - _EOCD64_LOCATOR.size
    if locator >= 0 and data[locator:locator + 4] == b"PK\x06\x07":
        record = locator - _EOCD64.size
        if record >= 0 and data[record:record + 4] == b"PK\x06\x06":
            fields = _EOCD64.unpack_from(data, record)
            declared, cd_size, end = fields[7], fields[8], record
    if declared > MAX_MEMBERS:
        raise fail("package", f"{declared} members is over the limit of {MAX_MEMBERS}")
    p, count = max(0, end - cd_size), 0
    while p + _CENTRAL_HEADER_SIZE <= end and data[p:p + 4] == b"PK\x01\x02":
        count += 1
        if count > MAX_MEMBERS:
            raise fail("package", f"over {MAX_MEMBERS} members in the central directory "
                                  f"(the limit)")
        name_len, extra_len, comment_len = _NAME_LENGTHS.unpack_from(data, p + 28)
        p += _CENTRAL_HEADER_SIZE + name_len + extra_len + comment_len


def _shown(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_member(info: zipfile.ZipInfo, fail) -> Member:
    raw = info.filename
    is_dir = raw.endswith("/")
    name = raw[:-1] if is_dir else raw
    if "\\" in raw:
        raise fail(repr(raw), "backslash in member name")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise fail(repr(raw), "absolute path")
    parts = name.split("/")
    if "\0" in raw or any(p in ("", ".", "..") for p in parts):
        raise fail(repr(raw), "path escapes or is not normalised ('..', '.', empty part or NUL)")
    if info.flag_bits & 0x1:
        raise fail(name, "encrypted members are not accepted")
    if info.flag_bits & 0x60:
        raise fail(name, "patched or strongly encrypted members are not accepted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise fail(name, f"compression method {info.compress_type} not accepted (store or deflate only)")
    unix_mode = info.external_attr >> 16
    kind = stat.S_IFMT(unix_mode)
    if stat.S_ISLNK(unix_mode):
        raise fail(name, "symlink members are not accepted")
    if kind and not (stat.S_ISREG(unix_mode) or stat.S_ISDIR(unix_mode)):
        raise fail(name, "device, fifo or socket members are not accepted")
    if stat.S_ISDIR(unix_mode) and not is_dir:
        raise fail(name, "directory entry without a trailing '/'")
    if is_dir and info.file_size:
        raise fail(name, "directory entry with content")
    if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise fail(name, f"compression ratio over {MAX_RATIO}:1 (zip bomb?)")
    return Member(name=name, size=info.file_size, mode=unix_mode & 0o777, is_dir=is_dir)


def _check_names(members: list[Member], fail) -> None:
    seen: dict[str, Member] = {}
    for m in members:
        if m.name in seen:
            raise fail(m.name, "duplicate member name")
        seen[m.name] = m
    for m in members:
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            parent = seen.get("/".join(parts[:i]))
            if parent is not None and not parent.is_dir:
                raise fail(m.name, f"{parent.name} is a file and a directory")


# --- install / uninstall / list --------------------------------------------------------

def install(safe_bytes: bytes, modules_dir: str | Path, name: str) -> InstalledModule:
    """Check, then atomically install a package as ``modules_dir/<name>`` (+ ``<name>.safe``).

    On any error nothing of the new version is left and an older version stays.
    """
    check_module_name(name)
    checked, contents = _read_package(safe_bytes, f"{name}.safe", name)
    base = Path(modules_dir)
    private_dir(base)
    _remove_leftovers(base, name)
    tag = uuid.uuid4().hex[:8]
    staged = base / f".{name}.new-{tag}"
    staged_safe = base / f".{name}.safe.new-{tag}"
    aside = base / f".{name}.old-{tag}"
    aside_safe = base / f".{name}.safe.old-{tag}"
    target, target_safe = base / name, base / f"{name}.safe"
    try:
        _extract(checked, contents, staged)
        _write_durably(staged_safe, safe_bytes, 0o640)
        fsync_dir(base)
        done: list[str] = []
        try:
            if target.exists():
                os.rename(target, aside)
                done.append("old aside")
            if target_safe.exists():
                os.rename(target_safe, aside_safe)
                done.append("old safe aside")
            os.rename(staged, target)
            done.append("new in")
            os.rename(staged_safe, target_safe)
        except OSError:
            # Undo in reverse so that the old version (or nothing) is what remains.
            undo = {"new in": (target, staged), "old safe aside": (aside_safe, target_safe),
                    "old aside": (aside, target)}
            for step in reversed(done):
                os.rename(*undo[step])
            raise
        fsync_dir(base)
    except OSError as exc:
        raise ModulePackageError(f"{name}.safe: install into {base}: {exc.strerror or exc}") from None
    finally:
        for leftover in (staged, aside):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in (staged_safe, aside_safe):
            leftover.unlink(missing_ok=True)
    log.info("event=module_installed module=%s digest=%s path=%s", name, checked.digest, target)
    return InstalledModule(name, checked.digest, target, checked.config)


def _extract(checked: CheckedModule, contents: dict[str, bytes], staged: Path) -> None:
    # Nothing for other users: a userconfig.xml's <user> variables may hold credentials.
    os.mkdir(staged, 0o750)
    dirs = {staged}
    for member in checked.members:
        path = staged.joinpath(*member.name.split("/"))
        # Parents first, whether or not the zip lists them as entries.
        for parent in reversed(path.parents if not member.is_dir else (path, *path.parents)):
            if parent in dirs or not parent.is_relative_to(staged):
                continue
            os.mkdir(parent, 0o750)
            dirs.add(parent)
        if member.is_dir:
            continue
        # No write but the owner's, nothing for others, no setuid bits, whatever the
        # zip says.
        mode = 0o750 if member.mode & 0o100 else 0o640
        _write_durably(path, contents[member.name], mode)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)


def _write_durably(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)  # umask must not change what the package says
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(base: Path, name: str) -> None:
    """Staging copies left by a crash during an earlier install or uninstall of ``name``."""
    for entry in base.iterdir():
        if entry.name.startswith((f".{name}.new-", f".{name}.old-", f".{name}.safe.new-",
                                  f".{name}.safe.old-", f".{name}.removing-")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def uninstall(modules_dir: str | Path, name: str) -> None:
    """Remove an installed module (its folder and its ``.safe``)."""
    check_module_name(name)
    base = Path(modules_dir)
    target, target_safe = base / name, base / f"{name}.safe"
    if not target.exists() and not target_safe.exists():
        raise ModulePackageError(f"{name}: not installed in {base}")
    aside = base / f".{name}.removing-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.rename(target, aside)
    target_safe.unlink(missing_ok=True)
    fsync_dir(base)
    shutil.rmtree(aside, ignore_errors=True)
    log.info("event=module_uninstalled module=%s", name)


def list_installed(modules_dir: str | Path) -> list[InstalledModule]:
    """Installed modules, by name; a folder without its ``.safe`` or with a broken config is skipped (logged)."""
    base = Path(modules_dir)
    if not base.is_dir():
        return []
    result = []
    for entry in sorted(base.iterdir()):
        if not _NAME.fullmatch(entry.name) or not entry.is_dir() or entry.is_symlink():
            continue
        safe = base / f"{entry.name}.safe"
        try:
            data = safe.read_bytes()
            config = load_userconfig(entry / USERCONFIG, entry.name)
        except (OSError, UserConfigError) as exc:
            log.warning("event=module_skipped module=%s reason=%r", entry.name, str(exc))
            continue
        result.append(InstalledModule(entry.name, digest(data), entry, config))
    return result
