"""Chaos episodes for the farm module: f1, f2, f3 (nodes, Raft voters) and c (client).

``python -m chaos.farm_chaos --episodes N --seed S [--out DIR]`` runs every farm nemesis
N times on one FarmLab and writes history.json, summary.md, summary.json, timeline.png.

An episode: a steady period (the client's connections through the VIP on the on_port
rule, the rulesets read back before and after), the fault, its hold, the heal, recovery
(every node UP and every bucket accepted by exactly one node's loaded ruleset, on a
settled cluster: see ``raft_settled``), a second steady period. Checks (``check_episode``, pure): in the steady periods every connection
is answered, and by the node whose ruleset holds the connection's bucket
(``vip.farm_ruleset.bucket_of``); the table is complete and unchanged across each steady
period; recovery comes within its bound; a node taken out is rebalanced away within
its bound. In every phase, what users of the other nodes feel (``survivor_violations``):
no connection established on a node that was not faulted may later be reset or dropped
(the client holds keep-alive connections across the fault, a line every 100 ms), and no
connection may go unanswered in a bucket such a node held throughout. For a
victim whose daemon was killed or paused (``FarmNemesis.fenced``: its daemon cannot act,
so only the kernel-side expiry of its buckets, DESIGN.md rule 7, can stop it): its
loaded set must be empty within one lease of the fault, before the survivors hold its
buckets, and no connection opened later than one lease after the fault (until the heal)
may be answered by it.

Exit status: 0 no violation, 1 violations found, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raft.settings import RaftSettings
from vip.farm_ruleset import BUCKETS, bucket_of

from .chaos_report import keep_logs, percentile, render_timeline, write_history
from .farm_client import ask_detail, hold, in_netns
from .lab import Lab
from .lab_farm import MODULE, PORT_ON_PORT, FarmLab
from .nemesis import FaultEvent

log = logging.getLogger("chaos.farm_chaos")

NODES = ("f1", "f2", "f3")
CLIENT = "c"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
Rulesets = Mapping[str, "frozenset[int] | None"]


# ---- nemeses -------------------------------------------------------------------------------

class FarmNemesis:
    """``choose`` (pure, from the seeded rng) picks the target; ``start``/``heal`` act.
    ``out`` says whether the target leaves the farm for the hold (its buckets must move)."""
    name = "farm-nemesis"
    out = True
    min_hold_s = 0.0
    # The target's daemon cannot act during the fault: the kernel alone must stop the
    # node accepting within the lease (see check_episode).
    fenced = False

    def __init__(self) -> None:
        self.events: list[FaultEvent] = []
        self.targets: dict[str, Any] = {}

    def choose(self, rng: random.Random, nodes: Sequence[str]) -> dict[str, Any]:
        return {"host": rng.choice(list(nodes))}

    def start(self, farm: FarmLab, rng: random.Random) -> None:
        self.targets = self.choose(rng, farm.nodes)
        self._start(farm)

    def _start(self, farm: FarmLab) -> None:
        raise NotImplementedError

    def heal(self, farm: FarmLab) -> None:
        raise NotImplementedError

    def record(self, action: str, host: str | None, detail: str = "") -> None:
        self.events.append(FaultEvent(time.monotonic(), self.name, action, host, detail))
        log.info("event=nemesis nemesis=%s action=%s host=%s detail=%r",
                 self.name, action, host, detail)


class KillHost(FarmNemesis):
    """Power loss of a node (every process SIGKILLed, network cut); it boots at heal."""
    name = "kill-host"

    def _start(self, farm: FarmLab) -> None:
        farm.kill_host(self.targets["host"])
        self.record("power-off", self.targets["host"])

    def heal(self, farm: FarmLab) -> None:
        farm.restart_node(self.targets["host"])
        self.record("power-on", self.targets["host"])


class Isolate(FarmNemesis):
    """The node cut off both ways: it must drop its share itself (no quorum)."""
    name = "isolate"

    def _start(self, farm: FarmLab) -> None:
        farm.lab.cut(self.targets["host"])
        self.record("cut", self.targets["host"], "both directions")

    def heal(self, farm: FarmLab) -> None:
        farm.lab.heal(self.targets["host"])
        self.record("heal", self.targets["host"])


class KillDaemon(FarmNemesis):
    """SIGKILL of the node's daemon alone; restarted at heal."""
    name = "kill-daemon"
    fenced = True

    def _start(self, farm: FarmLab) -> None:
        farm.cluster.kill(self.targets["host"])
        self.record("sigkill", self.targets["host"], "hacluster daemon")

    def heal(self, farm: FarmLab) -> None:
        farm.cluster.start(self.targets["host"])
        self.record("restart", self.targets["host"], "hacluster daemon")


class PauseDaemon(FarmNemesis):
    """SIGSTOP of the node's daemon for longer than the lease, then SIGCONT."""
    name = "pause-daemon"
    min_hold_s = 3.0     # the lease is 1.5 s by default: hold at least twice that
    fenced = True

    def _start(self, farm: FarmLab) -> None:
        farm.cluster.pause(self.targets["host"])
        self.record("sigstop", self.targets["host"], "hacluster daemon")

    def heal(self, farm: FarmLab) -> None:
        farm.cluster.resume(self.targets["host"])
        self.record("sigcont", self.targets["host"], "hacluster daemon")


class Flap(FarmNemesis):
    """The node's link cut and restored a few times quickly (schedule drawn up front)."""
    name = "flap"
    out = False          # it may or may not leave the farm: no rebalance is required

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def choose(self, rng: random.Random, nodes: Sequence[str]) -> dict[str, Any]:
        host = rng.choice(list(nodes))
        schedule = [(round(rng.uniform(0.2, 0.8), 3), round(rng.uniform(0.2, 0.8), 3))
                    for _ in range(rng.randint(3, 5))]
        return {"host": host, "schedule": schedule}

    def _start(self, farm: FarmLab) -> None:
        self._thread = threading.Thread(target=self._flap, args=(farm,), daemon=True,
                                        name="farm-nemesis-flap")
        self._thread.start()

    def _flap(self, farm: FarmLab) -> None:
        host = self.targets["host"]
        for down_s, up_s in self.targets["schedule"]:
            farm.lab.cut(host, method="link")
            self.record("cut", host, f"link down {down_s} s")
            if self._stop.wait(down_s):
                return
            farm.lab.heal(host)
            self.record("heal", host, f"link up {up_s} s")
            if self._stop.wait(up_s):
                return

    def heal(self, farm: FarmLab) -> None:
        # The whole schedule runs even when the hold is shorter: flapping is the fault.
        if self._thread is not None:
            self._thread.join(sum(d + u for d, u in self.targets["schedule"]) + 5)
        self._stop.set()
        farm.lab.heal(self.targets["host"])
        self.record("heal", self.targets["host"])


FARM_NEMESES: dict[str, type[FarmNemesis]] = {cls.name: cls for cls in (
    KillHost, Isolate, KillDaemon, PauseDaemon, Flap)}


def make_farm_nemesis(name: str) -> FarmNemesis:
    try:
        return FARM_NEMESES[name]()
    except KeyError:
        raise ValueError(f"unknown farm nemesis {name!r}; have {', '.join(FARM_NEMESES)}") from None


# ---- the pure checks -----------------------------------------------------------------------

@dataclass(frozen=True)
class Conn:
    """One client connection: answered by ``node`` (None: failed) from (src, sport).
    ``error``: None, or how it failed (chaos.farm_client.failure: reset, refused,
    timeout, eof, ...) — before the node's name came (then ``node`` is None) or, for a
    ``keepalive`` connection held open with ``echoes`` keep-alive lines answered, later
    on the established connection; ``t_end``: when it was closed or failed."""
    t_sent: float
    t_done: float
    node: str | None
    src: str
    sport: int
    error: str | None = None
    keepalive: bool = False
    t_end: float | None = None
    echoes: int = 0


@dataclass
class SteadyWindow:
    """A period without a fault, with the rulesets read back at its start and end."""
    name: str
    start: float
    end: float
    rulesets_start: dict[str, frozenset[int] | None]
    rulesets_end: dict[str, frozenset[int] | None]


@dataclass
class FarmObservation:
    nodes: list[str]
    conns: list[Conn]
    windows: list[SteadyWindow]
    hash_seed: int
    t_fault: float | None = None
    t_heal: float | None = None
    t_rebalanced: float | None = None    # fault -> complete table on the live nodes
    t_recovered: float | None = None     # heal -> all UP and complete table on all
    rebalance_required: bool = False
    rebalance_bound_s: float = 10.0
    recovery_bound_s: float = 60.0
    filter: str = "on_port"
    # a fenced fault (daemon killed or paused): its target, the bound (the lease), and
    # when the target's loaded set was first seen empty (None: not during the hold)
    fence_target: str | None = None
    fence_bound_s: float = 1.5
    t_target_silent: float | None = None
    # the node the fault was aimed at (any nemesis): the only one whose connections may
    # fail, until the recovery (see survivor_violations)
    target: str | None = None


def table_problems(rulesets: Rulesets) -> list[str]:
    """What keeps a bucket table from being complete: no ruleset, buckets nobody
    accepts, buckets accepted by more than one node. Empty when complete."""
    problems = [f"{n} has no farm ruleset loaded" for n, r in rulesets.items() if r is None]
    counts: Counter = Counter()
    holders: dict[int, list[str]] = {}
    for n, owned in rulesets.items():
        for b in owned or ():
            counts[b] += 1
            holders.setdefault(b, []).append(n)
    missing = sorted(set(range(BUCKETS)) - set(counts))
    if missing:
        problems.append(f"{len(missing)} bucket(s) accepted by no node (first {missing[:5]})")
    twice = sorted(b for b, c in counts.items() if c > 1)
    if twice:
        problems.append(f"{len(twice)} bucket(s) accepted by more than one node "
                        f"(bucket {twice[0]} by {','.join(holders[twice[0]])})")
    return problems


def owner_table(rulesets: Rulesets) -> dict[int, str]:
    return {b: n for n, owned in rulesets.items() for b in owned or ()}


def raft_settled(statuses: Mapping[str, Mapping[str, Any] | None], applied_floor: int) -> bool:
    """Has the cluster settled after a heal? Every node answers, all in one term under
    one leader, and each has applied past ``applied_floor`` (a commit index read after
    the heal), so each has taken entries from the current leader since.

    Why a complete table is not enough: a node cut off keeps raising its Raft term (it
    stands for election); when it gets through again — up to a connection retry after
    the link is back — it deposes the leader, and the election that follows can stall
    the lease renewals of every node past their deadline. A table seen before that rests
    on leases that may still lapse: the fault is not over yet."""
    if not statuses or any(st is None for st in statuses.values()):
        return False
    terms = {st.get("term") for st in statuses.values()}
    leaders = {st.get("leader") for st in statuses.values()}
    if len(terms) != 1 or len(leaders) != 1 or None in leaders or None in terms:
        return False
    return all((st.get("last_applied") or 0) > applied_floor for st in statuses.values())


def check_episode(obs: FarmObservation) -> list[str]:
    """Violations of one episode, as one-line messages."""
    out: list[str] = []
    for w in obs.windows:
        for when, rs in (("start", w.rulesets_start), ("end", w.rulesets_end)):
            out += [f"{w.name} steady period, table at its {when}: {p}" for p in table_problems(rs)]
        if w.rulesets_start != w.rulesets_end:
            out.append(f"{w.name} steady period: the bucket table changed during it")
        owner = owner_table(w.rulesets_start)
        # judged by when it was opened: one that hangs past the end still failed inside
        inside = [c for c in obs.conns if w.start <= c.t_sent <= w.end]
        if not inside:
            out.append(f"{w.name} steady period: no connection was made")
        failed = [c for c in inside if c.node is None]
        if failed:
            out.append(f"{w.name} steady period: {len(failed)} of {len(inside)} connection(s) "
                       f"unanswered (first from {failed[0].src}:{failed[0].sport} "
                       f"at +{failed[0].t_sent - w.start:.2f} s)")
        wrong = []
        for c in inside:
            if c.node is None:
                continue
            b = bucket_of(c.src, c.sport if obs.filter == "on_port" else None, obs.filter,
                          obs.hash_seed)
            if owner.get(b) != c.node:
                wrong.append((c, b))
        if wrong:
            c, b = wrong[0]
            out.append(f"{w.name} steady period: {len(wrong)} connection(s) answered by a node "
                       f"that does not own the bucket (bucket {b} of {c.src}:{c.sport} answered "
                       f"by {c.node}, owned by {owner.get(b)})")
    if obs.rebalance_required and obs.t_fault is not None:
        if obs.t_rebalanced is None or obs.t_rebalanced - obs.t_fault > obs.rebalance_bound_s:
            out.append(f"no complete table on the live nodes within "
                       f"{obs.rebalance_bound_s:g} s of the fault")
    if obs.fence_target is not None and obs.t_fault is not None:
        out += fence_violations(obs)
    out += survivor_violations(obs)
    if obs.t_heal is not None:
        if obs.t_recovered is None or obs.t_recovered - obs.t_heal > obs.recovery_bound_s:
            out.append(f"not every node UP with a complete table within "
                       f"{obs.recovery_bound_s:g} s of the heal")
    return out


def fence_violations(obs: FarmObservation) -> list[str]:
    """A fenced fault's target must stop accepting within ``fence_bound_s`` of the fault
    by itself: its set seen empty by then and before the survivors held every bucket,
    and no connection opened after the bound (and before the heal) answered by it."""
    out: list[str] = []
    target, bound = obs.fence_target, obs.fence_bound_s
    assert obs.t_fault is not None
    silent = obs.t_target_silent
    if silent is None or silent - obs.t_fault > bound:
        out.append(f"{target} still accepted buckets "
                   f"{'through the hold' if silent is None else f'{silent - obs.t_fault:.2f} s'}"
                   f" after its daemon stopped, beyond the {bound:g} s lease")
    elif obs.t_rebalanced is not None and silent > obs.t_rebalanced:
        out.append(f"{target} still accepted buckets when the survivors had taken them "
                   f"(a bucket accepted by two nodes)")
    end = obs.t_heal if obs.t_heal is not None else float("inf")
    late = [c for c in obs.conns if c.node == target and obs.t_fault + bound < c.t_sent < end]
    if late:
        out.append(f"{len(late)} connection(s) opened more than {bound:g} s after {target}'s "
                   f"daemon stopped were answered by it (first at "
                   f"+{late[0].t_sent - obs.t_fault:.2f} s)")
    return out


def stable_owners(windows: Sequence[SteadyWindow]) -> dict[int, str]:
    """The buckets that have one and the same owner in every table read back (at the
    start and end of each steady period): bucket -> node."""
    tables = [owner_table(rs) for w in windows for rs in (w.rulesets_start, w.rulesets_end)]
    if not tables:
        return {}
    return {b: n for b, n in tables[0].items() if all(t.get(b) == n for t in tables[1:])}


def _bucket(obs: FarmObservation, c: Conn) -> int:
    return bucket_of(c.src, c.sport if obs.filter == "on_port" else None, obs.filter,
                     obs.hash_seed)


def survivor_failures(obs: FarmObservation) -> tuple[list[Conn], list[Conn]]:
    """What users of the nodes not faulted felt (pure): (connections established on such a
    node — its name read — that later failed: reset, dropped (a keep-alive unanswered),
    closed; connections outside the steady periods — each unanswered one is judged there
    already — that got no answer at all in a bucket such a node held in every table
    read back). The fault's target (``obs.target``) is excused until the
    recovery (``t_recovered``; for ever if it never came); after it, it is judged like
    the others. Nothing here depends on the phase: a connection a surviving node accepted
    must never be reset or dropped because another node failed or came back."""
    def excused(node: str | None, t: float) -> bool:
        return (node is not None and node == obs.target
                and (obs.t_recovered is None or t < obs.t_recovered))
    stable = stable_owners(obs.windows)
    broken, unanswered = [], []
    for c in obs.conns:
        if c.node is not None:
            if c.error is not None and not excused(c.node, c.t_sent):
                broken.append(c)
        elif not any(w.start <= c.t_sent <= w.end for w in obs.windows):
            # (in a steady period every unanswered connection is a violation already)
            owner = stable.get(_bucket(obs, c))
            if owner is not None and not excused(owner, c.t_sent):
                unanswered.append(c)
    return broken, unanswered


def _kinds(conns: Sequence[Conn]) -> str:
    return ", ".join(f"{k} {n}" for k, n in Counter(c.error or "?" for c in conns).most_common())


def _when(obs: FarmObservation, t: float) -> str:
    if obs.t_fault is None:
        return f"t={t:.2f}"
    phase = ("before the fault" if t < obs.t_fault else
             "during the fault" if obs.t_heal is None or t < obs.t_heal else "after the heal")
    return f"{t - obs.t_fault:+.2f} s from the fault, {phase}"


def survivor_violations(obs: FarmObservation) -> list[str]:
    """``survivor_failures`` as one-line messages (empty: none)."""
    broken, unanswered = survivor_failures(obs)
    out: list[str] = []
    if broken:
        c = broken[0]
        out.append(
            f"{len(broken)} connection(s) established on a node not faulted later failed "
            f"({_kinds(broken)}; first: {c.src}:{c.sport}, bucket {_bucket(obs, c)}, answered "
            f"by {c.node} at {_when(obs, c.t_done)}, {c.error} at "
            f"{_when(obs, c.t_end if c.t_end is not None else c.t_done)}"
            f"{f' after {c.echoes} keep-alive(s)' if c.keepalive else ''})")
    if unanswered:
        c = unanswered[0]
        b = _bucket(obs, c)
        out.append(
            f"{len(unanswered)} connection(s) unanswered in buckets held throughout by a node "
            f"not faulted ({_kinds(unanswered)}; first: {c.src}:{c.sport}, bucket {b} of "
            f"{stable_owners(obs.windows)[b]}, opened at {_when(obs, c.t_sent)})")
    return out


# ---- the workload --------------------------------------------------------------------------

class FarmWorkload:
    """The client's load through the VIP, from its namespace: ``workers`` threads of short
    connections one after the other with a small pause, and ``keepalive`` threads each
    holding one connection open (chaos.farm_client.hold: a keep-alive line every
    ``keepalive_interval_s``, echoed by the node that answered), opening the next when it
    ends. Every other held connection lives until it fails or the workload stops, so it
    spans the fault, the heal and the rebalances; the others are closed after 1-4 s, so
    connections are established on the survivors during the fault too. Each connection
    is recorded (``Conn``) when it ends, with who answered and how it ended."""

    def __init__(self, farm: FarmLab, port: int = PORT_ON_PORT, timeout_s: float = 1.0,
                 pause_s: float = 0.01, workers: int = 3, keepalive: int = 6,
                 keepalive_interval_s: float = 0.1, keepalive_timeout_s: float = 2.0,
                 seed: str = "farm") -> None:
        self.farm, self.port, self.timeout_s, self.pause_s = farm, port, timeout_s, pause_s
        self.workers, self.keepalive = workers, keepalive
        self.keepalive_interval_s, self.keepalive_timeout_s = (keepalive_interval_s,
                                                               keepalive_timeout_s)
        self.seed = seed
        self.conns: list[Conn] = []      # list.append is atomic: shared by the workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "FarmWorkload":
        # Several workers: one connection hanging for its timeout (a SYN lost while the
        # table moves) must not leave a steady period without connections.
        netns = self.farm.lab.hosts[self.farm.client].netns
        loops = [(f"farm-workload-{i}", self._loop, ()) for i in range(self.workers)]
        loops += [(f"farm-keepalive-{i}", self._hold_loop, (i,)) for i in range(self.keepalive)]
        for name, loop, args in loops:
            t = threading.Thread(target=in_netns, args=(netns, loop, *args),
                                 kwargs={"timeout": 24 * 3600}, daemon=True, name=name)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            t_sent = time.monotonic()
            node, src, sport, error = ask_detail(self.farm.vip, self.port, None, self.timeout_s)
            t_done = time.monotonic()
            self.conns.append(Conn(t_sent, t_done, node, src, sport, error, False, t_done))
            self._stop.wait(self.pause_s)

    def _hold_loop(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/keepalive/{index}")
        while not self._stop.is_set():
            lifetime = None if index % 2 == 0 else rng.uniform(1.0, 4.0)
            rec = hold(self.farm.vip, self.port, self._stop, lifetime,
                       self.keepalive_interval_s, self.keepalive_timeout_s)
            t_end = rec.t_end if rec.t_end is not None else time.monotonic()
            self.conns.append(Conn(rec.t_open, rec.t_answer if rec.node else t_end, rec.node,
                                   rec.src, rec.sport, rec.error, True, t_end, rec.echoes))
            if rec.error is not None:
                self._stop.wait(self.pause_s)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self.conns.sort(key=lambda c: c.t_sent)


# ---- the runner ----------------------------------------------------------------------------

@dataclass
class FarmEpisode:
    index: int
    nemesis: str
    seed: str
    targets: dict[str, Any]
    hold_s: float
    t_fault: float | None = None
    t_heal: float | None = None
    rebalance_s: float | None = None
    recovery_s: float | None = None
    connections: int = 0
    failed: int = 0
    answers_by_target_after_rebalance: int = 0   # judged for fenced faults (check_episode)
    target_silent_s: float | None = None         # fenced faults: fault -> target's set empty
    held: int = 0                # keep-alive connections answered (by any node)
    held_on_survivors: int = 0   # ... by a node other than the target
    survivor_failures: int = 0   # survivor_failures(): both kinds (each one a violation)
    violations: list[str] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)


def episode_rng(seed: int, index: int, nemesis: str) -> random.Random:
    return random.Random(f"farm/{seed}/{index}/{nemesis}")


def _rulesets(farm: FarmLab, nodes: Sequence[str]) -> dict[str, frozenset[int] | None]:
    return {n: farm.ruleset_buckets(n) for n in nodes}


def _all_up(farm: FarmLab) -> bool:
    return all((st := farm.state(n)) is not None and st["state"] == "UP"
               and st["ready"] == "Ready" for n in farm.nodes)


def _poll(predicate, timeout: float, interval: float = 0.1) -> float | None:
    """The time predicate first held, or None after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def _steady(farm: FarmLab, name: str, duration_s: float) -> SteadyWindow:
    start_rs = _rulesets(farm, farm.nodes)
    start = time.monotonic()
    time.sleep(duration_s)
    end = time.monotonic()
    return SteadyWindow(name, start, end, start_rs, _rulesets(farm, farm.nodes))


def _healthy(farm: FarmLab) -> bool:
    return _all_up(farm) and farm.complete_on(farm.nodes)


def _lease_s(farm: FarmLab) -> float:
    return RaftSettings.from_dict(farm.cluster.raft_settings or None).lease_timing.lease_s


def _watch_fault(farm: FarmLab, target: str, live: list[str], fenced: bool,
                 rebalance: bool, timeout: float) -> tuple[float | None, float | None]:
    """During the hold: when the target's loaded set was first seen empty (if
    ``fenced``) and when the live nodes' table was first complete (if ``rebalance``);
    None for what was not seen within ``timeout``."""
    silent = rebalanced = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fenced and silent is None and not farm.ruleset_buckets(target):
            silent = time.monotonic()
        if rebalance and rebalanced is None and farm.complete_on(live):
            rebalanced = time.monotonic()
        if (silent is not None or not fenced) and (rebalanced is not None or not rebalance):
            break
        time.sleep(0.05)
    return silent, rebalanced


def _holder_deadline_s(farm: FarmLab) -> float:
    """How long a lease renewed just before the heal can still be held without a new
    renewal (lease - margin): a node serving later than that renewed after the heal."""
    timing = RaftSettings.from_dict(farm.cluster.raft_settings or None).lease_timing
    return timing.lease_s - timing.margin_s


class _Settling:
    """After a heal: recovered once the farm is healthy on a settled cluster
    (``raft_settled``) and a holder deadline has passed since the heal."""

    def __init__(self, farm: FarmLab) -> None:
        self.farm = farm
        self.not_before = time.monotonic() + _holder_deadline_s(farm)
        self.floor: int | None = None

    def _statuses(self) -> dict[str, dict | None]:
        return {n: self.farm.cluster.status(n) for n in self.farm.nodes}

    def recovered(self) -> bool:
        statuses = self._statuses()
        if self.floor is None:
            indexes = [st["commit_index"] for st in statuses.values()
                       if st is not None and st.get("commit_index") is not None]
            if not indexes:
                return False
            self.floor = max(indexes)     # committed by now: later entries come after the heal
            return False
        return (time.monotonic() >= self.not_before and raft_settled(statuses, self.floor)
                and _healthy(self.farm))


def _repair(farm: FarmLab, timeout: float) -> str | None:
    """Undo every fault and restart dead daemons when the last episode left the farm
    unhealthy; what was done (None: nothing needed)."""
    if _poll(lambda: _healthy(farm), 5.0) is not None:
        return None
    farm.lab.heal()
    for n in farm.nodes:
        proc = farm.cluster.procs.get(n)
        if proc is not None and proc.alive():
            farm.cluster.resume(n)
        else:
            farm.cluster.start(n)
    ok = _poll(lambda: _healthy(farm), timeout) is not None
    log.warning("event=farm_repair ok=%s", ok)
    return "faults undone, dead daemons restarted" + ("" if ok else " (still unhealthy)")


def run_farm_episode(farm: FarmLab, index: int, name: str, seed: int,
                     hold_range_s: tuple[float, float], steady_s: float = 1.0,
                     rebalance_bound_s: float = 10.0,
                     recovery_bound_s: float = 60.0) -> tuple[FarmEpisode, list[Conn]]:
    rng = episode_rng(seed, index, name)
    nem = make_farm_nemesis(name)
    hold = max(nem.min_hold_s, rng.uniform(*hold_range_s))
    from hacluster.farm.driver import hash_seed
    repaired = _repair(farm, recovery_bound_s)
    work = FarmWorkload(farm, seed=f"farm/{seed}/{index}/{name}").start()
    ep = FarmEpisode(index, name, f"farm/{seed}/{index}/{name}", {}, hold)
    obs = FarmObservation(list(farm.nodes), [], [], hash_seed(MODULE),
                          rebalance_required=nem.out, rebalance_bound_s=rebalance_bound_s,
                          recovery_bound_s=recovery_bound_s)
    t_rebalanced = t_recovered = t_silent = None
    try:
        obs.windows.append(_steady(farm, "before", steady_s))
        t_fault = time.monotonic()
        nem.start(farm, rng)
        ep.targets = nem.targets
        target = nem.targets["host"]
        live = [n for n in farm.nodes if n != target]
        if nem.out or nem.fenced:
            t_silent, t_rebalanced = _watch_fault(farm, target, live, nem.fenced, nem.out,
                                                  max(hold, rebalance_bound_s))
        time.sleep(max(0.0, t_fault + hold - time.monotonic()))
        t_heal = time.monotonic()
        nem.heal(farm)
        settling = _Settling(farm)
        t_recovered = _poll(settling.recovered, recovery_bound_s)
        if t_recovered is not None:
            obs.windows.append(_steady(farm, "after", steady_s))
    finally:
        work.stop()
    obs.conns = work.conns
    obs.t_fault, obs.t_heal = t_fault, t_heal
    obs.t_rebalanced, obs.t_recovered = t_rebalanced, t_recovered
    obs.target = target
    if nem.fenced:
        obs.fence_target, obs.fence_bound_s = target, _lease_s(farm)
        obs.t_target_silent = t_silent
        ep.target_silent_s = None if t_silent is None else t_silent - t_fault
    ep.t_fault, ep.t_heal = t_fault, t_heal
    ep.rebalance_s = None if t_rebalanced is None else t_rebalanced - t_fault
    ep.recovery_s = None if t_recovered is None else t_recovered - t_heal
    ep.connections, ep.failed = len(work.conns), sum(c.node is None for c in work.conns)
    ep.held = sum(c.keepalive and c.node is not None for c in work.conns)
    ep.held_on_survivors = sum(c.keepalive and c.node not in (None, target) for c in work.conns)
    ep.survivor_failures = sum(map(len, survivor_failures(obs)))
    if t_rebalanced is not None:
        ep.answers_by_target_after_rebalance = sum(
            c.node == target for c in work.conns if t_rebalanced <= c.t_sent <= t_heal)
    ep.violations = check_episode(obs)
    ep.faults = [asdict(e) for e in nem.events]
    if repaired:
        ep.faults.insert(0, {"t": ep.t_fault, "action": "repair", "detail": repaired})
    log.info("event=farm_episode index=%d nemesis=%s target=%s hold_s=%.2f rebalance_s=%s "
             "recovery_s=%s connections=%d failed=%d violations=%d", index, name, target, hold,
             _r(ep.rebalance_s), _r(ep.recovery_s), ep.connections, ep.failed,
             len(ep.violations))
    for v in ep.violations:
        log.warning("event=farm_violation index=%d nemesis=%s detail=%r", index, name, v)
    return ep, work.conns


def _r(x: float | None) -> str:
    return "none" if x is None else f"{x:.2f}"


def run_farm_chaos(lab: Lab, names: Sequence[str], episodes: int, seed: int,
                   hold_range_s: tuple[float, float] = (2.0, 4.0), steady_s: float = 1.0,
                   recovery_bound_s: float = 60.0,
                   logs_dir: Path | None = None) -> dict[str, Any]:
    """Every nemesis ``episodes`` times (interleaved) on a fresh FarmLab on ``lab``
    (hosts f1, f2, f3, c); the history as plain data. An episode with violations
    leaves the tails of the lab's logs in ``logs_dir``/episode-NNN-<nemesis> (the
    daemons' lease and ruleset events say why a connection went unanswered)."""
    for n in names:
        make_farm_nemesis(n)        # unknown names refused before anything starts
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    farm = FarmLab(lab, nodes=NODES, client=CLIENT).start()
    eps: list[FarmEpisode] = []
    conns: list[tuple[int, Conn]] = []
    plan = [n for _ in range(episodes) for n in names]
    for i, name in enumerate(plan):
        ep, cs = run_farm_episode(farm, i, name, seed, hold_range_s, steady_s,
                                  recovery_bound_s=recovery_bound_s)
        eps.append(ep)
        conns += [(i, c) for c in cs]
        if ep.violations and logs_dir is not None:
            kept = keep_logs(Path(lab.workdir), logs_dir / f"episode-{i:03d}-{name}")
            log.warning("event=logs_kept index=%d files=%d where=%s", i, kept, logs_dir)
    farm.cluster.stop_all()
    return {
        "kind": "farm", "seed": seed, "nemeses": list(names), "episodes_per_nemesis": episodes,
        "hold_range_s": list(hold_range_s), "recovery_bound_s": recovery_bound_s,
        "started": started, "t0": t0, "t_end": time.monotonic(), "hosts": [*NODES, CLIENT],
        "sampled": list(NODES), "states": [],
        "episodes": [asdict(e) for e in eps],
        # [episode, t_sent, t_done, node or null, src, sport, error or null, keepalive,
        #  t_end, keep-alive lines answered]
        "connections": [[i, c.t_sent, c.t_done, c.node, c.src, c.sport, c.error, c.keepalive,
                         c.t_end, c.echoes] for i, c in conns],
    }


# ---- report --------------------------------------------------------------------------------

def summarize_farm(history: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(e["nemesis"] for e in history["episodes"]):
        eps = [e for e in history["episodes"] if e["nemesis"] == name]
        reb = [e["rebalance_s"] for e in eps if e["rebalance_s"] is not None]
        rec = [e["recovery_s"] for e in eps if e["recovery_s"] is not None]
        fence = [e["target_silent_s"] for e in eps if e.get("target_silent_s") is not None]
        rows.append({
            "nemesis": name, "episodes": len(eps),
            "violations": sum(len(e["violations"]) for e in eps),
            "rebalance_p50_s": percentile(reb, 50), "rebalance_p99_s": percentile(reb, 99),
            "recovery_p50_s": percentile(rec, 50), "recovery_p99_s": percentile(rec, 99),
            "target_silent_max_s": max(fence) if fence else None,
            "connections": sum(e["connections"] for e in eps),
            "failed": sum(e["failed"] for e in eps),
            "held_on_survivors": sum(e.get("held_on_survivors", 0) for e in eps),
            "survivor_failures": sum(e.get("survivor_failures", 0) for e in eps),
        })
    return rows


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_farm_summary(history: dict[str, Any], title: str = "farm chaos run") -> str:
    rows = summarize_farm(history)
    total = sum(r["violations"] for r in rows)
    lines = [
        f"# {title}", "",
        f"seed {history['seed']}, {history['episodes_per_nemesis']} episode(s) per nemesis, "
        f"hold {history['hold_range_s'][0]:g}-{history['hold_range_s'][1]:g} s, recovery bound "
        f"{history['recovery_bound_s']:g} s, started {history['started']}; **{total} "
        f"violation(s)** in {len(history['episodes'])} episodes, "
        f"{len(history['connections'])} connections.", "",
        "Rebalance: from the fault to a complete bucket table on the live nodes (nemeses "
        "that take a node out). Recovery: from the heal to every node UP with a complete "
        "table, on a settled cluster (one Raft term and leader, every node applying the "
        "leader's entries since the heal, a lease minus margin after the heal). Failed: connections without an answer, mostly to the faulted node. "
        "Held: keep-alive connections (a line every 100 ms) answered by a node not faulted. "
        "Survivor failures: connections established on a node not faulted that were later "
        "reset or dropped, and connections unanswered in a bucket such a node held "
        "throughout; every one is a violation, in any phase. Silent: daemon killed or paused, "
        "from the fault to the victim's loaded bucket set seen empty, the kernel's expiry "
        "alone (must be within the lease).", "",
        "| nemesis | episodes | violations | rebalance p50 s | rebalance p99 s "
        "| recovery p50 s | recovery p99 s | silent max s | connections | failed "
        "| held | survivor failures |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['nemesis']} | {r['episodes']} | {r['violations']} "
                     f"| {_s(r['rebalance_p50_s'])} | {_s(r['rebalance_p99_s'])} "
                     f"| {_s(r['recovery_p50_s'])} | {_s(r['recovery_p99_s'])} "
                     f"| {_s(r['target_silent_max_s'])} | {r['connections']} | {r['failed']} "
                     f"| {r['held_on_survivors']} | {r['survivor_failures']} |")
    lines += ["", "## Violations", ""]
    bad = [e for e in history["episodes"] if e["violations"]]
    if not bad:
        lines.append("None.")
    for e in bad:
        lines.append(f"- episode {e['index']} `{e['nemesis']}` (seed `{e['seed']}`, "
                     f"targets {json.dumps(e['targets'])}):")
        lines += [f"  - {v}" for v in e["violations"]]
    lines += ["", "## Episodes", "",
              "| # | nemesis | targets | hold s | rebalance s | recovery s | connections "
              "| failed | answers by target after rebalance | violations |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in history["episodes"]:
        lines.append(f"| {e['index']} | {e['nemesis']} | {json.dumps(e['targets'])} "
                     f"| {e['hold_s']:.2f} | {_s(e['rebalance_s'])} | {_s(e['recovery_s'])} "
                     f"| {e['connections']} | {e['failed']} "
                     f"| {e['answers_by_target_after_rebalance']} | {len(e['violations'])} |")
    return "\n".join(lines) + "\n"


def _timeline_history(history: dict[str, Any]) -> dict[str, Any]:
    """The shape chaos_report.render_timeline reads: answered connections as client
    acknowledgements (keyed by episode so outages are cut per episode)."""
    return {**history,
            "client": [[f"e{i:03d}-{k}", None, node, None, ts, td]
                       for k, (i, ts, td, node, *_rest) in enumerate(history["connections"])
                       if node is not None]}


def write_farm_report(history: dict[str, Any], out_dir: Path,
                      title: str = "farm chaos run") -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"history": out_dir / "history.json", "summary": out_dir / "summary.md",
             "summary_json": out_dir / "summary.json", "timeline": out_dir / "timeline.png"}
    write_history(history, paths["history"])
    rows = summarize_farm(history)
    paths["summary_json"].write_text(json.dumps({
        "seed": history["seed"], "episodes_per_nemesis": history["episodes_per_nemesis"],
        "episodes": len(history["episodes"]), "violations": sum(r["violations"] for r in rows),
        "measured": history["started"], "nemeses": rows}, indent=2) + "\n")
    paths["summary"].write_text(render_farm_summary(history, title))
    paths["timeline"].write_bytes(render_timeline(_timeline_history(history)).png())
    return paths


# ---- CLI -----------------------------------------------------------------------------------

def _nemeses(arg: str) -> list[str]:
    if arg == "all":
        return list(FARM_NEMESES)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in FARM_NEMESES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown farm nemesis {unknown[0] if unknown else arg!r}"
                                         f"; have all, {', '.join(FARM_NEMESES)}")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.farm_chaos",
                                description="chaos episodes on the farm module")
    p.add_argument("--nemesis", type=_nemeses, default=list(FARM_NEMESES),
                   help=f"all or a comma list of {', '.join(FARM_NEMESES)}")
    p.add_argument("--episodes", type=_positive_int, default=1, help="episodes per nemesis")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default chaos/results/farm-<time>-seed<S>)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = args.out or RESULTS_DIR / f"farm-{time.strftime('%Y%m%d-%H%M%S')}-seed{args.seed}"
    lab = Lab([*NODES, CLIENT]).start()
    try:
        history = run_farm_chaos(lab, args.nemesis, args.episodes, args.seed,
                                 logs_dir=out / "logs")
    finally:
        lab.cleanup()
    paths = write_farm_report(history, out)
    total = sum(len(e["violations"]) for e in history["episodes"])
    print(f"{total} violation(s); {paths['summary']}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
