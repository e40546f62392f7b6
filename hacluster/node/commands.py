"""Every control command, declared once.

The daemon serves these on its Unix socket (``control.py``), peer control serves
the remote ones to the other nodes (``hacluster -H``), and the CLI names them and
builds its module verbs from ``MODULE_COMMANDS``. A daemon refuses to start if its
handlers and this table disagree (``check_handlers``).

Two tables:

* ``CONTROL_COMMANDS``: what a request's ``cmd`` names. ``modules``: served by a
  data node's module registry (a witness has none); ``remote``: may come from
  another node through peer control.
* ``MODULE_COMMANDS``: what ``module_cmd``'s ``cmd_name`` names, for one module.
  ``kinds``: which module kinds have it; ``served_by``: the module's driver
  (``RUNTIME``: its ``command()``), its checkers (``CHECKS``) or a commit for it
  (``REGISTRY``); ``verb``: a plain CLI verb ``hacluster -m MODULE NAME`` with this
  help (its ``fullsync`` / ``--force`` spellings are commands of their own here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

MIRROR = "mirror"
FARM = "farm"
EVERY_KIND = frozenset({MIRROR, FARM})
RUNTIME, CHECKS, REGISTRY = "runtime", "checks", "registry"


@dataclass(frozen=True)
class ControlCommand:
    name: str
    remote: bool = False        # may come from another node (peer control, hacluster -H)
    modules: bool = False       # served by a data node's modules, not by every member


STATUS = ControlCommand("status", remote=True)
LEASES = ControlCommand("leases", remote=True)
ADD_MEMBER = ControlCommand("add_member")
REMOVE_MEMBER = ControlCommand("remove_member")
FORWARD = ControlCommand("forward")            # the CLI's -H: run a request on other nodes
MODULE_INSTALL = ControlCommand("module_install", modules=True)     # names a local file
MODULE_UNINSTALL = ControlCommand("module_uninstall", modules=True)
MODULE_LIST = ControlCommand("module_list", remote=True, modules=True)
MODULE_CMD = ControlCommand("module_cmd", remote=True, modules=True)
MODULE_STATE = ControlCommand("module_state", remote=True, modules=True)
MODULE_LOG = ControlCommand("module_log", remote=True, modules=True)
MODULE_WAITSTATE = ControlCommand("module_waitstate", remote=True, modules=True)
# the installed conf/userconfig.xml of a module (the HTTPS API's editor); local only
MODULE_USERCONFIG = ControlCommand("module_userconfig", modules=True)
# this member's part of a support snapshot (hacluster snapshot, -H): built in a thread,
# fetched in chunks (support_part)
SNAPSHOT_PART = ControlCommand("snapshot_part", remote=True)
# hooks of this node's own replication processes (the mount of a mirror module)
REPLICATION_PEER_LOST = ControlCommand("replication_peer_lost", modules=True)
REPLICATION_IN_SYNC = ControlCommand("replication_in_sync", modules=True)
REPLICATION_PROGRESS = ControlCommand("replication_progress", modules=True)
# the HTTPS API's users (hacluster user ...): committed through Raft; local only (root
# on this node's socket), never from another node
USER_SET = ControlCommand("user_set")
USER_REMOVE = ControlCommand("user_remove")
USER_LIST = ControlCommand("user_list")
# maintenance on/off, cluster-wide or for one module (committed through Raft)
MAINTENANCE = ControlCommand("maintenance")

CONTROL_COMMANDS: dict[str, ControlCommand] = {c.name: c for c in (
    STATUS, LEASES, ADD_MEMBER, REMOVE_MEMBER, FORWARD, MODULE_INSTALL, MODULE_UNINSTALL,
    MODULE_LIST, MODULE_CMD, MODULE_STATE, MODULE_LOG, MODULE_WAITSTATE, MODULE_USERCONFIG,
    SNAPSHOT_PART,
    REPLICATION_PEER_LOST, REPLICATION_IN_SYNC, REPLICATION_PROGRESS, USER_SET, USER_REMOVE,
    USER_LIST, MAINTENANCE)}
REMOTE_COMMANDS = frozenset(c.name for c in CONTROL_COMMANDS.values() if c.remote)


@dataclass(frozen=True)
class ModuleCommand:
    name: str
    kinds: frozenset[str] = EVERY_KIND
    served_by: str = RUNTIME
    remote: bool = True                 # peer control may carry it (as a module_cmd)
    verb: str | None = None             # help of the CLI verb ``hacluster -m M NAME``
    fullsync: bool = False              # the verb takes ``fullsync`` (command NAME_fullsync)
    force: str | None = None            # help of the verb's --force (command NAME_force)
    about: str = ""                     # the verb's manual (``hacluster NAME --help``)


_MIRROR = frozenset({MIRROR})
# node to node: the primary's daemon asks its secondary's
FORGET_SYNC_POINT = ModuleCommand("forget_sync_point", _MIRROR)
STAMP_COPY = ModuleCommand("stamp_copy", _MIRROR)
FAILOVER_ON = ModuleCommand("failover_on", served_by=REGISTRY)
FAILOVER_OFF = ModuleCommand("failover_off", served_by=REGISTRY)
RESOURCES = ModuleCommand("resources", served_by=CHECKS)
# a checker program sets its own node's resources: never from another node
SET_RESOURCE = ModuleCommand("set_resource", served_by=CHECKS, remote=False)
ERRD_ON = ModuleCommand("errd_on", served_by=CHECKS)
ERRD_OFF = ModuleCommand("errd_off", served_by=CHECKS)
CHECKER_ON = ModuleCommand("checker_on", served_by=CHECKS)
CHECKER_OFF = ModuleCommand("checker_off", served_by=CHECKS)
RESETLOOP = ModuleCommand("resetloop", served_by=CHECKS)

MODULE_COMMANDS: dict[str, ModuleCommand] = {c.name: c for c in (
    ModuleCommand("start", verb="start the module on this node", about=(
        "Start the module on this node and record the intent in Raft, so that the node "
        "starts it again after a reboot. A mirror module becomes primary when its copy is "
        "the current one and no other node is primary, secondary otherwise; a farm module "
        "starts its application and takes its share of the virtual IP's traffic.")),
    ModuleCommand("stop", verb="stop the module on this node (the secondary may take over)", about=(
        "Stop the module on this node and record the intent in Raft, so that it stays "
        "stopped after a reboot. The stop scripts run; on a mirror primary the in-sync "
        "secondary takes over, a farm's other nodes take this node's share.")),
    ModuleCommand("forcestop", verb="stop at once, stop scripts called with force", about=(
        "Stop the module on this node at once: the stop scripts are called with the "
        "action 'force' and are expected to kill the application rather than wait for it.")),
    ModuleCommand("restart", verb="stop and start the application scripts, same role", about=(
        "Stop and start the application on this node in the role it has (the stop then "
        "start scripts of that role); the node keeps its role and nothing fails over.")),
    ModuleCommand("stopstart", verb="stop the module and start it again (may fail over)", about=(
        "Stop the module on this node and start it again. On a mirror primary the in-sync "
        "secondary may take the primary role meanwhile, and this node then comes back as "
        "secondary.")),
    ModuleCommand("swap", _MIRROR,
                  verb="on the primary: hand the primary role to the in-sync secondary", about=(
        "Run on the primary of a mirror module: the application stops here, the in-sync "
        "secondary becomes primary and this node becomes its secondary. Refused unless the "
        "other node is a live, in-sync secondary.")),
    ModuleCommand("prim", _MIRROR, verb="this node's copy is the good one: start it as primary",
                  fullsync=True, about=(
        "Name this node's copy of the replicated directories the good one and start the "
        "module here as primary; for a module's first start, or after both nodes stopped. "
        "'prim fullsync' is the same (every start as primary compares all blocks with the "
        "secondary).")),
    ModuleCommand("prim_fullsync", _MIRROR),
    ModuleCommand("second", _MIRROR, verb="start as secondary; this copy will be overwritten",
                  fullsync=True,
                  force="also when this node holds the only current copy (it is overwritten)",
                  about=(
        "Start the module on this node as secondary: its copy is brought up to date from "
        "the primary and may be overwritten. 'second fullsync' compares every block instead "
        "of the recorded changes. When this node holds the only current copy you are asked "
        "to confirm at a terminal; without one (and by the daemon) it is refused unless "
        "--force is given.")),
    ModuleCommand("second_force", _MIRROR),
    ModuleCommand("second_fullsync", _MIRROR),
    ModuleCommand("second_fullsync_force", _MIRROR),
    ModuleCommand("primforce", _MIRROR,
                  verb="make this node primary even if its copy is not current (loud)",
                  force="do it without asking (without it: asked at a terminal, refused otherwise)",
                  about=(
        "Make this node primary although its copy is not the current one, for when the "
        "current copy is lost; the answer says what it overwrote: the other copy's "
        "generation and how many primary sessions newer it is. At a terminal you are asked "
        "to confirm; without one --force is needed. Never on several nodes at once (-H "
        "all is refused).")),
    ModuleCommand("primforce_force", _MIRROR),
    ModuleCommand("why", _MIRROR, verb="why the module is in its state and what it waits for", about=(
        "Say why the mirror module is in its state on this node and what it waits for "
        "(a lease, the other node, a copy to be named good, ...). It changes nothing.")),
    FORGET_SYNC_POINT, STAMP_COPY, FAILOVER_ON, FAILOVER_OFF,
    RESOURCES, SET_RESOURCE, ERRD_ON, ERRD_OFF, CHECKER_ON, CHECKER_OFF, RESETLOOP,
)}
LOCAL_MODULE_COMMANDS = frozenset(c.name for c in MODULE_COMMANDS.values() if not c.remote)


def served(with_modules: bool) -> frozenset[str]:
    """The control commands a member serves: every member's, plus the modules' on a data node."""
    return frozenset(c.name for c in CONTROL_COMMANDS.values() if with_modules or not c.modules)


def check_handlers(names: Iterable[str], with_modules: bool) -> None:
    """Raise when a daemon's handlers are not exactly the commands of this table it must serve."""
    have, want = set(names), served(with_modules)
    if have != want:
        raise RuntimeError("control handlers disagree with hacluster.node.commands: "
                           f"missing {sorted(want - have)}, not declared {sorted(have - want)}")


def module_command(name: object, kind: str, module: str) -> ModuleCommand:
    """The declared command ``name`` for a ``kind`` module; ValueError in words when
    there is none."""
    command = MODULE_COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        raise ValueError(f"unknown module command {name!r} (one of {', '.join(MODULE_COMMANDS)})")
    if kind not in command.kinds:
        raise ValueError(f"module {module} is a {kind} module; {name} is a command of "
                         f"{' and '.join(sorted(command.kinds))} modules")
    return command
