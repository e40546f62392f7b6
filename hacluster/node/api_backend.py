"""The daemon's side of the HTTPS API (``hacluster.http.api_backend.ApiBackend``).

Any node answers for the whole cluster: the members, the modules and the users come
from the committed Raft state this node applied; module states, commands, resources and
logs are control requests run on each node through the daemon's ``forward`` (the
CLI's ``-H``: peer control, authenticated with the cluster secret), so the API does
exactly what ``hacluster -H NODE -m MODULE ...`` does, guards included. Users are
committed through Raft (``set_user``/``remove_user``: hashes only), so a user added
on one node logs in on every node.
"""
from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from hacluster.http.api_backend import BackendError
from hacluster.http.sessions import session_key
from hacluster.http.snapshot import NodeSnapshot
from raft import commands as raft_commands

from . import commands
from .control import NO_QUORUM, ControlError

Forward = Callable[[dict], Awaitable[list[dict]]]
Commit = Callable[..., Awaitable[Any]]
Local = Callable[[dict], Awaitable[dict]]
# reads of every node's module state for the API and its events: a node that does not
# answer in this time is shown as not answering rather than holding up the others
STATE_TIMEOUT_S = 5.0


def _backend_error(e: ControlError) -> BackendError:
    return BackendError(str(e), 503 if e.code == NO_QUORUM else 409)


class DaemonApi:
    def __init__(self, snapshot: Callable[[], NodeSnapshot], secret: str | None,
                 cluster_state: Callable[[], dict[str, Any]], status: Callable[[], dict],
                 forward: Forward, commit: Commit, local: Local | None = None,
                 upload_dir: Path | None = None,
                 api_url: Callable[[dict], str | None] = lambda member: None) -> None:
        self._snapshot = snapshot
        self._local = local
        self._upload_dir = upload_dir
        self._api_url = api_url
        self._key = session_key(secret) if secret is not None else None
        self._state = cluster_state
        self._status = status
        self._forward = forward
        self._commit = commit

    def http_snapshot(self) -> NodeSnapshot:
        return self._snapshot()

    def api_session_key(self) -> bytes | None:
        return self._key

    def api_users(self) -> Mapping[str, Mapping[str, str]]:
        return self._state().get("users") or {}

    async def _committed(self, command: Any, *args: Any) -> dict[str, Any]:
        try:
            result = await self._commit(command, *args)
        except ControlError as e:
            raise _backend_error(e) from None
        if not result.get("ok"):
            raise BackendError(result.get("error", "refused"), 409)
        return dict(result)

    async def api_set_user(self, name: str, role: str, password_hash: str | None) -> dict[str, Any]:
        return await self._committed(raft_commands.SET_USER, name, role, password_hash)

    async def api_remove_user(self, name: str) -> dict[str, Any]:
        return await self._committed(raft_commands.REMOVE_USER, name)

    async def api_cluster(self) -> dict[str, Any]:
        status = dict(self._status())
        # where the page finds every member's API when its own node dies
        status["members"] = [{**m, "api": self._api_url(m)} for m in status.get("members", [])]
        return status

    def _module_entry(self, module: str) -> dict[str, Any]:
        entry = self._state()["modules"].get(module)
        if entry is None:
            raise BackendError(f"no module {module!r} installed", 404)
        return entry

    async def _on_nodes(self, nodes: list[str] | None, request: dict[str, Any],
                        timeout_s: float | None = None) -> list[dict]:
        forward: dict[str, Any] = {"hosts": "all" if nodes is None else nodes, "request": request}
        if timeout_s is not None:
            forward["timeout_s"] = timeout_s
        try:
            return await self._forward(forward)
        except ControlError as e:
            raise BackendError(str(e), 400 if "unknown node" in str(e) else 409) from None

    async def api_modules(self) -> list[dict[str, Any]]:
        modules = self._state()["modules"]
        if not modules:
            return []
        rows = await self._on_nodes(None, {"cmd": commands.MODULE_STATE.name}, STATE_TIMEOUT_S)
        out = []
        for name, entry in sorted(modules.items()):
            per_node = []
            for row in rows:
                if not row.get("ok"):
                    per_node.append({"node": row["node"], "ok": False, "error": row.get("error", "")})
                    continue
                mine = next((st for st in row.get("result") or [] if st.get("module") == name), None)
                per_node.append({"node": row["node"], "ok": True, "result": mine or
                                 {"module": name, "state": "NOT RUNNING"}})
            out.append({"name": name, "mode": entry["mode"], "failover": entry.get("failover", True),
                        "nodes": per_node})
        return out

    async def api_module_command(self, module: str, command: str,
                                 nodes: list[str] | None) -> list[dict[str, Any]]:
        self._module_entry(module)
        if command not in commands.MODULE_COMMANDS:
            raise BackendError(f"no module command {command!r}", 404)
        return await self._on_nodes(nodes, {"cmd": commands.MODULE_CMD.name, "module": module,
                                            "cmd_name": command})

    async def api_resources(self, module: str, nodes: list[str] | None) -> list[dict[str, Any]]:
        self._module_entry(module)
        return await self._on_nodes(nodes, {"cmd": commands.MODULE_CMD.name, "module": module,
                                            "cmd_name": commands.RESOURCES.name})

    async def api_module_log(self, module: str, node: str, kind: str, lines: int,
                             cursor: dict[str, Any] | None = None) -> dict[str, Any]:
        self._module_entry(module)
        request: dict[str, Any] = {"cmd": commands.MODULE_LOG.name, "module": module,
                                   "kind": kind, "lines": lines}
        if cursor is not None:
            request["cursor"] = cursor
        rows = await self._on_nodes([node], request)
        row = rows[0]
        if not row.get("ok"):
            raise BackendError(f"{node}: {row.get('error', 'failed')}", 409)
        return dict(row["result"])

    async def _run_local(self, request: dict[str, Any], status: int = 409) -> Any:
        if self._local is None:
            raise BackendError("this member does not install modules (a witness)", 503)
        reply = await self._local(request)
        if not reply.get("ok"):
            raise BackendError(reply.get("error", "refused"),
                               503 if reply.get("code") == NO_QUORUM else status)
        return reply["result"]

    async def api_install(self, name: str, data: bytes | None, userconfig: str | None,
                          check_only: bool) -> dict[str, Any]:
        """``hacluster module install`` (or ``module check``: ``check_only``) of uploaded
        package bytes, or of the installed package with a new userconfig.xml: the same
        control request the CLI sends, so the same checks and guards. The upload is
        written to a private file first (the request names a file) and removed after."""
        request: dict[str, Any] = {"cmd": commands.MODULE_INSTALL.name, "name": name,
                                   "check_only": check_only}
        if userconfig is not None:
            return dict(await self._run_local({**request, "userconfig": userconfig}, 400))
        if data is None or self._upload_dir is None:
            raise BackendError("module install: no package", 400)
        path = self._upload_dir / f"upload-{uuid.uuid4().hex}.safe"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _write_private, path, data)
        try:
            return dict(await self._run_local({**request, "package": str(path),
                                               "source": f"{name}.safe"}, 400))
        finally:
            await loop.run_in_executor(None, lambda: path.unlink(missing_ok=True))

    async def api_uninstall(self, name: str) -> dict[str, Any]:
        self._module_entry(name)
        return dict(await self._run_local({"cmd": commands.MODULE_UNINSTALL.name, "module": name}))

    async def api_userconfig(self, name: str) -> str:
        """The installed conf/userconfig.xml of a module (read in a thread)."""
        self._module_entry(name)
        if self._upload_dir is None:
            raise BackendError("this member holds no modules (a witness)", 503)
        result = await self._run_local({"cmd": commands.MODULE_USERCONFIG.name, "module": name})
        return str(result["userconfig"])


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
