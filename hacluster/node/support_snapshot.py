"""The support snapshot's decisions (pure): what a node's part holds and what it never
holds, how a credential is kept out of a file, the archive's name and its manifest.

``hacluster snapshot`` (SafeKit's ``safekit snapshot``, Pacemaker's ``crm_report``)
makes one ``.tar.gz`` for support: per node its configuration, cluster and Raft status,
every module's state, configuration and last events, the daemon's recent log,
versions, paths, disk usage and metrics; a ``MANIFEST.json`` at the top says what each
file is, what was left out and why. Each node builds its part in a thread of its
daemon (``support_part``), bounded in size and time; the CLI gathers the parts over
peer control, in chunks, and writes the archive (``support_archive``).

Never in a snapshot: the cluster secret, the Raft credential, any file named like a
secret or a key (only cluster.json and hooks.json are taken from the configuration
directory; the other files there are listed as left out). Besides, every byte is
checked for the node's secret and credential, and any occurrence is replaced
(``redact``); a module's ``<user><var>`` whose name looks like a password keeps its
name, not its value; a URL keeps no user:password, and a hook's URL no path or query
(a webhook's path is often its token).
"""
from __future__ import annotations

import re
import time
from typing import Any, Iterable, Mapping, Sequence

FORMAT = 1
PART_MANIFEST = "PART.json"        # a node's own list, inside its part
MANIFEST = "MANIFEST.json"         # the archive's, at its top
NODES_DIR = "nodes"
# Bounds of one node's part (the daemon builds it off its loop, within these).
TAIL_BYTES = 2 << 20               # module.log, script.log, the daemon's log: their last 2 MiB
OTHER_LOG_TAIL_BYTES = 512 << 10   # a module's other logs (replication, checkers)
CONFIG_MAX_BYTES = 1 << 20         # a configuration file larger than this is left out
PART_MAX_BYTES = 64 << 20          # all the files of one part, before compression
PART_DEADLINE_S = 20.0             # a part's build; files after it are left out, said so
CHUNK_BYTES = 512 << 10            # a part travels in chunks (peer control's reply is 1 MiB)
JOURNAL_SINCE = "-24h"             # the daemon's journald log: this far back (and TAIL_BYTES)
MAX_PART_FILES = 10_000

CONFIG_FILES = {"cluster.json": "the member's cluster configuration (members, Raft timers, paths)",
                "hooks.json": "cluster event hooks (URLs: scheme and host only)"}
_SECRET_NAME = re.compile(r"secret|key|credential|passw|token|cookie|\.pem$|\.crt$|\.p12$|\.pfx$|id_rsa",
                          re.IGNORECASE)
_SECRET_VAR = re.compile(r"pass|secret|token|key|credential|auth|pwd", re.IGNORECASE)
_PART_NAME = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
MASKED = "(masked)"


def secret_like(name: str) -> bool:
    """Is a file (or variable) named like something that holds a credential?"""
    return bool(_SECRET_NAME.search(name))


def config_file_decision(name: str) -> tuple[bool, str]:
    """(taken, what it is or why not) for a file of the configuration directory."""
    if secret_like(name):
        return False, "named like a secret or a key: never in a snapshot"
    if name in CONFIG_FILES:
        return True, CONFIG_FILES[name]
    return False, "not a hacluster configuration file: left out (only cluster.json and hooks.json are taken)"


_VAR_TAG = re.compile(r"<var\b[^>]*>", re.DOTALL)
_ATTR = r"""\b{0}\s*=\s*(?P<q>["'])(?P<v>.*?)(?P=q)"""


def mask_userconfig(text: str) -> tuple[str, int]:
    """A userconfig.xml with the value of each ``<var>`` named like a password masked
    (a module's ``<user>`` variables may hold the application's credentials)."""
    count = 0

    def one(match: re.Match[str]) -> str:
        nonlocal count
        tag = match.group(0)
        name = re.search(_ATTR.format("name"), tag)
        if name is None or not _SECRET_VAR.search(name.group("v")):
            return tag
        value = re.search(_ATTR.format("value"), tag)
        if value is None:
            return tag
        count += 1
        return tag[:value.start("v")] + MASKED + tag[value.end("v"):]
    return _VAR_TAG.sub(one, text), count


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@\"'<>]+)@")
_URL = re.compile(r"(?P<base>\bhttps?://[^\s/\"'<>?#]+)(?P<rest>[/?#][^\s\"'<>]*)")


def mask_urls(text: str, keep_path: bool = True) -> tuple[str, int]:
    """Every URL without its ``user:password@``; with ``keep_path=False`` (hooks.json)
    also without its path and query, where a webhook keeps its token."""
    count = 0

    def userinfo(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"{match.group('scheme')}{MASKED}@"
    text = _USERINFO.sub(userinfo, text)
    if not keep_path:
        def path(match: re.Match[str]) -> str:
            nonlocal count
            count += 1
            return f"{match.group('base')}/{MASKED}"
        text = _URL.sub(path, text)
    return text, count


REDACTED = b"(redacted: a cluster credential)"


def redact(data: bytes, secrets: Iterable[str]) -> tuple[bytes, int]:
    """``data`` with every occurrence of each secret replaced (longest first, so that a
    secret holding another is replaced whole); how many were replaced. Until none is
    left: a replacement that makes a new occurrence (with the text around it) is
    replaced again, after a few rounds by nothing, which always ends (data shrinks)."""
    raws = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
    count = 0
    rounds = 0
    while any(raw in data for raw in raws):
        rounds += 1
        for raw in raws:
            n = data.count(raw)
            if n:
                count += n
                data = data.replace(raw, REDACTED if rounds <= 2 and raw not in REDACTED else b"")
    return data, count


def valid_part_path(path: str) -> bool:
    """A file name inside a part: relative, plain characters, no ``..``."""
    return (bool(_PART_NAME.fullmatch(path)) and not any(p in ("", ".", "..") for p in path.split("/"))
            and len(path) <= 255)


def utc_compact(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def default_file_name(cluster: str, node: str, now: float) -> str:
    """``hacluster-snapshot-<cluster>-<node>-<UTC time>.tar.gz``."""
    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", s) or "_"
    return f"hacluster-snapshot-{clean(cluster)}-{clean(node)}-{utc_compact(now)}.tar.gz"


def archive_manifest(*, cluster: str, made_on: str, created: str, version: str,
                     command: Sequence[str], parts: Mapping[str, Mapping[str, Any]],
                     missing: Mapping[str, str], anonymized: Mapping[str, Any] | None) -> dict[str, Any]:
    """The archive's MANIFEST.json. ``parts``: node -> its PART.json (its ``files`` with
    paths inside the part, its ``skipped``); ``missing``: node -> why it has no part.
    Paths become the archive's (``nodes/<node>/...``)."""
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    for node in sorted(parts):
        part = parts[node]
        prefix = f"{NODES_DIR}/{node}/"
        node_files = [{**f, "path": prefix + f["path"]} for f in part.get("files", ())]
        files += node_files
        skipped += [{**s, "path": prefix + s["path"]} for s in part.get("skipped", ())]
        nodes[node] = {"included": True, "files": len(node_files),
                       "bytes": sum(int(f.get("size", 0)) for f in node_files),
                       "built_by": part.get("built_by", "daemon")}
        if part.get("note"):
            nodes[node]["note"] = part["note"]
    for node in sorted(missing):
        nodes[node] = {"included": False, "unreachable": True, "reason": missing[node]}
    return {
        "format": FORMAT, "what": "hacluster support snapshot", "cluster": cluster,
        "made_on": made_on, "created": created, "hacluster_version": version,
        "command": " ".join(command),
        "nodes": nodes, "unreachable": sorted(missing),
        "anonymized": dict(anonymized) if anonymized is not None else False,
        "never_included": "the cluster secret, the Raft credential, files named like a secret "
                          "or a key; every file was checked for the node's secret and credential",
        "files": files, "skipped": skipped,
    }


def summary_line(path: str, size: int, manifest: Mapping[str, Any]) -> str:
    """The CLI's one line: where, how big, which nodes are in and which are not."""
    included = [n for n, v in manifest["nodes"].items() if v["included"]]
    line = (f"wrote {path} ({human_size(size)}): nodes {', '.join(included) or 'none'}")
    if manifest["unreachable"]:
        line += f"; unreachable {', '.join(manifest['unreachable'])}"
    if manifest["anonymized"]:
        line += "; anonymized"
    return line


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
