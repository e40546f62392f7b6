"""errd: process monitoring (SafeKit ``<errd><proc .../></errd>``).

Decision (pure): how many live processes match the spec, against ``atleast``/``atmax``.
A process is identified by (pid, start time), so a PID reused by an unrelated process
after the watched one died counts as a death, not as the same process still running.
The start time is the kernel's, in clock ticks since boot (/proc/PID/stat), never a
wall-clock time: psutil's create_time adds the boot time of /proc/stat, which moves
(by whole seconds) whenever the wall clock is stepped, so one process would get two
identities.
Probe: one scan of /proc (no root needed to see names and command lines of
other users' processes on a default Linux; hidepid mounts hide them).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

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
    start_ticks: int  # when it started, in clock ticks since boot (see the module doc)
    name: str
    cmdline: tuple[str, ...]

    @property
    def identity(self) -> tuple[int, int]:
        return (self.pid, self.start_ticks)


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
    died: tuple[tuple[int, int], ...]    # identities seen last time and gone now
    started: tuple[tuple[int, int], ...]  # identities new since last time


@dataclass
class ErrdWatch:
    """The pure decision part for one ``<proc>``: feed it each scan."""
    spec: ProcSpec
    known: frozenset[tuple[int, int]] = field(default_factory=frozenset)

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


def _read_proc_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """/proc/PID/cmdline as psutil splits it: NUL-separated, or space-separated when
    a process rewrote its arguments into one string."""
    text = os.fsdecode(data)
    if not text:
        return ()
    sep = "\0" if text.endswith("\0") else " "
    if text.endswith(sep):
        text = text[:-1]
    args = text.split(sep)
    if sep == "\0" and len(args) == 1 and " " in text:
        args = text.split(" ")
    return tuple(args)


def parse_stat(pid: int, data: bytes) -> tuple[str, int]:
    """(name, start ticks) from /proc/PID/stat: the start time in clock ticks since
    boot (field 22), which no change of the wall clock moves."""
    # comm may hold spaces and parentheses: it runs to the *last* ")"
    left, right = data.find(b"("), data.rfind(b")")
    if left < 0 or right < left:
        raise ValueError(f"/proc/{pid}/stat: unexpected format")
    starttime = int(data[right + 2:].split(b" ", 20)[19])
    return os.fsdecode(data[left + 1:right]), starttime


def process_start_ticks(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot: with the pid, an
    identity that survives clock steps. ProcessLookupError if there is no such process."""
    try:
        data = _read_proc_file(f"/proc/{pid}/stat")
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    return parse_stat(pid, data)[1]


def scan_processes() -> list[ProcessSample]:
    """Every process visible on this host (blocking: run it in an executor).

    Two raw reads per process (stat, cmdline), about a third of the cost of
    psutil.process_iter with the same attributes: this runs every poll interval
    over every process of the machine."""
    result = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = _read_proc_file(f"/proc/{entry}/stat")
            cmdline = _read_proc_file(f"/proc/{entry}/cmdline")
            name, start_ticks = parse_stat(pid, stat)
        except (OSError, ValueError, IndexError):
            continue  # vanished mid-scan (or not readable)
        result.append(ProcessSample(pid, start_ticks, name, parse_cmdline(cmdline)))
    return result
