"""A node's application modules: install through the cluster, run, route commands.

``module install`` checks the package here, installs it locally, then commits
its digest in Raft; every other node sees the committed entry, fetches the
bytes from the node that has them (``modules.fetch``, authenticated by the
cluster secret, checked against the committed digest) and installs the same
package. Each installed mirror module gets a ``MirrorModule`` runtime.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raft.durable_storage import private_dir

from . import package
from hacluster.node.control import ControlError
from hacluster.farm_module import FarmModule
from hacluster.mirror_module import MirrorModule
from .checks import CHECKS_COMMANDS, checks_command
from .nodes import ModuleNodesError, module_nodes
from .fetch import ModuleFetchError, ModuleFetchServer, fetch_module
from .package import ModulePackageError

if TYPE_CHECKING:
    from hacluster.node.daemon import NodeDaemon

log = logging.getLogger("hacluster.modules")

FETCH_PORT_OFFSET = 2      # module fetch service: Raft port + 2
MAX_LOG_LINES = 10_000


def fetch_address(raft_address: str) -> tuple[str, int]:
    host, port = raft_address.rsplit(":", 1)
    return host, int(port) + FETCH_PORT_OFFSET


class ModuleRegistry:
    def __init__(self, daemon: "NodeDaemon") -> None:
        self.daemon = daemon
        self.dir = daemon.config.data_path / "modules"
        private_dir(self.dir)
        self.runtimes: dict[str, MirrorModule] = {}
        self.installed: dict[str, str] = {}          # name -> digest on this node
        self.errors: dict[str, str] = {}
        self._sync_lock = asyncio.Lock()
        self._sync_again = False
        self._synced_once = False
        host, port = fetch_address(daemon.config.me["address"])
        self.fetch_server = ModuleFetchServer(host, port, daemon.config.read_secret(), self._lookup,
                                              member_hosts=daemon._member_hosts)

    def _lookup(self, digest: str) -> bytes | None:
        for name, d in self.installed.items():
            if d == digest:
                try:
                    return (self.dir / f"{name}.safe").read_bytes()
                except OSError:
                    return None
        return None

    async def start(self) -> None:
        await self.fetch_server.start()
        for m in package.list_installed(self.dir):
            self.installed[m.name] = m.digest

    async def close(self) -> None:
        await asyncio.gather(*(rt.close() for rt in self.runtimes.values()), return_exceptions=True)
        await self.fetch_server.close()

    # ---- following the committed state --------------------------------------------------
    def applied(self, op: str) -> None:
        if op in ("install_module", "uninstall_module", "bootstrap") or not self._synced_once:
            self.daemon.track(asyncio.create_task(self.sync()))
        for rt in list(self.runtimes.values()):
            rt.refresh()

    async def sync(self) -> None:
        """Make this node's installed modules and runtimes match the committed ones."""
        if self._sync_lock.locked():
            self._sync_again = True
            return
        async with self._sync_lock:
            while True:
                self._sync_again = False
                await self._sync_once()
                if not self._sync_again:
                    break

    async def _sync_once(self) -> None:
        snap = self.daemon.raft.snapshot()
        if not snap["members"] or not self.daemon.raft.caught_up():
            return
        self._synced_once = True
        wanted = snap["modules"]
        for name in sorted(set(self.runtimes) - set(wanted)):
            rt = self.runtimes.pop(name)
            await rt.close()
        for name in sorted(set(self.installed) - set(wanted)):
            try:
                package.uninstall(self.dir, name)
            except (ModulePackageError, OSError) as e:
                log.error("event=module_uninstall_failed module=%s error=%r", name, str(e))
            self.installed.pop(name, None)
        for name, mod in sorted(wanted.items()):
            if self.installed.get(name) != mod["digest"]:
                if name in self.runtimes:
                    await self.runtimes.pop(name).close()
                if not await self._fetch_and_install(name, mod, snap):
                    continue
            if name not in self.runtimes:
                self._start_runtime(name, mod, snap)

    async def _fetch_and_install(self, name: str, mod: dict, snap: dict) -> bool:
        source = mod["source"]
        member = snap["members"].get(source)
        if member is None:
            self.errors[name] = f"package source {source} is no longer a member"
            return False
        host, port = fetch_address(member["address"])
        try:
            data = await fetch_module(host, port, self.daemon.config.read_secret(), mod["digest"])
            installed = await asyncio.get_running_loop().run_in_executor(
                None, package.install, data, self.dir, name)
        except (ModuleFetchError, ModulePackageError, OSError) as e:
            self.errors[name] = f"fetching {name} from {source}: {e}"
            log.error("event=module_fetch_failed module=%s source=%s error=%r", name, source, str(e))
            # Try again a little later: the source may be restarting.
            asyncio.get_running_loop().call_later(2.0, lambda: self.daemon.track(
                asyncio.create_task(self.sync())))
            return False
        self.installed[name] = installed.digest
        self.errors.pop(name, None)
        log.info("event=module_installed module=%s digest=%s source=%s", name, installed.digest[:12], source)
        return True

    def _start_runtime(self, name: str, mod: dict, snap: dict) -> None:
        path = self.dir / name
        config = next((m.config for m in package.list_installed(self.dir) if m.name == name), None)
        if config is None:
            self.errors[name] = f"module {name} is not installed on this node"
            return
        try:
            nodes = module_nodes(config, snap["members"])
        except ModuleNodesError as e:
            self.errors[name] = str(e)
            log.error("event=module_not_started module=%s reason=%r", name, self.errors[name])
            return
        if self.daemon.name not in nodes:
            # Installed everywhere (any node may be asked about it), run only on its nodes.
            self.errors[name] = f"runs on {', '.join(nodes)}, not on this node"
            return
        self.errors.pop(name, None)
        if mod["mode"] == "farm":
            rt: MirrorModule | FarmModule = FarmModule(self.daemon, name, path, config)
        else:
            rt = MirrorModule(self.daemon, name, path, config,
                              next(n for n in nodes if n != self.daemon.name))
        self.runtimes[name] = rt
        self.daemon.track(asyncio.create_task(rt.start()))

    # ---- control handlers ----------------------------------------------------------------
    def handlers(self) -> dict[str, Any]:
        return {
            "module_install": self._install, "module_uninstall": self._uninstall,
            "module_list": self._list, "module_cmd": self._cmd, "module_state": self._state,
            "module_log": self._log, "module_waitstate": self._waitstate,
            "replication_peer_lost": self._peer_lost, "replication_in_sync": self._in_sync,
            "replication_progress": self._progress,
        }

    def _runtime(self, request: dict) -> MirrorModule | FarmModule:
        name = request.get("module")
        rt = self.runtimes.get(name) if isinstance(name, str) else None
        if rt is None:
            if name in self.errors:
                raise ControlError(f"module {name}: {self.errors[name]}")
            known = ", ".join(sorted(self.runtimes)) or "none"
            raise ControlError(f"unknown module {name!r} on {self.daemon.name} (running: {known})")
        return rt

    async def _install(self, request: dict) -> dict:
        path = request.get("package")
        name = request.get("name")
        if not isinstance(path, str):
            raise ControlError("module_install needs the path of a .safe file")
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror}") from None
        if not isinstance(name, str) or not name:
            name = Path(path).name.removesuffix(".safe")
        loop = asyncio.get_running_loop()
        try:
            package.check_module_name(name)
            checked = await loop.run_in_executor(None, package.check, data, path, name)
        except ModulePackageError as e:
            raise ControlError(str(e)) from None
        snap = self.daemon.raft.snapshot()
        old = snap["modules"].get(name)
        if old is not None and old["digest"] != checked.digest and any(
                i == "start" for i in old["intent"].values()):
            raise ControlError(f"module {name} is started; stop it on every node before installing "
                               "another version (nothing installed)")
        async with self._sync_lock:
            try:
                installed = await loop.run_in_executor(None, package.install, data, self.dir, name)
            except ModulePackageError as e:
                raise ControlError(str(e)) from None
            self.installed[name] = installed.digest
            result = await self.daemon.commit("install_module", name, installed.digest,
                                              checked.config.mode, len(data), self.daemon.name,
                                              self.daemon.config.raft.lease_timing.lease_s)
        if not result.get("ok"):
            raise ControlError(result["error"])
        await self.sync()
        return {"module": name, "digest": installed.digest, "mode": checked.config.mode,
                "warnings": list(checked.config.warnings)}

    async def _uninstall(self, request: dict) -> dict:
        name = request.get("module")
        result = await self.daemon.commit("uninstall_module", name)
        if not result.get("ok"):
            raise ControlError(result["error"])
        await self.sync()
        return {"module": name}

    async def _list(self, request: dict) -> list[dict]:
        snap = self.daemon.raft.snapshot()
        rows = []
        for name, mod in sorted(snap["modules"].items()):
            rt = self.runtimes.get(name)
            rows.append({"module": name, "mode": mod["mode"], "digest": mod["digest"][:12],
                         "installed_here": self.installed.get(name) == mod["digest"],
                         "state": rt.machine.display[0].value if rt else None,
                         "failover": mod["failover"],
                         "intent": mod["intent"], "error": self.errors.get(name)})
        return rows

    async def _cmd(self, request: dict) -> dict:
        rt = self._runtime(request)
        cmd = request.get("cmd_name")
        if cmd in ("failover_on", "failover_off"):
            result = await self.daemon.commit("set_failover", rt.name, cmd == "failover_on")
            if not result.get("ok"):
                raise ControlError(result["error"])
            return {"module": rt.name, "failover": cmd == "failover_on"}
        if not isinstance(cmd, str):
            raise ControlError("module_cmd needs cmd_name")
        if cmd in CHECKS_COMMANDS:      # resources, set, errd/checker on|off, resetloop
            return checks_command(rt, request)
        if cmd == "stamp_copy":         # from the primary's daemon, through peer control
            if not hasattr(rt, "stamp_copy"):
                raise ControlError(f"module {rt.name} is not a mirror module")
            epoch = request.get("epoch")
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise ControlError(f"stamp_copy needs an integer epoch, got {epoch!r}")
            return await rt.stamp_copy(epoch)
        return {"module": rt.name, "node": self.daemon.name, "message": await rt.command(cmd)}

    async def _state(self, request: dict) -> Any:
        if request.get("module") in (None, ""):
            return [rt.status() for rt in self.runtimes.values()]
        return self._runtime(request).status()

    async def _waitstate(self, request: dict) -> dict:
        rt = self._runtime(request)
        state = str(request.get("state", "")).upper()
        timeout = float(request.get("wait_s", 60))
        reached = await rt.wait_state(state, timeout)
        return {"module": rt.name, "reached": reached, **rt.status()}

    async def _log(self, request: dict) -> dict:
        rt = self._runtime(request)
        kind = request.get("kind", "module")
        path = {"module": rt.module_log, "script": rt.runner.log_path}.get(kind)
        if path is None:
            raise ControlError(f"unknown log {kind!r} (module, script)")
        lines = min(int(request.get("lines", 100)), MAX_LOG_LINES)
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            text = []
        return {"module": rt.name, "kind": kind, "path": str(path), "lines": text}

    async def _peer_lost(self, request: dict) -> dict:
        return await self._runtime(request).replication_peer_lost(
            int(request.get("epoch", -1)), str(request.get("reason", "")))

    async def _in_sync(self, request: dict) -> dict:
        return await self._runtime(request).replication_in_sync(int(request.get("epoch", -1)))

    async def _progress(self, request: dict) -> dict:
        progress = request.get("progress")
        self._runtime(request).replication_progress(progress if isinstance(progress, dict) else {})
        return {}
