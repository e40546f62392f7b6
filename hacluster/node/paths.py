"""Where a member keeps what, on the Filesystem Hierarchy Standard's lines (pure).

- the configuration directory (``/etc/hacluster``): what the administrator writes
  (``cluster.json``, the secret); the daemon only reads it;
- the state directory (``/var/lib/hacluster``): the Raft journal, the installed module
  packages, each module's state, the committed membership as last applied
  (``members.json``);
- the runtime directory (``/run/hacluster``): the control socket and the daemon's pid file;
- the log directory (``/var/log/hacluster``): one directory per module (its state
  changes, script output, replication processes). The daemon's own log is its standard
  error: journald's under systemd.

Each of the three last comes from, first to last: a command-line flag (``--state-dir``,
``--run-dir``, ``--log-dir``), the environment (``HACLUSTER_STATE_DIR``, ...), the key of
the same name in ``cluster.json``, the FHS default. The CLI and the daemon resolve them
the same way, so the CLI finds the daemon's socket; the daemon hands them to the module
scripts in the environment (``NodePaths.environment``), so a script's ``hacluster``
call does too. Every other path (the journal, a module's log directory) is computed
here, in one place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

DEFAULT_CONFIG_DIR = "/etc/hacluster"
DEFAULTS = {"state_dir": "/var/lib/hacluster", "run_dir": "/run/hacluster",
            "log_dir": "/var/log/hacluster"}
ENVIRONMENT = {"state_dir": "HACLUSTER_STATE_DIR", "run_dir": "HACLUSTER_RUN_DIR",
               "log_dir": "HACLUSTER_LOG_DIR"}
CONFIG_ENV = "HACLUSTER_CONFIG"
# Lab only: what a member sees as '/' for module paths (cluster.json's path_prefix), so
# that several "servers" can share one file system. The daemon hands it to the module
# scripts under the same name, and reads it from its own environment before the file.
ROOT_PREFIX_ENV = "HACLUSTER_ROOT_PREFIX"
# Before the FHS layout, the state lived in the configuration directory, under data/
# (and ``data_dir`` in cluster.json moved it): the same content as the state directory.
LEGACY_STATE_SUBDIR = "data"
LEGACY_STATE_KEY = "data_dir"
MEMBERS_FILE = "members.json"
CONTROL_SOCKET = "control.sock"


class PathError(ValueError):
    """A path setting that cannot be used; the message names where it came from."""


@dataclass(frozen=True)
class NodePaths:
    config_dir: Path
    state_dir: Path
    run_dir: Path
    log_dir: Path
    # ``control_socket`` in cluster.json (kept from before the runtime directory)
    socket_override: Path | None = None

    @property
    def control_socket(self) -> Path:
        return self.socket_override or self.run_dir / CONTROL_SOCKET

    @property
    def raft_dir(self) -> Path:
        return self.state_dir / "raft"

    @property
    def modules_dir(self) -> Path:
        """The installed module packages and their unpacked folders."""
        return self.state_dir / "modules"

    def module_state_dir(self, module: str) -> Path:
        """A module's own state: replication bitmaps and activity logs, markers."""
        return self.state_dir / "module_state" / module

    def module_log_dir(self, module: str) -> Path:
        """A module's logs: module.log, script.log, its processes' and checkers' logs."""
        return self.log_dir / module

    @property
    def members_file(self) -> Path:
        return self.state_dir / MEMBERS_FILE

    def pid_file(self, kind: str) -> Path:
        return self.run_dir / f"hacluster-{kind}.pid"

    @property
    def legacy_state_dir(self) -> Path:
        """Where the state was before this layout (``upgrade`` moves it)."""
        return self.config_dir / LEGACY_STATE_SUBDIR

    def environment(self) -> dict[str, str]:
        """For the processes the daemon starts (scripts, checkers): a ``hacluster``
        they run reaches this daemon, whatever the paths were set by."""
        env = {CONFIG_ENV: str(self.config_dir)}
        env.update({ENVIRONMENT[k]: str(getattr(self, k)) for k in DEFAULTS})
        return env


def resolve(config_dir: Path, file_values: Mapping[str, object], where: str,
            env: Mapping[str, str] | None = None,
            flags: Mapping[str, str | None] | None = None) -> NodePaths:
    """The member's paths: flag, else environment, else ``cluster.json`` (its raw
    ``file_values``; ``where`` names it in errors), else the FHS default. Every path must
    be absolute (the CLI makes its flags absolute before they get here)."""
    env = env or {}
    flags = flags or {}
    if file_values.get(LEGACY_STATE_KEY) and file_values.get("state_dir"):
        raise PathError(f"{where}: both {LEGACY_STATE_KEY!r} (its old name) and 'state_dir' "
                        "are set: keep 'state_dir'")
    chosen: dict[str, Path] = {}
    for key, default in DEFAULTS.items():
        file_value = file_values.get(key)
        if key == "state_dir" and not file_value:
            file_value = file_values.get(LEGACY_STATE_KEY)
        for value, origin in ((flags.get(key), f"--{key.replace('_', '-')}"),
                              (env.get(ENVIRONMENT[key]), f"${ENVIRONMENT[key]}"),
                              (file_value, f"{where}: {key}"),
                              (default, "default")):
            if value in (None, ""):
                continue
            chosen[key] = _absolute(value, origin)
            break
    socket = file_values.get("control_socket")
    return NodePaths(config_dir=config_dir, state_dir=chosen["state_dir"],
                     run_dir=chosen["run_dir"], log_dir=chosen["log_dir"],
                     socket_override=_absolute(socket, f"{where}: control_socket") if socket else None)


def _absolute(value: object, origin: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise PathError(f"{origin}: must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise PathError(f"{origin}: must not contain '..', got {value!r}")
    return Path(os.path.normpath(value))
