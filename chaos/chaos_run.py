"""The chaos episode runner on MirrorLabs (n1, n2, witness w, client c; more witnesses
in the five-voter shape).

One lab per lab shape in use (chaos.lab_shapes), the episodes of that shape run on it. Each episode: wait for a healthy pair (PRIM + SECOND, both
in sync), start a writer on the client, let it write a little, start a nemesis, hold
for a seeded time, heal, wait for PRIM + SECOND again (recovery time, within a bound),
let the client write again, stop it, then check the history:

- every acknowledged write of the whole run is in the primary's real copy with its
  value, and its key is listed through the VIP (chaos.history_check);
- the epochs clients saw only rise, one node per epoch (chaos.history_check);
- recovery happened within the bound, the client was answered after it, and both real
  copies are identical.

The per-node states are sampled all along for the timeline. Every random choice comes
from ``random.Random(f"{seed}/{index}/{nemesis}")``: a run is reproducible from its seed
(up to timing: targets depend on who is primary when the episode starts).
"""
from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .chaos_report import keep_logs
from .history_check import epoch_violations, lost_acked_writes
from .kvapp import CorruptLogError
from .kv_workload import Ack, Answer, failover_gap
from .lab import wait_until
from .lab_mirror import MirrorLab
from .lab_shapes import WORKLOADS, LabShape, plan_by_shape, shape
from .nemesis import NEMESES, NemesisContext, Roles, make_nemesis, small_fs_dir
from .nemesis_flow import CutReplicationNetwork
from .nemesis_identity import IDENTITY_NEMESES

# Registered here, not in chaos.nemesis, which chaos.nemesis_flow and
# chaos.nemesis_identity import for their base class.
NEMESES.setdefault(CutReplicationNetwork.name, CutReplicationNetwork)
for _cls in IDENTITY_NEMESES:
    NEMESES.setdefault(_cls.name, _cls)

log = logging.getLogger("chaos.chaos_run")

HOSTS = ("n1", "n2", "w", "c")
SAMPLED = ("n1", "n2", "w")      # the rows of the timeline: data nodes, then the witness
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SMALL_FS_MIB = 64    # room for the kv log and a bulk file; fills in a fraction of a second
# PostgreSQL needs room for its data directory (~40 MiB) and a few 16 MiB WAL segments
SMALL_FS_MIB_BY_WORKLOAD = {"kv": SMALL_FS_MIB, "pg": 320}


# ---- pure parts -----------------------------------------------------------------------

def healthy_pair(states: Mapping[str, dict | None]) -> tuple[str, str, int] | None:
    """(primary, secondary, epoch) when one node is PRIM/Ready, the other SECOND/Ready
    and the primary's in-sync set holds both; else None."""
    prim = [n for n, st in states.items() if st and st["state"] == "PRIM" and st["ready"] == "Ready"]
    sec = [n for n, st in states.items() if st and st["state"] == "SECOND" and st["ready"] == "Ready"]
    if len(prim) != 1 or len(sec) != 1 or len(states) != 2:
        return None
    p, s = prim[0], sec[0]
    if sorted(states[p].get("in_sync") or []) != sorted([p, s]):
        return None
    return p, s, int(states[p]["epoch"])


def longest_gap(times: Iterable[float], start: float, end: float) -> float:
    """The longest time in [start, end] without an event (times of acks)."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in zip(points, points[1:]))


@dataclass
class EpisodeObservation:
    """What an episode saw, as the checks need it."""
    acks: list[Ack]                       # every acknowledged write of the run so far
    answers: list[Answer]                 # every (t, node, epoch) the client was answered
    read_back: Mapping[str, str | None] | None  # the primary's real copy; None: no primary
    vip_keys: set[str] | None             # keys listed through the VIP; None: no answer
    recovery_s: float | None              # None: no recovery within the bound
    recovery_bound_s: float
    answered_after_recovery: bool
    copies_identical: bool | None         # None: not compared (no recovery)
    # Already reported by earlier episodes of the run (the history is cumulative), so a
    # write lost once is charged to the episode that lost it, not to every later one.
    reported_keys: frozenset[str] = frozenset()
    earlier_epoch_violations: int = 0


def damaged_keys(obs: EpisodeObservation) -> set[str]:
    """Acknowledged keys lost from the primary's copy or missing through the VIP."""
    keys = set()
    if obs.read_back is not None:
        keys |= {lw.key for lw in lost_acked_writes(obs.acks, obs.read_back)}
    if obs.vip_keys is not None:
        keys |= {a.key for a in obs.acks} - obs.vip_keys
    return keys


def check_episode(obs: EpisodeObservation) -> list[str]:
    """Every invariant the observation breaks that earlier episodes did not already
    report, one line each (empty: all held)."""
    violations = []
    if obs.recovery_s is None:
        violations.append(f"no recovery: not PRIM+SECOND in sync within {obs.recovery_bound_s:g} s "
                          "after heal")
    elif obs.recovery_s > obs.recovery_bound_s:
        violations.append(f"recovery took {obs.recovery_s:.1f} s > {obs.recovery_bound_s:g} s")
    if obs.read_back is None:
        violations.append("no primary copy to read the acknowledged writes back from")
    else:
        lost = [lw for lw in lost_acked_writes(obs.acks, obs.read_back)
                if lw.key not in obs.reported_keys]
        if lost:
            violations.append(f"{len(lost)} acknowledged writes lost, e.g. {lost[0]}")
    if obs.vip_keys is None:
        violations.append("keys not readable through the VIP after recovery")
    else:
        missing = sorted({a.key for a in obs.acks} - obs.vip_keys - obs.reported_keys)
        if missing:
            violations.append(f"{len(missing)} acknowledged keys not listed through the VIP, "
                              f"e.g. {missing[0]!r}")
    # answers only grow at the end (time order), so earlier violations are a prefix
    violations += epoch_violations(obs.answers)[obs.earlier_epoch_violations:]
    if obs.recovery_s is not None and not obs.answered_after_recovery:
        violations.append("the client got no acknowledgement after recovery")
    if obs.copies_identical is False:
        violations.append("the two real copies differ after recovery")
    return violations


def episode_plan(names: Sequence[str], episodes: int) -> list[str]:
    """Nemesis of each episode: every nemesis once per round, ``episodes`` rounds."""
    return [name for _ in range(episodes) for name in names]


def shape_of(name: str) -> str:
    """The lab shape a nemesis runs on."""
    return NEMESES[name].lab_shape


def episode_rng(seed: int, index: int, nemesis: str) -> random.Random:
    return random.Random(f"{seed}/{index}/{nemesis}")   # str seeds hash with sha512: stable


# ---- observation of the lab --------------------------------------------------------------

class StateSampler:
    """Samples each data node's module state (one thread per node, so a paused daemon
    delays only its own row) and the witness's liveness; keeps the changes."""

    def __init__(self, m: MirrorLab, witness: str, interval_s: float = 0.2) -> None:
        self.m, self.witness, self.interval_s = m, witness, interval_s
        self.changes: list[dict[str, Any]] = []
        self._last: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(n,), daemon=True,
                                          name=f"sampler-{n}") for n in [*m.nodes, witness]]

    def start(self) -> StateSampler:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def _sample(self, node: str) -> tuple:
        if node == self.witness:
            return ("UP" if self.m.cluster.status(node, timeout=1.0) else "DOWN", "", None)
        st = self.m.state(node)
        return (st["state"], st["ready"], st["epoch"]) if st else ("DOWN", "", None)

    def _loop(self, node: str) -> None:
        while not self._stop.is_set():
            sample = self._sample(node)
            with self._lock:
                if self._last.get(node) != sample:
                    self._last[node] = sample
                    self.changes.append({"t": time.monotonic(), "node": node, "state": sample[0],
                                         "ready": sample[1], "epoch": sample[2]})
            self._stop.wait(self.interval_s)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self.changes, key=lambda c: c["t"])


def _states(m: MirrorLab) -> dict[str, dict | None]:
    return {n: m.state(n) for n in m.nodes}


def wait_healthy(m: MirrorLab, timeout: float) -> tuple[str, str, int] | None:
    try:
        return wait_until("PRIM+SECOND in sync", lambda: healthy_pair(_states(m)), timeout, 0.1)
    except TimeoutError:
        return None


def repair(m: MirrorLab, restart_daemons: bool) -> None:
    """After an episode that did not recover (already a violation): undo every fault,
    restart whatever is dead and, with ``restart_daemons``, every node's daemon too (a
    stuck module may hold its lease without acting), so the next episode starts from a
    healthy pair or says it could not."""
    log.info("event=chaos_repair restart_daemons=%s", restart_daemons)
    m.lab.heal()
    for member in m.cluster.members:
        proc = m.cluster.procs.get(member)
        if proc is None or not proc.alive():
            m.cluster.start(member)
        elif restart_daemons and member in m.nodes:
            proc.stop()
            m.cluster.start(member)
        else:
            proc.resume()
    for n in m.nodes:
        m.cli(n, "-m", m.module, "start")


@contextmanager
def small_file_systems(m: MirrorLab, size_mib: int = SMALL_FS_MIB) -> Iterator[list[Path]]:
    """A tmpfs of ``size_mib`` over each data node's data-dir parent (before the module
    starts, so the data dir and a disk filler share it); every mount is removed on exit,
    also on failure. Lazy unmount: the FUSE mount of a primary may still sit inside."""
    mounted: list[Path] = []
    try:
        for n in m.nodes:
            where = small_fs_dir(m, n)
            where.mkdir(parents=True, exist_ok=True)
            if any(where.iterdir()):
                raise RuntimeError(f"small file system: {where} on {n} is not empty; mount it "
                                   "before the module starts")
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755",
                            "chaos-small-fs", str(where)], check=True, capture_output=True,
                           text=True, timeout=10)
            mounted.append(where)
            log.info("event=small_fs_mounted node=%s path=%s size_mib=%d", n, where, size_mib)
        yield mounted
    finally:
        for where in reversed(mounted):
            res = subprocess.run(["umount", "-l", str(where)], capture_output=True, text=True,
                                 timeout=10)
            log.info("event=small_fs_unmounted path=%s rc=%d %s", where, res.returncode,
                     res.stderr.strip())


# ---- the run ----------------------------------------------------------------------------

@dataclass
class EpisodeRecord:
    index: int
    nemesis: str
    seed: str
    hold_s: float
    primary_before: str | None
    epoch_before: int | None
    targets: dict[str, Any] = field(default_factory=dict)
    t_start: float = 0.0
    repaired: str | None = None     # how the lab was repaired before this episode, if it was
    lab_shape: str = "standard"
    workload: str = "kv"
    lab_broken: str | None = None   # the fault left a lab heal could not undo: rebuilt after
    t_fault: float | None = None
    t_heal: float | None = None
    t_recovered: float | None = None
    recovery_s: float | None = None
    failover_s: float | None = None
    max_gap_s: float | None = None
    primary_after: str | None = None
    epoch_after: int | None = None
    acked: int = 0
    violations: list[str] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ChaosRun:
    seed: int
    nemeses: list[str]
    episodes_per_nemesis: int
    hold_range_s: tuple[float, float] = (2.0, 5.0)
    recovery_bound_s: float = 60.0
    t0: float = field(default_factory=time.monotonic)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    episodes: list[EpisodeRecord] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    t_end: float | None = None
    reported_keys: set[str] = field(default_factory=set)     # lost writes reported so far
    epoch_violations_seen: int = 0      # in the current lab
    lab_acks_from: int = 0      # acks[lab_acks_from:] were written to the current lab
    # Where an episode with violations leaves its lab's logs (None: nowhere): the lab
    # removes its workdir at the end, and a violation must be explainable afterwards.
    logs_dir: Path | None = None
    hosts: list[str] = field(default_factory=lambda: list(HOSTS))   # of every lab used

    def lab_acks(self) -> list[Ack]:
        """The acknowledged writes of the current lab: another lab has other copies
        and epochs that start again at 1."""
        return self.acks[self.lab_acks_from:]

    def new_lab(self, hosts: Sequence[str]) -> None:
        self.lab_acks_from = len(self.acks)
        self.epoch_violations_seen = 0
        self.hosts += [h for h in hosts if h not in self.hosts]

    @property
    def violations(self) -> int:
        return sum(len(e.violations) for e in self.episodes)

    def to_history(self) -> dict[str, Any]:
        """Plain data for history.json (times: time.monotonic(), t0 = start of the run)."""
        return {
            "seed": self.seed, "nemeses": self.nemeses,
            "episodes_per_nemesis": self.episodes_per_nemesis,
            "hold_range_s": list(self.hold_range_s), "recovery_bound_s": self.recovery_bound_s,
            "started": self.started, "t0": self.t0, "t_end": self.t_end or time.monotonic(),
            "hosts": list(self.hosts), "sampled": list(SAMPLED),
            "episodes": [asdict(e) for e in self.episodes],
            "faults": [f for e in self.episodes for f in e.faults],
            "client": [[a.key, a.value, a.node, a.epoch, a.t_sent, a.t_acked] for a in self.acks],
            "states": self.states,
        }


def _acks(m: MirrorLab, writer) -> list[Ack]:
    return [Ack(**a) for a in m.acks(writer)]


def _healthy_start(m: MirrorLab, run: ChaosRun, index: int, writer_timeout_s: float):
    """(pair, writer, how it was repaired): PRIM+SECOND in sync *and* the client's
    writes acknowledged (a module may look healthy while its app serves nothing).
    Repairs in two steps when not; (None, None, ...) when even that did not help."""
    repaired = None
    for attempt, restart_daemons in enumerate((None, False, True)):
        if restart_daemons is not None:
            repair(m, restart_daemons)
            repaired = "daemons restarted" if restart_daemons else "faults undone, dead restarted"
        # instant unless the last episode did not recover
        pair = wait_healthy(m, 15.0 if restart_daemons is None else run.recovery_bound_s)
        if pair is None:
            continue
        writer = m.start_writer(prefix=f"e{index:03d}" + (f"r{attempt}" if attempt else ""),
                                timeout_s=writer_timeout_s)
        try:
            m.wait_acks(5, timeout=20)
            return pair, writer, repaired
        except TimeoutError:
            writer.stop()
            run.acks.extend(_acks(m, writer))     # whatever it got acknowledged is checked
            log.warning("event=no_service_before_episode index=%d primary=%s", index, pair[0])
    return None, None, repaired


def _records(m: MirrorLab, node: str) -> dict[str, str] | None:
    """A node's real copy of the kv store (pg: the rows the primary answers through
    the VIP), or None when it does not replay or answer (a finding for the checks, not
    a crash of the run)."""
    try:
        return m.log_records(node)
    except (CorruptLogError, RuntimeError) as e:
        log.warning("event=copy_unreadable node=%s error=%r", node, str(e))
        return None


def run_episode(m: MirrorLab, run: ChaosRun, index: int, name: str,
                writer_timeout_s: float = 0.5) -> EpisodeRecord:
    rng = episode_rng(run.seed, index, name)
    nemesis = make_nemesis(name)
    hold_s = round(max(nemesis.min_hold_s, rng.uniform(*run.hold_range_s)), 3)
    settle_s = rng.uniform(0.3, 1.0)
    t_start = time.monotonic()
    pair, writer, repaired = _healthy_start(m, run, index, writer_timeout_s)
    rec = EpisodeRecord(index, name, f"{run.seed}/{index}/{name}", hold_s,
                        pair[0] if pair else None, pair[2] if pair else None, t_start=t_start,
                        repaired=repaired, lab_shape=nemesis.lab_shape,
                        workload=getattr(m, "workload", "kv"))
    if pair is None or writer is None:
        rec.violations.append("no healthy pair serving writes before the episode, even after repair")
        return rec
    log.info("event=episode_start index=%d nemesis=%s primary=%s epoch=%d hold_s=%.2f",
             index, name, pair[0], pair[2], hold_s)
    time.sleep(settle_s)
    roles = Roles(primary=pair[0], secondary=pair[1], witness=m.cluster.witnesses[0],
                  client=m.client, witnesses=tuple(m.cluster.witnesses))
    ctx = NemesisContext(m, roles, rng)
    rec.t_fault = time.monotonic()
    try:
        nemesis.start(ctx)
        rec.targets = dict(nemesis.targets)
        time.sleep(hold_s)
    finally:
        nemesis.heal(ctx)
    rec.t_heal = time.monotonic()
    after = wait_healthy(m, run.recovery_bound_s)
    if after is not None:
        rec.t_recovered = time.monotonic()
        rec.recovery_s = rec.t_recovered - rec.t_heal
        rec.primary_after, _sec, rec.epoch_after = after
    answered = False
    if after is not None:
        try:
            wait_until("an acknowledgement after recovery", lambda: any(
                a.t_acked > rec.t_recovered for a in _acks(m, writer)), 20, 0.05)
            answered = True
        except TimeoutError:
            pass
    writer.stop()
    acks = _acks(m, writer)
    run.acks.extend(acks)
    rec.acked = len(acks)
    answers = [(a.t_acked, a.node, a.epoch) for a in acks]
    rec.failover_s = failover_gap(answers, rec.t_fault)
    rec.max_gap_s = longest_gap([a.t_acked for a in acks], rec.t_fault,
                                rec.t_recovered or rec.t_heal)
    read_back = vip_keys = identical = None
    if after is not None:
        # Read back from the pair as it is now, not as it was at the heal: a primary whose
        # lease outlived the fault may still lose it just after the heal (its renewals
        # not through again in time), and the secondary then takes over legitimately;
        # the old primary's copy, being resynced, does not hold what the new one acked.
        settled = wait_healthy(m, run.recovery_bound_s) or after
        if settled[:2] != after[:2]:
            log.info("event=pair_changed_after_recovery index=%d before=%s after=%s", index,
                     after, settled)
            rec.primary_after, rec.epoch_after = settled[0], settled[2]
        prim, sec = settled[0], settled[1]
        read_back = _records(m, prim)
        vip_keys = m.keys_via_vip()
        identical = m.copies_identical(prim, sec)
    lab_acks = run.lab_acks()
    obs = EpisodeObservation(
        acks=lab_acks, answers=[(a.t_acked, a.node, a.epoch) for a in lab_acks],
        read_back=read_back, vip_keys=vip_keys, recovery_s=rec.recovery_s,
        recovery_bound_s=run.recovery_bound_s, answered_after_recovery=answered,
        copies_identical=identical, reported_keys=frozenset(run.reported_keys),
        earlier_epoch_violations=run.epoch_violations_seen)
    rec.violations = check_episode(obs) + nemesis.violations
    if after is not None:
        rec.violations += nemesis.verify(ctx)
    run.reported_keys |= damaged_keys(obs)
    run.epoch_violations_seen = len(epoch_violations(obs.answers))
    rec.faults = [{**asdict(ev), "episode": index} for ev in nemesis.events]
    rec.lab_broken = nemesis.lab_broken
    log.info("event=episode_done index=%d nemesis=%s recovery_s=%s failover_s=%s acked=%d "
             "violations=%d", index, name, _r(rec.recovery_s), _r(rec.failover_s), rec.acked,
             len(rec.violations))
    for v in rec.violations:
        log.warning("event=violation index=%d nemesis=%s what=%r", index, name, v)
    if rec.violations and run.logs_dir is not None:
        kept = keep_logs(Path(m.lab.workdir), run.logs_dir / f"episode-{index:03d}-{name}")
        log.warning("event=logs_kept index=%d files=%d where=%s", index, kept, run.logs_dir)
    return rec


def _r(x: float | None) -> str:
    return "none" if x is None else f"{x:.3f}"


def run_chaos(names: Sequence[str], episodes: int, seed: int,
              hold_range_s: tuple[float, float] = (2.0, 5.0), recovery_bound_s: float = 60.0,
              on_episode: Callable[[ChaosRun, EpisodeRecord], None] | None = None,
              workloads: Sequence[str] = ("kv",), logs_dir: Path | None = None) -> ChaosRun:
    """For each workload (kv: the demo key/value app; pg: PostgreSQL) and each lab shape
    the nemeses need: start its MirrorLab, run its episodes (in the seeded plan's order),
    clean it up; returns the run. ``on_episode(run, record)`` is called after each
    episode (e.g. to save progress). A second workload's episodes are numbered after
    the first's (their own seeded randomness)."""
    unknown = [n for n in names if n not in NEMESES]
    if unknown:
        raise ValueError(f"unknown nemesis {unknown[0]!r}; have {', '.join(NEMESES)}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 0 < hold_range_s[0] <= hold_range_s[1]:
        raise ValueError(f"hold range must be 0 < min <= max, got {hold_range_s}")
    unknown_w = [w for w in workloads if w not in WORKLOADS]
    if unknown_w or not workloads:
        raise ValueError(f"unknown workload {unknown_w[0] if unknown_w else workloads!r}; "
                         f"have {', '.join(WORKLOADS)}")
    plan = episode_plan(names, episodes)
    groups = plan_by_shape(plan, shape_of)
    shapes = [shape(name) for name, _ in groups]      # an unknown shape fails before any lab
    run = ChaosRun(seed, list(names), episodes, tuple(hold_range_s), recovery_bound_s,
                   logs_dir=logs_dir)
    try:
        for k, workload in enumerate(workloads):
            for lab_shape, (_name, shape_plan) in zip(shapes, groups):
                _run_on_shape(run, lab_shape, [(i + k * len(plan), n) for i, n in shape_plan],
                              on_episode, workload)
    finally:
        run.t_end = time.monotonic()
    return run


def _run_on_shape(run: ChaosRun, lab_shape: LabShape, plan: Sequence[tuple[int, str]],
                  on_episode: Callable[[ChaosRun, EpisodeRecord], None] | None,
                  workload: str = "kv") -> None:
    """The shape's episodes on a lab of that shape; a fresh lab after an episode that
    left its lab broken (reported as that episode's violation), for the rest."""
    todo = list(plan)
    while todo:
        done = _run_on_lab(run, lab_shape, todo, on_episode, workload)
        todo = todo[done:]
        if todo:
            log.warning("event=lab_rebuilt shape=%s reason=%r remaining=%d", lab_shape.name,
                        run.episodes[-1].lab_broken, len(todo))


def _run_on_lab(run: ChaosRun, lab_shape: LabShape, plan: Sequence[tuple[int, str]],
                on_episode: Callable[[ChaosRun, EpisodeRecord], None] | None,
                workload: str = "kv") -> int:
    """Episodes of ``plan`` on one new lab until one breaks it; returns how many ran."""
    needs_small_fs = any(NEMESES[name].needs_small_fs for _, name in plan)
    log.info("event=lab_shape_episodes shape=%s workload=%s episodes=%d", lab_shape.name,
             workload, len(plan))
    run.new_lab(lab_shape.hosts)
    ran = 0
    with lab_shape.lab() as lab, ExitStack() as mounts:
        m = lab_shape.mirror(lab, workload)
        m.workload = workload
        if needs_small_fs:
            mounts.enter_context(small_file_systems(m, SMALL_FS_MIB_BY_WORKLOAD[workload]))
        lab_shape.start(m, prim="n1")
        sampler = StateSampler(m, m.cluster.witnesses[0]).start()
        try:
            for index, name in plan:
                rec = run_episode(m, run, index, name)
                run.episodes.append(rec)
                ran += 1
                if on_episode is not None:
                    on_episode(run, rec)
                if rec.lab_broken:
                    break
        finally:
            sampler.stop()
            run.states += sampler.snapshot()
            run.t_end = time.monotonic()
    return ran
