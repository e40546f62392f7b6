"""Fault injectors ("nemeses") for the mirror lab: n1, n2 (data nodes), w (witness), c (client).

Each nemesis is a small class: ``choose(rng, roles)`` picks its targets from who holds
which role *now* (pure, so a run is reproducible from its seed), ``start(ctx)`` injects
the fault, ``heal(ctx)`` undoes it. Everything it did is appended to ``self.events``
(monotonic time, action, host, detail) and logged.

The three voters are n1, n2 and w; the client reaches the cluster only through the VIP.
So the partitions worth trying are: the primary or the secondary alone (the other node
and the witness keep a majority), the witness alone (no failover may happen), halves
that put the witness with one node and the client with either side (the client may
be on the minority side with a fenced primary), and the "bridge" where the two data
nodes cannot see each other but the witness and the client see both.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

import psutil

from .lab import Lab, _netns_pids
from .lab_mirror import MirrorLab

log = logging.getLogger("chaos.nemesis")


@dataclass(frozen=True)
class Roles:
    """Who is what at the start of an episode."""
    primary: str
    secondary: str
    witness: str
    client: str

    @property
    def voters(self) -> tuple[str, str, str]:
        return (self.primary, self.secondary, self.witness)


@dataclass(frozen=True)
class FaultEvent:
    t: float            # time.monotonic()
    nemesis: str
    action: str
    host: str | None
    detail: str = ""


@dataclass
class NemesisContext:
    mirror: MirrorLab
    roles: Roles
    rng: random.Random

    @property
    def lab(self) -> Lab:
        return self.mirror.lab


class Nemesis:
    name = "nemesis"
    min_hold_s = 0.0      # a fault that must last at least this long to mean anything

    def __init__(self) -> None:
        self.events: list[FaultEvent] = []
        self.targets: dict[str, object] = {}

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        """The targets of this fault, from the roles and the seeded rng only."""
        raise NotImplementedError

    def start(self, ctx: NemesisContext) -> None:
        self.targets = self.choose(ctx.rng, ctx.roles)
        self._start(ctx)

    def heal(self, ctx: NemesisContext) -> None:
        raise NotImplementedError

    def _start(self, ctx: NemesisContext) -> None:
        raise NotImplementedError

    def record(self, action: str, host: str | None, detail: str = "") -> FaultEvent:
        ev = FaultEvent(time.monotonic(), self.name, action, host, detail)
        self.events.append(ev)
        log.info("event=nemesis nemesis=%s action=%s host=%s detail=%r",
                 self.name, action, host, detail)
        return ev


# ---- partitions ------------------------------------------------------------------------

class _Isolate(Nemesis):
    role = "primary"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": getattr(roles, self.role)}

    def _start(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.lab.cut(host)
        self.record("cut", host, f"{self.role} isolated (both directions)")

    def heal(self, ctx: NemesisContext) -> None:
        ctx.lab.heal()
        self.record("heal", self.targets.get("host"))


class IsolatePrimary(_Isolate):
    name, role = "isolate-primary", "primary"


class IsolateSecondary(_Isolate):
    name, role = "isolate-secondary", "secondary"


class IsolateWitness(_Isolate):
    name, role = "isolate-witness", "witness"


class PartitionHalves(Nemesis):
    """The witness with one data node, the client on either side."""
    name = "partition-halves"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        with_witness = rng.choice([roles.primary, roles.secondary])
        alone = roles.secondary if with_witness == roles.primary else roles.primary
        majority, minority = [with_witness, roles.witness], [alone]
        (majority if rng.random() < 0.5 else minority).append(roles.client)
        return {"groups": [majority, minority]}

    def _start(self, ctx: NemesisContext) -> None:
        groups = self.targets["groups"]
        ctx.lab.partition(groups)
        self.record("partition", None, " | ".join(",".join(g) for g in groups))

    def heal(self, ctx: NemesisContext) -> None:
        ctx.lab.heal()
        self.record("heal", None)


class Bridge(Nemesis):
    """The data nodes cannot see each other; the witness and the client see both."""
    name = "bridge"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"groups": [[roles.primary], [roles.secondary]], "bridge": roles.witness}

    def _start(self, ctx: NemesisContext) -> None:
        ctx.lab.partition(self.targets["groups"])
        self.record("partition", None, f"{self.targets['groups'][0][0]} | "
                    f"{self.targets['groups'][1][0]}, bridged by {self.targets['bridge']}")

    def heal(self, ctx: NemesisContext) -> None:
        ctx.lab.heal()
        self.record("heal", None)


class OneWay(Nemesis):
    """A data node's packets to the other voters are dropped; theirs still arrive."""
    name = "one-way"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        src = rng.choice([roles.primary, roles.secondary])
        return {"src": src, "dst": [h for h in roles.voters if h != src]}

    def _start(self, ctx: NemesisContext) -> None:
        src, dst = self.targets["src"], self.targets["dst"]
        ctx.lab.block(src, dst)
        self.record("block", src, f"{src} -> {','.join(dst)} dropped")

    def heal(self, ctx: NemesisContext) -> None:
        ctx.lab.heal()
        self.record("heal", self.targets.get("src"))


class Flap(Nemesis):
    """A host's link cut and restored a few times quickly (schedule drawn up front)."""
    name = "flap"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        host = rng.choice(list(roles.voters))
        schedule = [(round(rng.uniform(0.2, 0.8), 3), round(rng.uniform(0.2, 0.8), 3))
                    for _ in range(rng.randint(3, 6))]
        return {"host": host, "schedule": schedule}

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, ctx: NemesisContext) -> None:
        self._thread = threading.Thread(target=self._flap, args=(ctx,), name="nemesis-flap",
                                        daemon=True)
        self._thread.start()

    def _flap(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        for down_s, up_s in self.targets["schedule"]:
            if self._stop.is_set():
                return
            ctx.lab.cut(host)
            self.record("cut", host, f"flap down {down_s} s")
            if self._stop.wait(down_s):
                return
            ctx.lab.heal(host)
            self.record("heal", host, f"flap up {up_s} s")
            if self._stop.wait(up_s):
                return

    def heal(self, ctx: NemesisContext) -> None:
        # The whole schedule runs even when the hold is shorter: flapping is the fault.
        if self._thread is not None:
            self._thread.join(sum(d + u for d, u in self.targets["schedule"]) + 5)
        self._stop.set()
        ctx.lab.heal()
        self.record("heal", self.targets.get("host"))


# ---- processes ---------------------------------------------------------------------------

class KillDaemon(Nemesis):
    """SIGKILL of the primary's daemon alone (its children die by PDEATHSIG)."""
    name = "kill-daemon"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": roles.primary}

    def _start(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.cluster.kill(host)
        self.record("sigkill", host, "hacluster daemon")

    def heal(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.cluster.start(host)
        self.record("restart", host, "hacluster daemon")


def replication_processes(mirror: MirrorLab, host: str, kind: str) -> list[psutil.Process]:
    """``python -m replication <kind>`` processes running in the host's namespace."""
    found = []
    for pid in _netns_pids(mirror.lab.hosts[host].netns):
        try:
            proc = psutil.Process(pid)
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        for i in range(len(cmd) - 2):
            if cmd[i] == "-m" and cmd[i + 1] == "replication" and cmd[i + 2] == kind:
                found.append(proc)
                break
    return found


class KillReplication(Nemesis):
    """SIGKILL of the primary's mount or the secondary's receiver; the daemon must cope."""
    name = "kill-replication"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        if rng.random() < 0.5:
            return {"host": roles.primary, "kind": "mount"}
        return {"host": roles.secondary, "kind": "receive"}

    def _start(self, ctx: NemesisContext) -> None:
        host, kind = self.targets["host"], self.targets["kind"]
        procs = replication_processes(ctx.mirror, host, kind)
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.record("sigkill", host, f"replication {kind} pids="
                    f"{','.join(str(p.pid) for p in procs) or 'none found'}")

    def heal(self, ctx: NemesisContext) -> None:
        self.record("heal", self.targets.get("host"), "nothing to undo: the daemon restarts it")


class KillHost(Nemesis):
    """Power loss of a data node; it boots again at heal."""
    name = "kill-host"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": rng.choice([roles.primary, roles.secondary])}

    def _start(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.kill_host(host)
        self.record("power-off", host)

    def heal(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.restart_node(host)
        self.record("power-on", host)


class PausePrimary(Nemesis):
    """SIGSTOP of the primary's daemon for longer than its lease: a zombie primary
    (its app and mount keep running) must not acknowledge writes the new one lacks."""
    name = "pause-primary"
    min_hold_s = 3.0     # lease is 1.5 s by default: hold at least twice that

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": roles.primary}

    def _start(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.cluster.pause(host)
        self.record("sigstop", host, "hacluster daemon")

    def heal(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.cluster.resume(host)
        self.record("sigcont", host, "hacluster daemon")


class KillAll(Nemesis):
    """Every voter loses power at once, then all boot again."""
    name = "kill-all"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        hosts = list(roles.voters)
        rng.shuffle(hosts)      # the order of the restarts
        return {"hosts": hosts}

    def _start(self, ctx: NemesisContext) -> None:
        hosts = self.targets["hosts"]
        for h in hosts:
            ctx.lab.cut(h)
        for h in hosts:
            ctx.lab.kill_host(h)
            self.record("power-off", h)

    def heal(self, ctx: NemesisContext) -> None:
        for h in self.targets["hosts"]:
            ctx.mirror.restart_node(h)
            self.record("power-on", h)


NEMESES: dict[str, type[Nemesis]] = {cls.name: cls for cls in (
    IsolatePrimary, IsolateSecondary, IsolateWitness, PartitionHalves, Bridge, OneWay,
    KillDaemon, KillReplication, KillHost, PausePrimary, KillAll, Flap)}


def make_nemesis(name: str) -> Nemesis:
    try:
        return NEMESES[name]()
    except KeyError:
        raise ValueError(f"unknown nemesis {name!r}; have {', '.join(NEMESES)}") from None
