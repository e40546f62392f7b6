"""A node's cluster configuration: ``cluster.json`` plus the ``secret`` file.

One directory per member (``/etc/hacluster`` on a server, one per host in the
lab), written by the administrator (``cluster init``, ``cluster add-node``) and only
read by the daemon: the committed membership lives in Raft and, as this member last
applied it, in its state directory (``member_cache``). Where the state, the control
socket and the logs are: ``paths`` (``NodePaths``), from flags, the environment or
this file.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from raft.durable_storage import private_dir
from raft.membership import MembershipError, check_members, check_name
from raft.settings import RaftSettings, SettingsError
from replication.durable_file import atomic_write, durable_replace

from .paths import (DEFAULTS as PATH_KEYS, LEGACY_STATE_KEY, ROOT_PREFIX_ENV, NodePaths, PathError,
                    resolve)

CONFIG_FILE = "cluster.json"
SECRET_FILE = "secret"              # the data nodes' cluster secret
RAFT_SECRET_FILE = "raft_secret"    # a witness's only credential (see raft_credential)
_RAFT_INFO = b"hacluster raft credential v1"
DEFAULT_RAFT_PORT = 7400
DEFAULT_LOG_MAX_BYTES = 10 << 20    # each module log file (hacluster.modules.rotating_log)
DEFAULT_LOG_KEEP = 5                # rotated files kept besides it
# The HTTP endpoints (metrics, readiness): the member's host, Raft port + 4 by default
# (README, Ports).
HTTP_PORT_OFFSET = 4
# The HTTPS API (hacluster.http.api): Raft port + 5, served only with a certificate
# (http.crt / http.key in the member's directory, written by cluster init, or
# http.cert / http.key in cluster.json).
API_PORT_OFFSET = 5
HTTP_CERT_FILE = "http.crt"
HTTP_KEY_FILE = "http.key"
CA_CERT_FILE = "ca.crt"


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file and field."""


@dataclass(frozen=True)
class HttpSettings:
    """The ``http`` section of cluster.json: ``enabled`` (default true), ``host`` (default:
    the member's own address), ``port`` (plain HTTP: metrics and readiness; default its
    Raft port + 4), ``api_port`` (HTTPS: the API; default Raft port + 5), ``cert`` and
    ``key`` (the API's certificate chain and key, PEM; default ``http.crt`` and
    ``http.key`` in the member's directory, which cluster init writes)."""
    enabled: bool = True
    host: str | None = None
    port: int | None = None
    api_port: int | None = None
    cert: str | None = None
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if not self.enabled:
            d["enabled"] = False
        for name in ("host", "port", "api_port", "cert", "key"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> "HttpSettings":
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be an object, got {raw!r}")
        known = ("enabled", "host", "port", "api_port", "cert", "key")
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(known)})")
        enabled, host = raw.get("enabled", True), raw.get("host")
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}: enabled must be true or false, got {enabled!r}")
        if host is not None and (not isinstance(host, str) or not host.strip()
                                 or host != host.strip() or "/" in host):
            raise ConfigError(f"{where}: host must be an address or a host name, got {host!r}")
        for name in ("port", "api_port"):
            port = raw.get(name)
            if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                                     or not 1 <= port <= 65535):
                raise ConfigError(f"{where}: {name} must be an integer from 1 to 65535, "
                                  f"got {port!r}")
        for name in ("cert", "key"):
            value = raw.get(name)
            if value is not None and (not isinstance(value, str) or not value.startswith("/")):
                raise ConfigError(f"{where}: {name} must be an absolute path, got {value!r}")
        if (raw.get("cert") is None) != (raw.get("key") is None):
            raise ConfigError(f"{where}: cert and key go together (give both or neither)")
        return cls(enabled, host, raw.get("port"), raw.get("api_port"), raw.get("cert"),
                   raw.get("key"))


@dataclass
class ClusterConfig:
    directory: Path
    cluster: str
    self_name: str
    members: dict[str, dict[str, Any]]
    raft: RaftSettings = field(default_factory=RaftSettings)
    # Where the state, the control socket and the logs are (None: the defaults).
    paths: NodePaths = None  # type: ignore[assignment]  # set in __post_init__
    # Lab only: every module path (replicated directories) lives under this
    # prefix, so that several "servers" can share one machine's file system.
    path_prefix: str | None = None
    # Every module log (module.log, script.log) rotates at log_max_bytes and keeps
    # log_keep rotated files: cluster.json's "logs": {"max_bytes": N, "keep": K}.
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_keep: int = DEFAULT_LOG_KEEP
    http: HttpSettings = field(default_factory=HttpSettings)

    def __post_init__(self) -> None:
        if self.paths is None:
            self.paths = resolve(self.directory, {}, str(self.directory / CONFIG_FILE))

    @property
    def me(self) -> dict[str, str]:
        return self.members[self.self_name]

    @property
    def role(self) -> str:
        return self.me["role"]

    @property
    def socket_path(self) -> Path:
        return self.paths.control_socket

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where the HTTP endpoints listen; None when disabled."""
        if not self.http.enabled:
            return None
        host, port = self.me["address"].rsplit(":", 1)
        return (self.http.host or host,
                self.http.port if self.http.port is not None else int(port) + HTTP_PORT_OFFSET)

    @property
    def api_address(self) -> tuple[str, int] | None:
        """Where the HTTPS API listens; None when HTTP is disabled."""
        if not self.http.enabled:
            return None
        host, port = self.me["address"].rsplit(":", 1)
        return (self.http.host or host,
                self.http.api_port if self.http.api_port is not None
                else int(port) + API_PORT_OFFSET)

    @property
    def api_certificate(self) -> tuple[Path, Path] | None:
        """The API's certificate and key: cluster.json's, else those cluster init wrote
        into this directory; None when there are none (the API is then not served:
        never passwords over plain HTTP)."""
        if self.http.cert is not None and self.http.key is not None:
            return Path(self.http.cert), Path(self.http.key)
        cert, key = self.directory / HTTP_CERT_FILE, self.directory / HTTP_KEY_FILE
        return (cert, key) if cert.exists() and key.exists() else None

    @property
    def secret_path(self) -> Path:
        return self.directory / SECRET_FILE

    @property
    def raft_secret_path(self) -> Path:
        return self.directory / RAFT_SECRET_FILE

    @property
    def holds_data_secret(self) -> bool:
        """A data node (or a witness made before roles had their own credentials)."""
        return self.secret_path.exists() or not self.raft_secret_path.exists()

    def read_raft_secret(self) -> str:
        """What this member's Raft messages are authenticated with: derived from the
        cluster secret on a data node, the only credential a witness holds."""
        if self.holds_data_secret:
            return raft_credential(self.read_secret())
        return _read_secret_file(self.raft_secret_path, "Raft credential")

    def read_secret(self) -> str:
        """The cluster secret: peer control, module packages, replication."""
        path = self.secret_path
        if not path.exists() and self.raft_secret_path.exists():
            raise ConfigError(f"{path}: this member holds only the Raft credential (a witness): "
                              "it cannot drive modules, serve packages or replicate")
        return _read_secret_file(path, "cluster secret")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "cluster": self.cluster,
            "self": self.self_name,
            "members": self.members,
            "raft": self.raft.to_dict(),
        }
        if self.path_prefix:
            d["path_prefix"] = self.path_prefix
        if (self.log_max_bytes, self.log_keep) != (DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_KEEP):
            d["logs"] = {"max_bytes": self.log_max_bytes, "keep": self.log_keep}
        if self.http.to_dict():
            d["http"] = self.http.to_dict()
        return d

    def write(self) -> None:
        """For cluster init and add-node, which write a member's directory; the
        daemon never calls it (paths set in a file are that server's: not copied)."""
        private_dir(self.directory)
        path = self.directory / CONFIG_FILE
        atomic_write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", mode=0o644)


def load(directory: str | os.PathLike, env: Mapping[str, str] | None = None,
         flags: Mapping[str, str | None] | None = None) -> ClusterConfig:
    """The member's configuration; its paths from ``flags`` (``--state-dir``, ...),
    else ``env``, else the file, else the defaults (``paths.resolve``)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (write it with hacluster cluster init, "
                          "or point --config at the node's directory)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be an object")
    for key in ("cluster", "self", "members"):
        if key not in raw:
            raise ConfigError(f"{path}: missing field {key!r}")
    members = raw["members"]
    if not isinstance(members, dict):
        raise ConfigError(f"{path}: field 'members' must be an object")
    try:
        check_members(members)
        check_name(raw["self"])
    except MembershipError as e:
        raise ConfigError(f"{path}: members: {e}") from None
    if raw["self"] not in members:
        raise ConfigError(f"{path}: self {raw['self']!r} is not among the members")
    try:
        raft = RaftSettings.from_dict(raw.get("raft"), where=f"{path}: raft")
    except SettingsError as e:
        raise ConfigError(str(e)) from None
    try:
        paths = resolve(directory, {k: raw.get(k) for k in (*PATH_KEYS, LEGACY_STATE_KEY,
                                                             "control_socket")},
                        str(path), env=env, flags=flags)
    except PathError as e:
        raise ConfigError(str(e)) from None
    return ClusterConfig(
        directory=directory,
        cluster=str(raw["cluster"]),
        self_name=raw["self"],
        members={n: {"address": m["address"], "role": m["role"],
                     **({"links": list(m["links"])} if m.get("links") else {})}
                 for n, m in members.items()},
        raft=raft,
        paths=paths,
        path_prefix=_path_prefix(*((env[ROOT_PREFIX_ENV], f"${ROOT_PREFIX_ENV}")
                                   if env and env.get(ROOT_PREFIX_ENV)
                                   else (raw.get("path_prefix"), f"{path}: path_prefix"))),
        **_logs(raw.get("logs"), path),
        http=HttpSettings.from_dict(raw.get("http"), f"{path}: http"),
    )


def _logs(value: Any, path: Path) -> dict[str, int]:
    """cluster.json's "logs": {"max_bytes": N (at least 4096), "keep": K (1 to 100)}."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"max_bytes", "keep"}:
        raise ConfigError(f"{path}: logs must be an object with max_bytes and/or keep, got {value!r}")
    out = {"log_max_bytes": value.get("max_bytes", DEFAULT_LOG_MAX_BYTES),
           "log_keep": value.get("keep", DEFAULT_LOG_KEEP)}
    if not isinstance(out["log_max_bytes"], int) or isinstance(out["log_max_bytes"], bool) \
            or out["log_max_bytes"] < 4096:
        raise ConfigError(f"{path}: logs.max_bytes must be an integer of at least 4096, "
                          f"got {value.get('max_bytes')!r}")
    if not isinstance(out["log_keep"], int) or isinstance(out["log_keep"], bool) \
            or not 1 <= out["log_keep"] <= 100:
        raise ConfigError(f"{path}: logs.keep must be an integer from 1 to 100, got {value.get('keep')!r}")
    return out


def _path_prefix(value: Any, origin: str) -> str | None:
    """The lab's '/' for module paths: $HACLUSTER_ROOT_PREFIX, else cluster.json's."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        raise ConfigError(f"{origin}: must be an absolute path without '..', got {value!r}")
    return value.rstrip("/")


def _read_secret_file(path: Path, what: str) -> str:
    """A secret file, checked on the file opened (no swap between check and read): a
    regular file, not a link, owned by us, mode 0600, text of at least 32 chars."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} missing (made by hacluster cluster init)") from None
    except OSError as e:
        raise ConfigError(f"{path}: {what} unreadable ({e.strerror}; "
                          "a symlink is not accepted)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: {what} must be a regular file")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"{path}: {what} is owned by uid {st.st_uid}, must be "
                              f"owned by the user running hacluster (uid {os.geteuid()})")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError(f"{path}: {what} must be mode 0600, is "
                              f"{stat.S_IMODE(st.st_mode):04o}")
        raw = f.read(4096)
    try:
        value = raw.decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not text") from None
    if len(value) < 32:
        raise ConfigError(f"{path}: {what} too short ({len(value)} chars, need >= 32)")
    return value


def raft_credential(secret: str) -> str:
    """The credential of Raft's messages, derived one way from the cluster secret: every
    voter needs it, a witness holds nothing else, so a witness cannot compute the
    cluster secret that peer control, module packages and replication are keyed with
    (DESIGN: the witness's credential cannot install modules, drive them or replicate)."""
    key = HKDF(algorithm=SHA256(), length=32, salt=None, info=_RAFT_INFO).derive(secret.encode())
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def new_secret() -> str:
    return secrets.token_urlsafe(48)


def write_secret(directory: Path, secret: str, filename: str = SECRET_FILE) -> None:
    private_dir(directory)
    path = directory / filename
    tmp = directory / (filename + ".tmp")
    # A leftover tmp file (or a link planted there) is removed, never followed;
    # if one reappears before the exclusive create, the create fails.
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(secret + "\n")
    durable_replace(str(tmp), str(path))


def with_port(address: str, default_port: int = DEFAULT_RAFT_PORT) -> str:
    return address if ":" in address else f"{address}:{default_port}"


def write_member_dir(base: Path, cluster: str, name: str, members: dict[str, dict[str, str]],
                     secret: str | None, raft: RaftSettings,
                     raft_secret: str | None = None) -> Path:
    """The configuration directory for one member (its own ``self``): a data node gets
    the cluster secret, a witness only the Raft credential derived from it."""
    directory = base / name
    if (directory / CONFIG_FILE).exists():
        raise ConfigError(f"{directory / CONFIG_FILE}: already exists; refusing to overwrite")
    cfg = ClusterConfig(directory=directory, cluster=cluster, self_name=name,
                        members=members, raft=raft)
    if members[name]["role"] == "witness":
        # ``raft_secret``: when a witness writes it, it has nothing else to give
        credential = raft_secret if raft_secret is not None else raft_credential(secret or "")
        write_secret(directory, credential, RAFT_SECRET_FILE)
    else:
        if secret is None:
            raise ConfigError(f"{name}: a data node's configuration needs the cluster secret, "
                              "which only data nodes hold: run this on a data node")
        write_secret(directory, secret)
    cfg.write()
    return directory
