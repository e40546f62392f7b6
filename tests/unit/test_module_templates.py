"""The module templates users start from (modules/*): each packages with the real CLI
(`hacluster module package`), passes the package check, parses without warnings, has
the scripts its mode needs, and its shell scripts are valid sh."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hacluster.modules.package import REQUIRED_SCRIPTS, check
from hacluster.modules.userconfig import parse_userconfig
from tests.conftest import REPO

MODULES = REPO / "modules"
TEMPLATES = {"postgresql": "mirror", "generic-mirror": "mirror", "generic-farm": "farm", "vm": "mirror"}


def test_the_catalogue_is_what_this_test_covers():
    assert sorted(p.name for p in MODULES.iterdir() if p.is_dir()) == sorted(TEMPLATES)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_packages_and_parses(name, tmp_path):
    safe = tmp_path / f"{name}.safe"
    res = subprocess.run([sys.executable, "-m", "hacluster", "module", "package",
                          str(MODULES / name), "-o", str(safe)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    data = safe.read_bytes()
    checked = check(data, str(safe), name)
    with zipfile.ZipFile(safe) as zf:
        names = set(zf.namelist())
        config = parse_userconfig(zf.read("conf/userconfig.xml"), f"{name}/conf/userconfig.xml", name)
        scripts = {n for n in names if n.startswith("bin/") and not n.endswith("/")}
        for member in scripts:
            mode = zf.getinfo(member).external_attr >> 16
            body = zf.read(member)
            if body.startswith(b"#!/bin/sh") or member.endswith(".sh"):
                syntax = subprocess.run(["sh", "-n"], input=body, capture_output=True, timeout=10)
                assert syntax.returncode == 0, (member, syntax.stderr)
            if not member.endswith(".sh"):
                assert mode & 0o111, f"{member} is not executable"
    assert "README.md" in names
    assert config.mode == TEMPLATES[name]
    assert config.warnings == (), config.warnings
    assert config.vips, "a template shows where the virtual IP goes"
    for script in REQUIRED_SCRIPTS[config.mode]:
        assert f"bin/{script}" in scripts
    if config.mode == "mirror":
        assert config.rfs is not None and config.rfs.dirs
    assert checked is not None


def test_postgresql_template_keeps_the_data_directory_inside_the_replicated_one():
    config = parse_userconfig((MODULES / "postgresql/conf/userconfig.xml").read_bytes(),
                              "postgresql", "postgresql")
    assert config.user_vars["PG_DIR"] in config.rfs.dirs
    # a variable named like one PostgreSQL's programs read would change what they do
    assert not [v for v in config.user_vars if v.startswith("PG") and not v.startswith("PG_")]


def test_vm_template_runs_the_guest_from_the_replicated_directory_and_watches_it():
    config = parse_userconfig((MODULES / "vm/conf/userconfig.xml").read_bytes(), "vm", "vm")
    assert config.user_vars["VM_DIR"] in config.rfs.dirs
    assert config.rfs.durability == "barrier"    # the guest's flushes are the barriers
    assert [(c.kind, c.exec, c.when) for c in config.checks] == [("custom", "vm_watch", "prim")]
