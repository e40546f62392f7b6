"""custom: a resource that a user program sets (SafeKit ``<custom exec= arg=>``).

The module's program (``exec``, started with ``arg`` while the checker is active) runs
its own test in a loop and reports with ``hacluster -m MOD set -r custom.NAME -v up|down``.
The CLI reaches the daemon, which calls :func:`apply_set_request`; this module only
validates and records the value with its time. No privilege needed.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from .resource import DOWN, UP, Resource, ResourceTable, split_name

SETTABLE_VALUES = (UP, DOWN)


class CustomSetError(ValueError):
    """A refused ``set -r ... -v ...``; the message is one line naming what is wrong."""


def apply_set_request(table: ResourceTable, resource: str, value: str, now: float) -> Resource | None:
    """Set ``custom.NAME`` to up|down. Returns the changed Resource (None if unchanged).

    Raises CustomSetError for a malformed name, another class, an undeclared resource or
    a value other than up/down; nothing is changed then.
    """
    try:
        klass, _ident = split_name(resource)
    except ValueError as exc:
        raise CustomSetError(f"set -r {resource}: {exc}") from None
    if klass != "custom":
        raise CustomSetError(f"set -r {resource}: only custom.* resources are set by programs")
    if resource not in table:
        raise CustomSetError(f"set -r {resource}: no such resource in this module's <check>")
    if value not in SETTABLE_VALUES:
        raise CustomSetError(f"set -r {resource} -v {value}: value must be up or down")
    return table.set(resource, value, now)


def custom_argv(bin_dir: Path, exec_name: str, arg: str | None) -> list[str]:
    """The program's command line: ``exec`` relative to the module's bin/ (or absolute),
    ``arg`` split like a shell would (no shell is run)."""
    program = Path(exec_name) if exec_name.startswith("/") else bin_dir / exec_name
    return [str(program), *shlex.split(arg or "")]
