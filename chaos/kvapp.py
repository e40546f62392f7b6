"""A small HTTP key/value service: the application a mirror module protects in the lab.

``python -m chaos.kvapp --data DIR --listen HOST:PORT --node NAME --epoch N [--pidfile F]``

Data lives in an append-only log ``DIR/kv.log`` (DIR is a replicated directory in the
product, so every write() and fsync() on it reaches the secondary before it returns).
One record per line: ``<crc32 hex8> <key> <value>\\n``, key and value percent-encoded,
the checksum over ``<key> <value>``. A PUT is answered only after write() + fsync().
At start the log is replayed: a torn or corrupt *last* record (a crash mid-write) is
cut off; corruption anywhere before it refuses the start.

Standard library only: it runs inside lab namespaces with the venv's python.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, unquote_to_bytes

from replication.durable_file import fsync_dir

log = logging.getLogger("chaos.kvapp")

LOG_NAME = "kv.log"
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20


class CorruptLogError(Exception):
    """The log is damaged before its last record: replaying it would lose or invent data."""


class StoreFailedError(OSError):
    """An earlier append failed and could not be undone: the log's tail is unknown."""


def encode_record(key: str, value: str) -> bytes:
    body = f"{quote(key, safe='')} {quote(value, safe='')}"
    return f"{zlib.crc32(body.encode('ascii')):08x} {body}\n".encode("ascii")


def decode_record(line: bytes) -> tuple[str, str] | None:
    """(key, value) of one line without its newline, or None if it is not a valid record."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ")
    if len(parts) != 3 or len(parts[0]) != 8 or not parts[1]:
        return None
    try:
        crc = int(parts[0], 16)
    except ValueError:
        return None
    if crc != zlib.crc32(f"{parts[1]} {parts[2]}".encode("ascii")):
        return None
    try:
        return (unquote_to_bytes(parts[1]).decode("utf-8"),
                unquote_to_bytes(parts[2]).decode("utf-8"))
    except UnicodeDecodeError:
        return None


def replay(data: bytes, path: str = LOG_NAME) -> tuple[dict[str, str], int, int]:
    """Replay a log image: (key -> value, records, length of the good prefix).

    Only the last record may be bad (torn write); the good prefix ends before it.
    Raises CorruptLogError naming the line and byte offset of damage further up."""
    table: dict[str, str] = {}
    lines = data.split(b"\n")
    # After the last newline: an incomplete record (or b"" when the file ends cleanly).
    complete, tail = lines[:-1], lines[-1]
    offset = records = 0
    for number, line in enumerate(complete, start=1):
        record = decode_record(line)
        if record is None:
            if number == len(complete) and not tail:
                break  # the last complete line is the torn one
            raise CorruptLogError(
                f"{path}: corrupt record at line {number} (byte {offset}) "
                f"followed by more records; refusing to start")
        table[record[0]] = record[1]
        records += 1
        offset += len(line) + 1
    return table, records, offset


class KvStore:
    """The log plus its in-memory table; appends are serialised by a lock."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"data directory {self.data_dir} does not exist")
        self.path = self.data_dir / LOG_NAME
        self._lock = threading.Lock()  # appends; held across write + fsync
        self._table_lock = threading.Lock()  # short: readers never wait for an fsync
        self.dropped_tail_bytes = 0
        self._failed: str | None = None
        existed = self.path.exists()
        data = self.path.read_bytes() if existed else b""
        self._table, self.records, self._good = replay(data, str(self.path))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(self.data_dir)  # the file's name must survive a crash too
        if self._good < len(data):
            # Cut the torn record now, or the next append would glue onto it.
            self.dropped_tail_bytes = len(data) - self._good
            os.ftruncate(self._fd, self._good)
            os.fsync(self._fd)

    def get(self, key: str) -> str | None:
        return self._table.get(key)

    def keys(self) -> list[str]:
        with self._table_lock:  # a put may insert while we iterate
            return sorted(self._table)

    def put(self, key: str, value: str) -> None:
        """Append and fsync; the table changes only once the record is durable."""
        record = encode_record(key, value)
        with self._lock:
            if self._failed is not None:
                raise StoreFailedError(errno.EIO, f"store failed earlier ({self._failed}); "
                                       f"restart kvapp")
            try:
                view = memoryview(record)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError as exc:
                self._undo(exc)
                raise
            self._good += len(record)
            with self._table_lock:
                self._table[key] = value
                self.records += 1

    def _undo(self, exc: OSError) -> None:
        # A half-written record would corrupt the middle of the log after the next append.
        try:
            os.ftruncate(self._fd, self._good)
            os.fsync(self._fd)
        except OSError as undo_exc:
            self._failed = f"{exc.strerror or exc}; undo: {undo_exc.strerror or undo_exc}"
            log.error("event=kvapp_store_failed path=%s error=%r", self.path, self._failed)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class KvHandler(BaseHTTPRequestHandler):
    server: KvServer

    def log_message(self, format: str, *args: object) -> None:
        log.debug("event=http_request client=%s %s", self.client_address[0], format % args)

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _who(self) -> dict:
        return {"node": self.server.node, "epoch": self.server.epoch}

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"ok": False, "error": message, **self._who()})

    def _key(self) -> str | None:
        raw = self.path.split("?", 1)[0]
        if not raw.startswith("/kv/") or len(raw) == 4:
            return None
        return unquote(raw[4:], errors="strict")

    def do_GET(self) -> None:
        store = self.server.store
        path = self.path.split("?", 1)[0]
        if path == "/health":
            return self._send(200, {**self._who(), "records": store.records})
        if path == "/keys":
            return self._send(200, {"keys": store.keys(), **self._who()})
        try:
            key = self._key()
        except UnicodeDecodeError:
            return self._error(400, "key is not valid UTF-8")
        if key is None:
            return self._error(404, f"no such path {path}")
        value = store.get(key)
        if value is None:
            return self._send(404, {"ok": False, "error": "no such key", "key": key, **self._who()})
        return self._send(200, {"key": key, "value": value, **self._who()})

    def do_PUT(self) -> None:
        try:
            key = self._key()
        except UnicodeDecodeError:
            return self._error(400, "key is not valid UTF-8")
        if key is None:
            return self._error(404, f"PUT only on /kv/<key>, not {self.path}")
        if len(key.encode()) > MAX_KEY_BYTES:
            return self._error(400, f"key longer than {MAX_KEY_BYTES} bytes")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._error(411, "PUT needs a Content-Length header")
        if int(length) > MAX_VALUE_BYTES:
            return self._error(413, f"value longer than {MAX_VALUE_BYTES} bytes")
        try:
            value = self.rfile.read(int(length)).decode("utf-8")
        except UnicodeDecodeError:
            return self._error(400, "value is not valid UTF-8")
        try:
            self.server.store.put(key, value)
        except OSError as exc:  # EIO from blocked replication, ENOSPC, ...
            log.warning("event=kvapp_put_failed key=%s error=%r", key, str(exc))
            return self._error(503, f"write failed: {exc.strerror or exc}")
        self._send(200, {"ok": True, "key": key, **self._who()})


class KvServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: KvStore, node: str, epoch: int) -> None:
        self.store, self.node, self.epoch = store, node, epoch
        super().__init__(address, KvHandler)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _write_pidfile(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.kvapp", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="directory holding kv.log")
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--node", default=os.environ.get("HACLUSTER_NODE"),
                   help="node name (default: $HACLUSTER_NODE)")
    p.add_argument("--epoch", default=os.environ.get("HACLUSTER_EPOCH"),
                   help="primary epoch (default: $HACLUSTER_EPOCH)")
    p.add_argument("--pidfile")
    args = p.parse_args(argv)
    if not args.node:
        p.error("--node (or HACLUSTER_NODE) is required")
    if args.epoch is None or not str(args.epoch).isdigit():
        p.error(f"--epoch (or HACLUSTER_EPOCH) must be a non-negative integer, got {args.epoch!r}")
    try:
        address = parse_listen(args.listen)
    except ValueError as exc:
        p.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        store = KvStore(args.data)
    except (CorruptLogError, OSError) as exc:
        print(f"kvapp: {exc}", file=sys.stderr)
        return 1
    if store.dropped_tail_bytes:
        log.warning("event=kvapp_torn_tail_dropped path=%s bytes=%d", store.path,
                    store.dropped_tail_bytes)
    try:
        server = KvServer(address, store, args.node, int(args.epoch))
    except OSError as exc:
        store.close()
        print(f"kvapp: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    if args.pidfile:
        _write_pidfile(Path(args.pidfile))
    host, port = server.server_address[:2]
    log.info("event=kvapp_started node=%s epoch=%s records=%d listen=%s:%d",
             args.node, args.epoch, store.records, host, port)
    # serve_forever in a thread: shutdown() from the main thread would deadlock otherwise.
    threading.Thread(target=server.serve_forever, name="kvapp-http", daemon=True).start()
    stopping.wait()
    server.shutdown()
    server.server_close()
    store.close()
    if args.pidfile:
        Path(args.pidfile).unlink(missing_ok=True)
    log.info("event=kvapp_stopped node=%s epoch=%s records=%d", args.node, args.epoch,
             store.records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
