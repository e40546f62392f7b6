"""A minimal PostgreSQL client (frontend/backend protocol 3, simple queries, trust
authentication only): enough for the lab's workloads to know exactly which commits
the server acknowledged, with a timeout on every read, and no driver to install.

``python -m chaos.pg_wire --host H --port P [--db D] SQL...`` runs each statement and
prints its rows as one JSON line per statement (for SQL the test process must run from
a lab host: the VIP exists only inside the lab)."""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys

PROTOCOL_3 = 196608


class PgError(Exception):
    """The server answered with an error (the statement did not commit)."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        super().__init__(f"{fields.get('S', 'ERROR')} {fields.get('C', '')}: {fields.get('M', '')}")


class PgConn:
    def __init__(self, host: str, port: int, user: str = "postgres", database: str = "postgres",
                 timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self._buf = b""
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                          for k, v in (("user", user), ("database", database),
                                       ("application_name", "hacluster-lab")))
        body = struct.pack("!i", PROTOCOL_3) + params + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        while True:
            kind, payload = self._read()
            if kind == b"R":
                code = struct.unpack("!i", payload[:4])[0]
                if code != 0:
                    self.close()
                    raise PgError({"M": f"authentication method {code} not supported (trust only)"})
            elif kind == b"E":
                self.close()
                raise PgError(_fields(payload))
            elif kind == b"Z":
                return

    def _recv(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read(self) -> tuple[bytes, bytes]:
        head = self._recv(5)
        length = struct.unpack("!i", head[1:])[0]
        return head[:1], self._recv(length - 4)

    def query(self, sql: str) -> tuple[list[list[str | None]], str]:
        """Run ``sql`` (autocommit); (rows as text, command tag) once the server is
        ready again. PgError when it failed; OSError/ConnectionError: unknown outcome."""
        data = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", len(data) + 4) + data)
        rows: list[list[str | None]] = []
        tag, error = "", None
        while True:
            kind, payload = self._read()
            if kind == b"D":
                n = struct.unpack("!h", payload[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", payload[pos:pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos:pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif kind == b"C":
                tag = payload.rstrip(b"\0").decode()
            elif kind == b"E":
                error = PgError(_fields(payload))
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows, tag

    def close(self) -> None:
        try:
            self.sock.sendall(b"X" + struct.pack("!i", 4))
        except OSError:
            pass
        self.sock.close()


def _fields(payload: bytes) -> dict[str, str]:
    out = {}
    for part in payload.split(b"\0"):
        if part:
            out[part[:1].decode()] = part[1:].decode(errors="replace")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.pg_wire")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--db", default="postgres")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("sql", nargs="+")
    args = p.parse_args(argv)
    conn = PgConn(args.host, args.port, database=args.db, timeout=args.timeout)
    try:
        for sql in args.sql:
            rows, tag = conn.query(sql)
            print(json.dumps({"tag": tag, "rows": rows}), flush=True)
    except PgError as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
