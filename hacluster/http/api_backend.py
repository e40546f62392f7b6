"""What the HTTPS API asks of its node: the narrow interface the daemon implements
(``hacluster.node.api_backend.DaemonApi``), as ``snapshot.NodeProbe`` is for the
metrics. The API knows nothing of the daemon, the control commands or Raft: it calls
these, and the daemon answers for the whole cluster (it asks the other nodes over peer
control, authenticated with the cluster secret, or reads the committed Raft state).

Per-node answers are rows ``{"node", "ok", "result" | "error"}``, as ``hacluster -H``
prints them: one node that cannot be reached does not hide the others.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

from .snapshot import NodeSnapshot


class BackendError(Exception):
    """A request the node refused or could not serve: ``status`` is the HTTP status
    (400 bad input, 404 unknown, 409 refused by the cluster, 503 no quorum)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ApiBackend(Protocol):
    def http_snapshot(self) -> NodeSnapshot:
        """This node now (the readiness endpoints' snapshot)."""
        ...

    def api_session_key(self) -> bytes | None:
        """The session cookies' key (derived from the cluster secret: the same on every
        data node); None on a member without the cluster secret (a witness)."""
        ...

    def api_users(self) -> Mapping[str, Mapping[str, str]]:
        """The committed user table: name -> {"role", "hash"}."""
        ...

    async def api_set_user(self, name: str, role: str, password_hash: str | None) -> dict[str, Any]:
        """Commit a user (hash None: keep the password); BackendError when refused."""
        ...

    async def api_remove_user(self, name: str) -> dict[str, Any]:
        ...

    async def api_cluster(self) -> dict[str, Any]:
        """The cluster as ``hacluster cluster status --json`` shows it."""
        ...

    async def api_modules(self) -> list[dict[str, Any]]:
        """Every installed module: {"name", "mode", "nodes": [per-node rows of its state]}."""
        ...

    async def api_module_command(self, module: str, command: str,
                                 nodes: list[str] | None) -> list[dict[str, Any]]:
        """Run a module command (its control name: "swap", "second_force", ...) on
        ``nodes`` (None: every data node); per-node rows."""
        ...

    async def api_resources(self, module: str, nodes: list[str] | None) -> list[dict[str, Any]]:
        ...

    async def api_module_log(self, module: str, node: str, kind: str, lines: int,
                             cursor: dict[str, Any] | None = None) -> dict[str, Any]:
        """The last ``lines`` lines of the module's log (kind "module" or "script") on
        ``node``, read with the bounded tail reader; with ``cursor`` (that of a previous
        answer) the lines written since. {"lines", "cursor", "skipped"}."""
        ...

    async def api_install(self, name: str, data: bytes | None, userconfig: str | None,
                          check_only: bool) -> dict[str, Any]:
        """Install package bytes ``data`` as module ``name`` on every node, or (``data``
        None) the installed package with ``userconfig`` as its conf/userconfig.xml;
        ``check_only``: {"ok", "mode", "errors", "warnings"} and nothing installed.
        BackendError when refused (nothing installed)."""
        ...

    async def api_uninstall(self, name: str) -> dict[str, Any]:
        ...

    async def api_userconfig(self, name: str) -> str:
        """The installed conf/userconfig.xml of module ``name``."""
        ...
