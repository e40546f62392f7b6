"""A node's part of a support snapshot: the files, read and packed in a thread of the
daemon (never on the loop that renews the leases), within a size and a time budget
(``support_snapshot``: PART_MAX_BYTES, PART_DEADLINE_S), and served in chunks.

A part is a ``.tar.gz`` of the node's files plus ``PART.json`` (each file with its
size and what it is, each file left out and why). What the daemon knows only on its
loop (cluster status, Raft status and state, module states, metrics) is taken there
as plain data first, then every source is read in the thread: ``build_part`` runs them
one after the other, checks the deadline between two, replaces any occurrence of the
node's secret and Raft credential (``support_snapshot.redact``), and stops taking
files when the budget is spent (each one left out is said).

``PartStore`` keeps the built parts of a daemon for a little while (a few, each at
most ``PART_MAX_BYTES``) so that the CLI can fetch them chunk by chunk, through peer
control for another node (its replies are bounded: ``peer_control.MAX_BODY_BYTES``).
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import hacluster

from . import support_snapshot as plan
from .cluster_config import ClusterConfig
from .paths import NodePaths


class Skip(Exception):
    """A source left out of the part; the message says why (in the manifest)."""


@dataclass(frozen=True)
class Source:
    """One file of a part: its name in the part, what it is, how to read it (in the
    build thread; raises Skip or OSError to be left out)."""
    path: str
    what: str
    read: Callable[[], bytes]


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def data_source(path: str, what: str, value: Any) -> Source:
    """Plain data taken on the loop, written as JSON in the thread."""
    return Source(path, what, lambda: json_bytes(value))


def tail_bytes(path: Path, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of a file at most, from the start of a line (the first
    line of a cut read is dropped): its cost is the tail's, not the file's."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    if start > 0:
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else b""
    return data


def _read_small(path: Path, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise Skip(f"{size} bytes, over the {limit} byte limit for this file")
    return path.read_bytes()


# ---- what every member gives ------------------------------------------------------------
def config_sources(config_dir: Path) -> Iterator[Source]:
    """cluster.json and hooks.json; every other file of the directory is listed as
    left out (a secret, a key, or not ours)."""
    try:
        entries = sorted(os.scandir(config_dir), key=lambda e: e.name)
    except OSError as e:
        yield Source("config", "the configuration directory", _raise(Skip(f"{config_dir}: {e.strerror}")))
        return
    for entry in entries:
        taken, what = plan.config_file_decision(entry.name)
        name = entry.name if plan.valid_part_path(entry.name) else "unnamed"
        if not taken or not entry.is_file(follow_symlinks=False):
            reason = what if not taken else "not a regular file"
            yield Source(f"config/{name}", f"{entry.name} in {config_dir}", _raise(Skip(reason)))
            continue
        path = Path(entry.path)
        if entry.name == "hooks.json":
            yield Source(f"config/{name}", what, partial(_masked_hooks, path))
        else:
            yield Source(f"config/{name}", what, partial(_read_small, path, plan.CONFIG_MAX_BYTES))


def _masked_hooks(path: Path) -> bytes:
    text, _ = plan.mask_urls(_read_small(path, plan.CONFIG_MAX_BYTES).decode(errors="replace"),
                             keep_path=False)
    return text.encode()


def _raise(error: Exception) -> Callable[[], bytes]:
    def read() -> bytes:
        raise error
    return read


def versions() -> dict[str, Any]:
    """hacluster, Python, pysyncobj and the libraries it runs on, the kernel, the OS."""
    libs: dict[str, str | None] = {}
    for dist in ("pysyncobj", "uvloop", "aiohttp", "cryptography", "pyroute2", "mfusepy",
                 "xxhash", "lz4", "psutil"):
        try:
            libs[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            libs[dist] = None
    try:
        os_release = Path("/etc/os-release").read_text()
    except OSError as e:
        os_release = f"unreadable: {e.strerror}"
    u = os.uname()
    return {"hacluster": hacluster.__version__, "python": sys.version,
            "python_executable": sys.executable, "libraries": libs,
            "uname": " ".join([u.sysname, u.nodename, u.release, u.version, u.machine]),
            "platform": platform.platform(), "os_release": os_release}


def paths_layout(config: ClusterConfig) -> dict[str, Any]:
    """Where this member keeps what (``NodePaths``), and whether each path exists."""
    p: NodePaths = config.paths
    named = {"config_dir": p.config_dir, "state_dir": p.state_dir, "run_dir": p.run_dir,
             "log_dir": p.log_dir, "control_socket": p.control_socket, "raft_dir": p.raft_dir,
             "modules_dir": p.modules_dir, "members_file": p.members_file,
             "pid_file": p.pid_file(config.role)}
    return {k: {"path": str(v), "exists": v.exists()} for k, v in named.items()}


def disk_usage(paths: NodePaths, deadline: float, max_entries: int = 200_000) -> dict[str, Any]:
    """Bytes under each top-level entry of the state directory (bounded walk), and the
    free space of the file systems of the state and log directories."""
    out: dict[str, Any] = {"state_dir": str(paths.state_dir), "by_entry": {}, "complete": True}
    seen = 0
    try:
        tops = sorted(os.scandir(paths.state_dir), key=lambda e: e.name)
    except OSError as e:
        raise Skip(f"{paths.state_dir}: {e.strerror}") from None
    for top in tops:
        total = 0
        stack = [top]
        while stack:
            entry = stack.pop()
            seen += 1
            if seen > max_entries or time.monotonic() > deadline:
                out["complete"] = False
                break
            try:
                st = entry.stat(follow_symlinks=False)
                total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
                if entry.is_dir(follow_symlinks=False):
                    stack.extend(os.scandir(entry.path))
            except OSError:
                continue
        out["by_entry"][top.name] = total
        if not out["complete"]:
            break
    out["total_bytes"] = sum(out["by_entry"].values())
    filesystems = {}
    for name, path in (("state_dir", paths.state_dir), ("log_dir", paths.log_dir)):
        try:
            usage = shutil.disk_usage(path)
            filesystems[name] = {"path": str(path), "total": usage.total, "used": usage.used,
                                 "free": usage.free}
        except OSError as e:
            filesystems[name] = {"path": str(path), "error": e.strerror}
    out["filesystems"] = filesystems
    return out


def daemon_log(kind: str, in_daemon: bool = True, environ: dict[str, str] | None = None,
               stderr_fd: int = 2) -> bytes:
    """The daemon's own recent log: journald's when systemd runs it, else (asked of the
    daemon itself) its standard error when that is a file (the lab, a redirect); else
    Skip with the reason."""
    env = os.environ if environ is None else environ
    journalctl = shutil.which("journalctl")
    under_systemd = bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID")) if in_daemon \
        else Path("/run/systemd/system").is_dir()
    if under_systemd:
        if journalctl is None:
            raise Skip("systemd runs it but journalctl is not installed")
        return _journal(journalctl, f"hacluster-{kind}")
    if not in_daemon:
        raise Skip("no systemd journal on this host, and the daemon's standard error is not "
                   "known to the command")
    try:
        st = os.fstat(stderr_fd)
    except OSError:
        raise Skip("not run by systemd (no journald log) and no standard error") from None
    if not stat.S_ISREG(st.st_mode):
        raise Skip("not run by systemd (no journald log) and its standard error is not a file")
    return tail_bytes(Path(f"/proc/self/fd/{stderr_fd}"), plan.TAIL_BYTES)


def _journal(journalctl: str, unit: str) -> bytes:
    try:
        res = subprocess.run([journalctl, "-u", unit, "--since", plan.JOURNAL_SINCE, "-o", "short-iso",
                              "--no-pager", "-n", "50000"], capture_output=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Skip("journalctl did not answer within 10 s") from None
    if res.returncode != 0:
        raise Skip(f"journalctl -u {unit} failed: {res.stderr.decode(errors='replace').strip()[:200]}")
    out = res.stdout[-plan.TAIL_BYTES:]
    if len(res.stdout) > plan.TAIL_BYTES:
        cut = out.find(b"\n")
        out = out[cut + 1:]
    return out


def node_sources(config: ClusterConfig, *, deadline: float, status: dict | None = None,
                 raft_status: dict | None = None, cluster_state: dict | None = None,
                 metrics: str | None = None, metrics_off: str | None = None,
                 daemon_note: str | None = None) -> Iterator[Source]:
    """Every member's files. What the daemon knows (status, Raft, metrics) is given as
    plain data; None with ``daemon_note`` when no daemon answered (the CLI builds the
    part itself)."""
    yield from config_sources(config.directory)
    missing = daemon_note or "not given"
    yield (data_source("status/cluster_status.json", "cluster status as 'cluster status --json' "
                       "shows it: members, leader, term, commit index, leases", status)
           if status is not None else Source("status/cluster_status.json", "cluster status", _raise(Skip(missing))))
    yield (data_source("status/raft.json", "this member's Raft: role, term, leader, commit and "
                       "applied index, log length, connection to each peer", raft_status)
           if raft_status is not None else Source("status/raft.json", "Raft status", _raise(Skip(missing))))
    yield (data_source("status/cluster_state.json", "the committed cluster state as this member "
                       "applied it: members, modules, leases, in-sync sets", cluster_state)
           if cluster_state is not None else Source("status/cluster_state.json", "cluster state",
                                                    _raise(Skip(missing))))
    if metrics is not None:
        yield Source("status/metrics.txt", "the /metrics text of this member (Prometheus)",
                     lambda: metrics.encode())
    else:
        yield Source("status/metrics.txt", "metrics", _raise(Skip(metrics_off or missing)))
    yield Source("versions.json", "versions: hacluster, Python, pysyncobj and libraries, kernel "
                 "(uname -a), OS release", lambda: json_bytes(versions()))
    yield Source("paths.json", "where this member keeps what (NodePaths)",
                 lambda: json_bytes(paths_layout(config)))
    yield Source("disk_usage.json", "bytes under each entry of the state directory, free space",
                 lambda: json_bytes(disk_usage(config.paths, deadline)))
    yield Source("state/members.json", "the committed membership as this member last applied it",
                 lambda: _read_small(config.paths.members_file, plan.CONFIG_MAX_BYTES))
    yield Source("daemon.log", f"the daemon's own recent log (journald since {plan.JOURNAL_SINCE}, "
                 f"or its standard error; last {plan.TAIL_BYTES >> 20} MiB at most)",
                 partial(daemon_log, config.role, daemon_note is None))


def read_credentials(config: ClusterConfig) -> list[str]:
    """What must never be in a part: the cluster secret and the Raft credential (those
    this member holds)."""
    found = []
    for read in ((config.read_secret, config.read_raft_secret) if config.holds_data_secret
                 else (config.read_raft_secret,)):
        try:
            found.append(read())
        except (OSError, ValueError):
            continue
    return found


# ---- building -----------------------------------------------------------------------------
def build_part(node: str, sources: Iterable[Source], credentials: Callable[[], list[str]], *,
               deadline: float, max_bytes: int = plan.PART_MAX_BYTES,
               built_by: str = "daemon", note: str | None = None,
               clock: Callable[[], float] = time.monotonic) -> bytes:
    """The part, a .tar.gz: every source read in turn (in the caller's thread) and
    redacted, PART.json last. ``deadline`` (``clock`` time) and ``max_bytes`` bound it:
    what does not fit is listed in ``skipped`` with the reason."""
    secrets = credentials()
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    total = 0
    started = time.time()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for source in sources:
            if not plan.valid_part_path(source.path) or len(files) >= plan.MAX_PART_FILES:
                continue
            if clock() > deadline:
                skipped.append({"path": source.path, "what": source.what,
                                "reason": f"the part's time budget ({plan.PART_DEADLINE_S:g} s) was spent"})
                continue
            try:
                data = source.read()
            except Skip as e:
                skipped.append({"path": source.path, "what": source.what, "reason": str(e)})
                continue
            except OSError as e:
                skipped.append({"path": source.path, "what": source.what,
                                "reason": f"{e.filename or source.path}: {e.strerror or e}"})
                continue
            data, redacted = plan.redact(data, secrets)
            if total + len(data) > max_bytes:
                skipped.append({"path": source.path, "what": source.what,
                                "reason": f"{len(data)} bytes: over the part's size budget "
                                          f"({max_bytes} bytes)"})
                continue
            total += len(data)
            _add(tar, source.path, data, started)
            entry: dict[str, Any] = {"path": source.path, "size": len(data), "what": source.what}
            if redacted:
                entry["redacted"] = redacted
            files.append(entry)
        manifest = {"format": plan.FORMAT, "node": node, "hostname": socket.gethostname(),
                    "built_by": built_by, "created": started, "files": files, "skipped": skipped}
        if note:
            manifest["note"] = note
        _add(tar, plan.PART_MANIFEST, json_bytes(manifest), started)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


# ---- serving in chunks ---------------------------------------------------------------------
class PartStore:
    """The parts a daemon built, by id, until fetched or expired; at most ``max_parts``
    at once (building or built), each served ``CHUNK_BYTES`` at a time."""

    def __init__(self, max_parts: int = 2, keep_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_parts = max_parts
        self.keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()       # finished from the build thread's callback
        self._parts: dict[str, dict[str, Any]] = {}

    def begin(self) -> str:
        """A new part's id; ValueError when too many are being built."""
        with self._lock:
            self._expire()
            if len(self._parts) >= self.max_parts:
                built = sorted((p["at"], k) for k, p in self._parts.items() if p["data"] is not None
                               or p["error"] is not None)
                if not built:
                    raise ValueError(f"{len(self._parts)} snapshot parts are being built on this "
                                     "node already; try again in a little while")
                del self._parts[built[0][1]]
            part_id = uuid.uuid4().hex
            self._parts[part_id] = {"at": self._clock(), "data": None, "error": None, "sha256": None}
            return part_id

    def finish(self, part_id: str, data: bytes | None, error: str | None = None) -> None:
        with self._lock:
            part = self._parts.get(part_id)
            if part is None:
                return
            part.update(data=data, error=error, at=self._clock(),
                        sha256=hashlib.sha256(data).hexdigest() if data is not None else None)

    def chunk(self, part_id: str, offset: int, size: int = plan.CHUNK_BYTES) -> dict[str, Any]:
        """``{"ready": False}`` while it is built; then the bytes from ``offset`` (base64),
        the part's size and digest. The part is dropped once its last chunk is given."""
        with self._lock:
            self._expire()
            part = self._parts.get(part_id)
            if part is None:
                raise KeyError(f"no snapshot part {part_id} on this node (expired after "
                               f"{self.keep_s:g} s, or already fetched)")
            if part["error"] is not None:
                del self._parts[part_id]
                raise RuntimeError(part["error"])
            data = part["data"]
            if data is None:
                return {"id": part_id, "ready": False}
            if offset < 0 or offset > len(data):
                raise ValueError(f"offset {offset} outside the part (0..{len(data)})")
            piece = data[offset:offset + size]
            if offset + len(piece) >= len(data):
                del self._parts[part_id]
            return {"id": part_id, "ready": True, "size": len(data), "sha256": part["sha256"],
                    "offset": offset, "data": base64.b64encode(piece).decode()}

    def _expire(self) -> None:
        now = self._clock()
        for k in [k for k, p in self._parts.items() if now - p["at"] > self.keep_s]:
            del self._parts[k]


def build_local(config: ClusterConfig, extra: Iterable[Source], note: str) -> bytes:
    """A part built without a daemon (the CLI, when none answers): the files only."""
    deadline = time.monotonic() + plan.PART_DEADLINE_S
    sources = _chain(node_sources(config, deadline=deadline, daemon_note=note), extra)
    return build_part(config.self_name, sources, lambda: read_credentials(config),
                      deadline=deadline, built_by="cli", note=note)


def _chain(*groups: Iterable[Source]) -> Iterator[Source]:
    for group in groups:
        yield from group

