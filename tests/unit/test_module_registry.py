"""modules/registry.ModuleRegistry on nodes that are ``FakeHost``s over one real
ClusterState: which kind of runtime a committed module gets and where, how control
requests reach a module (its driver, its checkers, a commit), and the one-line
refusals. The packages are real .safe files, installed and fetched for real (the
second node fetches from the first's fetch server on 127.0.0.1)."""
from __future__ import annotations

import asyncio

import pytest

from hacluster.modules.registry import ModuleRegistry
from hacluster.node.control import ControlError
from raft.cluster_state import ClusterState
from tests.conftest import free_ports
from tests.unit.module_world import (FARM_USERCONFIG, MIRROR_USERCONFIG, FakeHost, ToyFarm,
                                     ToyRuntime, plan, safe_package, Step, members)

KINDS = {"mirror": ToyRuntime, "farm": ToyFarm}


class Nodes:
    """Data nodes n1 and n2 (and a witness) sharing one committed state, each with
    its registry; ``kinds``: the module kinds each node runs."""

    def __init__(self, tmp_path, kinds=None) -> None:
        ports = free_ports(3)
        self.members = members({"n1": ports[0], "n2": ports[1], "w": ports[2]})
        self.state = ClusterState()
        self.state.bootstrap(self.members)
        self.tmp_path = tmp_path
        world: list[FakeHost] = []
        self.hosts = {n: FakeHost(tmp_path / "nodes", n, self.state, self.members, world)
                      for n in ("n1", "n2")}
        self.registries = {}
        for n, host in self.hosts.items():
            reg = ModuleRegistry(host, (kinds or {}).get(n, KINDS))
            host.applied_hooks.append(reg.applied)
            self.registries[n] = reg

    async def start(self) -> None:
        for reg in self.registries.values():
            await reg.start()

    async def settle(self) -> None:
        for _ in range(3):      # a sync started by an applied entry may track another
            for host in self.hosts.values():
                await host.settle()

    async def close(self) -> None:
        for reg in self.registries.values():
            await reg.close()
        await self.settle()

    async def request(self, node: str, cmd: str, **request) -> object:
        return await self.registries[node].handlers()[cmd](request)


def run(coro_fn):
    """Run ``coro_fn(nodes)`` on a fresh loop with the nodes started and closed."""
    def runner(tmp_path, kinds=None):
        async def main():
            nodes = Nodes(tmp_path, kinds)
            await nodes.start()
            try:
                return await coro_fn(nodes)
            finally:
                await nodes.close()
        return asyncio.run(main())
    return runner


def test_a_mirror_package_is_committed_installed_everywhere_and_run_by_the_mirror_kind(tmp_path):
    async def go(nodes):
        path = safe_package(nodes.tmp_path, "web")
        reply = await nodes.request("n1", "module_install", package=str(path))
        assert reply["module"] == "web" and reply["mode"] == "mirror"
        committed = nodes.state.to_dict()["modules"]["web"]
        assert (committed["digest"], committed["mode"], committed["source"]) == (
            reply["digest"], "mirror", "n1")
        await nodes.settle()
        for n, reg in nodes.registries.items():
            rt = reg.runtimes["web"]
            assert type(rt) is ToyRuntime and rt.started
            assert rt.nodes == ("n1", "n2") and rt.node == n
            assert rt.module_dir == nodes.hosts[n].config.paths.modules_dir / "web"
            assert (rt.module_dir / "bin" / "start_prim").exists()      # fetched by n2
            assert reg.installed["web"] == reply["digest"]
        rows = await nodes.request("n2", "module_list")
        assert [(r["module"], r["mode"], r["installed_here"], r["state"], r["error"])
                for r in rows] == [("web", "mirror", True, "STOP", None)]
    run(go)(tmp_path)


def test_a_farm_package_gets_the_farm_kind(tmp_path):
    async def go(nodes):
        await nodes.request("n1", "module_install",
                            package=str(safe_package(nodes.tmp_path, "f", FARM_USERCONFIG)))
        await nodes.settle()
        assert {n: type(reg.runtimes["f"]) for n, reg in nodes.registries.items()} == {
            "n1": ToyFarm, "n2": ToyFarm}
    run(go)(tmp_path)


def test_a_node_without_the_kind_says_so_for_that_module_only(tmp_path):
    async def go(nodes):
        await nodes.request("n1", "module_install",
                            package=str(safe_package(nodes.tmp_path, "f", FARM_USERCONFIG)))
        await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "web")))
        await nodes.settle()
        n2 = nodes.registries["n2"]
        assert sorted(n2.runtimes) == ["web"]
        with pytest.raises(ControlError) as e:
            await nodes.request("n2", "module_state", module="f")
        assert str(e.value) == "module f: this node does not run farm modules"
        assert (await nodes.request("n2", "module_state", module="web"))["state"] == "STOP"
    run(go)(tmp_path, kinds={"n2": {"mirror": ToyRuntime}})


def test_a_farm_on_other_nodes_is_installed_here_but_not_run(tmp_path):
    async def go(nodes):
        uc = b'<safe><service mode="farm"><farm><lan name="default"><node name="n2" addr="127.0.0.1"/>' \
             b'</lan></farm></service></safe>'
        await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "f", uc)))
        await nodes.settle()
        assert "f" in nodes.registries["n1"].installed and "f" not in nodes.registries["n1"].runtimes
        assert nodes.registries["n2"].runtimes["f"].nodes == ("n2",)
        with pytest.raises(ControlError, match="^module f: runs on n2, not on this node$"):
            await nodes.request("n1", "module_cmd", module="f", cmd_name="start")
    run(go)(tmp_path)


def test_unknown_modules_and_commands_are_refused_in_one_line(tmp_path):
    async def go(nodes):
        await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "web")))
        await nodes.settle()
        refusals = []
        for cmd, request in [
                ("module_cmd", {"module": "nope", "cmd_name": "start"}),
                ("module_state", {"module": 7}),
                ("module_cmd", {"module": "web", "cmd_name": "dance"}),
                ("module_log", {"module": "web", "kind": "kernel"}),
                ("module_install", {"package": str(nodes.tmp_path / "missing.safe")}),
                ("module_install", {})]:
            with pytest.raises(ControlError) as e:
                await nodes.request("n1", cmd, **request)
            assert "\n" not in str(e.value)
            refusals.append(str(e.value))
        assert refusals[:2] == ["unknown module 'nope' on n1 (running: web)",
                                "unknown module 7 on n1 (running: web)"]
        assert refusals[2].startswith("unknown module command 'dance' (one of start, stop,")
        assert refusals[3] == "unknown log 'kernel' (module, script)"
        assert refusals[4] == f"{nodes.tmp_path / 'missing.safe'}: No such file or directory"
        assert refusals[5] == "module_install needs the path of a .safe file"
    run(go)(tmp_path)


def test_a_mirror_command_on_a_farm_module_is_refused_by_kind(tmp_path):
    async def go(nodes):
        await nodes.request("n1", "module_install",
                            package=str(safe_package(nodes.tmp_path, "f", FARM_USERCONFIG)))
        await nodes.settle()
        with pytest.raises(ControlError, match="^module f is a farm module; swap is a command of "
                                               "mirror modules$"):
            await nodes.request("n1", "module_cmd", module="f", cmd_name="swap")
        with pytest.raises(ControlError, match="^module f is a farm module: it has no replication$"):
            await nodes.request("n1", "replication_in_sync", module="f", epoch=3)
    run(go)(tmp_path)


def test_commands_reach_the_driver_or_are_committed_for_the_module(tmp_path):
    async def go(nodes):
        await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "web")))
        await nodes.settle()
        rt = nodes.registries["n1"].runtimes["web"]
        rt.machine.plans["start"] = plan("start", Step("started"))
        # served by the driver: its command() gets the name, its message comes back
        assert await nodes.request("n1", "module_cmd", module="web", cmd_name="start") == {
            "module": "web", "node": "n1", "message": "start asked"}
        reached = await nodes.request("n1", "module_waitstate", module="web", state="up", wait_s=30)
        assert reached["reached"] and rt.done == ["started"]
        assert nodes.registries["n2"].runtimes["web"].done == []      # n1's only
        # served by the registry: a commit for the module, on no driver
        assert await nodes.request("n2", "module_cmd", module="web", cmd_name="failover_off") == {
            "module": "web", "failover": False}
        assert nodes.state.to_dict()["modules"]["web"]["failover"] is False
        assert nodes.hosts["n2"].commits[-1] == ("set_failover", ("web", False))
    run(go)(tmp_path)


def test_a_started_module_refuses_another_version_and_keeps_the_installed_one(tmp_path):
    async def go(nodes):
        first = await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "web")))
        await nodes.settle()
        assert nodes.state.set_intent("web", "n2", "start")["ok"]
        other = safe_package(nodes.tmp_path, "web", MIRROR_USERCONFIG, {"start_prim": b"#!/bin/sh\nexit 3\n"})
        with pytest.raises(ControlError, match="^module web is started; stop it on every node before "
                                               r"installing another version, or upgrade every member "
                                               r"to stage it \(nothing installed\)$"):
            await nodes.request("n1", "module_install", package=str(other))
        assert nodes.state.to_dict()["modules"]["web"]["digest"] == first["digest"]
        assert nodes.registries["n1"].installed["web"] == first["digest"]
    run(go)(tmp_path)


def test_another_version_of_a_started_module_is_staged_and_applied_where_it_is_stopped(tmp_path):
    async def go(nodes):
        nodes.state.raise_feature_level(1)
        first = await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "web")))
        await nodes.settle()
        assert nodes.state.set_intent("web", "n2", "start")["ok"]
        other = safe_package(nodes.tmp_path, "web", MIRROR_USERCONFIG, {"start_prim": b"#!/bin/sh\nexit 3\n"})
        reply = await nodes.request("n1", "module_install", package=str(other))
        assert reply["staged"] and reply["digest"] != first["digest"]
        module = nodes.state.to_dict()["modules"]["web"]
        assert module["digest"] == first["digest"] and module["staged"]["digest"] == reply["digest"]
        await nodes.settle()
        # both toy runtimes are stopped: each node applies it, then it is the module's version
        for _ in range(100):
            if nodes.state.to_dict()["modules"]["web"]["digest"] == reply["digest"]:
                break
            await asyncio.sleep(0.05)
        await nodes.settle()
        assert "staged" not in nodes.state.to_dict()["modules"]["web"]
        for n, reg in nodes.registries.items():
            assert reg.installed["web"] == reply["digest"], n
            assert (reg.runtimes["web"].module_dir / "bin" / "start_prim").read_bytes().endswith(b"exit 3\n")
            assert not reg._staged_path("web").exists()
    run(go)(tmp_path)


def test_uninstall_closes_the_runtimes_and_removes_the_package_everywhere(tmp_path):
    async def go(nodes):
        await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "web")))
        await nodes.settle()
        runtimes = [reg.runtimes["web"] for reg in nodes.registries.values()]
        assert await nodes.request("n2", "module_uninstall", module="web") == {"module": "web"}
        await nodes.settle()
        assert "web" not in nodes.state.to_dict()["modules"]
        for n, reg in nodes.registries.items():
            assert reg.runtimes == {} and reg.installed == {}
            assert not (nodes.hosts[n].config.paths.modules_dir / "web").exists()
        assert [rt.closed_by for rt in runtimes] == ["close", "close"]
    run(go)(tmp_path)


def test_replication_hooks_reach_the_module_named(tmp_path):
    async def go(nodes):
        await nodes.request("n1", "module_install", package=str(safe_package(nodes.tmp_path, "web")))
        await nodes.settle()
        assert await nodes.request("n1", "replication_in_sync", module="web", epoch="7") == {
            "in_sync": 7}
        assert nodes.registries["n1"].runtimes["web"].done == ["in_sync 7"]
        assert nodes.registries["n2"].runtimes["web"].done == []
    run(go)(tmp_path)
