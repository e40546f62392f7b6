"""The command line against real daemons: SafeKit's argument order and state codes,
confirmations refused without a terminal (nothing changes), the logs' time format and
rotation settings, a daemon that is gone (69) and a member without quorum (75)."""
from __future__ import annotations

import json
import re

import pytest

from chaos.lab import wait_until
from chaos.lab_mirror import MODULE, MirrorLab
from hacluster.node import exit_status
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def test_cli_against_real_daemons(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    m = MirrorLab(lab).start(prim="n1")

    # SafeKit's order and its state codes
    assert m.cli("n1", "state", "-m", MODULE).returncode == 3          # PRIM
    assert m.cli("n2", "-m", MODULE, "state").returncode == 4          # SECOND
    res = m.cli("n1", "state", "-m", "nosuch", "--json")
    assert res.returncode == exit_status.STATE_FAILED
    assert json.loads(res.stdout)["exit"] == exit_status.STATE_FAILED and res.stderr == ""

    # destructive commands without a terminal: refused in one line naming --force,
    # nothing asked of the daemons
    res = m.cli("n1", "cluster", "remove-node", "n2")
    assert res.returncode == 1 and "--force" in res.stderr and "in-sync copy of kvdemo" in res.stderr
    assert {r["name"] for r in m.cluster.status("n1")["members"]} == {"n1", "n2", "w"}
    res = m.cli("n2", "-m", MODULE, "primforce")
    assert res.returncode == 1 and "--force" in res.stderr
    res = m.cli("n1", "-H", "all", "-m", MODULE, "primforce", "--force")
    assert res.returncode == 1 and "never several" in res.stderr
    assert m.states() == {"n1": "PRIM/Ready", "n2": "SECOND/Ready"}

    # the logs: every line starts with the time in UTC, ISO 8601
    res = m.cli("n1", "-m", MODULE, "log", "--lines", "5", check=True)
    lines = res.stdout.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", ln) for ln in lines), lines
    res = m.cli("n1", "-m", MODULE, "log", "--kind", "script", "--lines", "3", "--json", check=True)
    assert len(json.loads(res.stdout)["lines"]) == 3

    # a daemon that is gone is not WAIT
    m.cluster.kill("n2")
    assert m.cli("n2", "state", "-m", MODULE).returncode == exit_status.UNREACHABLE
    assert m.cli("n2", "cluster", "status").returncode == exit_status.UNREACHABLE
    assert m.cli("n1", "cluster", "status").returncode == 0
    # and a member without quorum says so in its status
    m.cluster.kill("w")
    wait_until("n1 without quorum", lambda: m.cli("n1", "cluster", "status").returncode
               == exit_status.NO_QUORUM, 20)
    res = m.cli("n1", "cluster", "status")
    assert "quorum NO" in res.stdout
