"""The HTTP API's roles, as in SafeKit's console: Monitor reads, Control acts on
modules, Admin configures (users too). Each role can do what the ones below it can.
The names and their checks are the cluster state's (raft.user_table), which stores them."""
from __future__ import annotations

from raft.user_table import ROLES, name_error, role_error

MONITOR, CONTROL, ADMIN = ROLES
_RANK = {r: i for i, r in enumerate(ROLES)}

__all__ = ["ADMIN", "CONTROL", "MONITOR", "ROLES", "allows", "name_error", "role_error"]


def allows(role: str, needed: str) -> bool:
    """Whether a user of ``role`` may do what needs ``needed`` (an unknown role: nothing)."""
    return role in _RANK and _RANK[role] >= _RANK[needed]
