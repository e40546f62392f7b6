"""A load balancer's view of the nodes' HTTP endpoints, for lab tests.

``python -m chaos.http_probe --interval 0.05 URL [URL ...]`` GETs each URL in turn,
again and again, and prints one JSON line per answer:
``{"t": <monotonic>, "url": ..., "status": <HTTP status or 0 when unreachable>,
"ms": <round trip>}``.
CLOCK_MONOTONIC is machine-wide, so ``t`` compares with the daemons' ``mono=``.
``python -m chaos.http_probe --once URL`` prints the body of one answer (for a scrape).
Runs inside a lab namespace; stops on SIGTERM (LabProcess.stop) or after --duration.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.http_probe")
    p.add_argument("urls", nargs="+")
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=300.0, help="stop by itself after this")
    p.add_argument("--once", action="store_true", help="print the body of one GET and exit")
    args = p.parse_args(argv)
    if args.once:
        started = time.monotonic()
        status, body = get(args.urls[0], args.timeout * 4)
        sys.stdout.write(body.decode(errors="replace"))
        print(f"status={status} ms={(time.monotonic() - started) * 1000:.2f} bytes={len(body)}",
              file=sys.stderr)
        return 0 if status == 200 else 1
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        for url in args.urls:
            started = time.monotonic()
            status, _ = get(url, args.timeout)
            now = time.monotonic()
            print(json.dumps({"t": now, "url": url, "status": status,
                              "ms": round((now - started) * 1000, 2)}), flush=True)
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
