"""errd: process monitoring (SafeKit ``<errd><proc .../></errd>``).

Decision (pure): how many live processes match the spec, against ``atleast``/``atmax``.
A process is identified by (pid, create_time), so a PID reused by an unrelated process
after the watched one died counts as a death, not as the same process still running.
Probe: one psutil scan of /proc (no root needed to see names and command lines of
other users' processes on a default Linux; hidepid mounts hide them).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import psutil

from .resource import DOWN, UP


@dataclass(frozen=True)
class ProcSpec:
    """What to look for. ``name`` is an exact name, or a regex if ``name_is_regex``
    (matched in full against the process name); ``argregex`` is matched in full against
    the arguments after argv[0], joined by spaces. ``atmax`` None = no upper bound."""
    name: str
    name_is_regex: bool = False
    argregex: str | None = None
    atleast: int = 1
    atmax: int | None = None


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    create_time: float
    name: str
    cmdline: tuple[str, ...]

    @property
    def identity(self) -> tuple[int, float]:
        return (self.pid, self.create_time)


def matches(spec: ProcSpec, sample: ProcessSample) -> bool:
    # the kernel's comm is cut to 15 characters: also try argv[0]'s base name
    names = {sample.name}
    if sample.cmdline:
        names.add(os.path.basename(sample.cmdline[0]))
    if spec.name_is_regex:
        pattern = re.compile(spec.name)
        if not any(pattern.fullmatch(n) for n in names):
            return False
    elif spec.name not in names:
        return False
    if spec.argregex is not None:
        return re.fullmatch(spec.argregex, " ".join(sample.cmdline[1:])) is not None
    return True


def count_value(spec: ProcSpec, count: int) -> str:
    """up when atleast <= count <= atmax."""
    if count < spec.atleast or (spec.atmax is not None and count > spec.atmax):
        return DOWN
    return UP


@dataclass(frozen=True)
class ErrdObservation:
    value: str
    count: int
    died: tuple[tuple[int, float], ...]    # identities seen last time and gone now
    started: tuple[tuple[int, float], ...]  # identities new since last time


@dataclass
class ErrdWatch:
    """The pure decision part for one ``<proc>``: feed it each scan."""
    spec: ProcSpec
    known: frozenset[tuple[int, float]] = field(default_factory=frozenset)

    def observe(self, samples: list[ProcessSample] | None) -> ErrdObservation:
        """``samples`` = every process on the host (None = the scan failed: down)."""
        if samples is None:
            died = tuple(sorted(self.known))
            self.known = frozenset()
            return ErrdObservation(DOWN, 0, died, ())
        current = frozenset(s.identity for s in samples if matches(self.spec, s))
        died = tuple(sorted(self.known - current))
        started = tuple(sorted(current - self.known))
        self.known = current
        return ErrdObservation(count_value(self.spec, len(current)), len(current), died, started)


def scan_processes() -> list[ProcessSample]:
    """Every process visible on this host (blocking: run it in an executor)."""
    result = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
        info = proc.info
        if info.get("create_time") is None:
            continue  # vanished mid-scan
        result.append(ProcessSample(info["pid"], info["create_time"], info.get("name") or "",
                                    tuple(info.get("cmdline") or ())))
    return result
