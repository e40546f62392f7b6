"""``python -m chaos.vm_writer_proc --host VIP --port P --first N``: the VM workload's
client, on the lab's client host.

It asks the lab guest (chaos.vm_guest) to write numbered records, one at a time: the
guest writes record n into sector n of its own disk, flushes it (fsync inside the
guest) and only then answers ``OK n <node> <epoch>``. One JSON line per acknowledged
record (the fields of chaos.kv_workload.Ack: key, value, node, epoch, t_sent,
t_acked on the machine's monotonic clock). A record without an answer is not
acknowledged and its number is not reused; the connection is made again.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--last", type=int, default=30000)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--retry", type=float, default=0.1)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    n = args.first
    conn = None
    while n <= args.last:
        try:
            if conn is None:
                conn = socket.create_connection((args.host, args.port), timeout=args.timeout)
                f = conn.makefile("rwb")
            t_sent = time.monotonic()
            f.write(f"W {n}\n".encode())
            f.flush()
            words = f.readline().decode().split()
            t_acked = time.monotonic()
            if len(words) == 4 and words[0] == "OK" and words[1] == str(n):
                print(json.dumps({"key": str(n), "value": f"rec {n}", "node": words[2],
                                  "epoch": int(words[3]), "t_sent": t_sent, "t_acked": t_acked}),
                      flush=True)
            else:
                raise OSError(f"answer {words!r} to W {n}")
        except (OSError, ValueError) as e:
            print(f"# {n}: {e}", file=sys.stderr, flush=True)
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(args.retry)
        n += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
