"""A node as its modules see it, without a daemon: ``FakeHost`` implements the
``ModuleHost`` protocol (hacluster/modules/host.py) over a real ``ClusterState``
that applies each commit at once (a Raft of one, shared by the hosts of a test), and
``ToyRuntime`` is a module kind whose machine is a small pure one driven by the test.
Used by test_module_registry.py and test_module_runtime.py (not a test module)."""
from __future__ import annotations

import asyncio
import enum
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from hacluster.modules.host import ModuleSlice
from hacluster.modules.machine import Command, Output, Plan, PlanDone, RunScript, ViewChanged
from hacluster.modules.runtime import ModuleRuntime, Placement, PlanFailed, PlanNotYet
from hacluster.node.cluster_config import ClusterConfig, write_secret
from hacluster.node.control import ControlError
from hacluster.node.paths import NodePaths
from raft.cluster_state import ClusterState
from raft.commands import SET_INTENT, Answer, RaftCommand
from tests.unit.test_module_package import SCRIPT, zip_of

SECRET = "s" * 40
MIRROR_USERCONFIG = (b'<safe><service mode="mirror"><rfs><replicated dir="/var/lib/app"/></rfs>'
                     b'</service></safe>')
FARM_USERCONFIG = b'<safe><service mode="farm"/></safe>'


def members(ports: Mapping[str, int]) -> dict[str, dict[str, str]]:
    """Two data nodes and a witness on 127.0.0.1, at the given Raft ports (a module
    fetch server listens on Raft port + 2)."""
    return {name: {"address": f"127.0.0.1:{port}", "role": "witness" if name == "w" else "node"}
            for name, port in ports.items()}


def safe_package(tmp_path: Path, name: str, userconfig: bytes = MIRROR_USERCONFIG,
                 scripts: Mapping[str, bytes] | None = None) -> Path:
    """A .safe package file: the userconfig and the scripts its mode needs (exit 0)."""
    mode = b"farm" if b'mode="farm"' in userconfig else b"mirror"
    needed = ("start_both", "stop_both") if mode == b"farm" else ("start_prim", "stop_prim")
    bins = {s: SCRIPT for s in needed}
    bins.update(scripts or {})
    path = tmp_path / f"{name}.safe"
    path.write_bytes(zip_of([("conf/userconfig.xml", userconfig)]
                            + [(f"bin/{s}", body, stat.S_IFREG | 0o755) for s, body in bins.items()]))
    return path


class FakeHost:
    """``ModuleHost`` over a shared ``ClusterState``: ``commit`` applies the command
    now and tells every host's ``applied`` hooks (as the daemon does after Raft
    applied an entry); ``refuse_commits`` makes the next commits fail as an entry
    that was not committed in time does (``ControlError``)."""

    def __init__(self, base: Path, name: str, state: ClusterState,
                 all_members: dict[str, dict[str, str]], world: list["FakeHost"] | None = None) -> None:
        self.name = name
        directory = base / name
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        write_secret(directory, SECRET)
        # Every path under the test's folder (a server's would be /var/lib/hacluster & co.).
        self.config = ClusterConfig(directory, "c", name, all_members, paths=NodePaths(
            directory, directory / "state", directory / "run", directory / "log"))
        self.state = state
        self.world = world if world is not None else []
        self.world.append(self)
        self.applied_hooks: list[Callable[[str, tuple, Answer], None]] = []
        self.tasks: list[asyncio.Task] = []
        self.commits: list[tuple[str, tuple]] = []
        self.refuse_commits = 0

    def cluster_state(self) -> dict[str, Any]:
        return self.state.to_dict()

    def members(self) -> dict[str, dict[str, str]]:
        return self.state.to_dict()["members"] or self.config.members

    def member_hosts(self) -> set[str]:
        return {m["address"].rsplit(":", 1)[0] for m in self.members().values()}

    def caught_up(self) -> bool:
        return True

    async def commit(self, command: RaftCommand, *args: Any) -> Any:
        await asyncio.sleep(0)
        if self.refuse_commits:
            self.refuse_commits -= 1
            raise ControlError(f"{command.name} was not committed in time (no quorum?)")
        self.commits.append((command.name, args))
        result = getattr(self.state, command.name)(*args)
        for host in self.world:
            for hook in host.applied_hooks:
                hook(command.name, args, result)
        return result

    def hold(self, resource: str, *, on_acquired=None, on_lost=None):
        raise AssertionError("no module kind of these tests holds a lease")

    def holder(self, resource: str):
        return None

    def release(self, resource: str, *, hand_back: bool = True) -> "asyncio.Future[None]":
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def track(self, task: asyncio.Task) -> asyncio.Task:
        self.tasks.append(task)
        return task

    async def settle(self) -> None:
        """Wait for every task tracked so far (and those they track)."""
        while pending := [t for t in self.tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)


# ---- a module kind with a small pure machine ----------------------------------------------
class ToyState(str, enum.Enum):
    STOP = "STOP"
    UP = "UP"

    @property
    def exit_code(self) -> int:
        return 0 if self is ToyState.STOP else 2


@dataclass(frozen=True)
class Step:
    """An action that records its name, then waits for ``gate`` if one is given."""
    name: str
    gate: asyncio.Event | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fail:
    why: str


@dataclass(frozen=True)
class NotYet:
    why: str


@dataclass(frozen=True)
class CommitIntentAction:
    intent: str


class ToyMachine:
    """Events in, plans out: a ``Command`` runs the plan the test registered under its
    name; a ``PlanDone`` ends the running plan (its next state when ok); every event
    is recorded. ``on_view``: a plan to run whenever the view changes to a value."""

    def __init__(self) -> None:
        self.state = ToyState.STOP
        self.running: Plan | None = None
        self.events: list[Any] = []
        self.plans: dict[str, Plan] = {}
        self.on_view: dict[Any, Plan] = {}

    @property
    def display(self) -> tuple[ToyState, str]:
        return self.state, "Transient" if self.running else "Ready"

    def handle(self, event: Any) -> Output:
        self.events.append(event)
        if isinstance(event, Command):
            plan = self.plans[event.name]
        elif isinstance(event, ViewChanged) and event.view in self.on_view:
            plan = self.on_view[event.view]
        elif isinstance(event, PlanDone):
            if event.ok and self.running is not None:
                self.state = self.running.next_state
            self.running = None
            return Output()
        else:
            return Output()
        self.running = plan
        return Output(plans=(plan,), log=(f"plan {plan.reason}",))

    def done(self) -> list[PlanDone]:
        return [e for e in self.events if isinstance(e, PlanDone)]

    def views(self) -> list[Any]:
        return [e.view for e in self.events if isinstance(e, ViewChanged)]


def plan(reason: str, *actions: Any, to: ToyState = ToyState.UP, urgent: bool = False) -> Plan:
    return Plan(tuple(actions), to, reason, urgent)


class ToyRuntime(ModuleRuntime):
    """A kind whose view is this node's intent and who holds lease ``node/n2``."""
    mode = "mirror"
    leases_read = frozenset({"node/n2"})

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement, ToyMachine(), {})
        self.done: list[str] = []
        self.closed_by: str | None = None

    def view_from(self, part: ModuleSlice) -> Any:
        return (part.entry().get("intent", {}).get(self.node), part.lease("node/n2").get("holder"))

    async def _do(self, action: Any) -> None:
        if isinstance(action, Step):
            self.done.append(action.name)
            if action.gate is not None:
                await action.gate.wait()
        elif isinstance(action, Fail):
            raise PlanFailed(action.why)
        elif isinstance(action, NotYet):
            raise PlanNotYet(action.why)
        elif isinstance(action, CommitIntentAction):
            await self._commit(SET_INTENT, self.name, self.node, action.intent, retry_s=1.0)
        elif isinstance(action, RunScript):
            await self._run_script(action)
        else:
            raise AssertionError(action)

    async def start(self) -> None:
        self.started = True
        self.refresh()

    async def close(self) -> None:
        self.closed_by = "close"
        await self._stop_following()

    async def command(self, name: str, request: Mapping[str, Any]) -> str | dict[str, Any]:
        self.feed(Command(name))
        return f"{name} asked"

    def status(self) -> dict:
        return {"module": self.name, "state": self.machine.display[0].value}

    async def replication_in_sync(self, epoch: int) -> dict[str, Any]:
        self.done.append(f"in_sync {epoch}")
        return {"in_sync": epoch}


class ToyFarm(ToyRuntime):
    mode = "farm"
    replication_in_sync = ModuleRuntime.replication_in_sync      # a farm has no replication
