"""A node's cluster configuration: ``cluster.json`` plus the ``secret`` file.

One directory per member (``/etc/hacluster`` on a server, one per host in the
lab). ``cluster init`` writes them all; a running daemon rewrites its own
``members`` after every committed membership change, so a restart starts
from the current member list.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raft.durable_storage import durable_replace, private_dir
from raft.membership import MembershipError, check_members, check_name
from raft.settings import RaftSettings, SettingsError

CONFIG_FILE = "cluster.json"
SECRET_FILE = "secret"
DEFAULT_CONFIG_DIR = "/etc/hacluster"
DEFAULT_RAFT_PORT = 7400


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file and field."""


@dataclass
class ClusterConfig:
    directory: Path
    cluster: str
    self_name: str
    members: dict[str, dict[str, str]]
    raft: RaftSettings = field(default_factory=RaftSettings)
    data_dir: Path | None = None
    control_socket: Path | None = None
    # Lab only: every module path (replicated directories) lives under this
    # prefix, so that several "servers" can share one machine's file system.
    path_prefix: str | None = None

    @property
    def me(self) -> dict[str, str]:
        return self.members[self.self_name]

    @property
    def role(self) -> str:
        return self.me["role"]

    @property
    def data_path(self) -> Path:
        return self.data_dir or self.directory / "data"

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.directory / "control.sock"

    @property
    def secret_path(self) -> Path:
        return self.directory / SECRET_FILE

    def read_secret(self) -> str:
        path = self.secret_path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ConfigError(f"{path}: cluster secret missing (made by hacluster cluster init)") from None
        except OSError as e:
            raise ConfigError(f"{path}: cluster secret unreadable ({e.strerror}; "
                              "a symlink is not accepted)") from None
        with os.fdopen(fd, "rb") as f:
            # The file opened, not the path looked up again: no swap in between.
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path}: cluster secret must be a regular file")
            if st.st_uid != os.geteuid():
                raise ConfigError(f"{path}: cluster secret is owned by uid {st.st_uid}, must be "
                                  f"owned by the user running hacluster (uid {os.geteuid()})")
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise ConfigError(f"{path}: cluster secret must be mode 0600, is "
                                  f"{stat.S_IMODE(st.st_mode):04o}")
            raw = f.read(4096)
        try:
            value = raw.decode().strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: cluster secret is not text") from None
        if len(value) < 32:
            raise ConfigError(f"{path}: cluster secret too short ({len(value)} chars, need >= 32)")
        return value

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "cluster": self.cluster,
            "self": self.self_name,
            "members": self.members,
            "raft": self.raft.to_dict(),
        }
        if self.data_dir:
            d["data_dir"] = str(self.data_dir)
        if self.control_socket:
            d["control_socket"] = str(self.control_socket)
        if self.path_prefix:
            d["path_prefix"] = self.path_prefix
        return d

    def save(self) -> None:
        private_dir(self.directory)
        path = self.directory / CONFIG_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        durable_replace(str(tmp), str(path))


def load(directory: str | os.PathLike) -> ClusterConfig:
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
    return ClusterConfig(
        directory=directory,
        cluster=str(raw["cluster"]),
        self_name=raw["self"],
        members={n: {"address": m["address"], "role": m["role"]} for n, m in members.items()},
        raft=raft,
        data_dir=Path(raw["data_dir"]) if raw.get("data_dir") else None,
        control_socket=Path(raw["control_socket"]) if raw.get("control_socket") else None,
        path_prefix=_path_prefix(raw.get("path_prefix"), path),
    )


def _path_prefix(value: Any, path: Path) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        raise ConfigError(f"{path}: path_prefix must be an absolute path without '..', got {value!r}")
    return value.rstrip("/")


def new_secret() -> str:
    return secrets.token_urlsafe(48)


def write_secret(directory: Path, secret: str) -> None:
    private_dir(directory)
    path = directory / SECRET_FILE
    tmp = directory / (SECRET_FILE + ".tmp")
    # A leftover secret.tmp (or a link planted there) is removed, never followed;
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
                     secret: str, raft: RaftSettings) -> Path:
    """The configuration directory for one member (its own ``self``)."""
    directory = base / name
    if (directory / CONFIG_FILE).exists():
        raise ConfigError(f"{directory / CONFIG_FILE}: already exists; refusing to overwrite")
    cfg = ClusterConfig(directory=directory, cluster=cluster, self_name=name,
                        members=members, raft=raft)
    write_secret(directory, secret)
    cfg.save()
    return directory
