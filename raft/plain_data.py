"""Replicated method arguments are plain data only (DESIGN.md: no objects in the log)."""
from __future__ import annotations

from typing import Any

_SCALARS = (str, int, float, bool, type(None))


class NotPlainData(TypeError):
    pass


def check_plain(value: Any, where: str = "argument") -> Any:
    """Return ``value`` if it is built only of str/int/float/bool/None, lists,
    tuples and str-keyed dicts; raise NotPlainData naming the offending part."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return value
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise NotPlainData(f"{where}: dict key {k!r} is not a string")
            check_plain(item, f"{where}[{k!r}]")
        return value
    raise NotPlainData(f"{where}: {type(value).__name__} is not plain data")
