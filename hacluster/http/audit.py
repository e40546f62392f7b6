"""The audit trail of the HTTP API: every action (a login, a failed one, a command,
a user changed; reads are not actions) as one structured log line
``event=api_audit ...`` and one JSON line in a bounded file (``audit.log`` in the
member's state directory: when it passes ``max_bytes`` it is renamed ``audit.log.1``,
replacing the older one, so at most twice ``max_bytes`` are kept).

A line: ``{"t": wall clock, "user", "address", "action", "target", "result", "detail"}``.
Appends are small and unbuffered (one write per line: a crash loses no line that was
logged before it).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("hacluster.http.audit")
MAX_BYTES = 4 << 20


def record(user: str | None, address: str, action: str, target: str, result: str,
           detail: str = "", now: float | None = None) -> dict[str, Any]:
    return {"t": round(time.time() if now is None else now, 3), "user": user or "-",
            "address": address, "action": action, "target": target, "result": result,
            "detail": detail}


def log_line(entry: dict[str, Any]) -> str:
    return ("event=api_audit user=%s address=%s action=%s target=%r result=%s detail=%r"
            % (entry["user"], entry["address"], entry["action"], entry["target"],
               entry["result"], entry["detail"]))


class AuditLog:
    def __init__(self, path: Path | None, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def write(self, entry: dict[str, Any]) -> None:
        log.info(log_line(entry))
        if self.path is None:
            return
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as e:
            # the action was done (or refused) already; the log line above stands for it
            log.warning("event=api_audit_file_failed path=%s error=%r", self.path, str(e))

    def tail(self, limit: int = 200) -> list[dict[str, Any]]:
        """The last ``limit`` entries (the current file only)."""
        if self.path is None or not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - min(size, self.max_bytes)))
            lines = f.read().splitlines()[-limit:]
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue    # a partial first line after the seek
        return out
