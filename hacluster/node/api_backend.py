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

from typing import Any, Awaitable, Callable, Mapping

from hacluster.http.api_backend import BackendError
from hacluster.http.sessions import session_key
from hacluster.http.snapshot import NodeSnapshot
from raft import commands as raft_commands

from . import commands
from .control import NO_QUORUM, ControlError

Forward = Callable[[dict], Awaitable[list[dict]]]
Commit = Callable[..., Awaitable[Any]]


def _backend_error(e: ControlError) -> BackendError:
    return BackendError(str(e), 503 if e.code == NO_QUORUM else 409)


class DaemonApi:
    def __init__(self, snapshot: Callable[[], NodeSnapshot], secret: str | None,
                 cluster_state: Callable[[], dict[str, Any]], status: Callable[[], dict],
                 forward: Forward, commit: Commit) -> None:
        self._snapshot = snapshot
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
        return self._status()

    def _module_entry(self, module: str) -> dict[str, Any]:
        entry = self._state()["modules"].get(module)
        if entry is None:
            raise BackendError(f"no module {module!r} installed", 404)
        return entry

    async def _on_nodes(self, nodes: list[str] | None, request: dict[str, Any]) -> list[dict]:
        try:
            return await self._forward({"hosts": "all" if nodes is None else nodes,
                                        "request": request})
        except ControlError as e:
            raise BackendError(str(e), 400 if "unknown node" in str(e) else 409) from None

    async def api_modules(self) -> list[dict[str, Any]]:
        modules = self._state()["modules"]
        if not modules:
            return []
        rows = await self._on_nodes(None, {"cmd": commands.MODULE_STATE.name})
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

    async def api_module_log(self, module: str, node: str, kind: str, lines: int) -> dict[str, Any]:
        self._module_entry(module)
        rows = await self._on_nodes([node], {"cmd": commands.MODULE_LOG.name, "module": module,
                                             "kind": kind, "lines": lines})
        row = rows[0]
        if not row.get("ok"):
            raise BackendError(f"{node}: {row.get('error', 'failed')}", 409)
        return dict(row["result"])
