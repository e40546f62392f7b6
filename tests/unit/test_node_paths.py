"""Where a member keeps what (hacluster.node.paths): each directory from a flag, else
the environment, else cluster.json, else the FHS default; every other path computed
from them in one place."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from hacluster.node.paths import DEFAULTS, ENVIRONMENT, NodePaths, PathError, resolve

CONFIG = Path("/etc/hacluster")
WHERE = "/etc/hacluster/cluster.json"


def test_the_defaults_are_the_fhs_ones():
    p = resolve(CONFIG, {}, WHERE)
    assert (p.config_dir, p.state_dir, p.run_dir, p.log_dir) == (
        CONFIG, Path("/var/lib/hacluster"), Path("/run/hacluster"), Path("/var/log/hacluster"))
    assert p.control_socket == Path("/run/hacluster/control.sock")
    assert p.raft_dir == Path("/var/lib/hacluster/raft")
    assert p.modules_dir == Path("/var/lib/hacluster/modules")
    assert p.members_file == Path("/var/lib/hacluster/members.json")
    assert p.module_state_dir("db") == Path("/var/lib/hacluster/module_state/db")
    assert p.module_log_dir("db") == Path("/var/log/hacluster/db")
    assert p.pid_file("node") == Path("/run/hacluster/hacluster-node.pid")
    assert p.legacy_state_dir == Path("/etc/hacluster/data")


# Which sources set a directory: a flag, the environment, cluster.json (any subset).
_sources = st.fixed_dictionaries({k: st.sets(st.sampled_from(["flag", "env", "file"]))
                                  for k in DEFAULTS})


@given(_sources)
def test_a_flag_beats_the_environment_beats_the_file_beats_the_default(sources):
    flags = {k: f"/flag/{k}" if "flag" in s else None for k, s in sources.items()}
    env = {ENVIRONMENT[k]: f"/env/{k}" for k, s in sources.items() if "env" in s}
    file_values = {k: f"/file/{k}" for k, s in sources.items() if "file" in s}
    p = resolve(CONFIG, file_values, WHERE, env=env, flags=flags)
    for key, s in sources.items():
        first = next((origin for origin in ("flag", "env", "file") if origin in s), None)
        expected = Path(f"/{first}/{key}") if first else Path(DEFAULTS[key])
        assert getattr(p, key) == expected


def test_the_old_data_dir_key_is_the_state_directory_and_not_both():
    assert resolve(CONFIG, {"data_dir": "/srv/hac"}, WHERE).state_dir == Path("/srv/hac")
    with pytest.raises(PathError, match=f"^{WHERE}: both 'data_dir'"):
        resolve(CONFIG, {"data_dir": "/a", "state_dir": "/b"}, WHERE)


def test_control_socket_in_the_file_overrides_the_runtime_directory():
    p = resolve(CONFIG, {"control_socket": "/srv/ctl.sock"}, WHERE)
    assert p.control_socket == Path("/srv/ctl.sock") and p.run_dir == Path("/run/hacluster")


@pytest.mark.parametrize("value, origin, where", [
    ("relative/dir", "flags", "--state-dir"),
    ("/a/../b", "env", "$HACLUSTER_STATE_DIR"),
    ("var/lib", "file", f"{WHERE}: state_dir"),
])
def test_a_path_that_is_not_absolute_and_plain_is_refused_naming_where(value, origin, where):
    kw = {"flags": {"state_dir": value}} if origin == "flags" else \
        {"env": {"HACLUSTER_STATE_DIR": value}} if origin == "env" else {}
    file_values = {"state_dir": value} if origin == "file" else {}
    with pytest.raises(PathError) as e:
        resolve(CONFIG, file_values, WHERE, **kw)
    assert str(e.value).startswith(f"{where}: must")


def test_the_environment_handed_to_scripts_names_every_directory():
    p = NodePaths(Path("/c"), Path("/s"), Path("/r"), Path("/l"))
    assert p.environment() == {"HACLUSTER_CONFIG": "/c", "HACLUSTER_STATE_DIR": "/s",
                               "HACLUSTER_RUN_DIR": "/r", "HACLUSTER_LOG_DIR": "/l"}
    # ... and resolving with it gives the same paths back (a script's hacluster call)
    again = resolve(Path("/c"), {}, WHERE, env=p.environment())
    assert again == p
