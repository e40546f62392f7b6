"""intf: a network interface has its link (SafeKit ``<intf><to name/>``).

Decision (pure): from /sys/class/net/<if>/{operstate,carrier}: up when the interface
exists, carrier is 1 and operstate is ``up`` or ``unknown`` (loopback and some virtual
drivers never report ``up``). Probe: two small reads in sysfs (no privilege needed;
cheap enough to run on the loop, but the runner keeps it in its executor anyway).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .resource import DOWN, UP, Debounce

SYS_CLASS_NET = Path("/sys/class/net")
_UP_OPERSTATES = ("up", "unknown")


@dataclass(frozen=True)
class IntfSample:
    exists: bool
    operstate: str | None = None
    carrier: bool | None = None  # None: the kernel refuses to say (interface admin-down)


def intf_value(sample: IntfSample | None) -> str:
    if sample is None or not sample.exists:
        return DOWN
    if sample.carrier is not True or sample.operstate not in _UP_OPERSTATES:
        return DOWN
    return UP


class IntfDecision(Debounce):
    """Debounced interface value: ``observe_sample(sample)``."""

    def observe_sample(self, sample: IntfSample | None) -> str:
        return self.observe(intf_value(sample) == UP)


def read_interface(name: str, sys_class_net: Path = SYS_CLASS_NET) -> IntfSample:
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"interface name {name!r} is not valid")
    base = sys_class_net / name
    try:
        operstate = (base / "operstate").read_text().strip()
    except FileNotFoundError:
        return IntfSample(False)
    try:
        carrier: bool | None = (base / "carrier").read_text().strip() == "1"
    except OSError:  # EINVAL while the interface is administratively down
        carrier = None
    return IntfSample(True, operstate, carrier)
