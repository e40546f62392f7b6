"""Mirror commands across nodes on the lab: ``-H`` (forwarded, authenticated),
``defaultprim`` on a first start, ``why``, ``second fullsync``."""
from __future__ import annotations

import json

import pytest

from chaos.lab import wait_until
from chaos.lab_mirror import MODULE, MirrorLab
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def _mount_log(m: MirrorLab, node: str) -> str:
    return (m.cluster.log_dir(node) / MODULE / "mount0.log").read_text()


def _force_digests_flags(m: MirrorLab, node: str) -> list[str]:
    return [line.split("force_digests=")[1].split()[0] for line in _mount_log(m, node).splitlines()
            if "event=reintegration_started" in line]


def test_defaultprim_first_start_with_H_all_then_second_fullsync(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    m = MirrorLab(lab, defaultprim="n1").start(prim=None)

    # One command on n2 starts the module on both nodes; nobody typed prim, the
    # configuration named n1's copy the good one for this very first start.
    res = m.cli("n2", "-H", "all", "-m", MODULE, "start", "--json", check=True)
    rows = json.loads(res.stdout)
    assert [(r["node"], r["ok"]) for r in rows] == [("n1", True), ("n2", True)]
    assert "defaultprim" in rows[0]["result"]["message"]
    m.wait_pair("n1")

    res = m.cli("n1", "-H", "n1,n2", "-m", MODULE, "state", "--json", check=True)
    states = {r["node"]: r["result"]["state"] for r in json.loads(res.stdout)}
    assert states == {"n1": "PRIM", "n2": "SECOND"}
    res = m.cli("n1", "-H", "n2", "-m", MODULE, "state")
    assert res.returncode == 4, res.stdout + res.stderr          # SafeKit's code for SECOND
    assert res.stdout.startswith("n2: ")
    res = m.cli("n1", "-H", "n2,nosuch", "-m", MODULE, "state")
    # a failure of 'state' is 5, never 1 (which is WAIT)
    assert res.returncode == 5 and "unknown node(s) nosuch" in res.stderr
    # why: read-only, from each node's machine, through peer control like any module command
    res = m.cli("n1", "-H", "all", "-m", MODULE, "why", check=True)
    assert f"n1:\n{MODULE} on n1: PRIM (Ready), heading for PRIM\n" in res.stdout
    assert f"n2:\n{MODULE} on n2: SECOND (Ready), heading for SECOND\n" in res.stdout
    assert "n1 holds the module lease, epoch 1" in res.stdout

    # A plain return of the secondary trusts the bitmaps; second fullsync makes
    # the primary compare every block.
    m.start_writer()
    m.wait_acks(10)
    assert _force_digests_flags(m, "n1")[0] == "True"           # first sync after promotion
    m.cli("n1", "-H", "n2", "-m", MODULE, "stop", check=True)
    m.wait_state("n2", "STOP")
    seen = len(_force_digests_flags(m, "n1"))
    m.cli("n2", "-m", MODULE, "start", check=True)
    m.wait_pair("n1")
    wait_until("reintegration after a plain start",
               lambda: len(_force_digests_flags(m, "n1")) > seen, 20)
    assert _force_digests_flags(m, "n1")[seen] == "False"
    m.cli("n2", "-m", MODULE, "stop", check=True)
    m.wait_state("n2", "STOP")
    seen = len(_force_digests_flags(m, "n1"))
    res = m.cli("n2", "-m", MODULE, "second", "fullsync", check=True)
    assert "compare every block" in res.stdout
    m.wait_pair("n1")
    wait_until("reintegration after second fullsync",
               lambda: len(_force_digests_flags(m, "n1")) > seen, 20)
    assert _force_digests_flags(m, "n1")[seen] == "True"
    m.writer.stop()
    wait_until("identical copies", lambda: m.log_records("n2") == m.log_records("n1"), 20)

    res = m.cli("n1", "-m", MODULE, "second", "fullsync")
    assert res.returncode == 1 and "stop it first" in res.stderr


def test_cli_refuses_bad_packages_and_installs_nothing(make_lab, tmp_path):
    import zipfile
    lab = make_lab(["n1", "n2", "w", "c"])
    m = MirrorLab(lab).start(prim=None)
    good = (lab.workdir / "kvdemo-module" / "conf" / "userconfig.xml").read_text()
    script = "#!/bin/sh\nexit 0\n"

    def safe(name: str, members: list[tuple[str, str, int]]) -> str:
        path = lab.workdir / f"{name}.safe"
        with zipfile.ZipFile(path, "w") as z:
            for member, text, mode in members:
                info = zipfile.ZipInfo(member)
                info.external_attr = mode << 16
                z.writestr(info, text)
        return str(path)

    cases = {
        "escape": (safe("escape", [("conf/userconfig.xml", good, 0o644),
                                   ("bin/start_prim", script, 0o755),
                                   ("../../etc/evil", script, 0o755)]), "escapes"),
        "badxml": (safe("badxml", [("conf/userconfig.xml", good.replace('mode="mirror"', 'mode="mirr"'), 0o644),
                                   ("bin/start_prim", script, 0o755)]), "service@mode"),
        "entity": (safe("entity", [("conf/userconfig.xml", '<!DOCTYPE x [<!ENTITY a "aaaa">]>'
                                    '<service mode="mirror">&a;</service>', 0o644),
                                   ("bin/start_prim", script, 0o755)]), "userconfig.xml"),
        "noexec": (safe("noexec", [("conf/userconfig.xml", good, 0o644),
                                   ("bin/start_prim", script, 0o644)]), "executable"),
    }
    for name, (path, needle) in cases.items():
        res = m.cli("n1", "module", "install", path)
        assert res.returncode == 1, (name, res.stdout, res.stderr)
        err = res.stderr.strip()
        assert "\n" not in err and needle in err and f"{name}.safe" in err, (name, err)
    res = m.cli("n2", "module", "list", "--json", check=True)
    assert [r["module"] for r in json.loads(res.stdout)] == [MODULE]
    for n in m.nodes:
        assert sorted(p.name for p in (m.cluster.state_dir(n) / "modules").iterdir()) == [MODULE, f"{MODULE}.safe"]
