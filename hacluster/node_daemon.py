"""A data node: the daemon and its modules, put together.

``hacluster.node.daemon.Daemon`` runs the Raft member, this member's liveness
lease and the control API, and is the modules' host (``ModuleHost``); the module
registry (``hacluster.modules``) installs and runs the modules, of the kinds named
here (``mirror/``, ``farm/``), and serves the module control commands. Neither
side imports the other: they meet in this file. A data node can also contend for
plain named leases (``--contend``).
"""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, cast

from raft.commands import Answer

from hacluster.farm.driver import FarmModule
from hacluster.http.snapshot import ModuleSnapshot
from hacluster.mirror.driver import MirrorModule
from hacluster.modules.fetch import ModuleFetchServer
from hacluster.modules.registry import ModuleRegistry, RuntimeFactory, fetch_address
from hacluster.modules.support import module_sources
from hacluster.node import commands
from hacluster.node.cluster_config import ClusterConfig
from hacluster.node.control import ControlError, Handler
from hacluster.node.daemon import Daemon
from hacluster.node.support_part import Source

# The module kinds a node runs, by the mode of their package (<service mode=...>).
KINDS: dict[str, RuntimeFactory] = {commands.MIRROR: MirrorModule, commands.FARM: FarmModule}


class NodeDaemon(Daemon):
    """A data node: runs the application modules installed in the cluster
    (``ModuleRegistry``) and can contend for plain named leases (``--contend``)."""

    kind = "node"
    serves_modules = True

    def __init__(self, config: ClusterConfig, contend: list[str] | None = None) -> None:
        super().__init__(config)
        self.contend = list(contend or [])
        self.modules: ModuleRegistry | None = None

    async def started(self) -> None:
        self.modules = ModuleRegistry(self, KINDS)
        await self.modules.start()
        self.track(asyncio.create_task(self.modules.sync()))
        for resource in self.contend:
            self.hold(resource)

    async def stopping(self) -> None:
        if self.modules is not None:
            await self.modules.close()

    def liveness_serves_on(self) -> bool:
        """Every farm module running here went on serving at shutdown (maintenance):
        the node stays in the farms, its liveness lease is kept."""
        if self.modules is None:
            return True
        farms = [rt for rt in self.modules.runtimes.values() if rt.mode == "farm"]
        return all(getattr(rt, "left_running", False) for rt in farms)

    def module_statuses(self) -> dict[str, dict]:
        if self.modules is None:
            return {}
        return {name: rt.status() for name, rt in self.modules.runtimes.items()}

    def listeners(self) -> list[tuple[str, int, str]]:
        return super().listeners() + [(*fetch_address(self.config.me["address"]),
                                       ModuleFetchServer.purpose)]

    def stop_time_s(self) -> float:
        """The base's, plus the slowest module's stop (its modules stop side by side)."""
        modules = self.modules.stop_time_s() if self.modules is not None else 0.0
        return super().stop_time_s() + modules

    def module_snapshots(self) -> tuple[tuple[ModuleSnapshot, ...], frozenset[str]]:
        if self.modules is None:
            return (), frozenset()
        return self.modules.http_modules()

    def support_sources(self) -> Iterable[Source]:
        """Every module's state (taken now), configuration and last events (read by the
        snapshot's build thread: hacluster.modules.support)."""
        errors = dict(self.modules.errors) if self.modules is not None else {}
        return module_sources(self.config.paths, self.module_statuses(), errors)

    def control_handlers(self) -> dict[str, Handler]:
        handlers = super().control_handlers()
        handlers.update({c.name: self._module_handler(c.name)
                         for c in commands.CONTROL_COMMANDS.values() if c.modules})
        return handlers

    def _module_handler(self, cmd: str) -> Handler:
        async def handle(request: dict[str, Any]) -> Any:
            if self.modules is None:
                raise ControlError("the daemon is still starting")
            return await self.modules.handlers()[cmd](request)
        return handle

    def _applied(self, op: str, args: tuple, result: dict) -> None:
        super()._applied(op, args, result)
        if self.modules is not None:
            self.modules.applied(op, args, cast(Answer, result))   # a ClusterState answer
