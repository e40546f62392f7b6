"""hacluster/node/commands.py: the one table of control commands, and everyone who
takes from it (the daemons, peer control, the registry, the CLI)."""
import pytest

from hacluster import cli
from hacluster.modules.host import ModuleHost
from hacluster.node import cluster_config, commands
from hacluster.node.daemon import WitnessDaemon
from hacluster.node_daemon import NodeDaemon


@pytest.fixture
def configs(tmp_path):
    assert cli.main(["cluster", "init", "--node", "n1=127.0.0.1", "--node", "n2=127.0.0.2",
                     "--witness", "w=127.0.0.3", "--out", str(tmp_path)]) == 0
    return {name: cluster_config.load(tmp_path / name) for name in ("n1", "w")}


def test_each_daemon_serves_exactly_the_commands_the_table_gives_its_role(configs):
    node, witness = NodeDaemon(configs["n1"]), WitnessDaemon(configs["w"])
    commands.check_handlers(node.control_handlers(), with_modules=True)
    commands.check_handlers(witness.control_handlers(), with_modules=False)
    assert set(node.control_handlers()) == set(commands.CONTROL_COMMANDS)
    assert "module_cmd" not in witness.control_handlers()


def test_a_handler_missing_from_the_table_or_the_daemon_stops_it():
    with pytest.raises(RuntimeError, match=r"missing \['leases'\], not declared \['nuke'\]"):
        commands.check_handlers({"status", "add_member", "remove_member", "forward", "snapshot_part",
                                 "user_set", "user_remove", "user_list", "maintenance", "nuke"},
                                with_modules=False)


def test_the_node_daemon_is_a_module_host(configs):
    assert isinstance(NodeDaemon(configs["n1"]), ModuleHost)


def test_remote_commands_are_those_declared_remote():
    assert commands.REMOTE_COMMANDS == {"status", "leases", "module_list", "module_cmd",
                                        "module_state", "module_log", "module_waitstate",
                                        "snapshot_part"}
    assert commands.LOCAL_MODULE_COMMANDS == {"set_resource"}


def test_the_cli_s_module_verbs_and_their_spellings_are_declared_commands():
    parser = cli.build_parser()
    for argv in (["start"], ["prim", "fullsync"], ["second", "fullsync", "--force"],
                 ["second", "--force"], ["primforce", "--force"], ["swap"], ["forcestop"]):
        args = parser.parse_args(["-m", "m", *argv])
        name = args.mcmd + ("_fullsync" if getattr(args, "fullsync", None) else "") \
            + ("_force" if getattr(args, "force", False) else "")
        assert name in commands.MODULE_COMMANDS, argv
    verbs = [c.name for c in commands.MODULE_COMMANDS.values() if c.verb]
    assert verbs == ["start", "stop", "forcestop", "restart", "stopstart", "swap", "prim", "second",
                     "primforce", "why"]


def test_a_module_command_is_refused_in_words_for_a_kind_that_has_none():
    assert commands.module_command("start", "farm", "web").name == "start"
    with pytest.raises(ValueError, match="module web is a farm module; swap is a command of mirror modules"):
        commands.module_command("swap", "farm", "web")
    with pytest.raises(ValueError, match="unknown module command 'nuke'"):
        commands.module_command("nuke", "mirror", "db")
