"""Resources: the named values (``class.ident`` = init|up|down) that checkers report.

A resource starts ``init`` (not checked yet, or its checker is inactive), and records
the monotonic time of its last change (``since``). Checkers only report; the failover
rules and the action loop decide what to do about a value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

INIT, UP, DOWN = "init", "up", "down"
VALUES = (INIT, UP, DOWN)
CLASSES = ("errd", "tcp", "ping", "intf", "ip", "custom", "module", "splitbrain")
# ident may hold dots and digits (SafeKit names like intf.192.168.1.0)
_IDENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# the module states in which a checker of each `when`/`class` runs (SafeKit semantics:
# prim = on the node running the application alone or as primary; pre = as soon as the
# module is started, WAIT included, so that a `wait` action can hold it there)
_ACTIVE_IN = {
    "prim": frozenset({"PRIM", "ALONE", "UP"}),
    "second": frozenset({"SECOND"}),
    "both": frozenset({"PRIM", "ALONE", "SECOND", "UP"}),
    "pre": frozenset({"PRIM", "ALONE", "SECOND", "UP", "WAIT"}),
}
WHEN = tuple(_ACTIVE_IN)


def is_active(when: str, module_state: str) -> bool:
    """True when a checker with ``when`` (prim|second|both|pre) runs in ``module_state``."""
    return module_state in _ACTIVE_IN[when]


def valid_ident(ident: str) -> bool:
    return bool(_IDENT.fullmatch(ident))


def resource_name(klass: str, ident: str) -> str:
    """``class.ident``; raises ValueError naming the bad part."""
    if klass not in CLASSES:
        raise ValueError(f"resource class {klass!r} must be one of {', '.join(CLASSES)}")
    if not valid_ident(ident):
        raise ValueError(f"resource ident {ident!r} must be letters, digits, '_', '.', '-' (at most 128)")
    return f"{klass}.{ident}"


def split_name(name: str) -> tuple[str, str]:
    """``(class, ident)`` of a resource name; raises ValueError if it is not one."""
    klass, dot, ident = name.partition(".")
    if not dot:
        raise ValueError(f"resource {name!r} must be class.ident (e.g. tcp.db)")
    resource_name(klass, ident)
    return klass, ident


@dataclass(frozen=True)
class Resource:
    name: str
    value: str
    since: float  # monotonic seconds of the last change

    @property
    def klass(self) -> str:
        return self.name.partition(".")[0]

    @property
    def ident(self) -> str:
        return self.name.partition(".")[2]

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "since": self.since}


class ResourceTable:
    """The current value of every declared resource. Not thread-safe: use from one loop."""

    def __init__(self) -> None:
        self._resources: dict[str, Resource] = {}

    def declare(self, name: str, now: float) -> Resource:
        """Add ``name`` as ``init`` (kept as it is if already declared)."""
        split_name(name)
        if name not in self._resources:
            self._resources[name] = Resource(name, INIT, now)
        return self._resources[name]

    def set(self, name: str, value: str, now: float) -> Resource | None:
        """Set a declared resource; the new Resource if the value changed, else None."""
        if value not in VALUES:
            raise ValueError(f"resource {name}: value {value!r} must be one of {', '.join(VALUES)}")
        current = self._resources.get(name)
        if current is None:
            raise KeyError(f"resource {name} is not declared")
        if current.value == value:
            return None
        changed = Resource(name, value, now)
        self._resources[name] = changed
        return changed

    def get(self, name: str) -> Resource:
        return self._resources[name]

    def value(self, name: str) -> str:
        return self._resources[name].value

    def values(self) -> dict[str, str]:
        return {n: r.value for n, r in self._resources.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._resources

    def __iter__(self) -> Iterator[Resource]:
        return iter(sorted(self._resources.values(), key=lambda r: r.name))

    def __len__(self) -> int:
        return len(self._resources)


class Debounce:
    """Consecutive-observation filter: down after ``fail_count`` failures in a row, up
    after ``ok_count`` successes in a row; ``init`` until the first verdict.

    Pure: feed it ``observe(ok)``; it returns the value to report.
    """

    def __init__(self, fail_count: int = 1, ok_count: int = 1) -> None:
        if fail_count < 1 or ok_count < 1:
            raise ValueError("fail_count and ok_count must be at least 1")
        self.fail_count = fail_count
        self.ok_count = ok_count
        self.value = INIT
        self._fails = 0
        self._oks = 0

    def observe(self, ok: bool) -> str:
        if ok:
            self._oks, self._fails = self._oks + 1, 0
            if self._oks >= self.ok_count:
                self.value = UP
        else:
            self._fails, self._oks = self._fails + 1, 0
            if self._fails >= self.fail_count:
                self.value = DOWN
        return self.value

    def reset(self) -> None:
        self.value, self._fails, self._oks = INIT, 0, 0
