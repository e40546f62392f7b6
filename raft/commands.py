"""Every command of the replicated cluster state, declared once.

A log entry names one ``ClusterState`` method and its arguments. For each such
command this table gives its name (what the journal holds: a plain string, so
renaming a constant here never changes what old journals replay), the shape of
its answer (a ``TypedDict``: callers of ``RaftCommand[R]`` get an ``R``), and
which parts of the state it may have changed (``Changed``), so that a reader
that follows the state (a node's modules) is told only about what changed.

``Changed`` counts what readers see: a lease's holder, epoch and eligible set,
a module's entry, the members. A renewal moves only the lease's ``seq`` (the
leader's fence for expiries), which nobody outside the state machine reads: it
changes nothing. A refused command changes nothing at all.
tests/unit/test_raft_commands.py checks both claims on random command sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Required, TypedDict, TypeVar

from .cluster_state import FEATURE_LEVEL, MIRROR_PREFIX, mirror_resource

__all__ = ["FEATURE_LEVEL", "COMMANDS", "OPS", "RaftCommand", "Changed", "changed"]


# ---- answers ------------------------------------------------------------------------------
class Answer(TypedDict, total=False):
    ok: Required[bool]
    error: str                  # when not ok: why, in words


class Bootstrapped(Answer, total=False):
    members: list[str]


class MemberAdded(Answer, total=False):
    name: str
    address: str


class MemberRemoved(Answer, total=False):
    name: str
    address: str
    farms_left: list[str]


class Granted(Answer, total=False):
    epoch: int
    forced: bool                # granted to a node outside the eligible set (primforce)
    reacquired: bool            # the holder started a new session of its own lease
    holder: str | None          # when refused: who holds it


class Renewed(Answer, total=False):
    epoch: int
    holder: str | None          # when refused: who holds it now


class RenewedMany(Answer, total=False):
    results: dict[str, Renewed]


class Ended(Answer, total=False):
    """A lease released by its holder or expired by the leader."""
    epoch: int
    holder: str                 # expire: who held it
    farms_left: list[str]       # a liveness lease ended: the farms its node left


class Eligible(Answer, total=False):
    eligible: list[str] | None  # the lease's eligible set (a mirror's in-sync set)
    epoch: int
    generation: int             # begin_generation: the new generation
    forced: bool                # name_good_copy: a copy that was not current


class ModuleInstalled(Answer, total=False):
    name: str
    digest: str
    upgraded: bool
    replication_ports: list[int]    # a mirror module's ports, when allocated by this entry


class ModuleUninstalled(Answer, total=False):
    name: str
    farm_members_left: list[str]


class IntentSet(Answer, total=False):
    name: str
    node: str
    intent: str


class FailoverSet(Answer, total=False):
    name: str
    failover: bool


class FarmChanged(Answer, total=False):
    name: str
    node: str
    version: int
    changed: bool


class UserSet(Answer, total=False):
    name: str
    role: str
    created: bool


class UserRemoved(Answer, total=False):
    name: str


class LevelRaised(Answer, total=False):
    level: int
    raised: bool


class ModuleStaged(Answer, total=False):
    name: str
    staged: str | None


class StagedApplied(Answer, total=False):
    name: str
    node: str
    digest: str
    promoted: bool


class MaintenanceSet(Answer, total=False):
    module: str | None
    hold_s: float | None


R = TypeVar("R", bound=Answer)


# ---- what changed -------------------------------------------------------------------------
@dataclass(frozen=True)
class Changed:
    """The parts of the state one applied command may have changed."""
    members: bool = False
    leases: frozenset[str] = frozenset()
    modules: frozenset[str] = frozenset()
    users: bool = False             # the HTTP API's user table (read on demand, never followed)
    everything: bool = False

    def concerns(self, module: str, leases: Iterable[str] = ()) -> bool:
        """Did the entry of ``module`` or one of ``leases`` change?"""
        return (self.everything or module in self.modules
                or not self.leases.isdisjoint(leases))

    @property
    def nothing(self) -> bool:
        return not (self.everything or self.members or self.leases or self.modules or self.users)


NOTHING = Changed()
EVERYTHING = Changed(members=True, everything=True)

Touches = Callable[[tuple, Answer], Changed]


def _nothing(args: tuple, result: Answer) -> Changed:
    return NOTHING


def _members(args: tuple, result: Answer) -> Changed:
    return Changed(members=True)


def _everything(args: tuple, result: Answer) -> Changed:
    return EVERYTHING


def _module_of(resource: str) -> frozenset[str]:
    """A mirror module's lease lives with its entry (its identity)."""
    return frozenset({resource[len(MIRROR_PREFIX):]}) if resource.startswith(MIRROR_PREFIX) \
        else frozenset()


def _users(args: tuple, result: Answer) -> Changed:
    return Changed(users=True)


def _lease(args: tuple, result: Answer) -> Changed:
    """Commands whose first argument is the lease they change."""
    return Changed(leases=frozenset({args[0]}))


def _lease_ended(args: tuple, result: Answer) -> Changed:
    farms: Any = result.get("farms_left") or ()
    return Changed(leases=frozenset({args[0]}), modules=frozenset(farms))


def _lease_and_identity(args: tuple, result: Answer) -> Changed:
    return Changed(leases=frozenset({args[0]}), modules=_module_of(args[0]))


def _module(args: tuple, result: Answer) -> Changed:
    return Changed(modules=frozenset({args[0]}))


def _maintenance(args: tuple, result: Answer) -> Changed:
    """A module's maintenance concerns that module; the cluster's, every module."""
    return EVERYTHING if args[0] is None else Changed(modules=frozenset({args[0]}))


def _module_and_lease(args: tuple, result: Answer) -> Changed:
    return Changed(leases=frozenset({mirror_resource(args[0])}), modules=frozenset({args[0]}))


# ---- the table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RaftCommand(Generic[R]):
    name: str                               # the ClusterState method; what the journal holds
    touches: Touches = field(repr=False)    # what it changed, from its arguments and answer
    # The feature level (ClusterState.feature_level) from which it may be proposed: a
    # member of an older version refuses it as unknown, so it is sent only once every
    # member applies it the same way (the state machine refuses it before that too).
    level: int = 0

    def changed(self, args: tuple, result: Answer) -> Changed:
        """What this command changed, once applied with ``args`` and answered ``result``."""
        return self.touches(args, result) if result.get("ok") else NOTHING


BOOTSTRAP: RaftCommand[Bootstrapped] = RaftCommand("bootstrap", _members)
ADD_MEMBER: RaftCommand[MemberAdded] = RaftCommand("add_member", _members)
# A removed member leaves every lease's eligible set, every farm, every intent.
REMOVE_MEMBER: RaftCommand[MemberRemoved] = RaftCommand("remove_member", _everything)
ACQUIRE: RaftCommand[Granted] = RaftCommand("acquire", _lease)
RENEW: RaftCommand[Renewed] = RaftCommand("renew", _nothing)
RELEASE: RaftCommand[Ended] = RaftCommand("release", _lease_ended)
EXPIRE: RaftCommand[Ended] = RaftCommand("expire", _lease_ended)
SET_ELIGIBLE: RaftCommand[Eligible] = RaftCommand("set_eligible", _lease)
INSTALL_MODULE: RaftCommand[ModuleInstalled] = RaftCommand("install_module", _module_and_lease)
UNINSTALL_MODULE: RaftCommand[ModuleUninstalled] = RaftCommand("uninstall_module", _module_and_lease)
SET_INTENT: RaftCommand[IntentSet] = RaftCommand("set_intent", _module)
SET_FAILOVER: RaftCommand[FailoverSet] = RaftCommand("set_failover", _module)
SET_IN_SYNC: RaftCommand[Eligible] = RaftCommand("set_in_sync", _lease_and_identity)
# These two read the generation, which gives a mirror module its (empty) identity section.
NAME_GOOD_COPY: RaftCommand[Eligible] = RaftCommand("name_good_copy", _lease_and_identity)
LEAVE_IN_SYNC: RaftCommand[Eligible] = RaftCommand("leave_in_sync", _lease_and_identity)
FARM_JOIN: RaftCommand[FarmChanged] = RaftCommand("farm_join", _module)
FARM_LEAVE: RaftCommand[FarmChanged] = RaftCommand("farm_leave", _module)
RENEW_MANY: RaftCommand[RenewedMany] = RaftCommand("renew_many", _nothing)
BEGIN_GENERATION: RaftCommand[Eligible] = RaftCommand("begin_generation", _lease_and_identity)
SET_USER: RaftCommand[UserSet] = RaftCommand("set_user", _users)
REMOVE_USER: RaftCommand[UserRemoved] = RaftCommand("remove_user", _users)
# Feature level 1: versions and maintenance.
RAISE_FEATURE_LEVEL: RaftCommand[LevelRaised] = RaftCommand("raise_feature_level", _everything)
SET_MAINTENANCE: RaftCommand[MaintenanceSet] = RaftCommand("set_maintenance", _maintenance, level=1)
STAGE_MODULE: RaftCommand[ModuleStaged] = RaftCommand("stage_module", _module, level=1)
APPLY_STAGED: RaftCommand[StagedApplied] = RaftCommand("apply_staged", _module, level=1)

COMMANDS: dict[str, RaftCommand[Any]] = {c.name: c for c in (
    BOOTSTRAP, ADD_MEMBER, REMOVE_MEMBER, ACQUIRE, RENEW, RELEASE, EXPIRE, SET_ELIGIBLE,
    INSTALL_MODULE, UNINSTALL_MODULE, SET_INTENT, SET_FAILOVER, SET_IN_SYNC, NAME_GOOD_COPY,
    LEAVE_IN_SYNC, FARM_JOIN, FARM_LEAVE, RENEW_MANY, BEGIN_GENERATION, SET_USER, REMOVE_USER,
    RAISE_FEATURE_LEVEL, SET_MAINTENANCE, STAGE_MODULE, APPLY_STAGED)}
OPS = tuple(COMMANDS)


def changed(op: str, args: tuple, result: Answer) -> Changed:
    """What the applied entry ``op(*args) -> result`` changed (an op this version
    does not know was refused by the state machine: nothing)."""
    command = COMMANDS.get(op)
    return command.changed(args, result) if command is not None else NOTHING
