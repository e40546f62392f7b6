"""A server install of this hacluster (``hacluster setup``; ``make install`` runs it).

The systemd units are package data (``hacluster/node/systemd/``): they travel in the
wheel with the daemon whose exit statuses, notifications and stop sequence they
name, so any installation (``make install``, ``pip install`` of the wheel) can put
the units that match its own code in place, with no source tree. Their ExecStart
names ``/usr/local/sbin/hacluster``; ``unit_text`` writes the link's real place.

``setup`` links the running installation's ``hacluster`` command into the sbin
directory, writes the units, creates the member's directories with their modes and
reloads systemd. It enables nothing: the member's configuration comes first.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from .cluster_config import ConfigError
from .paths import DEFAULT_CONFIG_DIR, DEFAULTS

UNITS = ("hacluster-node.service", "hacluster-witness.service")
UNIT_SOURCE = Path(__file__).parent / "systemd"
SBIN_DIR = "/usr/local/sbin"
UNIT_DIR = "/etc/systemd/system"
SHIPPED_COMMAND = "/usr/local/sbin/hacluster"     # in the shipped units' ExecStart
# What a member uses, and the mode each gets (an existing one is brought to it): the
# configuration holds the secret, the state the Raft journal and module copies (both
# 0700); the runtime directory (the control socket, itself 0600, and the pid file) and
# the logs may be read. The units name the same directories and modes (StateDirectory=
# & co.), so systemd makes them at each start too; /run is emptied at boot.
DIRECTORIES = ((DEFAULT_CONFIG_DIR, 0o700), (DEFAULTS["state_dir"], 0o700),
               (DEFAULTS["run_dir"], 0o755), (DEFAULTS["log_dir"], 0o755))


def unit_text(name: str, command: str = SHIPPED_COMMAND) -> str:
    """The shipped unit ``name`` with ``command`` as the hacluster its ExecStart runs."""
    if name not in UNITS:
        raise ValueError(f"no unit {name!r} (units: {', '.join(UNITS)})")
    text = (UNIT_SOURCE / name).read_text()
    return text.replace(f"ExecStart={SHIPPED_COMMAND} ", f"ExecStart={command} ")


def installed_command() -> Path:
    """The ``hacluster`` console script of the installation that is running."""
    candidates = [Path(sys.argv[0]), Path(sysconfig.get_path("scripts")) / "hacluster",
                  Path(sys.executable).parent / "hacluster"]
    for path in candidates:
        if path.name == "hacluster" and path.is_file() and os.access(path, os.X_OK):
            return path.absolute()
    raise ConfigError("setup: no hacluster command in this installation (looked at "
                      f"{', '.join(str(c) for c in candidates)}): run it as the installed "
                      "command, e.g. /opt/hacluster/bin/hacluster setup")


def _under(root: Path, path: str | Path) -> Path:
    return root / Path(path).relative_to("/")


def setup(sbin_dir: Path = Path(SBIN_DIR), unit_dir: Path = Path(UNIT_DIR),
          root: Path = Path("/")) -> list[str]:
    """Install as described in the module doc; one line per thing done."""
    if root == Path("/") and os.geteuid() != 0:
        raise ConfigError(f"setup writes into {sbin_dir}, {unit_dir} and /etc: run it as root "
                          "(or with --root DIR to install under DIR)")
    done = []
    command = installed_command()
    link = sbin_dir / "hacluster"
    target = _under(root, link)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() != command.resolve():
        if target.is_symlink() or target.exists():
            if target.is_dir():
                raise ConfigError(f"setup: {target} is a directory")
            target.unlink()
        target.symlink_to(command)
        done.append(f"linked {target} -> {command}")
    for name in UNITS:
        path = _under(root, unit_dir / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit_text(name, str(link)))
        path.chmod(0o644)
        done.append(f"wrote {path}")
    for directory, mode in DIRECTORIES:
        path = _under(root, directory)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"setup: {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        done.append(f"directory {path} (mode {mode:04o})")
    if root == Path("/") and Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        done.append("systemctl daemon-reload")
    done.append("next: copy this member's configuration to /etc/hacluster, then "
                "systemctl enable --now hacluster-node (or hacluster-witness)")
    return done
