"""The HTTPS API on real daemons (hacluster/http/api.py, hacluster/node/api_backend.py):
users added with the CLI on one node log in on the other (the user table is replicated
through Raft), any node shows the module on every node, a Monitor user cannot act, an
Admin's swap sent to n2's API runs on n1 and the pair follows it, the audit trail names
who did it, and the plain-HTTP port still answers beside the API."""
from __future__ import annotations

import json
import sys

import pytest

from chaos.lab import wait_until
from chaos.lab_mirror import MirrorLab
from hacluster.node import cluster_config
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

MODULE = "kvdemo"


@pytest.fixture
def mirror(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    return MirrorLab(lab).start(prim="n1")


def add_user(m: MirrorLab, node: str, name: str, role: str, password: str) -> None:
    c = m.cluster
    argv = ["-c", str(c.config_dir(node)), *c.path_flags(node), "user", "add", name,
            "--role", role, "--password-stdin"]
    code = (f"import io, sys; sys.stdin = io.StringIO({password + chr(10)!r}); "
            f"from hacluster import cli; sys.exit(cli.main({argv!r}))")
    m.lab.run(node, [sys.executable, "-c", code], check=True)


def api(m: MirrorLab, node: str, session: str, method: str, path: str, body=None) -> dict:
    cfg = cluster_config.load(m.cluster.config_dir(node))
    host, port = cfg.api_address
    argv = [sys.executable, "-m", "chaos.api_call", "--ca", str(cfg.directory / "ca.crt"),
            "--session", str(m.lab.workdir / f"session-{session}.json"), method,
            f"https://{host}:{port}{path}"] + ([json.dumps(body)] if body is not None else [])
    res = m.lab.run(m.client, argv, check=True, timeout=90)
    return json.loads(res.stdout)


def states(answer: dict) -> dict[str, str]:
    module = next(x for x in answer["body"]["modules"] if x["name"] == MODULE)
    return {row["node"]: row["result"]["state"] for row in module["nodes"] if row["ok"]}


def test_users_roles_and_a_swap_through_the_api_of_either_node(mirror):
    m = mirror
    m.wait_pair("n1")
    add_user(m, "n1", "ann", "admin", "ann-password")
    add_user(m, "n1", "mona", "monitor", "mona-password")
    # added on n1, logs in on n2
    assert api(m, "n2", "mona", "POST", "/api/login",
               {"user": "mona", "password": "mona-password"})["status"] == 200
    assert api(m, "n2", "x", "POST", "/api/login",
               {"user": "mona", "password": "wrong-password"})["status"] == 401
    assert states(api(m, "n2", "mona", "GET", "/api/modules")) == {"n1": "PRIM", "n2": "SECOND"}
    refused = api(m, "n2", "mona", "POST", f"/api/modules/{MODULE}/commands/swap", {"nodes": ["n1"]})
    assert refused["status"] == 403 and "control role" in refused["body"]["error"]

    assert api(m, "n2", "ann", "POST", "/api/login",
               {"user": "ann", "password": "ann-password"})["status"] == 200
    swap = api(m, "n2", "ann", "POST", f"/api/modules/{MODULE}/commands/swap", {"nodes": ["n1"]})
    assert swap["status"] == 200 and swap["body"]["nodes"][0]["node"] == "n1", swap
    m.wait_pair("n2", timeout=60)
    wait_until("n1's API shows n2 primary", lambda: states(
        api(m, "n1", "mona", "GET", "/api/modules")) == {"n1": "SECOND", "n2": "PRIM"}, 20)

    log = api(m, "n1", "mona", "GET", f"/api/modules/{MODULE}/log?node=n2&lines=20")
    assert log["status"] == 200 and log["body"]["lines"]
    audit = (m.cluster.log_dir("n2") / "audit.log").read_text().splitlines()
    swaps = [json.loads(line) for line in audit if '"swap"' in line]
    assert [(e["user"], e["result"], e["target"]) for e in swaps] == [("ann", "ok", f"{MODULE} on n1")]
    # the plain-HTTP port beside it still serves the metrics and readiness
    host, port = cluster_config.load(m.cluster.config_dir("n1")).http_address
    ready = m.lab.run(m.client, [sys.executable, "-m", "chaos.http_probe", "--once",
                                 f"http://{host}:{port}/ready"], check=True)
    assert json.loads(ready.stdout)["ready"] is True
