import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkers.failover_rules import (ACTIONS, And, Compare, FailoverRulesError, Not, Or, Rule, RuleEngine,
                                     evaluate, fired, parse_rules, render)

TEXT = """
# comments and blank lines are fine
myrule: if (tcp.db == down) then stopstart();
if (intf.eth0 == down && ping.gw == failure) then wait();
ip_failure: if (ip.? == down) then stopstart();
both: if (!(errd.app == up) || (custom.x != init && module.other == success))
      then restart();
"""


def test_parses_safekit_rules_with_labels_aliases_and_wildcards():
    rules = parse_rules(TEXT)
    assert [(r.label, r.action, r.line) for r in rules] == [
        ("myrule", "stopstart", 3), ("line4", "wait", 4), ("ip_failure", "stopstart", 5), ("both", "restart", 6)]
    assert rules[1].condition == And(Compare("intf.eth0", "==", "down"), Compare("ping.gw", "==", "down"))
    assert rules[3].condition == Or(Not(Compare("errd.app", "==", "up")),
                                    And(Compare("custom.x", "!=", "init"), Compare("module.other", "==", "up")))


def test_fired_follows_values_and_wildcards():
    rules = parse_rules(TEXT)
    values = {"tcp.db": "up", "intf.eth0": "down", "ping.gw": "up", "ip.v1": "up", "ip.v2": "down",
              "errd.app": "up", "custom.x": "init", "module.other": "up"}
    assert fired(rules, values) == [("ip_failure", "stopstart")]
    values.update({"ping.gw": "down", "tcp.db": "down"})
    assert fired(rules, values) == [("myrule", "stopstart"), ("line4", "wait"), ("ip_failure", "stopstart")]


def test_missing_resource_is_init():
    [rule] = parse_rules("r: if (tcp.x == init) then stop();")
    assert evaluate(rule.condition, {})


def test_engine_fires_on_edges_and_reports_holding_waits():
    engine = RuleEngine(parse_rules("w: if (intf.eth0 == down) then wait();\nr: if (tcp.db == down) then restart();"))
    assert engine.update({"intf.eth0": "up", "tcp.db": "up"}) == []
    assert engine.update({"intf.eth0": "down", "tcp.db": "up"}) == [("w", "wait")]
    assert engine.update({"intf.eth0": "down", "tcp.db": "down"}) == [("r", "restart")]  # w not repeated
    assert engine.holding({"intf.eth0": "down"}) == ["w"]
    assert engine.update({"intf.eth0": "up", "tcp.db": "up"}) == []
    assert engine.holding({"intf.eth0": "up"}) == []
    assert engine.update({"intf.eth0": "down", "tcp.db": "up"}) == [("w", "wait")]


@pytest.mark.parametrize("text, message", [
    ("a: if (tcp.db == down then restart();", "<failover> line 1: expected ')' after 'down', found 'then'"),
    ("\n\na: if (tcp.db == down) then reboot();",
     "<failover> line 3: expected an action (restart, stopstart, stop, wait, swap) after 'then', found 'reboot'"),
    ("a: if (tcp.db = down) then stop();", "<failover> line 1: unexpected character '='"),
    ("a: if (foo.x == up) then stop();", "<failover> line 1: unknown resource class 'foo'"),
    ("a: if (tcp.db == sideways) then stop();", "<failover> line 1: expected a value (up, down, init"),
    ("a: if (tcp.db == up) then stop()", "<failover> line 1: expected ';' after ')', found end of text"),
    ("a: if (tcp.db) then stop();", "<failover> line 1: expected '==' or '!=' after 'tcp.db', found ')'"),
    ("a: if (tcp.db == up) then stop();\na: if (tcp.db == down) then stop();",
     "<failover> line 2: rule 'a' is defined twice (first at line 1)"),
    ("restart();", "<failover> line 1: expected a rule"),
    ("a: if () then stop();", "<failover> line 1: expected a resource (class.ident), '!' or '(' after '('"),
])
def test_errors_are_one_line_with_line_numbers(text, message):
    with pytest.raises(FailoverRulesError) as info:
        parse_rules(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


RESOURCES = ["tcp.db", "ping.gw", "intf.eth0", "ip.192.168.1.10", "custom.x", "errd.app"]
VALUE_NAMES = ["up", "down", "init"]
compares = st.builds(Compare, st.sampled_from(RESOURCES + ["ip.?"]), st.sampled_from(["==", "!="]),
                     st.sampled_from(VALUE_NAMES))
exprs = st.recursive(compares, lambda inner: st.one_of(
    st.builds(Not, inner), st.builds(And, inner, inner), st.builds(Or, inner, inner)), max_leaves=12)


def reference(expr, values):
    """An independent evaluation: Python's own operators over the tree."""
    match expr:
        case Compare(resource="ip.?", op=op, value=v):
            ips = [x for n, x in values.items() if n.startswith("ip.")]
            return any((x == v) if op == "==" else (x != v) for x in ips)
        case Compare(resource=r, op="==", value=v):
            return values.get(r, "init") == v
        case Compare(resource=r, op="!=", value=v):
            return values.get(r, "init") != v
        case Not(operand=o):
            return not reference(o, values)
        case And(left=a, right=b):
            return reference(a, values) and reference(b, values)
        case Or(left=a, right=b):
            return reference(a, values) or reference(b, values)


@given(exprs, st.sampled_from(ACTIONS))
def test_rendered_rules_parse_back(expr, action):
    rule = Rule("r1", expr, action, 1)
    assert parse_rules(rule.render()) == [rule]


@given(exprs, st.dictionaries(st.sampled_from(RESOURCES), st.sampled_from(VALUE_NAMES)))
def test_evaluator_matches_reference(expr, values):
    assert evaluate(expr, values) == reference(expr, values)


@given(st.lists(st.tuples(compares, st.sampled_from(["&&", "||"])), min_size=1, max_size=6))
def test_and_binds_tighter_than_or_without_parentheses(parts):
    text = " ".join(f"{render(c)} {op}" for c, op in parts)[:-3]
    [rule] = parse_rules(f"r: if ({text}) then stop();")
    python = " ".join(f"C{i} {'and' if op == '&&' else 'or'}" for i, (_, op) in enumerate(parts))
    python = python.rsplit(" ", 1)[0]
    values = {"tcp.db": "down", "ping.gw": "up"}
    env = {f"C{i}": reference(c, values) for i, (c, _) in enumerate(parts)}
    assert evaluate(rule.condition, values) == eval(python, {}, env)
