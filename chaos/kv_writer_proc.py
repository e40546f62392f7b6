"""``python -m chaos.kv_writer_proc --url URL [--prefix P]``: the demo's client.

Runs on the lab's client host (the VIP exists only inside the lab), writes
numbered records through ``KvWriter`` and prints one JSON line per
acknowledged write, so the test process can read the history from the log
even after this process is killed."""
from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
import time

from .kv_workload import KvWriter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.kv_writer_proc")
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", default="rec")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--interval", type=float, default=0.0)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    writer = KvWriter(args.url, prefix=args.prefix, timeout=args.timeout)
    n = 1
    while not stop.is_set():
        key, value = f"{args.prefix}-{n:06d}", f"v{n}-{secrets.token_hex(4)}"
        while (ack := writer.write_one(key, value)) is None:
            if stop.wait(0.01):
                return 0
        print(json.dumps({"key": ack.key, "value": ack.value, "node": ack.node, "epoch": ack.epoch,
                          "t_sent": ack.t_sent, "t_acked": ack.t_acked}), flush=True)
        n += 1
        if args.interval:
            time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
