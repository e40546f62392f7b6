"""The farm demo application: a TCP service that answers each connection with
the name of the node serving it, then echoes every line it gets (so a client can
check later that an established connection still reaches the same node).

    python -m chaos.name_server --name NODE --port P [--port P2 ...] [--pidfile F]
"""
from __future__ import annotations

import argparse
import os
import signal
import socketserver
import sys
import threading


def serve(name: str, port: int, host: str = "0.0.0.0") -> socketserver.ThreadingTCPServer:
    """Start answering on ``host:port`` in a daemon thread; returns the server."""
    class Answer(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(f"{name}\n".encode())
            for line in self.rfile:
                self.wfile.write(line)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 512   # connection bursts from the benchmark

    server = Server((host, port), Answer)
    threading.Thread(target=server.serve_forever, name=f"name-server-{port}", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.name_server")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--pidfile")
    args = p.parse_args(argv)
    servers = [serve(args.name, port) for port in args.port]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.pidfile:
        # written once every port listens: start_both waits for it
        tmp = args.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, args.pidfile)
    print(f"event=name_server_listening name={args.name} ports={','.join(map(str, args.port))}",
          flush=True)
    stop.wait()
    for s in servers:
        s.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
