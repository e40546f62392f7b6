"""Control API: one JSON request, one JSON reply per line, on a Unix socket
(mode 0600, so only root on the node can drive the daemon)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

from raft.listen import ListenError

log = logging.getLogger("hacluster.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST_BYTES = 1 << 20


NO_QUORUM = "no_quorum"        # ControlError.code: not committed, Raft has no leader/majority
UNREACHABLE = "unreachable"    # no daemon answered (set by the client side only)


class ControlError(RuntimeError):
    """The daemon refused or failed a request; the message is for the user. ``code``
    tells the CLI which exit status it is (NO_QUORUM, UNREACHABLE, or None: refused)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class DaemonUnreachable(ControlError):
    """No daemon answered on the control socket (or not in time)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, UNREACHABLE)


def _answers(path: Path) -> bool:
    """Does a process accept connections on the Unix socket at ``path``?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if _answers(self.path):
                raise ListenError(f"cannot listen on {self.path} for the control socket: a "
                                  "running daemon answers there (a second daemon of this member?)")
            self.path.unlink()      # left by a daemon that was killed
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((json.dumps(await self._dispatch(line)) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError as e:
            return {"ok": False, "error": f"bad control request: {e}"}
        return await self.dispatch(request)

    async def dispatch(self, request: Any) -> dict[str, Any]:
        """One request → ``{"ok": True, "result": ...}`` or ``{"ok": False, "error": ...}``."""
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "bad control request: request must be an object "
                                          "with a string 'cmd'"}
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown control command {request['cmd']!r} "
                                          f"(known: {', '.join(sorted(self.handlers))})"}
        try:
            return {"ok": True, "result": await handler(request)}
        except ControlError as e:
            return {"ok": False, "error": str(e), **({"code": e.code} if e.code else {})}
        except Exception as e:  # noqa: BLE001 - the CLI gets a message, the log the trace
            log.exception("event=control_error cmd=%s", request["cmd"])
            return {"ok": False, "error": f"internal error in {request['cmd']}: {e}"}


def request(path: Path, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
    """Blocking client for the CLI: returns the result or raises ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnreachable(f"no hacluster daemon listening on {path} "
                                    "(is hacluster node run / witness run started?)") from None
        except PermissionError:
            raise DaemonUnreachable(f"{path}: permission denied (the control socket is root's)") from None
        sock.sendall((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise DaemonUnreachable(f"daemon on {path} closed the connection")
            buf += chunk
    except socket.timeout:
        raise DaemonUnreachable(f"daemon on {path} did not answer {cmd} within {timeout} s") from None
    finally:
        sock.close()
    reply = json.loads(buf)
    if not reply.get("ok"):
        code = reply.get("code")
        raise ControlError(reply.get("error", "unknown error"), code if isinstance(code, str) else None)
    return reply.get("result")
