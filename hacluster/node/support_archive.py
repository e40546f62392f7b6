"""The CLI's side of ``hacluster snapshot``: gather the nodes' parts and write the
archive (``support_snapshot`` has the decisions, ``support_part`` the daemon's side).

Gathering: the local daemon is asked for its part, or with ``-H`` every named node at
once through it (``forward``, peer control, a short per-call deadline); each part is
then fetched chunk by chunk (``CHUNK_BYTES``: a peer's reply is bounded) and checked
against its size and digest. A node that does not answer, or answers an error, has no
part: it is listed as unreachable with the reason, and the snapshot goes on.

Writing: one ``.tar.gz`` (mode 0600, written aside and renamed into place) with
``MANIFEST.json`` first, then ``nodes/<node>/...``. With ``anonymize`` every file's text,
every path and the manifest go through one ``anonymize.Anonymizer`` (so a token means
the same in every file); a file that is not UTF-8 text cannot be anonymized and is
left out, said in the manifest.
"""
from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import support_snapshot as plan
from .anonymize import CLUSTER, HOST, MEMBER, Anonymizer
from .commands import FORWARD, SNAPSHOT_PART
from .control import ControlError

POLL_S = 0.2
Call = Callable[..., Any]       # control.request's shape: (socket, cmd, timeout=..., **kw)


class PartError(Exception):
    """A part that could not be fetched or read; one line."""


class ArchiveError(ValueError):
    """The archive could not be written; one line naming it."""


@dataclass
class Gathered:
    parts: dict[str, bytes] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)


# ---- gathering ------------------------------------------------------------------------
def gather(call: Call, socket: Path, self_name: str, hosts: list[str] | None,
           timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> Gathered:
    """Every named node's part (``hosts`` None: this node's only). Raises ControlError
    only when the local daemon itself does not answer (the caller builds the local part
    then)."""
    out = Gathered()
    if hosts is None:
        started = [{"node": self_name, "ok": True,
                    "result": call(socket, SNAPSHOT_PART.name, timeout=timeout)}]
    else:
        started = call(socket, FORWARD.name, hosts="all" if hosts == ["all"] else hosts,
                       request={"cmd": SNAPSHOT_PART.name}, timeout_s=timeout, timeout=timeout + 5)
    for row in started:
        node = row["node"]
        if not row.get("ok"):
            out.missing[node] = str(row.get("error") or "no answer")
            continue
        try:
            out.parts[node] = fetch(call, socket, node, row["result"]["id"], local=hosts is None,
                                    timeout=timeout, sleep=sleep)
        except (PartError, ControlError) as e:
            out.missing[node] = str(e)
    return out


def fetch(call: Call, socket: Path, node: str, part_id: str, *, local: bool, timeout: float,
          sleep: Callable[[float], None] = time.sleep) -> bytes:
    """One part, chunk by chunk, once built; checked against its size and digest."""
    deadline = time.monotonic() + plan.PART_DEADLINE_S + 2 * timeout
    data = bytearray()
    while True:
        request = {"id": part_id, "offset": len(data)}
        if local:
            reply = call(socket, SNAPSHOT_PART.name, timeout=timeout, **request)
        else:
            rows = call(socket, FORWARD.name, hosts=[node], request={"cmd": SNAPSHOT_PART.name, **request},
                        timeout_s=timeout, timeout=timeout + 5)
            if not rows or not rows[0].get("ok"):
                raise PartError(str(rows[0].get("error") if rows else "no answer"))
            reply = rows[0]["result"]
        if not reply.get("ready"):
            if time.monotonic() > deadline:
                raise PartError(f"its part was not built within {plan.PART_DEADLINE_S + 2 * timeout:g} s")
            sleep(POLL_S)
            continue
        if reply.get("offset") != len(data):
            raise PartError(f"chunk at offset {reply.get('offset')}, expected {len(data)}")
        piece = base64.b64decode(reply["data"])
        if not piece and len(data) < reply["size"]:
            raise PartError("empty chunk before the end of the part")
        data += piece
        if len(data) > plan.PART_MAX_BYTES:
            raise PartError(f"part over {plan.PART_MAX_BYTES} bytes")
        if len(data) >= reply["size"]:
            if len(data) != reply["size"] or hashlib.sha256(data).hexdigest() != reply["sha256"]:
                raise PartError("part damaged in transit (size or sha256 differs)")
            return bytes(data)


# ---- reading a part -------------------------------------------------------------------
def read_part(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A part's PART.json and files; PartError when it is not a well-formed part
    (only plain files with plain relative names, within the part's size budget)."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if not member.isfile() or not plan.valid_part_path(member.name):
                    raise PartError(f"unexpected entry {member.name!r} in a part")
                total += member.size
                if total > plan.PART_MAX_BYTES + (1 << 20):
                    raise PartError(f"part holds more than {plan.PART_MAX_BYTES} bytes")
                f = tar.extractfile(member)
                assert f is not None
                files[member.name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PartError(f"unreadable part: {e}") from None
    raw = files.pop(plan.PART_MANIFEST, None)
    if raw is None:
        raise PartError(f"part without {plan.PART_MANIFEST}")
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise PartError(f"{plan.PART_MANIFEST}: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise PartError(f"{plan.PART_MANIFEST}: not a part manifest")
    return manifest, files


# ---- names to anonymize -----------------------------------------------------------------
def names_of(parts: Mapping[str, tuple[dict[str, Any], dict[str, bytes]]], cluster: str,
             nodes: Iterable[str]) -> dict[str, set[str]]:
    """Member names and host names found in the parts (cluster status, cluster state,
    cluster.json, each part's hostname), plus the nodes named and the cluster."""
    members, hosts = set(nodes), set()
    for manifest, files in parts.values():
        hosts.add(str(manifest.get("hostname") or ""))
        members.add(str(manifest.get("node") or ""))
        for name in ("status/cluster_status.json", "status/cluster_state.json", "config/cluster.json",
                     "state/members.json"):
            try:
                doc = json.loads(files.get(name, b"null"))
            except ValueError:
                continue
            for m_name, m in _members_in(doc):
                members.add(m_name)
                for address in [m.get("address"), *(m.get("links") or [])]:
                    host = str(address or "").rsplit(":", 1)[0].strip("[]") if ":" in str(address or "") \
                        else str(address or "")
                    if host and not _is_ip(host):
                        hosts.add(host)
    members.discard("")
    hosts.discard("")
    return {MEMBER: members, HOST: hosts, CLUSTER: {cluster} if cluster else set()}


def _members_in(doc: Any) -> list[tuple[str, dict]]:
    if not isinstance(doc, dict):
        return []
    found = doc.get("members")
    if isinstance(found, dict):
        return [(str(n), m) for n, m in found.items() if isinstance(m, dict)]
    if isinstance(found, list):
        return [(str(m["name"]), m) for m in found if isinstance(m, dict) and "name" in m]
    return []


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ---- writing ------------------------------------------------------------------------------
@dataclass
class Written:
    path: Path
    size: int
    manifest: dict[str, Any]
    tokens: dict[str, str] | None     # token -> what it replaced (anonymized only)


ANONYMIZED_WHAT = ("IP addresses, host names, member names and the cluster name replaced by "
                   "tokens (IP-n, IPV6-n, HOST-n, MEMBER-n, CLUSTER-n) in every file, path and "
                   "this manifest; the same value has the same token in every file of this "
                   "archive. Loopback and unspecified addresses are kept. Names written in "
                   "another form than the cluster knows them are not found.")


def write_archive(out: Path | None, gathered: Gathered, *, cluster: str, made_on: str,
                  version: str, command: Sequence[str], anonymize: bool,
                  now: float | None = None, directory: Path = Path(".")) -> Written:
    """Write the archive (``out``, or the default name in ``directory``)."""
    now = time.time() if now is None else now
    parts: dict[str, tuple[dict[str, Any], dict[str, bytes]]] = {}
    missing = dict(gathered.missing)
    for node, data in gathered.parts.items():
        try:
            parts[node] = read_part(data)
        except PartError as e:
            missing[node] = str(e)
    anon: Anonymizer | None = None
    if anonymize:
        anon = Anonymizer()
        for category, names in names_of(parts, cluster, [*parts, *missing]).items():
            anon.add(category, names)

    def a(text: str) -> str:
        return anon.text(text) if anon is not None else text

    entries: list[tuple[str, bytes]] = []
    part_manifests: dict[str, dict[str, Any]] = {}
    for node in sorted(parts):
        manifest, files = parts[node]
        kept, skipped = [], list(manifest.get("skipped") or [])
        for entry in manifest["files"]:
            path = entry.get("path")
            found = files.get(path) if isinstance(path, str) else None
            if found is None:
                continue
            data = found
            if anon is not None:
                try:
                    data = anon.text(data.decode("utf-8")).encode()
                except UnicodeDecodeError:
                    skipped.append({"path": path, "what": entry.get("what", ""),
                                    "reason": "not UTF-8 text: cannot be anonymized, left out"})
                    continue
            kept.append({**entry, "size": len(data)})
            entries.append((f"{plan.NODES_DIR}/{a(node)}/{a(path)}", data))
        part = {"files": kept, "skipped": skipped, "built_by": manifest.get("built_by", "daemon"),
                **({"note": manifest["note"]} if manifest.get("note") else {})}
        # names stand in the paths, the reasons and the notes too: every value (the
        # manifest's keys are its own words)
        part_manifests[a(node)] = _anonymized_values(part, anon) if anon is not None else part
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    anonymized: dict[str, Any] | None = ({"what": ANONYMIZED_WHAT, "replaced": anon.counts()}
                                         if anon is not None else None)
    manifest = plan.archive_manifest(cluster=a(cluster), made_on=a(made_on), created=created,
                                     version=version, command=[a(c) for c in command],
                                     parts=part_manifests,
                                     missing={a(n): a(r) for n, r in missing.items()}, anonymized=anonymized)
    if anon is not None:
        manifest["anonymized"]["replaced"] = anon.counts()     # with the names of the missing
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    target = out if out is not None else directory / plan.default_file_name(a(cluster), a(made_on), now)
    try:
        _write_tar(target, [(plan.MANIFEST, body), *entries], now)
    except OSError as e:
        raise ArchiveError(f"{target}: cannot write the snapshot: {e.strerror or e}") from None
    return Written(target, target.stat().st_size, manifest,
                   anon.mapping() if anon is not None else None)


def _anonymized_values(value: Any, anon: Anonymizer) -> Any:
    if isinstance(value, dict):
        return {k: _anonymized_values(v, anon) for k, v in value.items()}
    if isinstance(value, list):
        return [_anonymized_values(v, anon) for v in value]
    if isinstance(value, str):
        return anon.text(value)
    return value


def _write_tar(target: Path, entries: list[tuple[str, bytes]], now: float) -> None:
    """Aside, then renamed into place: a failed write leaves no half archive."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(now)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
