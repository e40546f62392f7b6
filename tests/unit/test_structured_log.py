"""hacluster/node/structured_log.py: logfmt lines and their parser."""
from __future__ import annotations

import logging
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.node import structured_log
from hacluster.node.structured_log import parse_line


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def format_record(logger_name: str, msg: str, *args, state=lambda: "leader", exc_info=None,
                  level=logging.INFO) -> str:
    """A record through the same filter + formatter that setup() installs."""
    record = logging.LogRecord(logger_name, level, __file__, 1, msg, args, exc_info)
    assert structured_log._ContextFilter("n1", state).filter(record) is True
    return structured_log._LogfmtFormatter().format(record)


def test_setup_writes_parseable_lines_to_stderr(restore_root_logger, capsys):
    structured_log.setup("node-a", lambda: "follower", level=logging.DEBUG)
    log = logging.getLogger("hacluster.lease")
    log.info("event=lease_acquired resource=%s epoch=%d", "vip", 7)
    log.debug("event=tick")
    logging.getLogger("raft.member").warning("event=x")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    f = parse_line(lines[0])
    assert f["event"] == "lease_acquired" and f["resource"] == "vip" and f["epoch"] == "7"
    assert f["level"] == "info" and f["module"] == "lease" and f["node"] == "node-a"
    assert f["state"] == "follower"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", f["ts"])
    assert float(f["mono"]) > 0
    assert parse_line(lines[1])["level"] == "debug"
    assert parse_line(lines[2])["module"] == "raft.member"   # no hacluster. prefix to strip


def test_setup_level_filters(restore_root_logger, capsys):
    structured_log.setup("n", lambda: "leader")
    logging.getLogger("hacluster.x").debug("event=hidden")
    assert capsys.readouterr().err == ""


def test_round_trip_plain_fields():
    line = format_record("hacluster.daemon", "event=started epoch=%d members=%s", 3, "a,b,w")
    f = parse_line(line)
    assert {k: f[k] for k in ("module", "node", "state", "event", "epoch", "members")} == {
        "module": "daemon", "node": "n1", "state": "leader", "event": "started", "epoch": "3",
        "members": "a,b,w"}
    assert list(f)[:6] == ["ts", "mono", "level", "module", "node", "state"]


def test_state_callback_failure_is_unknown():
    def broken():
        raise RuntimeError("no raft yet")
    assert parse_line(format_record("hacluster.x", "event=y", state=broken))["state"] == "unknown"


def test_double_quoted_values_with_spaces():
    f = parse_line('event=lease_lost reason="deadline: no renewal for lease - margin" epoch=4')
    assert f == {"event": "lease_lost", "reason": "deadline: no renewal for lease - margin",
                 "epoch": "4"}


def test_repr_quoted_values_round_trip():
    # The daemon logs reasons with %r (single quotes, or double quotes when the text holds a
    # single quote); every field after such a value must still be found.
    for reason in ["deadline: no successful renewal for lease - margin",
                   "refused: vip is held by b (epoch 2)",
                   "it's gone", 'say "hi"', "both ' and \" here", "a=b c=d", ""]:
        line = format_record("hacluster.lease", "event=lease_lost resource=%s reason=%r mono2=%.1f",
                             "vip", reason, 1.5)
        f = parse_line(line)
        assert f["reason"] == reason, line
        assert f["resource"] == "vip" and f["mono2"] == "1.5" and f["event"] == "lease_lost"


def test_exception_field_round_trips():
    try:
        raise ValueError("bad thing happened")
    except ValueError:
        exc_info = sys.exc_info()
    line = format_record("hacluster.daemon", "event=crash after=%s", "x", exc_info=exc_info,
                         level=logging.ERROR)
    assert "\n" not in line
    f = parse_line(line)
    assert f["event"] == "crash" and f["after"] == "x" and f["level"] == "error"
    assert f["exc"].startswith("Traceback (most recent call last):\n")
    assert f["exc"].rstrip().endswith("ValueError: bad thing happened")


def test_exception_with_both_quote_kinds_keeps_later_fields():
    # A KeyError traceback holds File "..." and 'key': repr() escapes the inner quotes.
    try:
        {}["missing"]
    except KeyError:
        exc_info = sys.exc_info()
    line = format_record("hacluster.daemon", "event=crash", exc_info=exc_info) + " tail=1"
    f = parse_line(line)
    assert f["exc"].rstrip().endswith("KeyError: 'missing'")
    assert f["tail"] == "1"
    assert set(f) == {"ts", "mono", "level", "module", "node", "state", "event", "exc", "tail"}


def test_unterminated_quote_takes_the_rest():
    assert parse_line('a=1 b="open ended') == {"a": "1", "b": "open ended"}


def test_empty_and_trailing():
    assert parse_line("") == {}
    assert parse_line("a=1  b=  c=3 ") == {"a": "1", "b": "", "c": "3"}


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                       st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                               max_size=20),
                       max_size=6))
def test_repr_values_round_trip(fields):
    line = " ".join(f"{k}={v!r}" for k, v in fields.items())
    assert parse_line(line) == fields
