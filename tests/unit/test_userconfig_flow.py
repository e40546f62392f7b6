"""userconfig.xml: the heartbeat marked ident="flow" (the replication network)."""
import textwrap

import pytest

from hacluster.modules.userconfig import parse_userconfig
from tests.unit.test_userconfig import error_of


def config(heart: str, mode: str = "mirror") -> bytes:
    rfs = '<rfs><replicated dir="/d"/></rfs>' if mode == "mirror" else ""
    return textwrap.dedent("""\
        <!DOCTYPE safe>
        <safe>
        <service mode="{mode}">
        <heart>
        {heart}
        </heart>
        {rfs}
        </service>
        </safe>
        """).format(mode=mode, heart=heart, rfs=rfs).encode()


MAIN = '<heartbeat name="default"><server addr="10.0.0.1"/><server addr="10.0.0.2"/></heartbeat>'


def test_flow_heartbeat_is_parsed_with_its_servers_in_order():
    c = parse_userconfig(config(MAIN + '\n<heartbeat name="repl" ident="flow">'
                                '<server addr="10.1.0.1"/><server addr="repl-b"/></heartbeat>'),
                         "uc.xml", "m")
    assert [(n.name, n.servers, n.flow) for n in c.heart.nets] == [
        ("default", ("10.0.0.1", "10.0.0.2"), False), ("repl", ("10.1.0.1", "repl-b"), True)]
    assert c.heart.flow is c.heart.nets[1]
    assert c.heart.node_servers == ("10.0.0.1", "10.0.0.2")
    assert c.warnings == ()


def test_no_flow_heartbeat_and_a_flow_first_heartbeat():
    plain = parse_userconfig(config(MAIN), "uc.xml", "m")
    assert plain.heart.flow is None
    first = parse_userconfig(config('<heartbeat name="default" ident="flow">'
                                    '<server addr="10.0.0.1"/><server addr="10.0.0.2"/></heartbeat>'),
                             "uc.xml", "m")
    assert first.heart.flow is first.heart.nets[0]
    # the first heartbeat may name the nodes and carry the flow without listing servers
    bare = parse_userconfig(config('<heartbeat name="default" ident="flow"/>'), "uc.xml", "m")
    assert bare.heart.flow is not None and bare.heart.flow.servers == ()


def test_flow_after_a_first_heartbeat_without_servers_lists_two():
    c = parse_userconfig(config('<heartbeat name="default"/>\n<heartbeat name="repl" ident="flow">'
                                '<server addr="10.1.0.1"/><server addr="10.1.0.2"/></heartbeat>'),
                         "uc.xml", "m")
    assert c.heart.flow is not None and c.heart.flow.servers == ("10.1.0.1", "10.1.0.2")
    assert error_of(config('<heartbeat name="default"/>\n<heartbeat name="repl" ident="flow">'
                           '<server addr="10.1.0.1"/></heartbeat>')) == (
        "uc.xml:6: heartbeat/server: the flow heartbeat 'repl' lists 1 server but a mirror "
        "module has 2 nodes: give one replication address per node, in the same order")


@pytest.mark.parametrize("heart, message", [
    (MAIN + '\n<heartbeat name="repl" ident="data"/>',
     "uc.xml:6: heartbeat@ident: 'data': the only ident is \"flow\" (this heartbeat's network "
     "carries the replication)"),
    (MAIN + '\n<heartbeat name="repl" ident=""/>', "uc.xml:6: heartbeat@ident: '': the only ident"),
    (MAIN + '\n<heartbeat name="r1" ident="flow"><server addr="10.1.0.1"/><server addr="10.1.0.2"/>'
     '</heartbeat>\n<heartbeat name="r2" ident="flow"/>',
     "uc.xml:7: heartbeat@ident: a second flow heartbeat: 'r1' (line 6) already carries the replication"),
    (MAIN + '\n<heartbeat name="repl" ident="flow"><server addr="10.1.0.1"/></heartbeat>',
     "uc.xml:6: heartbeat/server: the flow heartbeat 'repl' lists 1 server but the first heartbeat "
     "'default' (line 5) lists 2: give one replication address per node, in the same order"),
    (MAIN + '\n<heartbeat name="repl" ident="flow"/>',
     "uc.xml:6: heartbeat/server: the flow heartbeat 'repl' lists 0 servers but the first heartbeat"),
    (MAIN + '\n<heartbeat name="repl" ident="flow"><server addr="10.1.0.1"/>\n'
     '<server addr="10.1.0.1"/></heartbeat>',
     "uc.xml:7: server@addr: 10.1.0.1 is listed twice in the flow heartbeat 'repl'"),
    (MAIN + '\n<heartbeat name="repl" ident="flow"><server addr="10.1.0.1"/>'
     '<server addr="not an address"/></heartbeat>',
     "uc.xml:6: server@addr: 'not an address' is not an IP address or host name"),
])
def test_bad_flow_heartbeats_are_refused_with_file_and_line(heart, message):
    assert error_of(config(heart)).startswith(message)


def test_a_farm_module_warns_that_its_flow_mark_is_ignored():
    c = parse_userconfig(config(MAIN + '\n<heartbeat name="repl" ident="flow"/>', mode="farm"),
                         "uc.xml", "f")
    assert c.warnings == ("uc.xml:6: heartbeat@ident: a farm module replicates nothing: "
                          "the flow mark is ignored",)
