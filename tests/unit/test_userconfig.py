import math
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.modules.userconfig import FarmNode, LbRule, ModuleConfig, UserConfigError, load_userconfig, parse_userconfig

SAFEKIT_MIRROR = b"""<?xml version="1.0"?>
<!DOCTYPE safe>
<!-- a SafeKit 8.2 mirror module, unchanged -->
<safe>
<service mode="mirror" defaultprim="alone" maxloop="3" loop_interval="24" failover="on">
  <heart pulse="700" timeout="30000">
     <heartbeat name="default" ident="flow">
       <server addr="10.0.0.1"/>
       <server addr="node-b"/>
     </heartbeat>
  </heart>
  <vip>
    <interface_list>
      <interface check="on" arpreroute="on">
        <real_interface>
          <virtual_addr addr="10.0.0.10" where="one_side_alias" />
        </real_interface>
      </interface>
    </interface_list>
  </vip>
  <rfs async="second" acl="off">
    <replicated dir="/var/lib/app/" mode="read_only" />
    <replicated dir="/srv/data" mode="read_only" />
  </rfs>
  <user>
    <var name="APP_HOME" value="/opt/app"/>
  </user>
  <errd polltimer="10">
    <proc name="myapp" atleast="1" action="restart" class="prim"/>
    <proc nameregex="java.*" argregex=".*tomcat.*" atleast="1" atmax="2" action="stopstart" class="both"/>
  </errd>
  <check><tcp ident="t"><to addr="127.0.0.1" port="80"/></tcp></check>
</service>
</safe>
"""


def mirror(service_attrs: str = "", body: str = "") -> bytes:
    """A minimal mirror module with extra <service> attributes and sections."""
    rfs = "" if "<rfs" in body else '<rfs><replicated dir="/d"/></rfs>'
    return textwrap.dedent(f"""\
        <!DOCTYPE safe>
        <safe>
        <service mode="mirror" {service_attrs}>
        {rfs}
        {body}
        </service>
        </safe>
        """).encode()


def error_of(data: bytes) -> str:
    with pytest.raises(UserConfigError) as info:
        parse_userconfig(data, "uc.xml", "m")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_safekit_mirror_is_accepted_with_historical_units():
    c = parse_userconfig(SAFEKIT_MIRROR, "userconfig.xml", "demo")
    assert isinstance(c, ModuleConfig)
    assert (c.name, c.mode, c.failover, c.defaultprim, c.maxloop) == ("demo", "mirror", True, "alone", 3)
    assert c.loop_interval_s == 24 * 3600
    assert (c.heart.pulse_s, c.heart.timeout_s) == (0.7, 30.0)
    assert [(n.name, n.servers, n.flow) for n in c.hosts] == [("default", ("10.0.0.1", "node-b"), True)]
    [vip] = c.vips
    assert (vip.addr, vip.prefixlen, vip.interface, vip.arpreroute, vip.garp_refresh_s, vip.where) == (
        "10.0.0.10", None, None, True, 10.0, "one_side_alias")
    assert c.rfs is not None
    assert c.rfs.async_mode == "second"
    assert c.rfs.dirs == ("/var/lib/app", "/srv/data")
    assert c.rfs.reintegration_bandwidth_Bps is None
    assert c.user_vars == {"APP_HOME": "/opt/app"}
    assert c.errd_poll_s == 10.0
    first, second = c.errd
    assert (first.name, first.name_is_regex, first.atleast, first.atmax, first.action, first.klass) == (
        "myapp", False, 1, None, "restart", "prim")
    assert (second.name, second.name_is_regex, second.regex_args, second.atmax, second.klass) == (
        "java.*", True, ".*tomcat.*", 2, "both")
    assert c.scripts_timeout_s == 120.0
    assert (first.resource, second.resource) == ("errd.myapp", "errd.java._")
    [tcp] = c.checks
    assert (tcp.resource, tcp.when, tcp.action, tcp.addrs, tcp.port, tcp.interval_s) == (
        "tcp.t", "prim", "restart", ("127.0.0.1",), 80, 10.0)
    assert [(x.label, x.action) for x in c.failover_rules] == [
        ("errd_myapp", "restart"), ("errd_java._", "stopstart"), ("tcp_t", "restart")]


def test_unimplemented_parts_are_warnings_with_file_and_line():
    c = parse_userconfig(SAFEKIT_MIRROR, "userconfig.xml", "demo")
    unused = ("not used: failure detection is the cluster's Raft timers for every module "
              "(append_entries_period_s, election_timeout_*, lease_s in cluster.json's raft), "
              "and its heartbeat networks are the members' links (README \"Several heartbeat "
              "networks\")")
    assert c.warnings == (
        f"userconfig.xml:6: heart@pulse: {unused}",
        f"userconfig.xml:6: heart@timeout: {unused}",
        "userconfig.xml:14: interface@check: not implemented yet, ignored",
        "userconfig.xml:21: rfs@acl: not implemented yet, ignored",
        'userconfig.xml:21: rfs@async: applies to durability="write" only; with '
        'durability="barrier" changes stream and fsync waits for the secondary',
    )


def test_defaults():
    c = parse_userconfig(mirror(), "uc.xml", "m")
    assert (c.failover, c.defaultprim, c.maxloop, c.loop_interval_s) == (True, None, 3, 86400.0)
    assert (c.heart.pulse_s, c.heart.timeout_s, c.hosts) == (0.7, 30.0, ())
    assert c.rfs is not None and c.rfs.async_mode == "none"
    assert (c.vips, c.user_vars, c.errd, c.errd_poll_s, c.warnings) == ((), {}, (), 10.0, ())


def test_units_and_our_extensions():
    c = parse_userconfig(mirror(
        'failover="off" defaultprim="lastprim" loop_interval="30m" scripts_timeout="1.5m" maxloop="0"',
        '<heart pulse="1.5s" timeout="2m"/>'
        '<vip garp_refresh="0"><interface_list><interface name="eth0">'
        '<real_interface><virtual_addr addr="10.0.0.10/24"/></real_interface>'
        '</interface></interface_list></vip>'
        '<rfs async="async" ack_timeout="700ms" reintegration_bandwidth="50MB">'
        '<replicated dir="/a"/></rfs>'), "uc.xml", "m")
    assert (c.failover, c.defaultprim, c.loop_interval_s, c.scripts_timeout_s, c.maxloop) == (
        False, "lastprim", 1800.0, 90.0, 0)
    assert (c.heart.pulse_s, c.heart.timeout_s) == (1.5, 120.0)
    [vip] = c.vips
    assert (vip.addr, vip.prefixlen, vip.interface, vip.arpreroute, vip.garp_refresh_s) == (
        "10.0.0.10", 24, "eth0", False, 0.0)
    assert c.rfs is not None
    assert (c.rfs.async_mode, c.rfs.ack_timeout_s, c.rfs.reintegration_bandwidth_Bps) == (
        "async", 0.7, 50 * 2**20)


def test_farm_module():
    c = parse_userconfig(b"""<safe><service mode="farm"><farm><lan name="default"/></farm>
        <vip><interface_list><interface><virtual_interface type="vmac_directed">
        <virtual_addr addr="10.0.0.20" where="alias"/></virtual_interface></interface></interface_list></vip>
        </service></safe>""", "uc.xml", "f")
    assert c.mode == "farm" and c.rfs is None
    assert [v.where for v in c.vips] == ["alias"]
    assert c.farm_nodes == () and c.lb_rules == ()
    assert any("virtual_interface@type: not implemented yet" in w for w in c.warnings)


def test_bare_service_root_and_node_name_defaultprim():
    c = parse_userconfig(b'<service mode="mirror" defaultprim="node-a"><rfs><replicated dir="/x"/></rfs></service>',
                         "uc.xml", "m")
    assert c.defaultprim == "node-a"


@pytest.mark.parametrize("data, expected", [
    (mirror('mode2="x"').replace(b'mode="mirror" ', b""), "uc.xml:3: service@mode: required (mirror or farm)"),
    (b'<safe><service mode="cluster"/></safe>', "uc.xml:1: service@mode: 'cluster' must be one of mirror, farm"),
    (mirror('failover="yes"'), "uc.xml:3: service@failover: 'yes' must be 'on' or 'off'"),
    (mirror('maxloop="three"'), "uc.xml:3: service@maxloop: 'three' is not an integer"),
    (mirror('maxloop="-1"'), "uc.xml:3: service@maxloop: -1 is below the minimum 0"),
    (mirror('loop_interval="1d"'), "uc.xml:3: service@loop_interval: '1d' is not a time"),
    (mirror('defaultprim="Bad Node"'), "uc.xml:3: service@defaultprim: 'Bad Node' must be alone, lastprim"),
    (mirror(body='\n<heart pulse="fast"/>'), "uc.xml:6: heart@pulse: 'fast' is not a time"),
    (mirror(body='\n<heart pulse="0"/>'), "uc.xml:6: heart@pulse: must be greater than zero"),
    (mirror(body='<vip><interface_list><interface>\n<real_interface>\n'
                 '<virtual_addr addr="10.0.0.999"/></real_interface></interface></interface_list></vip>'),
     "uc.xml:7: virtual_addr@addr: '10.0.0.999' is not an IP address"),
    (mirror(body='<vip><interface_list><interface><real_interface>'
                 '<virtual_addr addr="10.0.0.9" where="alias"/></real_interface></interface></interface_list></vip>'),
     "uc.xml:5: virtual_addr@where: 'alias' is not for a mirror module: use 'one_side_alias'"),
    (mirror(body='<vip><interface_list><interface arpreroute="1"/></interface_list></vip>'),
     "uc.xml:5: interface@arpreroute: '1' must be 'on' or 'off'"),
    (b'<safe><service mode="mirror"/></safe>', "uc.xml:1: service/rfs: a mirror module needs <rfs>"),
    (mirror(body='<rfs/>'), "uc.xml:5: rfs/replicated: a mirror module needs at least one"),
    (b'<safe><service mode="farm"><rfs><replicated dir="/d"/></rfs></service></safe>',
     "uc.xml:1: rfs: a farm module has no replicated directories"),
    (mirror(body='<rfs async="first"><replicated dir="/d"/></rfs>'),
     "uc.xml:5: rfs@async: 'first' must be one of none, second, async"),
    (mirror(body='<rfs reintegration_bandwidth="fast"><replicated dir="/d"/></rfs>'),
     "uc.xml:5: rfs@reintegration_bandwidth: 'fast' is not a rate"),
    (mirror(body='<rfs><replicated dir="var/lib"/></rfs>'), "uc.xml:5: replicated@dir: 'var/lib' must be an absolute"),
    (mirror(body='<rfs><replicated dir="/var/../etc"/></rfs>'), "uc.xml:5: replicated@dir: '/var/../etc' must not"),
    (mirror(body='<rfs><replicated dir="/"/></rfs>'), "uc.xml:5: replicated@dir: the root directory"),
    (mirror(body='<rfs><replicated dir="/d" mountpoint="maybe"/></rfs>'),
     "uc.xml:5: replicated@mountpoint: 'maybe' must be one of yes, no"),
    (mirror(body='<rfs><replicated dir="/a"/>\n<replicated dir="/a/b/"/></rfs>'),
     "uc.xml:6: replicated@dir: /a/b overlaps /a (line 5); directories must not nest"),
    (mirror(body='<rfs><replicated dir="/a"/><replicated dir="//a"/></rfs>'), "replicated@dir: /a overlaps /a"),
    (mirror(body='<user><var name="1X" value="y"/></user>'),
     "uc.xml:5: var@name: '1X' is not a valid environment variable name"),
    (mirror(body='<user><var name="X" value="y"/><var name="X" value="z"/></user>'), "var@name: 'X' is defined twice"),
    (mirror(body='<errd polltimer="x"/>'), "uc.xml:5: errd@polltimer: 'x' is not a time"),
    (mirror(body='<errd><proc name="a" action="reboot"/></errd>'),
     "uc.xml:5: proc@action: 'reboot' must be one of restart, stopstart, stop, none"),
    (mirror(body='<errd><proc name="a" action="stop" class="pre"/></errd>'),
     "uc.xml:5: proc@class: 'pre' must be one of prim, second, both"),
    (mirror(body='<errd><proc name="a"/></errd>'), "uc.xml:5: proc@action: required"),
    (mirror(body='<errd><proc action="stop"/></errd>'), "proc@name: give exactly one of name= or nameregex="),
    (mirror(body='<errd><proc nameregex="(" action="stop"/></errd>'), "proc@nameregex: '(' is not a valid regular"),
    (mirror(body='<errd><proc name="a" atleast="2" atmax="1" action="stop"/></errd>'),
     "proc@atmax: 1 is below atleast=2"),
    (mirror(body='<heart/><heart/>'), "uc.xml:5: heart: duplicate section (first at line 5)"),
    (b'<config/>', "uc.xml:1: config: root element must be <safe> or <service>"),
    (b'<safe><service mode="mirror">\n<rfs></service></safe>', "uc.xml:2: xml: mismatched tag"),
    (b'', "uc.xml:1: xml: no element found"),
])
def test_invalid_values_name_file_line_and_attribute(data, expected):
    message = error_of(data)
    assert message.startswith(expected) if expected.startswith("uc.xml:") else expected in message


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE safe [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<safe><service mode="mirror"><user><var name="X" value="&lol3;"/></user></service></safe>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE safe [ <!ENTITY secret SYSTEM "file:///etc/shadow"> ]>
<safe><service mode="mirror"><user><var name="X" value="&secret;"/></user></service></safe>
"""


@pytest.mark.parametrize("data, line", [(BILLION_LAUGHS, 3), (EXTERNAL_ENTITY, 2)])
def test_entity_tricks_are_refused(data, line):
    message = error_of(data)
    assert message.startswith(f"uc.xml:{line}: xml: refused")
    assert "entity" in message


def test_oversized_file_is_refused_before_parsing():
    assert "over the 1048576 byte limit" in error_of(b"<safe>" + b" " * (1 << 20) + b"</safe>")


def test_load_userconfig_names_the_module_after_its_folder(tmp_path):
    conf = tmp_path / "webapp" / "conf"
    conf.mkdir(parents=True)
    (conf / "userconfig.xml").write_bytes(mirror())
    assert load_userconfig(conf / "userconfig.xml").name == "webapp"
    with pytest.raises(UserConfigError, match=r"missing.xml:0: file: cannot read"):
        load_userconfig(tmp_path / "missing.xml")


TIME_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@given(st.decimals(min_value=0, max_value=10**5, places=3, allow_nan=False),  # under 1e9 s
       st.sampled_from(sorted(TIME_UNITS)))
def test_time_values_with_units_are_seconds(number, unit):
    text = f"{number}{unit}"
    c = parse_userconfig(mirror(f'loop_interval="{text}"'), "uc.xml", "m")
    assert math.isclose(c.loop_interval_s, float(number) * TIME_UNITS[unit], rel_tol=1e-9)


@given(st.integers(min_value=1, max_value=10**5))  # 10**5 h: under the 1e9 s maximum
def test_unitless_times_use_safekit_units(number):
    c = parse_userconfig(mirror(f'loop_interval="{number}" scripts_timeout="{number}"',
                                f'<heart pulse="{number}"/><errd polltimer="{number}"/>'), "uc.xml", "m")
    assert c.loop_interval_s == number * 3600.0
    assert c.scripts_timeout_s == float(number)
    assert c.heart.pulse_s == number / 1000
    assert c.errd_poll_s == float(number)


CHECKS = """<check>
<tcp ident="db" when="both" action="stopstart"><to addr="db.local" port="5432" interval="2s" timeout="500ms"/></tcp>
<tcp ident="web"><to addr="127.0.0.1" port="80" send="GET / HTTP/1.0&#13;&#10;&#13;&#10;" expect="HTTP/1."/></tcp>
<ping ident="gw" when="pre"><to addr="10.0.0.254" interval="5"/><to addr="10.0.0.253"/></ping>
<intf ident="eth0"><to name="eth0"/></intf>
<ip ident="vip"><to addr="10.0.0.10"/></ip>
<custom ident="app" exec="check_app" arg="-q 1" action="none"/>
<module name="backend"><to addr="10.0.0.2" port="9010"/></module>
<module name="local"/>
<splitbrain ident="witness" exec="ping" arg="10.0.0.100 10.0.0.101"/>
</check>
<failover><![CDATA[
db_or_gw: if (tcp.db == down || ping.gw == failure) then swap();
if (intf.? == down && !(ip.vip == up)) then stop();
ip_vip: if (ip.vip == down) then restart();
]]></failover>"""


def test_check_section_and_failover_rules():
    c = parse_userconfig(mirror(body=CHECKS), "uc.xml", "m")
    by = {x.resource: x for x in c.checks}
    assert (by["tcp.web"].send, by["tcp.web"].expect) == ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.")
    assert (by["tcp.db"].send, by["tcp.db"].expect) == (None, None)
    assert list(by) == ["tcp.db", "tcp.web", "ping.gw", "intf.eth0", "ip.vip", "custom.app", "module.backend",
                        "module.local", "splitbrain.witness"]
    db = by["tcp.db"]
    assert (db.when, db.action, db.addrs, db.port, db.interval_s, db.timeout_s) == (
        "both", "stopstart", ("db.local",), 5432, 2.0, 0.5)
    gw = by["ping.gw"]
    assert (gw.when, gw.action, gw.addrs, gw.interval_s) == ("pre", "wait", ("10.0.0.254", "10.0.0.253"), 5.0)
    assert (by["intf.eth0"].interface, by["intf.eth0"].action) == ("eth0", "wait")
    assert (by["ip.vip"].addrs, by["ip.vip"].action, by["ip.vip"].when) == (("10.0.0.10",), "stopstart", "prim")
    assert (by["custom.app"].exec, by["custom.app"].arg, by["custom.app"].action) == ("check_app", "-q 1", "none")
    assert (by["module.backend"].addrs, by["module.backend"].port, by["module.local"].addrs) == (
        ("10.0.0.2",), 9010, ())
    assert by["splitbrain.witness"].addrs == ("10.0.0.100", "10.0.0.101")
    assert any("splitbrain: reported only: Raft quorum" in w for w in c.warnings)
    # implicit rules (custom action=none and splitbrain have none); ip_vip replaced by <failover>
    assert [(x.label, x.action) for x in c.failover_rules] == [
        ("tcp_db", "stopstart"), ("tcp_web", "restart"), ("ping_gw", "wait"), ("intf_eth0", "wait"), ("module_backend", "wait"),
        ("module_local", "wait"), ("db_or_gw", "swap"), ("line18", "stop"), ("ip_vip", "restart")]
    assert c.failover_rules[6].line == 17


@pytest.mark.parametrize("body, expected", [
    ('<check>\n<tcp ident="t"/></check>', "uc.xml:6: tcp/to: expected exactly one <to .../>, found 0"),
    ('<check>\n<tcp ident="t"><to addr="1.2.3.4"/></tcp></check>', "uc.xml:6: to@port: required"),
    ('<check>\n<tcp ident="t"><to addr="1.2.3.4" port="70000"/></tcp></check>',
     "uc.xml:6: to@port: 70000 is above the maximum 65535"),
    ('<check>\n<tcp><to addr="1.2.3.4" port="1"/></tcp></check>', "uc.xml:6: tcp@ident: required"),
    ('<check>\n<tcp ident="a b"><to addr="1.2.3.4" port="1"/></tcp></check>', "uc.xml:6: tcp@ident: 'a b' must be"),
    ('<check>\n<tcp ident="t" when="never"><to addr="h" port="1"/></tcp></check>',
     "uc.xml:6: tcp@when: 'never' must be one of pre, prim, second, both"),
    ('<check>\n<ip ident="v" when="second"><to addr="10.0.0.1"/></ip></check>',
     "uc.xml:6: ip@when: 'second' must be one of prim, both"),
    ('<check>\n<ip ident="v"><to addr="vip.example"/></ip></check>', "uc.xml:6: to@addr: 'vip.example' is not an IP"),
    ('<check>\n<tcp ident="t" action="reboot"><to addr="h" port="1"/></tcp></check>',
     "uc.xml:6: tcp@action: 'reboot' must be one of restart, stopstart, stop, wait, swap, none"),
    ('<check>\n<tcp ident="t"><to addr="h" port="1" interval="often"/></tcp></check>', "uc.xml:6: to@interval: 'often'"),
    ('<check>\n<ping ident="p"/></check>', "uc.xml:6: ping/to: expected at least one"),
    ('<check>\n<intf ident="i"><to name="../x"/></intf></check>', "uc.xml:6: to@name: '../x' is not an interface"),
    ('<check>\n<custom ident="c"/></check>', "uc.xml:6: custom@exec: required"),
    ('<check>\n<custom ident="c" exec="../../bin/sh"/></check>', "uc.xml:6: custom@exec: '../../bin/sh' must not"),
    ('<check>\n<splitbrain ident="w" exec="arping" arg="1.2.3.4"/></check>',
     "uc.xml:6: splitbrain@exec: 'arping': only exec=\"ping\""),
    ('<check>\n<splitbrain ident="w"/></check>', "uc.xml:6: splitbrain@arg: required"),
    ('<check><ping ident="p"><to addr="h"/></ping>\n<ping ident="p"><to addr="h"/></ping></check>',
     "uc.xml:6: ping@ident: resource ping.p is defined twice (first at line 5)"),
    ('<check><tcp ident="t"><to addr="h" port="1"/></tcp></check>\n<failover>\n'
     'a: if (tcp.t == down) then restart();\nb: if (tcp.t == down then stop();\n</failover>',
     "uc.xml:8: failover: expected ')' after 'down', found 'then'"),
    ('<failover><![CDATA[\n\nx: if (tcp.nope == down) then stop();]]></failover>',
     "uc.xml:7: failover: rule 'x': no resource tcp.nope in <errd> or <check>"),
    ('<farm><lan><node name="a" addr="1.2.3.4"/></lan></farm>', "uc.xml:5: farm: only a farm module has <farm>"),
    ('<vip><loadbalancing_list/></vip>', "uc.xml:5: vip/loadbalancing_list: load balancing is only for a farm"),
])
def test_malformed_check_and_failover_are_refused_with_file_line(body, expected):
    assert error_of(mirror(body=body)).startswith(expected)


def farm(body: str) -> bytes:
    return f'<safe>\n<service mode="farm">\n{body}\n</service>\n</safe>'.encode()


def test_farm_nodes_and_load_balancing_rules():
    c = parse_userconfig(farm(
        '<farm><lan name="default"><node name="n1" addr="10.0.0.1" power="2"/><node name="n2" addr="n2.local"/>'
        '</lan></farm><vip><interface_list/><loadbalancing_list><group name="web">'
        '<rule port="80" proto="tcp" filter="on_port"/><rule proto="udp"/></group></loadbalancing_list></vip>'),
        "uc.xml", "f")
    assert c.farm_nodes == (FarmNode("n1", "10.0.0.1", 2), FarmNode("n2", "n2.local", 1))
    assert c.lb_rules == (LbRule(80, "tcp", "on_port"), LbRule(None, "udp", "on_addr"))
    assert not any("farm" in w for w in c.warnings)


@pytest.mark.parametrize("body, expected", [
    ('<farm><lan><node addr="10.0.0.1"/></lan></farm>', "uc.xml:3: node@name: required"),
    ('<farm><lan><node name="n1" addr="10.0.0.1" power="0"/></lan></farm>', "uc.xml:3: node@power: 0 is below"),
    ('<farm><lan><node name="n1" addr="10.0.0.1" power="1001"/></lan></farm>', "uc.xml:3: node@power: 1001 is above"),
    ('<farm><lan><node name="n1" addr="10.0.0.1" power="x"/></lan></farm>', "uc.xml:3: node@power: 'x' is not"),
    ('<farm><lan><node name="n1" addr="bad addr"/></lan></farm>', "uc.xml:3: node@addr: 'bad addr' is not"),
    ('<farm><lan><node name="n1" addr="10.0.0.1"/><node name="n1" addr="10.0.0.2"/></lan></farm>',
     "uc.xml:3: node@name: n1 is listed twice"),
    ('<farm><lan><node name="n1" addr="10.0.0.1"/><node name="n2" addr="10.0.0.1"/></lan></farm>',
     "uc.xml:3: node@addr: 10.0.0.1 is listed twice"),
    ('<vip><loadbalancing_list><group><rule port="0"/></group></loadbalancing_list></vip>',
     "uc.xml:3: rule@port: 0 is below the minimum 1"),
    ('<vip><loadbalancing_list><group><rule proto="sctp"/></group></loadbalancing_list></vip>',
     "uc.xml:3: rule@proto: 'sctp' must be one of tcp, udp"),
    ('<vip><loadbalancing_list><group><rule filter="on_mac"/></group></loadbalancing_list></vip>',
     "uc.xml:3: rule@filter: 'on_mac' must be one of on_addr, on_port"),
])
def test_malformed_farm_is_refused(body, expected):
    assert error_of(farm(body)).startswith(expected)


def test_replicated_mountpoint_flags_only_the_directories_that_ask():
    c = parse_userconfig(mirror(body='<rfs><replicated dir="/a"/>'
                                     '<replicated dir="/b" mountpoint="yes"/></rfs>'), "uc.xml", "m")
    assert c.rfs.dirs == ("/a", "/b") and c.rfs.mountpoints == (False, True)
    assert parse_userconfig(mirror(), "uc.xml", "m").rfs.mountpoints == ()
