"""Pure decision parts of every checker, the resource table and the action loop."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkers.action_loop import ActionLoop, MaintenanceFlags, strongest
from checkers.custom import CustomSetError, apply_set_request, custom_argv
from checkers.errd import ErrdWatch, ProcessSample, ProcSpec, count_value, matches
from checkers.intf import IntfDecision, IntfSample, intf_value
from checkers.ip import IpSample, arp_claimant, build_arp_probe, ip_value, mac_bytes
from checkers.module import ModuleWatch
from checkers.ping import build_echo, checksum, is_echo_reply
from checkers.resource import Debounce, ResourceTable, is_active, resource_name, split_name
from checkers.tcp import TcpDecision
from checkers.witness import WitnessDecision, witness_value


def test_table_records_changes_with_their_time():
    table = ResourceTable()
    table.declare("tcp.db", 1.0)
    assert table.get("tcp.db").value == "init"
    assert table.set("tcp.db", "up", 2.0).since == 2.0
    assert table.set("tcp.db", "up", 3.0) is None  # unchanged: since stays 2.0
    assert table.get("tcp.db").since == 2.0
    with pytest.raises(ValueError, match="value 'sideways' must be one of init, up, down"):
        table.set("tcp.db", "sideways", 4.0)
    with pytest.raises(KeyError, match="not declared"):
        table.set("tcp.other", "up", 4.0)
    assert [r.as_dict() for r in table] == [{"name": "tcp.db", "value": "up", "since": 2.0}]


def test_resource_names():
    assert resource_name("intf", "192.168.1.0") == "intf.192.168.1.0"
    assert split_name("errd.my-app") == ("errd", "my-app")
    with pytest.raises(ValueError, match="class 'disk'"):
        resource_name("disk", "x")
    with pytest.raises(ValueError, match="must be class.ident"):
        split_name("tcp")


@pytest.mark.parametrize("when, state, active", [
    ("prim", "PRIM", True), ("prim", "ALONE", True), ("prim", "SECOND", False), ("second", "SECOND", True),
    ("both", "SECOND", True), ("both", "WAIT", False), ("pre", "WAIT", True), ("pre", "STOP", False),
])
def test_checker_activation_by_module_state(when, state, active):
    assert is_active(when, state) is active


@given(st.integers(1, 4), st.integers(1, 4), st.lists(st.booleans(), max_size=30))
def test_debounce_changes_only_after_enough_consecutive_observations(fail_count, ok_count, oks):
    d = Debounce(fail_count, ok_count)
    expected, run = "init", 0
    for i, ok in enumerate(oks):
        run = run + 1 if i and oks[i - 1] == ok else 1
        if run >= (ok_count if ok else fail_count):
            expected = "up" if ok else "down"
        assert d.observe(ok) == expected


def test_tcp_goes_down_after_n_failures_and_back_up():
    d = TcpDecision(fail_count=3)
    assert [d.observe(x) for x in (True, False, False, False, True)] == ["up", "up", "up", "down", "up"]


def sample(pid, start_ticks, name, *args):
    return ProcessSample(pid, start_ticks, name, (f"/usr/bin/{name}", *args))


def test_errd_matching_by_name_regex_and_args():
    assert matches(ProcSpec("sleep"), sample(1, 100, "sleep", "100"))
    assert matches(ProcSpec("a-very-long-program-name"),
                   ProcessSample(1, 100, "a-very-long-pro", ("/opt/a-very-long-program-name",)))
    assert not matches(ProcSpec("slee"), sample(1, 100, "sleep"))
    assert matches(ProcSpec("java.*", True, ".*tomcat.*"), sample(1, 100, "java", "-jar", "tomcat.jar"))
    assert not matches(ProcSpec("java.*", True, ".*tomcat.*"), sample(1, 100, "java", "-jar", "jetty.jar"))


def test_errd_counts_against_atleast_and_atmax():
    spec = ProcSpec("w", atleast=1, atmax=2)
    assert [count_value(spec, n) for n in range(4)] == ["down", "up", "up", "down"]
    assert count_value(ProcSpec("w", atleast=0), 0) == "up"


def test_errd_pid_reuse_is_a_death():
    watch = ErrdWatch(ProcSpec("app"))
    first = watch.observe([sample(100, 100, "app")])
    assert (first.value, first.count, first.started) == ("up", 1, ((100, 100),))
    # the app died and an unrelated... no: a new app process got the same pid later
    again = watch.observe([sample(100, 900, "app")])
    assert again.died == ((100, 100),) and again.started == ((100, 900),) and again.value == "up"
    gone = watch.observe([sample(100, 950, "bash")])
    assert (gone.value, gone.count, gone.died) == ("down", 0, ((100, 900),))
    assert watch.observe(None).value == "down"


@pytest.mark.parametrize("s, value", [
    (IntfSample(True, "up", True), "up"), (IntfSample(True, "unknown", True), "up"),
    (IntfSample(True, "down", False), "down"), (IntfSample(True, "up", False), "down"),
    (IntfSample(True, "down", None), "down"), (IntfSample(False), "down"), (None, "down"),
])
def test_intf_value(s, value):
    assert intf_value(s) == value


def test_intf_debounced():
    d = IntfDecision(fail_count=2)
    down = IntfSample(True, "down", False)
    assert [d.observe_sample(x) for x in (IntfSample(True, "up", True), down, down)] == ["up", "up", "down"]


def test_ip_value():
    assert ip_value(IpSample(True)) == "up"
    assert ip_value(IpSample(False)) == "down"
    assert ip_value(IpSample(True, ("02:00:00:00:00:02",))) == "down"
    assert ip_value(None) == "down"


def test_arp_probe_and_claimant():
    mine, other = mac_bytes("02:00:00:00:00:01"), mac_bytes("02:00:00:00:00:02")
    probe = build_arp_probe(mine, "10.0.0.10")
    assert len(probe) == 42 and probe[:6] == b"\xff" * 6
    assert arp_claimant(probe, "10.0.0.10", frozenset({mine})) is None  # sender 0.0.0.0: nobody claims
    reply = bytearray(probe)
    reply[6:12] = other
    reply[20:22] = b"\x00\x02"   # op = reply
    reply[22:28] = other          # sha
    reply[28:32] = bytes([10, 0, 0, 10])  # spa = the VIP
    assert arp_claimant(bytes(reply), "10.0.0.10", frozenset({mine})) == other
    assert arp_claimant(bytes(reply), "10.0.0.10", frozenset({mine, other})) is None  # shared farm MAC
    assert arp_claimant(bytes(reply), "10.0.0.11", frozenset({mine})) is None


def test_icmp_echo_build_and_match():
    echo = build_echo(0x1234, 7, b"payload")
    assert checksum(echo) == 0
    reply = bytes([0, 0]) + echo[2:]
    assert is_echo_reply(reply, 0x1234, 7, b"payload", has_ip_header=False)
    assert is_echo_reply(reply, None, 7, b"payload", has_ip_header=False)
    assert not is_echo_reply(reply, 0x1234, 8, b"payload", has_ip_header=False)
    assert not is_echo_reply(echo, 0x1234, 7, b"payload", has_ip_header=False)  # our own request
    assert is_echo_reply(bytes([0x45]) + bytes(19) + reply, 0x1234, 7, b"payload", has_ip_header=True)


def test_module_watch_reports_restart_of_dependency():
    w = ModuleWatch()
    assert [w.observe(o) for o in (("PRIM", 1), ("PRIM", 1), ("PRIM", 2), ("PRIM", 2),
                                   ("WAIT", 2), None, ("SECOND", 3))] == [
        "up", "up", "down", "up", "down", "down", "up"]


def test_witness_value_needs_enough_addresses():
    assert witness_value({"a": True, "b": False}) == "up"
    assert witness_value({"a": True, "b": False}, need=2) == "down"
    assert witness_value({}) == "down"
    d = WitnessDecision(need=1, fail_count=2)
    assert [d.observe_reachable(r) for r in ({"a": True}, {"a": False}, {"a": False})] == ["up", "up", "down"]


def test_custom_set_request_validates_and_records():
    table = ResourceTable()
    table.declare("custom.app", 0.0)
    table.declare("tcp.db", 0.0)
    assert apply_set_request(table, "custom.app", "down", 5.0).since == 5.0
    assert apply_set_request(table, "custom.app", "down", 6.0) is None
    for resource, value, message in [
        ("custom.nope", "up", "set -r custom.nope: no such resource"),
        ("tcp.db", "up", "set -r tcp.db: only custom.* resources"),
        ("custom.app", "init", "set -r custom.app -v init: value must be up or down"),
        ("custom", "up", "set -r custom: resource 'custom' must be class.ident"),
    ]:
        with pytest.raises(CustomSetError, match=message):
            apply_set_request(table, resource, value, 7.0)
    assert table.get("custom.app").value == "down" and table.get("tcp.db").value == "init"


def test_custom_argv(tmp_path):
    assert custom_argv(tmp_path, "check.sh", "-f '/a b'") == [str(tmp_path / "check.sh"), "-f", "/a b"]
    assert custom_argv(tmp_path, "/usr/bin/true", None) == ["/usr/bin/true"]


def test_maxloop_then_stop_with_a_log_line_and_resetloop():
    loop = ActionLoop(maxloop=3, loop_interval_s=100.0, module="web")
    assert [loop.decide("restart", "errd.app", t).action for t in (0, 10, 20)] == ["restart"] * 3
    over = loop.decide("stopstart", "tcp.db", 30)
    assert over.action == "stop" and over.requested == "stopstart"
    assert over.log_line == ("event=maxloop_reached module=web cause=tcp.db requested=stopstart action=stop "
                             "count=3 maxloop=3 loop_interval_s=100")
    assert loop.decide("restart", "errd.app", 100).action == "restart"  # t=0 has left the window
    loop.resetloop()
    assert loop.count(101) == 0
    assert loop.decide("wait", "intf.eth0", 101).action == "wait" and loop.count(101) == 0  # not counted
    assert ActionLoop(0, 10).decide("restart", "x", 0).action == "stop"


@given(st.integers(0, 5), st.lists(st.floats(0, 50), max_size=30).map(sorted))
def test_never_more_than_maxloop_counted_actions_in_any_window(maxloop, times):
    loop = ActionLoop(maxloop, 10.0)
    ran = [t for t in times if loop.decide("restart", "r", t).action == "restart"]
    for t in ran:
        assert sum(1 for u in ran if t <= u < t + 10.0) <= maxloop


def test_strongest_action_and_maintenance_flags():
    assert strongest(["restart", "wait", "stopstart"]) == "wait"
    assert strongest(["restart", "swap"]) == "swap"
    assert strongest([]) is None
    flags = MaintenanceFlags()
    flags.set("errd", False)
    assert not flags.allows("errd.app") and flags.allows("tcp.db")
    flags.set("checker", False)
    assert not flags.allows("tcp.db")
    with pytest.raises(ValueError, match="must be errd or checker"):
        flags.set("ping", False)
