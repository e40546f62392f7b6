"""python -m replication <command>: try the replication channel on its own.

One function per subcommand (cmd_<name>), registered in build_parser():
`receive` on the secondary, `mount` on the primary (FUSE over the directory,
synchronous replication to the receiver, reintegration when it (re)connects),
`verify` to compare both copies (SafeKit's rfsverify).
"""
from __future__ import annotations

import argparse
import enum
import logging
import signal
import sys
import threading
from typing import Any, Callable

from .block_diff import DEFAULT_BLOCK_SIZE


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
                            min_epoch=args.min_epoch, state_dir=args.state)
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


def cmd_mount(args: argparse.Namespace) -> int:
    import os

    from .hook_client import HookClient
    from .mount import serve, unmount
    from .primary_link import PrimaryLink
    from .sender import Durability

    host, port = args.peer
    # While libfuse serves, the main thread sits in C (Python handlers never run) and
    # libfuse's own handler only flags the session from whichever thread the signal
    # lands on, which then never ends (seen: SIGTERM, still mounted 30 s later). So
    # these are blocked in every thread, before any is started (threads, libfuse's
    # workers included, inherit the mask), and taken by one thread with sigwait.
    signals = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        secret = read_secret(args.secret_file)
        # Opened before the mount covers it: the link reads the real files through it.
        root_fd = os.open(args.root, os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    hook: HookClient | None = None
    peer_lost: Callable[[str], None] = \
        lambda reason: print(f"event=peer_lost reason={reason!r}", flush=True)
    on_in_sync: Callable[[], None] = lambda: print("event=in_sync", flush=True)
    if args.hook_socket:
        # The owner decides: a refused or unanswered peer_lost makes writes fail (EIO).
        hook = HookClient(args.hook_socket, args.module, args.epoch, args.hook_timeout)
        peer_lost, on_in_sync = hook.peer_lost, hook.in_sync
    link = PrimaryLink(root_fd, host, port, secret, args.epoch, args.state,
                       ack_mode=args.ack_mode, ack_timeout_s=args.ack_timeout,
                       durability=Durability(args.durability),
                       bandwidth=args.bandwidth, alone=args.alone,
                       peer_lost=peer_lost, on_in_sync=on_in_sync)
    watch = None
    if args.owner_pid is not None:
        from .owner_watch import OwnerWatch
        watch = OwnerWatch(args.owner_pid, args.log_file)
        watch.start()
    if hook is not None:
        # Every second, whatever the phase: the owner's metrics read the queue, the bytes
        # sent and the reintegration's progress from it (one small request on its socket);
        # its answer carries the maintenance hold (replication.owner_watch).
        def status() -> dict[str, Any]:
            current = dict(link.status() or {})
            if watch is not None:
                current["hold_until"] = watch.hold_until
                current["pid"] = os.getpid()
            return current

        hook.report_progress(status, watch.answer if watch is not None else None)
    stop = threading.Event()

    def report() -> None:
        print(status_line(_flatten(link.status())), flush=True)

    def take_signals() -> None:
        while True:
            if signal.sigwait(signals) == signal.SIGUSR1:
                report()
                continue
            stop.set()
            try:
                unmount(args.root)   # serve() returns once the file system is unmounted
            except RuntimeError as e:
                print(f"event=unmount_failed root={args.root} error={str(e)!r}", flush=True)

    threading.Thread(target=take_signals, name="signals", daemon=True).start()
    link.start()

    def reporter() -> None:
        while not stop.wait(args.status_interval if args.status_interval > 0 else None):
            report()

    threading.Thread(target=reporter, daemon=True).start()
    try:
        serve(args.root, link.sender,
              ready=lambda: print(f"event=mounted root={args.root} peer={host}:{port}", flush=True))
    finally:
        stop.set()
        link.stop()
        if hook is not None:
            hook.stop()
        report()
    return 0


class _ReadOnlyRemote:
    """Queries only: verify must change nothing on the receiver."""

    def __init__(self, remote: Any) -> None:
        self._remote = remote

    def query_tree(self) -> Any:
        return self._remote.query_tree()

    def query_digests(self, path: str, block_size: int) -> list[int]:
        return self._remote.query_digests(path, block_size)

    def send(self, op: Any) -> None:
        raise RuntimeError(f"verify is read-only; refused to send {op.describe()}")


def _plain(value: Any) -> Any:
    # FileType is a StrEnum: show "file", not <FileType.FILE: 'file'>.
    return str(value) if isinstance(value, enum.Enum) else value


def describe_difference(diff: Any) -> str:
    """One line for a reintegration.Difference, from this side's point of view."""
    path = diff.path or "/"
    if diff.kind == "missing":
        return f"{path}: missing on the peer (here: {_plain(diff.local)})"
    if diff.kind == "extra":
        return f"{path}: only on the peer (there: {_plain(diff.remote)})"
    if diff.kind == "content":
        shown = ", ".join(f"{off}+{length}" for off, length in diff.ranges[:4])
        more = f" and {len(diff.ranges) - 4} more" if len(diff.ranges) > 4 else ""
        changed = sum(length for _, length in diff.ranges)
        return (f"{path}: content differs in {len(diff.ranges)} range(s), {changed} bytes "
                f"(offset+length: {shown}{more})")
    return f"{path}: {diff.kind} differs (here {_plain(diff.local)!r}, peer {_plain(diff.remote)!r})"


def _difference_json(diff: Any) -> dict[str, Any]:
    return {"path": diff.path, "kind": diff.kind, "local": _plain(diff.local),
            "remote": _plain(diff.remote), "ranges": [list(r) for r in diff.ranges],
            "text": describe_difference(diff)}


def cmd_verify(args: argparse.Namespace) -> int:
    """SafeKit's rfsverify: both copies compared by tree and block digests."""
    import json
    import os

    from .channel import ChannelClient, ChannelError
    from .primary_link import ChannelRemote
    from .reintegration import FileType, ReintegrationError, scan_tree, verify

    host, port = args.peer
    try:
        if not os.path.isdir(args.root):
            raise NotADirectoryError(f"--root {args.root} is not a directory")
        secret = read_secret(args.secret_file)
        client = ChannelClient(host, port, secret, args.epoch, "apply", timeout=args.timeout,
                               query_only=True)   # the receiver keeps its primary connected
        client.connect()
        try:
            differences = verify(args.root, _ReadOnlyRemote(ChannelRemote(client, args.timeout)),
                                 block_size=args.block_size)
        finally:
            client.close()
        local = scan_tree(args.root)
    except (OSError, ChannelError, ReintegrationError, ValueError) as exc:
        print(f"error: verify {args.root} against {host}:{port}: {exc}", file=sys.stderr)
        return 2
    files = [e for e in local.values() if e.type == FileType.FILE]
    total_bytes = sum(e.size for e in files)
    differing_paths = {d.path for d in differences}
    if args.json:
        print(json.dumps({"root": args.root, "peer": f"{host}:{port}", "epoch": args.epoch,
                          "identical": not differences, "files": len(files),
                          "bytes": total_bytes, "differing_paths": len(differing_paths),
                          "differences": [_difference_json(d) for d in differences]},
                         indent=2, default=str))
    else:
        for diff in differences:
            print(describe_difference(diff))
        if differences:
            print(f"verify: {len(differences)} differences in {len(differing_paths)} files")
        else:
            print(f"verify: copies identical ({len(files)} files, {total_bytes} bytes)")
    return 1 if differences else 0


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
    p.add_argument("--state", default=None, metavar="DIR",
                   help="this node's state directory for the root (the one its mount "
                        "used): its activity log is reported to the new primary")
    p.add_argument("--status-interval", type=float, default=10.0,
                   help="seconds between status lines (0: only on SIGUSR1)")
    p.set_defaults(func=cmd_receive)

    p = sub.add_parser("mount", help="mount a replicated directory (primary side)")
    p.add_argument("--root", required=True, help="the directory to replicate (keeps its path)")
    p.add_argument("--peer", required=True, type=parse_listen, metavar="HOST:PORT",
                   help="the receiver")
    p.add_argument("--secret-file", required=True, help="file holding the cluster secret")
    p.add_argument("--state", required=True, help="state directory (bitmaps, journal, cursor)")
    p.add_argument("--epoch", type=int, default=1, help="this primary's epoch (from Raft)")
    p.add_argument("--ack-mode", choices=("apply", "receipt", "async"), default="apply",
                   help="with --durability write: when the receiver acknowledges an op")
    p.add_argument("--durability", choices=("barrier", "write"), default="barrier",
                   help="barrier (default): changes stream without waiting, and fsync & co. "
                        "return once everything before them is on the receiver, durably; "
                        "write: every change waits for the receiver's acknowledgement")
    p.add_argument("--ack-timeout", type=float, default=3.0,
                   help="seconds without an acknowledgement before the peer counts as lost")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="reintegration cap in bytes/s")
    p.add_argument("--alone", action="store_true",
                   help="the receiver is known to be out of sync: do not wait for it")
    p.add_argument("--status-interval", type=float, default=10.0)
    p.add_argument("--hook-socket", default=None, metavar="PATH",
                   help="the owner's Unix socket: peer loss, in-sync and progress are "
                        "reported there, and writes fail if the owner does not confirm a loss")
    p.add_argument("--module", default=None, help="module name sent to the owner (with --hook-socket)")
    p.add_argument("--owner-pid", type=int, default=None, metavar="PID",
                   help="the daemon that owns this mount: when it exits the mount stops at "
                        "once, unless it granted a maintenance hold (replication.owner_watch)")
    p.add_argument("--log-file", default=None, metavar="PATH",
                   help="with --owner-pid: where the output goes once the owner is gone")
    p.add_argument("--hook-timeout", type=float, default=10.0,
                   help="seconds to wait for the owner's answer")
    p.set_defaults(func=cmd_mount, check=_check_mount_args)

    p = sub.add_parser(
        "verify", help="compare this copy with the receiver's by digests (changes nothing)",
        description="Compare --root with the receiver's copy (tree, metadata, block digests) "
                    "and list every difference; exit 0 identical, 1 different, 2 error. "
                    "A verify connection only asks questions: the receiver keeps its "
                    "primary connected, so it can run while the mirror works (a file being "
                    "written may show a difference that the next op removes). Pass the "
                    "current epoch: an older one is refused. A receiver from before "
                    "query-only connections is refused with an error (exit 2) rather than "
                    "disconnecting its primary.")
    p.add_argument("--root", required=True, help="this side's directory")
    p.add_argument("--peer", required=True, type=parse_listen, metavar="HOST:PORT",
                   help="the receiver holding the other copy")
    p.add_argument("--secret-file", required=True, help="file holding the cluster secret")
    p.add_argument("--epoch", type=int, default=1, help="the module's current epoch")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                   help="digest block size in bytes")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per receiver query")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_verify, check=_check_verify_args)
    return parser


def _check_mount_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.hook_socket and not args.module:
        parser.error("mount: --hook-socket needs --module NAME")
    if args.module and not args.hook_socket:
        parser.error("mount: --module is only used with --hook-socket PATH")
    if args.hook_timeout <= 0:
        parser.error(f"mount: --hook-timeout must be positive, got {args.hook_timeout}")


def _check_verify_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.block_size <= 0 or args.block_size % 4096:
        parser.error(f"verify: --block-size must be a positive multiple of 4096, got {args.block_size}")
    if args.timeout <= 0:
        parser.error(f"verify: --timeout must be positive, got {args.timeout}")
    if args.epoch < 0:
        parser.error(f"verify: --epoch must not be negative, got {args.epoch}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "check", None) is not None:
        args.check(parser, args)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
