"""``python -m chaos.kv_writer_proc --url URL [--prefix P]``: the demo's client.

Runs on the lab's client host (the VIP exists only inside the lab): a
``KvWriter`` that prints one JSON line per acknowledged write, so the test
process can read the history from the log even after this process is killed."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading

from .kv_workload import Ack, KvWriter


def _print_ack(ack: Ack) -> None:
    print(json.dumps(dataclasses.asdict(ack)), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.kv_writer_proc")
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", default="rec")
    p.add_argument("--timeout", type=float, default=1.0)
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    writer = KvWriter(args.url, prefix=args.prefix, timeout=args.timeout, on_ack=_print_ack).start()
    stop.wait()
    writer.stop()
    # every write that failed (and was retried), for checkers of downtime; not JSON at
    # the line's start, so readers of the acknowledgements skip them
    for failure in writer.failures:
        print("failed " + json.dumps(dataclasses.asdict(failure)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
