"""python -m replication <command>: try the replication channel on its own.

One function per subcommand (cmd_<name>), registered in build_parser();
`send`/`mount`, `verify` and `status` are to come.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any, Callable


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        secret = fh.read().strip()
    if not secret:
        raise SystemExit(f"error: secret file {path} is empty")
    return secret


def status_line(status: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        text = str(v).lower() if isinstance(v, bool) else str(v)
        return f'"{text}"' if (" " in text or not text) else text
    return "event=status " + " ".join(f"{k}={fmt(v)}" for k, v in status.items())


def cmd_receive(args: argparse.Namespace) -> int:
    from .receiver import Receiver

    host, port = args.listen
    try:
        receiver = Receiver(args.root, read_secret(args.secret_file), host, port,
                            min_epoch=args.min_epoch)
    except OSError as exc:     # missing root, port in use, unreadable secret file
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def report() -> None:
        print(status_line(receiver.status()), flush=True)

    prev: dict[int, Callable[..., Any] | int | None] = {}
    prev[signal.SIGTERM] = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    prev[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: stop.set())
    prev[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: report())
    receiver.start()
    print(f"event=listening root={args.root} listen={receiver.address[0]}:"
          f"{receiver.address[1]}", flush=True)
    try:
        interval = args.status_interval if args.status_interval > 0 else None
        while not stop.wait(interval):
            report()
    finally:
        receiver.stop()
        report()
        for sig, handler in prev.items():
            signal.signal(sig, handler)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m replication",
                                     description="Synchronous directory mirroring")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("receive", help="receive and apply a sender's changes into a directory")
    p.add_argument("--root", required=True, help="the directory to keep as a copy")
    p.add_argument("--listen", required=True, type=parse_listen, metavar="HOST:PORT")
    p.add_argument("--secret-file", required=True, help="file holding the cluster secret")
    p.add_argument("--min-epoch", type=int, default=0,
                   help="refuse senders and frames of older epochs")
    p.add_argument("--status-interval", type=float, default=10.0,
                   help="seconds between status lines (0: only on SIGUSR1)")
    p.set_defaults(func=cmd_receive)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
