"""``python -m chaos.pg_writer_proc --host VIP --port P --prefix PFX [--sessions N]``:
the PostgreSQL workload's client, on the lab's client host.

N autocommit sessions each insert numbered rows (key ``PFX-s<i>-<n>``) into ``acks``
and print one JSON line per acknowledged commit (the fields of chaos.kv_workload.Ack:
key, value, node and epoch as the server reported them — ``cluster_name`` and
``hacluster.epoch``, set by the module's start_prim — t_sent, t_acked on the machine's
monotonic clock). A session whose connection fails or times out reconnects; a
statement without an answer is not acknowledged (it may or may not have committed)."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from .pg_wire import PgConn, PgError

TABLE = "CREATE TABLE IF NOT EXISTS acks (k text PRIMARY KEY, v text NOT NULL)"
INSERT = ("INSERT INTO acks VALUES ('{k}', '{v}') "
          "RETURNING current_setting('cluster_name'), current_setting('hacluster.epoch', true)")

_print_lock = threading.Lock()


def _session(args, index: int, stop: threading.Event) -> None:
    n = 0
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = PgConn(args.host, args.port, timeout=args.timeout)
            key = f"{args.prefix}-s{index}-{n}"
            value = f"v{n}"
            t_sent = time.monotonic()
            rows, _tag = conn.query(INSERT.format(k=key, v=value))
            t_acked = time.monotonic()
            node, epoch = rows[0][0] or "?", int(rows[0][1] or 0)
            with _print_lock:
                print(json.dumps({"key": key, "value": value, "node": node, "epoch": epoch,
                                  "t_sent": t_sent, "t_acked": t_acked}), flush=True)
            n += 1
        except PgError as e:
            # refused (e.g. the database is shutting down): not committed, next number
            print(f"# s{index} error {e}", file=sys.stderr, flush=True)
            n += 1
            _drop(conn)
            conn = None
            stop.wait(args.retry)
        except (OSError, ValueError):
            # no answer: unknown outcome; the key is not reused
            n += 1
            _drop(conn)
            conn = None
            stop.wait(args.retry)
    _drop(conn)


def _drop(conn: PgConn | None) -> None:
    if conn is not None:
        try:
            conn.sock.close()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.pg_writer_proc")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=5432)
    p.add_argument("--prefix", default="rec")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--retry", type=float, default=0.05)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=_session, args=(args, i, stop), daemon=True)
               for i in range(args.sessions)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(args.timeout + 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
