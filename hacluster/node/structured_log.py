"""One structured line per event: ``key=value`` pairs (logfmt).

Every line carries wall time, CLOCK_MONOTONIC (``mono``: lab hosts share the
machine's monotonic clock, so lines from different daemons can be ordered),
the module (logger name without the ``hacluster.`` prefix), the node, and the
node's current Raft state; callers add ``event=`` and, where one applies,
``epoch=``.
"""
from __future__ import annotations

import ast
import logging
import sys
import time
import warnings
from typing import Callable


class _ContextFilter(logging.Filter):
    def __init__(self, node: str, state: Callable[[], str]) -> None:
        super().__init__()
        self.node = node
        self.state = state

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        try:
            record.raft_state = self.state()
        except Exception:  # noqa: BLE001 - logging must never fail
            record.raft_state = "unknown"
        record.mono = time.monotonic()
        name = record.name
        record.module_name = name.split(".", 1)[1] if name.startswith("hacluster.") else name
        return True


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        # mono, module_name, node and raft_state are set on every record by the
        # filter above: LogRecord does not declare them
        fields = vars(record)
        head = (f"ts={ts}.{int(record.msecs):03d}Z mono={fields['mono']:.6f} "
                f"level={record.levelname.lower()} module={fields['module_name']} "
                f"node={fields['node']} state={fields['raft_state']}")
        line = f"{head} {record.getMessage()}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup(node: str, state: Callable[[], str], level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(node, state))
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _unquote(token: str) -> str:
    """A quoted value as repr() writes it (callers log with %r; so does ``exc=``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(token)
    except (ValueError, SyntaxError):
        return token[1:-1]
    return value if isinstance(value, str) else token[1:-1]


def parse_line(line: str) -> dict[str, str]:
    """Split a logfmt line into fields. Quoted values ("x y", or repr()'s 'x y', with
    backslash escapes) may hold spaces and quotes, and come back unescaped."""
    out: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        eq = line.find("=", i)
        if eq < 0:
            break
        key = line[i:eq]
        j = eq + 1
        if j < n and line[j] in "\"'":  # "x y" or Python's repr 'x y'
            quote, end = line[j], j + 1
            while end < n and line[end] != quote:
                end += 2 if line[end] == "\\" else 1
            if end >= n:  # unterminated: the rest of the line
                out[key] = line[j + 1:]
                i = n
            else:
                out[key] = _unquote(line[j:end + 1])
                i = end + 1
        else:
            end = line.find(" ", j)
            end = n if end < 0 else end
            out[key] = line[j:end]
            i = end
    return out
