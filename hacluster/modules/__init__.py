"""What every application module has, whatever its kind (mirror/, farm/).

``registry.ModuleRegistry`` installs packages through the cluster (``package``:
the .safe format, ``fetch``: from the node that has it, ``nodes``: where a module
runs, ``userconfig``: its configuration), gives each module a runtime of its kind
and routes the module control commands. ``runtime.ModuleRuntime`` feeds a kind's
pure state machine (``machine``: the events, actions and plans every kind shares)
and runs its plans, scripts (``scripts``) and checkers (``checks``). All a module
sees of its node is ``host.ModuleHost``, with the committed state in read-only
slices (``host.ModuleSlice``); modules never import the daemon.
"""
from .host import ModuleHost, ModuleSlice
from .registry import ModuleRegistry, RuntimeFactory
from .runtime import ModuleRuntime, Placement, PlanFailed, PlanNotYet
from .userconfig import ModuleConfig, UserConfigError, load_userconfig, parse_userconfig

__all__ = ["ModuleConfig", "ModuleHost", "ModuleRegistry", "ModuleRuntime", "ModuleSlice",
           "Placement", "PlanFailed", "PlanNotYet", "RuntimeFactory", "UserConfigError",
           "load_userconfig", "parse_userconfig"]
