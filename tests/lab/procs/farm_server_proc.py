"""A farm node for tests/test_farm_traffic.py, run inside a lab host's namespace.

    farm_server_proc.py NAME CONTROL_SOCKET --module M --vip ADDR --interface IF
                        --port P [--port P2 ...] --rule PROTO:PORT|any:FILTER ... --seed S

Serves TCP on every --port (0.0.0.0): each connection gets "NAME\n", then every line it
sends is echoed back until it closes (so a test can check an established connection
later). Holds a vip.farm_vip.FarmVip, driven by JSON lines on a Unix socket:
    {"op": "raise", "owned": [..]} | {"op": "set", "owned": [..]} | {"op": "drop"}
    | {"op": "cleanup"}
answered with {"ok": true, ...} or {"ok": false, "error": "..."}. Prints {"ready": true}
(to its log) once the servers and the control socket listen.
"""
import argparse
import json
import logging
import os
import socket
import socketserver
import sys
import threading

from vip.farm_vip import FarmVip, cleanup_leftovers


def tcp_server(name: str, port: int) -> socketserver.ThreadingTCPServer:
    class Answer(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(f"{name}\n".encode())
            for line in self.rfile:
                self.wfile.write(line)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("0.0.0.0", port), Answer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def parse_rule(text: str) -> tuple:
    proto, port, filter = text.split(":")
    return (None if port == "any" else int(port), proto, filter)


def handle(farm: FarmVip, module: str, request: dict) -> dict:
    op = request.get("op")
    if op == "raise":
        farm.raise_(set(request["owned"]))
    elif op == "set":
        farm.set_buckets(set(request["owned"]))
    elif op == "drop":
        farm.drop()
    elif op == "cleanup":
        return {"ok": True, "removed": cleanup_leftovers(module)}
    else:
        return {"ok": False, "error": f"unknown op {op!r}"}
    return {"ok": True, "owned": sorted(farm.owned) if farm.owned is not None else None}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("control")
    p.add_argument("--module", required=True)
    p.add_argument("--vip", required=True)
    p.add_argument("--interface", required=True)
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--rule", action="append", required=True)
    p.add_argument("--seed", type=int, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    for port in args.port:
        tcp_server(args.name, port)
    farm = FarmVip(args.module, args.vip, args.interface,
                   [parse_rule(r) for r in args.rule], args.seed)
    if os.path.exists(args.control):
        os.unlink(args.control)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(args.control)
    control.listen()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        conn, _ = control.accept()
        with conn, conn.makefile("rw") as f:
            for line in f:
                try:
                    answer = handle(farm, args.module, json.loads(line))
                except Exception as exc:  # reported to the test, which decides
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                f.write(json.dumps(answer) + "\n")
                f.flush()


if __name__ == "__main__":
    sys.exit(main())
