"""A node's modules in its support snapshot part (``hacluster.node.support_part``): for
every module installed or logging here, its state (``state --json``), its configuration
(``userconfig.xml``, with password-like ``<var>`` values masked), the listing of its
package folder with each file's digest (not the scripts themselves), and its last
events: the tail of ``module.log`` and ``script.log`` (``rotating_log.read_tail``,
bounded) and of its other logs, and the listing of its log folder.

A generator: the folders are listed and the files read when the build thread iterates
it, never on the daemon's loop; the states are plain data taken on the loop before.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from functools import partial
from pathlib import Path
from typing import Iterator, Mapping

from hacluster.node import support_snapshot as plan
from hacluster.node.paths import NodePaths
from hacluster.node.support_part import Skip, Source, data_source

from . import rotating_log
from .package import USERCONFIG

_MODULE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
MAIN_LOGS = ("module.log", "script.log")
MAX_LISTED = 5000


def _names(path: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)
                and _MODULE_NAME.fullmatch(e.name)}
    except OSError:
        return set()


def log_tail(path: Path, max_bytes: int) -> bytes:
    """The whole lines of the last ``max_bytes`` of a module log (read backwards from
    its end: the cost is the tail's)."""
    if not path.exists():
        raise Skip("no such log (nothing logged yet)")
    chunk = rotating_log.read_tail(path, lines=max_bytes, max_bytes=max_bytes)
    return ("\n".join(chunk.lines) + "\n").encode() if chunk.lines else b""


def package_listing(folder: Path, safe: Path) -> bytes:
    """``mode size sha256 path`` of every file of an installed module (its scripts
    named, not copied), and the package's own digest."""
    lines = []
    try:
        data = safe.read_bytes()
        lines.append(f"package {safe.name} sha256 {hashlib.sha256(data).hexdigest()} size {len(data)}")
    except OSError as e:
        lines.append(f"package {safe.name}: {e.strerror}")
    count = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            count += 1
            if count > MAX_LISTED:
                lines.append(f"... more than {MAX_LISTED} files: listing cut")
                return ("\n".join(lines) + "\n").encode()
            path = Path(root) / name
            rel = path.relative_to(folder)
            try:
                st = path.lstat()
                digest = (hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode)
                          and st.st_size <= plan.CONFIG_MAX_BYTES * 16 else "-")
                lines.append(f"{stat.filemode(st.st_mode)} {st.st_size:>10} {digest} {rel}")
            except OSError as e:
                lines.append(f"? {rel}: {e.strerror}")
    return ("\n".join(lines) + "\n").encode()


def log_listing(folder: Path) -> bytes:
    lines = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name)[:MAX_LISTED]:
        try:
            st = entry.stat(follow_symlinks=False)
            lines.append(f"{stat.filemode(st.st_mode)} {st.st_size:>12} {entry.name}")
        except OSError as e:
            lines.append(f"? {entry.name}: {e.strerror}")
    return ("\n".join(lines) + "\n").encode()


def _userconfig(path: Path) -> bytes:
    size = path.stat().st_size
    if size > plan.CONFIG_MAX_BYTES:
        raise Skip(f"{size} bytes, over the {plan.CONFIG_MAX_BYTES} byte limit")
    text, _ = plan.mask_userconfig(path.read_text(errors="replace"))
    text, _ = plan.mask_urls(text)
    return text.encode()


def module_sources(paths: NodePaths, states: Mapping[str, dict],
                   errors: Mapping[str, str]) -> Iterator[Source]:
    """Every module installed here, running here or with logs here."""
    names = _names(paths.modules_dir) | _names(paths.log_dir) | \
        {n for n in (*states, *errors) if _MODULE_NAME.fullmatch(n)}
    for name in sorted(names):
        base = f"modules/{name}"
        if name in states:
            yield data_source(f"{base}/state.json", f"{name}: its state on this node "
                              "(as 'hacluster -m MODULE state --json')", states[name])
        else:
            reason = errors.get(name) or "not running on this node"
            yield data_source(f"{base}/state.json", f"{name}: not running here", {"module": name,
                              "running_here": False, "reason": reason})
        folder = paths.modules_dir / name
        yield Source(f"{base}/userconfig.xml", f"{name}: its configuration ({USERCONFIG}; "
                     "password-like <var> values masked)", partial(_userconfig, folder / USERCONFIG))
        yield Source(f"{base}/package_files.txt", f"{name}: the files of its installed package "
                     "(mode, size, sha256; the scripts are named, not copied)",
                     partial(_package, folder))
        logs = paths.module_log_dir(name)
        if not logs.is_dir():
            continue
        yield Source(f"{base}/logs/listing.txt", f"{name}: the files of its log folder, rotated ones too",
                     partial(log_listing, logs))
        for log in MAIN_LOGS:
            yield Source(f"{base}/logs/{log}", f"{name}: the last {plan.TAIL_BYTES >> 20} MiB of {log}",
                         partial(log_tail, logs / log, plan.TAIL_BYTES))
        try:
            others = sorted(e.name for e in os.scandir(logs) if e.name.endswith(".log")
                            and e.name not in MAIN_LOGS and e.is_file(follow_symlinks=False)
                            and plan.valid_part_path(e.name))
        except OSError:
            others = []
        for log in others[:50]:
            yield Source(f"{base}/logs/{log}", f"{name}: the last {plan.OTHER_LOG_TAIL_BYTES >> 10} KiB "
                         f"of {log}", partial(log_tail, logs / log, plan.OTHER_LOG_TAIL_BYTES))


def _package(folder: Path) -> bytes:
    if not folder.is_dir():
        raise Skip("not installed on this node")
    return package_listing(folder, folder.with_name(f"{folder.name}.safe"))
