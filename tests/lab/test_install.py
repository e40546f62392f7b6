"""hacluster as installed on a server: the wheel holds the product only and installs
the CLI; the shipped systemd units pass ``systemd-analyze verify`` and agree with
the daemon (exit status, stop time, watchdog); ``hacluster setup`` puts units, link
and directories in place; the CLI's manual. No network: the wheel is built
without build isolation from a copy of the source tree."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import hacluster
from hacluster import cli
from hacluster.mirror.driver import mirror_stop_time_s
from hacluster.modules.userconfig import ModuleConfig
from hacluster.node import daemon, exit_status, install
from raft.settings import RaftSettings

from tests.conftest import REPO
PRODUCT = {"hacluster", "raft", "replication", "vip", "checkers"}


def _can_build_offline() -> str | None:
    """Why a wheel cannot be built here without the network, or None."""
    import setuptools
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return (f"setuptools {setuptools.__version__} needs the wheel package to build a wheel "
                "offline (pip install -e '.[test]' brings it)")
    return None


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    reason = _can_build_offline()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy: the build writes build/ and *.egg-info next to setup.cfg. The lab,
    # benchmarks and tests are copied too, so that leaving them out is what is tested.
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis", "results", "lab-*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("hacluster-*.whl")
    return wheel


def test_the_wheel_holds_the_product_only(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == PRODUCT | {f"hacluster-{hacluster.__version__}.dist-info"}
    assert "hacluster/node/systemd/hacluster-node.service" in names
    assert "hacluster/node/systemd/hacluster-witness.service" in names
    assert "hacluster/http/alerts.yml" in names       # the Prometheus alert rules
    entry_points = zipfile.ZipFile(built_wheel).read(
        f"hacluster-{hacluster.__version__}.dist-info/entry_points.txt").decode()
    assert re.search(r"^hacluster = hacluster\.cli:main$", entry_points, re.M)


def test_the_wheel_in_a_fresh_venv_brings_the_product_and_the_cli(built_wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(built_wheel)], check=True, timeout=300)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    installed = {p.name for p in site.iterdir()} - {"__pycache__"}
    assert installed == PRODUCT | {f"hacluster-{hacluster.__version__}.dist-info"}
    command = venv / "bin" / "hacluster"
    assert command.is_file()
    # Its dependencies from this environment's site-packages (no .pth there is read:
    # this checkout stays out of sight), the product from the fresh venv.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": sysconfig.get_path("purelib")}
    run = lambda *argv: subprocess.run([str(command), *argv], capture_output=True, text=True,  # noqa: E731
                                       env=env, cwd=tmp_path, timeout=60)
    version = run("--version")
    assert version.returncode == 0 and version.stdout == f"hacluster {hacluster.__version__}\n"
    assert "cluster init" in run("help").stdout
    lab = subprocess.run([python, "-c", "import chaos"], capture_output=True, env=env, cwd=tmp_path)
    assert lab.returncode != 0, "the lab must not be installed"
    # The installed command sets a server up (here under a root of its own).
    setup = run("setup", "--root", str(tmp_path / "root"))
    assert setup.returncode == 0, setup.stderr
    assert (tmp_path / "root/usr/local/sbin/hacluster").resolve() == command.resolve()


def _unit(name: str) -> dict[str, str]:
    """The unit's settings (last one wins; comments and sections dropped)."""
    values = {}
    for line in install.unit_text(name).splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value
    return values


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)s", value)
    assert m, value
    return float(m.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_shipped_units(tmp_path):
    command = tmp_path / "hacluster"          # ExecStart must name an executable
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    paths = []
    for name in install.UNITS:
        path = tmp_path / name
        path.write_text(install.unit_text(name, str(command)))
        paths.append(str(path))
    res = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True,
                         timeout=60)
    ours = [ln for ln in (res.stdout + res.stderr).splitlines() if "hacluster" in ln]
    assert res.returncode == 0 and ours == [], res.stdout + res.stderr


def test_the_units_say_what_the_daemon_does():
    for name in install.UNITS:
        unit = _unit(name)
        assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
        assert unit["After"] == unit["Wants"] == "network-online.target"
        assert unit["Restart"] == "on-failure"
        assert unit["RestartPreventExitStatus"] == str(exit_status.REMOVED)
        assert unit["KillMode"] == "mixed"
        # systemd makes the directories setup makes, with the same modes.
        for directive, (path, mode) in zip(
                ("ConfigurationDirectory", "StateDirectory", "RuntimeDirectory", "LogsDirectory"),
                install.DIRECTORIES):
            assert "/" + {"ConfigurationDirectory": "etc", "StateDirectory": "var/lib",
                          "RuntimeDirectory": "run", "LogsDirectory": "var/log"}[directive] + \
                "/" + unit[directive] == path
            assert unit[f"{directive}Mode"] == f"{mode:04o}"
        # The lease loop turns at least every two renewal intervals; the daemon warns
        # below four turns.
        turn = 2 * RaftSettings().lease_timing.renew_interval_s
        assert _seconds(unit["WatchdogSec"]) >= 4 * turn
    base = RaftSettings().lease_s + daemon.STOP_MARGIN_S
    assert _seconds(_unit("hacluster-witness.service")["TimeoutStopSec"]) >= base
    # A data node: a mirror module with the default scripts_timeout and one directory
    # (the rule in the unit's comment; more than that, the daemon asks systemd itself).
    default_timeout = next(f.default for f in dataclasses.fields(ModuleConfig)
                           if f.name == "scripts_timeout_s")
    assert _seconds(_unit("hacluster-node.service")["TimeoutStopSec"]) >= \
        base + mirror_stop_time_s(default_timeout, 1)
    assert _unit("hacluster-node.service")["ExecStart"] == "/usr/local/sbin/hacluster node run"
    assert _unit("hacluster-witness.service")["ExecStart"] == "/usr/local/sbin/hacluster witness run"


def test_setup_links_the_cli_writes_the_units_and_makes_the_directories(tmp_path):
    root = tmp_path / "root"
    (root / "etc/hacluster").mkdir(parents=True)
    (root / "etc/hacluster").chmod(0o755)               # an existing one is tightened
    done = install.setup(sbin_dir=Path("/usr/sbin"), root=root)
    link = root / "usr/sbin/hacluster"
    assert link.is_symlink() and link.resolve() == install.installed_command().resolve()
    for name in install.UNITS:
        text = (root / "etc/systemd/system" / name).read_text()
        assert re.search(r"^ExecStart=/usr/sbin/hacluster (node|witness) run$", text, re.M)
    modes = {d: stat.S_IMODE((root / d.lstrip("/")).stat().st_mode) for d, _ in install.DIRECTORIES}
    assert modes == {"/etc/hacluster": 0o700, "/var/lib/hacluster": 0o700,
                     "/run/hacluster": 0o755, "/var/log/hacluster": 0o755}
    assert any(line.startswith("next: ") for line in done)
    install.setup(sbin_dir=Path("/usr/sbin"), root=root)   # again: updates, no error


def test_setup_refuses_a_non_root_user_on_the_real_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ValueError, match="run it as root"):
        install.setup()


def _commands(parser, words=()):
    """(words, parser) of every command that runs something."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))
    if parser.get_default("func") is not None:
        yield " ".join(words), parser


def test_every_command_is_listed_with_one_line_and_has_a_manual_in_sentences(capsys):
    parser = cli.build_parser()
    found = dict(_commands(parser))
    assert cli.main(["help"]) == 0
    listing = capsys.readouterr().out
    for words, sub in found.items():
        lines = [ln for ln in listing.splitlines() if re.match(rf"^  {re.escape(words)}  ", ln)]
        assert len(lines) == 1, words
        about = " ".join((sub.description or "").split())
        # Full sentences: a capital first, a full stop last, a verb's worth of words.
        assert about[:1].isupper() and about.endswith(".") and len(about.split()) >= 12, words
    assert {"cluster init", "node run", "witness run", "setup", "help", "swap"} <= set(found)
    assert cli.main(["help", "cluster", "init"]) == 0
    assert "Write one configuration directory per member" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"hacluster {hacluster.__version__}")
