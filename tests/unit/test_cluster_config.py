"""hacluster/node/cluster_config.py and `hacluster cluster init` (no daemon needed)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hacluster import cli
from hacluster.node import cluster_config
from hacluster.node.cluster_config import (CONFIG_FILE, RAFT_SECRET_FILE, SECRET_FILE, ConfigError,
                                      load, raft_credential)
from raft.settings import RaftSettings

INIT = ["cluster", "init", "--name", "prod", "--node", "a=10.0.0.1", "--node", "b=10.0.0.2:7500",
        "--witness", "w=10.0.0.9"]


def init(tmp_path: Path, *extra: str) -> int:
    return cli.main([*INIT, "--out", str(tmp_path), *extra])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- cluster init ---------------------------------------------------------------------
def test_cluster_init_writes_one_dir_per_member(tmp_path, capsys):
    assert init(tmp_path) == 0
    out = capsys.readouterr().out
    assert "cluster prod: wrote 3 member configurations" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CA", "a", "b", "w"]
    secrets = set()
    for name in ("a", "b", "w"):
        d = tmp_path / name
        assert str(d) in out
        cfg = load(d)
        assert cfg.cluster == "prod"
        assert cfg.self_name == name
        assert cfg.raft == RaftSettings()
        assert cfg.members == {
            "a": {"address": "10.0.0.1:7400", "role": "node"},
            "b": {"address": "10.0.0.2:7500", "role": "node"},
            "w": {"address": "10.0.0.9:7400", "role": "witness"},
        }
        assert not list(d.glob("*.tmp"))
        if name == "w":
            continue
        mode = stat.S_IMODE((d / SECRET_FILE).stat().st_mode)
        assert mode == 0o600
        secrets.add(cfg.read_secret())
    assert len(secrets) == 1
    secret = secrets.pop()
    assert len(secret) >= 32
    assert load(tmp_path / "w").role == "witness" and load(tmp_path / "a").role == "node"
    # the witness holds only the Raft credential, derived one way from the secret
    w = load(tmp_path / "w")
    assert not (tmp_path / "w" / SECRET_FILE).exists()
    assert stat.S_IMODE((tmp_path / "w" / RAFT_SECRET_FILE).stat().st_mode) == 0o600
    assert w.read_raft_secret() == load(tmp_path / "a").read_raft_secret() == raft_credential(secret)
    assert secret not in w.read_raft_secret() and len(w.read_raft_secret()) >= 32
    with pytest.raises(ConfigError, match="holds only the Raft credential"):
        w.read_secret()


def test_cluster_init_json_output(tmp_path, capsys):
    assert init(tmp_path, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cluster"] == "prod"
    assert [m["name"] for m in data["members"]] == ["a", "b", "w"]
    assert data["members"][1] == {"name": "b", "address": "10.0.0.2:7500", "role": "node",
                                  "config": str(tmp_path / "b")}


def test_each_init_makes_a_new_secret(tmp_path):
    assert init(tmp_path / "one") == 0
    assert init(tmp_path / "two") == 0
    assert load(tmp_path / "one" / "a").read_secret() != load(tmp_path / "two" / "a").read_secret()


@pytest.mark.parametrize("argv, words", [
    (["--node", "a=10.0.0.1", "--node", "b=10.0.0.2"], "two voters without a witness"),
    ([], "at least one member"),
    (["--node", "a=10.0.0.1", "--node", "a=10.0.0.2", "--witness", "w=10.0.0.9"], "given twice"),
    (["--node", "a"], "expected NAME=ADDRESS[:PORT]"),
    (["--node", "A=10.0.0.1"], "invalid member name"),
    (["--node", "a=10.0.0.1:0"], "bad port"),
    (["--node", "a=10.0.0.1", "--node", "b=10.0.0.1", "--witness", "w=10.0.0.9"], "duplicate address"),
])
def test_cluster_init_refused(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    rc = cli.main(["cluster", "init", *argv, "--out", str(out)])
    assert rc == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err
    assert err.startswith("hacluster: ") and err.endswith("\n") and err.count("\n") == 1
    assert words in err
    assert not out.exists()


def test_cluster_init_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    assert init(tmp_path) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert init(tmp_path) == 1
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_cluster_init_with_one_existing_member_writes_nothing(tmp_path, capsys):
    # Only the last member's directory is there: init must not write the others with a new
    # secret before it notices (that would leave members with different secrets).
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / CONFIG_FILE).write_text("{}")
    assert init(tmp_path) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    assert snapshot(tmp_path) == {"w/cluster.json": b"{}"}


def test_write_member_dir_refuses_to_overwrite(tmp_path):
    members = {"a": {"address": "h1:1", "role": "node"}}
    d = cluster_config.write_member_dir(tmp_path, "c", "a", members, "s" * 40, RaftSettings())
    first = snapshot(d)
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite") as e:
        cluster_config.write_member_dir(tmp_path, "c", "a", members, "t" * 40, RaftSettings())
    assert str(d / CONFIG_FILE) in str(e.value)
    assert snapshot(d) == first


def test_usage_error_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["cluster", "init", "--node", "a=10.0.0.1"])  # --out missing
    assert e.value.code == 2
    assert "--out" in capsys.readouterr().err


# ---- load -------------------------------------------------------------------------------
@pytest.fixture
def member_dir(tmp_path) -> Path:
    assert cli.main([*INIT, "--out", str(tmp_path)]) == 0
    return tmp_path / "a"


def rewrite(d: Path, mutate) -> Path:
    path = d / CONFIG_FILE
    raw = json.loads(path.read_text())
    mutate(raw)
    path.write_text(json.dumps(raw, indent=2))
    return path


def test_write_and_load_round_trip(member_dir):
    cfg = load(member_dir)
    cfg.write()
    again = load(member_dir)
    assert again.to_dict() == cfg.to_dict()
    assert again.paths.state_dir == Path("/var/lib/hacluster")
    assert again.socket_path == Path("/run/hacluster/control.sock")


def test_paths_come_from_flags_then_environment_then_the_file(member_dir):
    rewrite(member_dir, lambda raw: raw.update(state_dir="/srv/state", log_dir="/srv/log"))
    cfg = load(member_dir, env={"HACLUSTER_STATE_DIR": "/env/state", "HACLUSTER_RUN_DIR": "/env/run"},
               flags={"state_dir": "/flag/state", "run_dir": None, "log_dir": None})
    assert (cfg.paths.state_dir, cfg.paths.run_dir, cfg.paths.log_dir) == (
        Path("/flag/state"), Path("/env/run"), Path("/srv/log"))
    assert cfg.socket_path == Path("/env/run/control.sock")
    assert cfg.paths.config_dir == member_dir


def test_the_labs_root_prefix_comes_from_the_environment_then_the_file(member_dir):
    assert load(member_dir).path_prefix is None
    rewrite(member_dir, lambda raw: raw.update(path_prefix="/lab/file/"))
    assert load(member_dir).path_prefix == "/lab/file"
    assert load(member_dir, env={"HACLUSTER_ROOT_PREFIX": "/lab/env"}).path_prefix == "/lab/env"
    # empty, as the daemon hands it to scripts when there is none: the file's
    assert load(member_dir, env={"HACLUSTER_ROOT_PREFIX": ""}).path_prefix == "/lab/file"
    with pytest.raises(ConfigError, match=r"^\$HACLUSTER_ROOT_PREFIX: must be an absolute path "
                                          r"without '\.\.', got 'lab'$"):
        load(member_dir, env={"HACLUSTER_ROOT_PREFIX": "lab"})


def test_a_relative_path_in_the_file_is_refused_naming_it(member_dir):
    path = rewrite(member_dir, lambda raw: raw.update(run_dir="run"))
    with pytest.raises(ConfigError, match=f"^{path}: run_dir: must be an absolute path, got 'run'$"):
        load(member_dir)


def test_http_endpoints_default_to_the_member_address_raft_port_plus_4(member_dir):
    cfg = load(member_dir)
    assert cfg.http_address == ("10.0.0.1", 7404)
    assert "http" not in cfg.to_dict()       # defaults are not written
    rewrite(member_dir, lambda raw: raw.__setitem__("http", {"host": "127.0.0.1", "port": 9100}))
    cfg = load(member_dir)
    assert cfg.http_address == ("127.0.0.1", 9100)
    assert cfg.to_dict()["http"] == {"host": "127.0.0.1", "port": 9100}   # written back by init
    rewrite(member_dir, lambda raw: raw.__setitem__("http", {"enabled": False}))
    assert load(member_dir).http_address is None


def test_invalid_json_names_file_line_col(member_dir):
    path = member_dir / CONFIG_FILE
    path.write_text('{\n  "cluster": "prod",\n  "self": "a"\n  "members": {}\n}\n')
    with pytest.raises(ConfigError) as e:
        load(member_dir)
    assert str(e.value).startswith(f"{path}:4:3: invalid JSON")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found") as e:
        load(tmp_path / "nothing")
    assert str(tmp_path / "nothing" / CONFIG_FILE) in str(e.value)


@pytest.mark.parametrize("field", ["cluster", "self", "members"])
def test_missing_field(member_dir, field):
    path = rewrite(member_dir, lambda raw: raw.pop(field))
    with pytest.raises(ConfigError) as e:
        load(member_dir)
    assert str(e.value) == f"{path}: missing field {field!r}"


@pytest.mark.parametrize("mutate, words", [
    (lambda raw: raw.__setitem__("self", "zz"), "self 'zz' is not among the members"),
    (lambda raw: raw.__setitem__("self", "Not A Name"), "invalid member name"),
    (lambda raw: raw["raft"].__setitem__("lease_seconds", 2), "raft: unknown setting(s) lease_seconds"),
    (lambda raw: raw["raft"].__setitem__("lease_s", "2"), "raft: lease_s must be a number"),
    (lambda raw: raw["raft"].__setitem__("lease_margin_s", 0), "lease_margin_s"),
    (lambda raw: raw.__setitem__("raft", [1]), "raft: must be an object"),
    (lambda raw: raw.__setitem__("members", []), "field 'members' must be an object"),
    (lambda raw: raw["members"].pop("w"), "two voters without a witness"),
    (lambda raw: raw["members"].__setitem__("w", "10.0.0.9:7400"), "member 'w'"),
    (lambda raw: raw["members"]["b"].pop("role"), "invalid role None"),
    (lambda raw: raw["members"]["b"].__setitem__("address", "10.0.0.1:7400"), "duplicate address"),
    (lambda raw: raw.__setitem__("http", True), "http: must be an object"),
    (lambda raw: raw.__setitem__("http", {"port": "7404"}), "http: port must be an integer"),
    (lambda raw: raw.__setitem__("http", {"port": 70000}), "http: port must be an integer"),
    (lambda raw: raw.__setitem__("http", {"enabled": "no"}), "http: enabled must be true or false"),
    (lambda raw: raw.__setitem__("http", {"listen": "x:1"}), "http: unknown field 'listen'"),
    (lambda raw: raw.__setitem__("http", {"host": " 10.0.0.1"}), "http: host must be"),
])
def test_broken_config_refused_naming_the_file(member_dir, mutate, words):
    path = rewrite(member_dir, mutate)
    with pytest.raises(ConfigError) as e:
        load(member_dir)
    assert str(e.value).startswith(f"{path}: ")
    assert words in str(e.value)


def test_top_level_not_an_object(member_dir):
    (member_dir / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level must be an object"):
        load(member_dir)


# ---- secret -------------------------------------------------------------------------------
def test_secret_mode_0644_refused(member_dir):
    path = member_dir / SECRET_FILE
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as e:
        load(member_dir).read_secret()
    assert str(e.value) == f"{path}: cluster secret must be mode 0600, is 0644"


def test_secret_group_readable_refused(member_dir):
    os.chmod(member_dir / SECRET_FILE, 0o640)
    with pytest.raises(ConfigError, match="must be mode 0600, is 0640"):
        load(member_dir).read_secret()


def test_secret_missing_refused(member_dir):
    (member_dir / SECRET_FILE).unlink()
    with pytest.raises(ConfigError, match="cluster secret missing") as e:
        load(member_dir).read_secret()
    assert str(member_dir / SECRET_FILE) in str(e.value)


def test_secret_too_short_refused(member_dir):
    path = member_dir / SECRET_FILE
    path.write_text("short\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=r"too short \(5 chars, need >= 32\)"):
        load(member_dir).read_secret()


def test_with_port():
    assert cluster_config.with_port("10.0.0.1") == "10.0.0.1:7400"
    assert cluster_config.with_port("10.0.0.1", 9) == "10.0.0.1:9"
    assert cluster_config.with_port("h:1", 9) == "h:1"


# ---- the table printer -----------------------------------------------------------------
def test_table_alignment_and_cells():
    rows = [{"name": "a", "live": True, "eligible": ["a", "b"], "holder": None},
            {"name": "long-name", "live": False, "eligible": [], "holder": "x"}]
    text = cli.table(rows, [("name", "NAME"), ("live", "LIVE"), ("eligible", "ELIGIBLE"),
                            ("holder", "HOLDER")])
    assert text.splitlines() == [
        "NAME       LIVE  ELIGIBLE  HOLDER",
        "a          yes   a,b       -",
        "long-name  no    -         x",
    ]
    assert not any(line.endswith(" ") for line in text.splitlines())


def test_table_without_rows_is_the_header():
    assert cli.table([], [("a", "A"), ("bb", "BB")]) == "A  BB"


def test_witness_credential_rewrites_an_old_witness_without_the_cluster_secret(tmp_path, capsys):
    assert init(tmp_path / "cfg") == 0
    capsys.readouterr()
    assert cli.main(["--config", str(tmp_path / "cfg" / "a"), "cluster", "witness-credential", "w",
                     "--out", str(tmp_path / "new")]) == 0
    w = load(tmp_path / "new" / "w")
    assert not (tmp_path / "new" / "w" / SECRET_FILE).exists()
    assert w.read_raft_secret() == load(tmp_path / "cfg" / "a").read_raft_secret()
    assert cli.main(["--config", str(tmp_path / "cfg" / "a"), "cluster", "witness-credential", "a",
                     "--out", str(tmp_path / "x")]) == 1
    assert "'a' is not a witness" in capsys.readouterr().err


def test_a_witness_writes_a_new_witness_its_credential_but_no_data_node(tmp_path):
    assert init(tmp_path / "cfg") == 0
    w = load(tmp_path / "cfg" / "w")
    members = {**w.members, "w2": {"address": "10.0.0.8:7400", "role": "witness"},
               "c": {"address": "10.0.0.3:7400", "role": "node"}}
    d = cluster_config.write_member_dir(tmp_path / "new", "prod", "w2", members, None, w.raft,
                                        w.read_raft_secret())
    assert load(d).read_raft_secret() == w.read_raft_secret()
    with pytest.raises(ConfigError, match="only data nodes hold"):
        cluster_config.write_member_dir(tmp_path / "new", "prod", "c", members, None, w.raft,
                                        w.read_raft_secret())


# ---- http: the HTTPS API's port and certificate ----------------------------------------
def test_http_api_settings_are_checked_and_round_trip(tmp_path):
    from hacluster.node.cluster_config import HttpSettings
    s = HttpSettings.from_dict({"api_port": 9443, "cert": "/etc/x.crt", "key": "/etc/x.key"}, "w")
    assert HttpSettings.from_dict(s.to_dict(), "w") == s
    for raw, why in [({"cert": "/etc/x.crt"}, "cert and key go together"),
                     ({"cert": "x.crt", "key": "/k"}, "absolute path"),
                     ({"api_port": 0}, "api_port must be"), ({"tls": True}, "unknown field 'tls'")]:
        with pytest.raises(ConfigError, match=why):
            HttpSettings.from_dict(raw, "cluster.json: http")
