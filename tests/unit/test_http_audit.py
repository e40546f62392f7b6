"""hacluster/http/audit.py: one log line and one JSON line per action, in a bounded file."""
import json
import logging

from hacluster.http.audit import AuditLog, record


def test_each_action_is_a_log_line_and_a_json_line(tmp_path, caplog):
    audit = AuditLog(tmp_path / "audit.log")
    with caplog.at_level(logging.INFO, logger="hacluster.http.audit"):
        audit.write(record("ann", "10.0.0.5", "swap", "db on n1", "ok", now=12.5))
    assert "event=api_audit user=ann address=10.0.0.5 action=swap target='db on n1' result=ok" \
        in caplog.text
    assert json.loads((tmp_path / "audit.log").read_text()) == {
        "t": 12.5, "user": "ann", "address": "10.0.0.5", "action": "swap", "target": "db on n1",
        "result": "ok", "detail": ""}
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o600


def test_the_file_is_bounded_and_its_tail_read_back(tmp_path):
    audit = AuditLog(tmp_path / "audit.log", max_bytes=2000)
    for i in range(100):
        audit.write(record("ann", "a", "login", f"n{i}", "ok", now=float(i)))
    sizes = [p.stat().st_size for p in tmp_path.iterdir()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1"]
    assert all(size <= 2000 for size in sizes)
    tail = audit.tail(3)
    assert [e["target"] for e in tail] == ["n97", "n98", "n99"]


def test_an_unwritable_file_still_logs_the_line(tmp_path, caplog):
    audit = AuditLog(tmp_path / "missing-dir" / "audit.log")
    with caplog.at_level(logging.INFO, logger="hacluster.http.audit"):
        audit.write(record(None, "a", "login", "x", "failed"))
    assert "event=api_audit user=- " in caplog.text and "event=api_audit_file_failed" in caplog.text
