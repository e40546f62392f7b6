"""SafeKit's simple ``<failover>`` rules: a small grammar, a parser and a pure evaluator.

    rules   := rule*
    rule    := [LABEL ':'] 'if' '(' expr ')' 'then' ACTION '(' ')' ';'
    expr    := and ('||' and)*
    and     := unary ('&&' unary)*
    unary   := '!' unary | '(' expr ')' | RESOURCE ('==' | '!=') VALUE
    RESOURCE:= class '.' ident | class '.?'     (class.? = any resource of that class)
    VALUE   := up | down | init, and the aliases success (= up), failure (= down)
    ACTION  := restart | stopstart | stop | wait | swap

Example (one rule per line is usual, but a rule may span lines; ``#`` starts a comment):

    tcp_db: if (tcp.db == down) then restart();
    if (intf.eth0 == down && ping.gw == down) then wait();
    ip_failure: if (ip.? == down) then stopstart();

A rule without a label is named ``line<N>``. Errors are one line:
``<failover> line 3: expected ')' after 'down', found 'then'``.

A condition is at most ``MAX_DEPTH`` operators deep (``!``, parentheses and each
``&&``/``||`` of a chain count), checked while parsing: what parses also evaluates
(evaluation recurses over the tree), and a hostile text cannot exhaust the stack.

Semantics: a comparison with a wildcard is true if any resource of the class
satisfies it; a resource not in the table compares as ``init``. :class:`RuleEngine`
fires a rule when its condition *becomes* true (edge), so a resource that stays down
does not repeat the action at every change of another resource.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

from .resource import CLASSES, VALUES, valid_ident

ACTIONS = ("restart", "stopstart", "stop", "wait", "swap")
MAX_DEPTH = 64
VALUE_ALIASES = {"success": "up", "failure": "down"}
WILDCARD = "?"

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<resource>[A-Za-z_][A-Za-z0-9_]*\.(?:\?|[A-Za-z0-9_][A-Za-z0-9_.-]*))
  | (?P<word>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<op>==|!=|&&|\|\||[!():;])
""", re.VERBOSE)


class FailoverRulesError(ValueError):
    """A malformed rule; ``line`` is 1-based within the rules text."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"<failover> line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class Compare:
    resource: str  # class.ident or class.?
    op: str        # == or !=
    value: str     # canonical: up|down|init


@dataclass(frozen=True)
class Not:
    operand: "Expr"


@dataclass(frozen=True)
class And:
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True)
class Or:
    left: "Expr"
    right: "Expr"


Expr = Union[Compare, Not, And, Or]


@dataclass(frozen=True)
class Rule:
    label: str
    condition: Expr
    action: str
    line: int = 0

    def render(self) -> str:
        return f"{self.label}: if ({render(self.condition)}) then {self.action}();"


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int


def _tokens(text: str) -> list[_Tok]:
    result, line, pos = [], 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise FailoverRulesError(line, f"unexpected character {text[pos]!r}")
        kind = match.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            result.append(_Tok(kind, match.group(), line))
        pos = match.end()
    result.append(_Tok("end", "end of text", line))
    return result


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.nesting = 0              # '!' and '(' open around the current token
        self.depth: dict[int, int] = {}  # id(node) -> its depth, for nodes of this parse

    def node(self, expr: Expr, *operands: Expr) -> Expr:
        """Record ``expr``'s depth (1 + its deepest operand); refuse it past MAX_DEPTH."""
        depth = 1 + max((self.depth[id(o)] for o in operands), default=0)
        if depth > MAX_DEPTH:
            raise FailoverRulesError(self.peek().line, f"condition nested more than {MAX_DEPTH} "
                                                       "operators deep ('!', '(', '&&', '||')")
        self.depth[id(expr)] = depth
        return expr

    def peek(self, offset: int = 0) -> _Tok:
        return self.toks[min(self.i + offset, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, expected: str) -> FailoverRulesError:
        tok = self.peek()
        after = f" after {self.toks[self.i - 1].text!r}" if self.i else ""
        found = tok.text if tok.kind == "end" else repr(tok.text)
        return FailoverRulesError(tok.line, f"expected {expected}{after}, found {found}")

    def expect(self, text: str) -> _Tok:
        if self.peek().text != text or self.peek().kind not in ("op", "word"):
            raise self.fail(repr(text))
        return self.take()

    def rules(self) -> list[Rule]:
        result: list[Rule] = []
        seen: dict[str, int] = {}
        while self.peek().kind != "end":
            rule = self.rule()
            if rule.label in seen:
                raise FailoverRulesError(rule.line, f"rule {rule.label!r} is defined twice (first at line {seen[rule.label]})")
            seen[rule.label] = rule.line
            result.append(rule)
        return result

    def rule(self) -> Rule:
        first = self.peek()
        label = f"line{first.line}"
        if first.kind == "word" and first.text != "if" and self.peek(1).text == ":":
            label = self.take().text
            self.take()
        elif first.text != "if":
            raise self.fail("a rule ('label: if (...) then action();')")
        self.expect("if")
        self.expect("(")
        condition = self.expr()
        self.expect(")")
        self.expect("then")
        action_tok = self.peek()
        if action_tok.kind != "word" or action_tok.text not in ACTIONS:
            raise self.fail(f"an action ({', '.join(ACTIONS)})")
        self.take()
        self.expect("(")
        self.expect(")")
        self.expect(";")
        return Rule(label, condition, action_tok.text, first.line)

    def expr(self) -> Expr:
        left = self.conjunction()
        while self.peek().text == "||":
            self.take()
            right = self.conjunction()
            left = self.node(Or(left, right), left, right)
        return left

    def conjunction(self) -> Expr:
        left = self.unary()
        while self.peek().text == "&&":
            self.take()
            right = self.unary()
            left = self.node(And(left, right), left, right)
        return left

    def unary(self) -> Expr:
        tok = self.peek()
        if tok.text in ("!", "("):
            # The parser recurses per '!' and '(': bounded before the stack is.
            self.nesting += 1
            if self.nesting > MAX_DEPTH:
                raise FailoverRulesError(tok.line, f"condition nested more than {MAX_DEPTH} "
                                                   "operators deep ('!', '(', '&&', '||')")
            try:
                self.take()
                if tok.text == "!":
                    operand = self.unary()
                    return self.node(Not(operand), operand)
                inner = self.expr()
                self.expect(")")
                return inner
            finally:
                self.nesting -= 1
        if tok.kind != "resource":
            raise self.fail("a resource (class.ident), '!' or '('")
        self.take()
        klass, _, ident = tok.text.partition(".")
        if klass not in CLASSES:
            raise FailoverRulesError(tok.line, f"unknown resource class {klass!r} in {tok.text!r} "
                                               f"(one of {', '.join(CLASSES)})")
        if ident != WILDCARD and not valid_ident(ident):
            raise FailoverRulesError(tok.line, f"{tok.text!r} is not a valid resource name")
        op = self.peek()
        if op.text not in ("==", "!="):
            raise self.fail("'==' or '!='")
        self.take()
        value = self.peek()
        canonical = VALUE_ALIASES.get(value.text, value.text)
        if value.kind != "word" or canonical not in VALUES:
            raise self.fail("a value (up, down, init, success, failure)")
        self.take()
        return self.node(Compare(tok.text, op.text, canonical))


def parse_rules(text: str) -> list[Rule]:
    """Parse a ``<failover>`` text; raises FailoverRulesError (line-numbered)."""
    return _Parser(text).rules()


def render(expr: Expr) -> str:
    """Text that parses back to ``expr`` (fully parenthesised)."""
    if isinstance(expr, Compare):
        return f"{expr.resource} {expr.op} {expr.value}"
    if isinstance(expr, Not):
        return f"!({render(expr.operand)})"
    op = "&&" if isinstance(expr, And) else "||"
    return f"({render(expr.left)}) {op} ({render(expr.right)})"


def resources_of(expr: Expr) -> set[str]:
    if isinstance(expr, Compare):
        return {expr.resource}
    if isinstance(expr, Not):
        return resources_of(expr.operand)
    return resources_of(expr.left) | resources_of(expr.right)


def evaluate(expr: Expr, values: Mapping[str, str]) -> bool:
    """The condition's truth for resource ``values`` (name -> up|down|init)."""
    if isinstance(expr, Compare):
        klass, _, ident = expr.resource.partition(".")
        if ident == WILDCARD:
            candidates = [v for n, v in values.items() if n.partition(".")[0] == klass]
        else:
            candidates = [values.get(expr.resource, "init")]
        if expr.op == "==":
            return any(v == expr.value for v in candidates)
        return any(v != expr.value for v in candidates)
    if isinstance(expr, Not):
        return not evaluate(expr.operand, values)
    if isinstance(expr, And):
        return evaluate(expr.left, values) and evaluate(expr.right, values)
    return evaluate(expr.left, values) or evaluate(expr.right, values)


def fired(rules: Iterable[Rule], values: Mapping[str, str]) -> list[tuple[str, str]]:
    """(label, action) of every rule whose condition holds now, in rule order."""
    return [(r.label, r.action) for r in rules if evaluate(r.condition, values)]


class RuleEngine:
    """Edge-triggered rules: ``update(values)`` returns the rules that became true."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._true: set[str] = set()

    def update(self, values: Mapping[str, str]) -> list[tuple[str, str]]:
        now_true = {label for label, _ in fired(self.rules, values)}
        rising = [(r.label, r.action) for r in self.rules if r.label in now_true - self._true]
        self._true = now_true
        return rising

    def holding(self, values: Mapping[str, str], action: str = "wait") -> list[str]:
        """Labels of ``action`` rules true now (a ``wait`` holds WAIT while any is)."""
        return [r.label for r in self.rules if r.action == action and evaluate(r.condition, values)]

    def reset(self) -> None:
        self._true.clear()
