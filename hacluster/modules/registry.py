"""A node's application modules: install through the cluster, run, route commands.

``module install`` checks the package here, installs it locally, then commits
its digest in Raft; every other node sees the committed entry, fetches the
bytes from the node that has them (``modules.fetch``, authenticated by the
cluster secret, checked against the committed digest) and installs the same
package. Each installed module gets a runtime of its kind (the ``kinds`` the
node daemon hands over: mirror/, farm/), on the nodes it runs on.

After every applied Raft entry the registry hands each runtime the slice of the
committed state its view reads, only when that slice changed (``StateFeed``):
renewals, several a second, change nothing a module reads and wake nobody.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from raft.commands import (APPLY_STAGED, BOOTSTRAP, INSTALL_MODULE, SET_FAILOVER, STAGE_MODULE,
                           UNINSTALL_MODULE, Answer, changed)
from raft.cluster_state import MAINTENANCE_LEVEL
from replication.durable_file import atomic_write
from raft.durable_storage import private_dir
from raft.replication_ports import ports_of

from hacluster.http.snapshot import ModuleSnapshot
from hacluster.node import commands
from hacluster.node.control import ControlError, Handler

from . import package, rotating_log
from .checks import checks_command
from .fetch import ModuleFetchError, ModuleFetchServer, fetch_module
from .host import ModuleHost, ModuleSlice
from .nodes import ModuleNodesError, module_nodes
from .package import ModulePackageError
from .runtime import ModuleRuntime, Placement

log = logging.getLogger("hacluster.modules")

FETCH_PORT_OFFSET = 2      # module fetch service: Raft port + 2
# How often a node looks whether a staged version may be applied (the module stopped here).
STAGED_CHECK_S = 0.5
MAX_LOG_LINES = 10_000

RuntimeFactory = Callable[[Placement], ModuleRuntime]


def node_digest(module: Mapping[str, Any], node: str) -> str:
    """The version ``node`` runs of a committed module: the staged one once it changed
    to it (raft.cluster_state.apply_staged), else the module's."""
    return (module.get("running") or {}).get(node) or module["digest"]


def node_source(module: Mapping[str, Any], node: str) -> str:
    staged = module.get("staged")
    if staged is not None and node_digest(module, node) == staged["digest"]:
        return staged["source"]
    return module["source"]


def fetch_address(raft_address: str) -> tuple[str, int]:
    host, port = raft_address.rsplit(":", 1)
    return host, int(port) + FETCH_PORT_OFFSET


class StateReader(Protocol):
    """A follower of one module's part of the committed state (a module runtime)."""
    name: str
    leases_read: frozenset[str]

    def state_changed(self, part: ModuleSlice) -> None: ...


class StateFeed:
    """Hands each reader the slice of the committed state it reads, only when an
    applied entry changed that slice (``raft.commands``: what each command changed),
    from one read of the state for all the readers it concerns."""

    def __init__(self, read_state: Callable[[], Mapping[str, Any]]) -> None:
        self._read_state = read_state

    def applied(self, op: str, args: tuple, result: Answer, readers: Iterable[StateReader]) -> None:
        what = changed(op, args, result)
        if what.nothing:
            return
        state = None
        for reader in readers:
            if what.concerns(reader.name, reader.leases_read):
                state = state if state is not None else self._read_state()
                reader.state_changed(ModuleSlice.of(state, reader.name, reader.leases_read))


class ModuleRegistry:
    def __init__(self, host: ModuleHost, kinds: Mapping[str, RuntimeFactory]) -> None:
        self.host = host
        self.kinds = dict(kinds)                     # package mode -> its runtime
        self.dir = host.config.paths.modules_dir
        private_dir(self.dir)
        self.runtimes: dict[str, ModuleRuntime] = {}
        self.installed: dict[str, str] = {}          # name -> digest on this node
        self.errors: dict[str, str] = {}
        self.feed = StateFeed(host.cluster_state)
        self._sync_lock = asyncio.Lock()
        self._sync_again = False
        self._synced_once = False
        self._staged_task: asyncio.Task | None = None
        address, port = fetch_address(host.config.me["address"])
        self.fetch_server = ModuleFetchServer(address, port, host.config.read_secret(), self._lookup,
                                              member_hosts=host.member_hosts)

    def _lookup(self, digest: str) -> bytes | None:
        for name, d in self.installed.items():
            if d == digest:
                try:
                    return (self.dir / f"{name}.safe").read_bytes()
                except OSError:
                    return None
        for path in self.dir.glob(".staged-*.safe"):     # versions staged, not yet run here
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if package.digest(data) == digest:
                return data
        return None

    def _staged_path(self, name: str) -> Path:
        return self.dir / f".staged-{name}.safe"

    def _staged_digest(self, name: str) -> str | None:
        try:
            return package.digest(self._staged_path(name).read_bytes())
        except OSError:
            return None

    async def start(self) -> None:
        await self.fetch_server.start()
        for m in package.list_installed(self.dir):
            self.installed[m.name] = m.digest
        # its own task (not the host's: those are waited for), cancelled by close()
        self._staged_task = asyncio.create_task(self._apply_staged_loop())

    def stop_time_s(self) -> float:
        """The longest stop of the modules running here (they stop side by side)."""
        return max((rt.stop_time_s() for rt in self.runtimes.values()), default=0.0)

    async def close(self) -> None:
        if self._staged_task is not None:
            self._staged_task.cancel()
        await asyncio.gather(*(rt.close() for rt in self.runtimes.values()), return_exceptions=True)
        await self.fetch_server.close()

    def http_modules(self) -> tuple[tuple[ModuleSnapshot, ...], frozenset[str]]:
        """The modules running here (for the HTTP endpoints) and every module this node
        knows to be installed in the cluster (those not running here answer 503, not 404)."""
        running = tuple(rt.http_module() for _, rt in sorted(self.runtimes.items()))
        return running, frozenset(self.installed) | frozenset(self.runtimes) | frozenset(self.errors)

    # ---- following the committed state --------------------------------------------------
    def applied(self, op: str, args: tuple, result: Answer) -> None:
        """After every applied Raft entry."""
        if op in (INSTALL_MODULE.name, UNINSTALL_MODULE.name, BOOTSTRAP.name, STAGE_MODULE.name,
                  APPLY_STAGED.name) or not self._synced_once:
            self.host.track(asyncio.create_task(self.sync()))
        self.feed.applied(op, args, result, list(self.runtimes.values()))

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
        snap = self.host.cluster_state()
        if not snap["members"] or not self.host.caught_up():
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
            digest = node_digest(mod, self.host.name)
            if self.installed.get(name) != digest:
                if name in self.runtimes:
                    await self.runtimes.pop(name).close()
                if not await self._fetch_and_install(name, mod, snap):
                    continue
            if name not in self.runtimes:
                self._start_runtime(name, mod, snap)
            staged = mod.get("staged")
            if staged is not None and staged["digest"] != digest \
                    and self._staged_digest(name) != staged["digest"]:
                await self._fetch_staged(name, staged, snap)
            elif staged is None:
                self._staged_path(name).unlink(missing_ok=True)

    async def _fetch_staged(self, name: str, staged: dict, snap: dict) -> None:
        """A new version staged for module ``name``: fetched now, kept beside the one that
        runs until this node applies it (``_apply_staged_loop``)."""
        member = snap["members"].get(staged["source"])
        if member is None:
            self.errors[name] = f"staged version's source {staged['source']} is no longer a member"
            return
        host, port = fetch_address(member["address"])
        try:
            data = await fetch_module(host, port, self.host.config.read_secret(), staged["digest"])
            def keep() -> None:
                package.check(data, f"{name}.safe", name)
                atomic_write(self._staged_path(name), data, mode=0o640)
            await asyncio.get_running_loop().run_in_executor(None, keep)
        except (ModuleFetchError, ModulePackageError, OSError) as e:
            log.error("event=module_staged_fetch_failed module=%s source=%s error=%r", name,
                      staged["source"], str(e))
            asyncio.get_running_loop().call_later(2.0, lambda: self.host.track(
                asyncio.create_task(self.sync())))
            return
        log.info("event=module_staged module=%s digest=%s source=%s", name, staged["digest"][:12],
                 staged["source"])

    async def _apply_staged_loop(self) -> None:
        """A staged version is applied on this node while the module is stopped here (or
        does not run here): committed, then ``sync`` installs it and starts the runtime
        again, still stopped, with the new scripts (rolling upgrade, one node at a time)."""
        while True:
            await asyncio.sleep(STAGED_CHECK_S)
            snap = self.host.cluster_state()
            for name, mod in sorted(snap["modules"].items()):
                staged = mod.get("staged")
                if staged is None or node_digest(mod, self.host.name) == staged["digest"]:
                    continue
                if self._staged_digest(name) != staged["digest"]:
                    continue
                rt = self.runtimes.get(name)
                if rt is not None and (rt.machine.display[0].value != "STOP"
                                       or rt.machine.running is not None):
                    continue
                try:
                    result = await self.host.commit(APPLY_STAGED, name, self.host.name, staged["digest"])
                except ControlError as e:
                    log.warning("event=module_staged_not_applied module=%s error=%r", name, str(e))
                    continue
                log.info("event=module_staged_applied module=%s digest=%s promoted=%s", name,
                         staged["digest"][:12], result.get("promoted"))

    async def _fetch_and_install(self, name: str, mod: dict, snap: dict) -> bool:
        digest = node_digest(mod, self.host.name)
        if self._staged_digest(name) == digest:     # applied here: installed from what was staged
            try:
                data = await asyncio.get_running_loop().run_in_executor(
                    None, self._staged_path(name).read_bytes)
                installed = await asyncio.get_running_loop().run_in_executor(
                    None, package.install, data, self.dir, name)
            except (ModulePackageError, OSError) as e:
                self.errors[name] = f"installing the staged version of {name}: {e}"
                return False
            self._staged_path(name).unlink(missing_ok=True)
            self.installed[name] = installed.digest
            self.errors.pop(name, None)
            log.info("event=module_installed module=%s digest=%s source=staged", name,
                     installed.digest[:12])
            return True
        source = node_source(mod, self.host.name)
        member = snap["members"].get(source)
        if member is None:
            self.errors[name] = f"package source {source} is no longer a member"
            return False
        host, port = fetch_address(member["address"])
        try:
            data = await fetch_module(host, port, self.host.config.read_secret(), digest)
            installed = await asyncio.get_running_loop().run_in_executor(
                None, package.install, data, self.dir, name)
        except (ModuleFetchError, ModulePackageError, OSError) as e:
            self.errors[name] = f"fetching {name} from {source}: {e}"
            log.error("event=module_fetch_failed module=%s source=%s error=%r", name, source, str(e))
            # Try again a little later: the source may be restarting.
            asyncio.get_running_loop().call_later(2.0, lambda: self.host.track(
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
        if self.host.name not in nodes:
            # Installed everywhere (any node may be asked about it), run only on its nodes.
            self.errors[name] = f"runs on {', '.join(nodes)}, not on this node"
            return
        kind = self.kinds.get(mod["mode"])
        if kind is None:
            self.errors[name] = f"this node does not run {mod['mode']} modules"
            return
        self.errors.pop(name, None)
        rt = kind(Placement(self.host, name, path, config, tuple(nodes), self.runtimes.get))
        self.runtimes[name] = rt
        self.host.track(asyncio.create_task(rt.start()))

    # ---- control handlers ----------------------------------------------------------------
    def handlers(self) -> dict[str, Handler]:
        """The module control commands (hacluster.node.commands: ``modules``), by name."""
        return {
            commands.MODULE_INSTALL.name: self._install,
            commands.MODULE_UNINSTALL.name: self._uninstall,
            commands.MODULE_LIST.name: self._list,
            commands.MODULE_CMD.name: self._cmd,
            commands.MODULE_STATE.name: self._state,
            commands.MODULE_LOG.name: self._log,
            commands.MODULE_WAITSTATE.name: self._waitstate,
            commands.MODULE_USERCONFIG.name: self._userconfig,
            commands.REPLICATION_PEER_LOST.name: self._peer_lost,
            commands.REPLICATION_IN_SYNC.name: self._in_sync,
            commands.REPLICATION_PROGRESS.name: self._progress,
        }

    def _runtime(self, request: dict) -> ModuleRuntime:
        name = request.get("module")
        rt = self.runtimes.get(name) if isinstance(name, str) else None
        if rt is None:
            if name in self.errors:
                raise ControlError(f"module {name}: {self.errors[name]}")
            known = ", ".join(sorted(self.runtimes)) or "none"
            raise ControlError(f"unknown module {name!r} on {self.host.name} (running: {known})")
        return rt

    async def _install_source(self, request: dict) -> tuple[bytes, str, str]:
        """(package bytes, how messages name them, module name) of a module_install:
        the ``.safe`` file ``package`` names, or (``userconfig``: the text of a new
        conf/userconfig.xml, the HTTPS API's editor) the installed package of module
        ``name`` with that file replaced. Read in a thread."""
        path, name, userconfig = request.get("package"), request.get("name"), request.get("userconfig")
        loop = asyncio.get_running_loop()
        if userconfig is not None:
            if not isinstance(userconfig, str) or not isinstance(name, str):
                raise ControlError("module_install: 'userconfig' (text) needs the module's 'name'")
            if self.installed.get(name) is None:
                raise ControlError(f"module {name} is not installed on {self.host.name}")
            try:
                base = await loop.run_in_executor(None, (self.dir / f"{name}.safe").read_bytes)
                data = await loop.run_in_executor(None, package.with_userconfig, base,
                                                  f"{name}.safe", userconfig)
            except OSError as e:
                raise ControlError(f"{name}.safe: {e.strerror}") from None
            except ModulePackageError as e:
                raise ControlError(str(e)) from None
            return data, f"{name}.safe", name
        if not isinstance(path, str):
            raise ControlError("module_install needs the path of a .safe file")
        try:
            data = await loop.run_in_executor(None, Path(path).read_bytes)
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror}") from None
        if not isinstance(name, str) or not name:
            name = Path(path).name.removesuffix(".safe")
        return data, str(request.get("source") or path), name

    async def _install(self, request: dict) -> dict:
        """Install a package on every node (``check_only``: only say what ``hacluster
        module check`` would: every error and warning, nothing installed)."""
        data, path, name = await self._install_source(request)
        loop = asyncio.get_running_loop()
        if request.get("check_only"):
            report = await loop.run_in_executor(None, package.check_bytes, data, path, name)
            return {"module": name, "ok": report.ok, "mode": report.mode,
                    "digest": package.digest(data), "errors": list(report.errors),
                    "warnings": list(report.warnings)}
        try:
            package.check_module_name(name)
            checked = await loop.run_in_executor(None, package.check, data, path, name)
        except ModulePackageError as e:
            raise ControlError(str(e)) from None
        state = self.host.cluster_state()
        old = state["modules"].get(name)
        if old is not None and old["digest"] != checked.digest and any(
                i == "start" for i in old["intent"].values()):
            if state.get("feature_level", 0) < MAINTENANCE_LEVEL:
                raise ControlError(f"module {name} is started; stop it on every node before "
                                   "installing another version, or upgrade every member to stage "
                                   "it (nothing installed)")
            return await self._stage(name, data, checked)
        async with self._sync_lock:
            try:
                installed = await loop.run_in_executor(None, package.install, data, self.dir, name)
            except ModulePackageError as e:
                raise ControlError(str(e)) from None
            self.installed[name] = installed.digest
            # A mirror module's replication ports, one per directory, are allocated by
            # this entry (raft.replication_ports).
            rfs = checked.config.rfs
            result = await self.host.commit(INSTALL_MODULE, name, installed.digest,
                                            checked.config.mode, len(data), self.host.name,
                                            self.host.config.raft.lease_timing.lease_s,
                                            len(rfs.dirs) if rfs is not None else 0)
        if not result.get("ok"):
            raise ControlError(result["error"])
        await self.sync()
        return {"module": name, "digest": installed.digest, "mode": checked.config.mode,
                "replication_ports": ports_of(name, self.host.cluster_state()["modules"][name])
                if checked.config.mode == commands.MIRROR else [],
                "warnings": list(checked.config.warnings)}

    async def _stage(self, name: str, data: bytes, checked: Any) -> dict:
        """Another version of a module that runs: staged (every node fetches it and
        changes to it at its next stop of the module), not installed."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: atomic_write(self._staged_path(name), data,
                                                             mode=0o640))
        result = await self.host.commit(STAGE_MODULE, name, checked.digest, checked.config.mode,
                                        len(data), self.host.name)
        if not result.get("ok"):
            raise ControlError(result["error"])
        log.info("event=module_staged module=%s digest=%s source=%s", name, checked.digest[:12],
                 self.host.name)
        await self.sync()
        return {"module": name, "digest": checked.digest, "mode": checked.config.mode,
                "staged": True, "warnings": list(checked.config.warnings)}

    async def _userconfig(self, request: dict) -> dict:
        name = request.get("module")
        if not isinstance(name, str) or self.installed.get(name) is None:
            raise ControlError(f"module {name!r} is not installed on {self.host.name}")
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, (self.dir / f"{name}.safe").read_bytes)
            text = package.read_userconfig(data, f"{name}.safe")
        except OSError as e:
            raise ControlError(f"{name}.safe: {e.strerror}") from None
        except ModulePackageError as e:
            raise ControlError(str(e)) from None
        return {"module": name, "userconfig": text}

    async def _uninstall(self, request: dict) -> dict:
        name = request.get("module")
        result = await self.host.commit(UNINSTALL_MODULE, name)
        if not result.get("ok"):
            raise ControlError(result["error"])
        await self.sync()
        return {"module": name}

    async def _list(self, request: dict) -> list[dict]:
        snap = self.host.cluster_state()
        rows = []
        for name, mod in sorted(snap["modules"].items()):
            rt = self.runtimes.get(name)
            here = node_digest(mod, self.host.name)
            rows.append({"module": name, "mode": mod["mode"], "digest": mod["digest"][:12],
                         "installed_here": self.installed.get(name) == here,
                         "runs_here": here[:12],
                         "staged": (mod.get("staged") or {}).get("digest", "")[:12] or None,
                         "state": rt.machine.display[0].value if rt else None,
                         "failover": mod["failover"],
                         "replication_ports": ports_of(name, mod) if mod["mode"] == commands.MIRROR else [],
                         "intent": mod["intent"], "error": self.errors.get(name)})
        return rows

    async def _cmd(self, request: dict) -> dict:
        rt = self._runtime(request)
        try:
            command = commands.module_command(request.get("cmd_name"), rt.mode, rt.name)
        except ValueError as e:
            raise ControlError(str(e)) from None
        if command.served_by == commands.CHECKS:    # resources, set, errd/checker on|off, resetloop
            return checks_command(rt, request)
        if command.served_by == commands.REGISTRY:  # failover on|off
            on = command.name == "failover_on"
            result = await self.host.commit(SET_FAILOVER, rt.name, on)
            if not result.get("ok"):
                raise ControlError(result["error"])
            return {"module": rt.name, "failover": on}
        reply = await rt.command(command.name, request)
        if isinstance(reply, dict):
            return reply
        return {"module": rt.name, "node": self.host.name, "message": reply}

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
        """The last ``lines`` lines of a module log, or (``cursor``) the lines written
        since a previous answer. Read in a thread and bounded (rotating_log): a large
        log costs its tail, never a stall of the loop that renews the leases."""
        rt = self._runtime(request)
        kind = request.get("kind", "module")
        path = {"module": rt.module_log, "script": rt.runner.log_path}.get(kind)
        if path is None:
            raise ControlError(f"unknown log {kind!r} (module, script)")
        try:
            lines = min(int(request.get("lines", 100)), MAX_LOG_LINES)
            cursor = (rotating_log.Cursor.from_dict(request["cursor"])
                      if request.get("cursor") is not None else None)
        except (TypeError, ValueError) as e:
            raise ControlError(f"module_log: {e}") from None
        loop = asyncio.get_running_loop()
        if cursor is None:
            chunk = await loop.run_in_executor(None, rotating_log.read_tail, path, lines)
        else:
            chunk = await loop.run_in_executor(None, rotating_log.read_since, path, cursor, rt.log_keep)
        return {"module": rt.name, "kind": kind, "path": str(path), "lines": chunk.lines,
                "cursor": chunk.cursor.to_dict() if chunk.cursor else None,
                "skipped": chunk.skipped}

    async def _peer_lost(self, request: dict) -> dict:
        return await self._runtime(request).replication_peer_lost(
            int(request.get("epoch", -1)), str(request.get("reason", "")))

    async def _in_sync(self, request: dict) -> dict:
        return await self._runtime(request).replication_in_sync(int(request.get("epoch", -1)))

    async def _progress(self, request: dict) -> dict:
        progress = request.get("progress")
        # the answer carries the maintenance hold of the mount (replication.owner_watch)
        return self._runtime(request).replication_progress(
            progress if isinstance(progress, dict) else {}) or {}
