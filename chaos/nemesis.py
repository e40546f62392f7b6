"""Fault injectors ("nemeses") for the mirror lab: n1, n2 (data nodes), w (witness), c
(client); in the five-voter lab also witnesses w2, w3 (``Nemesis.lab_shape``).

Each nemesis is a small class: ``choose(rng, roles)`` picks its targets from who holds
which role *now* (pure, so a run is reproducible from its seed), ``start(ctx)`` injects
the fault, ``heal(ctx)`` undoes it. Everything it did is appended to ``self.events``
(monotonic time, action, host, detail) and logged.

The three voters are n1, n2 and w; the client reaches the cluster only through the VIP.
So the partitions worth trying are: the primary or the secondary alone (the other node
and the witness keep a majority), the witness alone (no failover may happen), halves
that put the witness with one node and the client with either side (the client may
be on the minority side with a fenced primary), and the "bridge" where the two data
nodes cannot see each other but the witness and the client see both. With five voters:
the majorities ring, and membership changes made while a voter is cut off.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from raft.settings import RaftSettings
from vip.lifetime import ADDRESS_EXPIRY_LAG_S

from .lab import Lab, _netns_pids, wait_until
from .lab_mirror import MirrorLab

log = logging.getLogger("chaos.nemesis")


@dataclass(frozen=True)
class Roles:
    """Who is what at the start of an episode."""
    primary: str
    secondary: str
    witness: str            # the first witness: the one the state sampler shows
    client: str
    witnesses: tuple[str, ...] = ()     # every witness, in lab order; () means (witness,)

    @property
    def all_witnesses(self) -> tuple[str, ...]:
        return self.witnesses or (self.witness,)

    @property
    def voters(self) -> tuple[str, ...]:
        return (self.primary, self.secondary, *self.all_witnesses)


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
    lab_shape = "standard"  # which lab it runs on (chaos.lab_shapes.SHAPES)
    min_hold_s = 0.0      # a fault that must last at least this long to mean anything
    needs_small_fs = False  # the runner must mount a small file system over each data dir
    # Set (to why) when the fault left the lab in a state heal could not undo: the
    # runner then builds a fresh lab for the episodes that follow.
    lab_broken: str | None = None

    def __init__(self) -> None:
        self.events: list[FaultEvent] = []
        self.targets: dict[str, object] = {}
        self.violations: list[str] = []     # what the nemesis itself saw go wrong

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

    def verify(self, ctx: NemesisContext) -> list[str]:
        """After recovery: what this fault's own data shows broken (default: nothing to
        check beyond the runner's invariants)."""
        return []

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
    (its app and mount keep running) must not acknowledge writes the new one lacks, and
    its VIP must lapse in the kernel within the lease (a violation otherwise)."""
    name = "pause-primary"
    min_hold_s = 3.0     # lease is 1.5 s by default: hold at least twice that

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": roles.primary}

    def _start(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.cluster.pause(host)
        self.record("sigstop", host, "hacluster daemon")
        # Judged (DESIGN.md rule 7): the frozen daemon cannot drop its VIP; the kernel
        # must, at the lease deadline it was last given (plus its address-expiry lag).
        timing = RaftSettings.from_dict(ctx.mirror.cluster.raft_settings or None).lease_timing
        self._vip_bound_s = timing.lease_s - timing.margin_s + ADDRESS_EXPIRY_LAG_S
        self._vip_gone_s: float | None = None
        stopped = time.monotonic()

        def watch() -> None:
            while time.monotonic() < stopped + self._vip_bound_s + 1.0:
                out = ctx.lab.run(host, ["ip", "-4", "-o", "addr", "show"], check=False).stdout
                if f" {ctx.mirror.vip}/" not in out:
                    self._vip_gone_s = time.monotonic() - stopped
                    return
                time.sleep(0.05)
        self._vip_watch = threading.Thread(target=watch, name="pause-primary-vip", daemon=True)
        self._vip_watch.start()

    def heal(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        self._vip_watch.join(self._vip_bound_s + 2.0)
        ctx.mirror.cluster.resume(host)
        self.record("sigcont", host, "hacluster daemon")
        gone = self._vip_gone_s
        self.record("vip-expiry", host, "VIP still held at the heal" if gone is None
                    else f"VIP gone {gone:.2f} s after the SIGSTOP")
        # a poll takes a few tens of milliseconds: 0.3 s of slack
        if gone is None or gone > self._vip_bound_s + 0.3:
            self.violations.append(
                f"the frozen primary {host} still held the VIP "
                f"{'at the heal' if gone is None else f'{gone:.2f} s after the SIGSTOP'}, beyond "
                f"its lease deadline plus the kernel's expiry lag ({self._vip_bound_s:.2f} s)")


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


# ---- disks ---------------------------------------------------------------------------------

FILLER_NAME = ".chaos-disk-filler"     # beside the data dir, not in it: the app never sees it
_CHUNK = 1 << 20


def small_fs_dir(mirror: MirrorLab, node: str) -> Path:
    """Where the runner mounts the node's small file system: the data dir's parent, so a
    filler can sit on the same file system beside the data dir, outside the FUSE mount
    that covers the data dir on the primary."""
    return mirror.data_dir(node).parent


def fill_until_full(path: Path) -> int:
    """Write ``path`` until the file system says ENOSPC (halving the chunk down to one
    page so that it is really full); returns the bytes written."""
    written, chunk = 0, _CHUNK
    block = b"\xa5" * _CHUNK
    with open(path, "wb", buffering=0) as f:
        while chunk >= 4096:
            try:
                written += f.write(block[:chunk])
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                chunk //= 2
    return written


class _DiskFull(Nemesis):
    """The data node's replicated file system full: the kv app's writes (primary) or the
    receiver's applies (secondary) fail with ENOSPC until heal deletes the filler."""
    role = "primary"
    needs_small_fs = True

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": getattr(roles, self.role)}

    def _filler(self, ctx: NemesisContext) -> Path:
        fs_dir = small_fs_dir(ctx.mirror, self.targets["host"])
        if not os.path.ismount(fs_dir):
            raise RuntimeError(f"{self.name}: {fs_dir} is not a mount point: the runner must "
                               "prepare a small file system there (chaos_run.small_file_systems)")
        return fs_dir / FILLER_NAME

    def _start(self, ctx: NemesisContext) -> None:
        filler = self._filler(ctx)
        size = fill_until_full(filler)
        self.record("fill", self.targets["host"], f"{filler} {size} bytes until ENOSPC")

    def heal(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        filler = small_fs_dir(ctx.mirror, host) / FILLER_NAME
        filler.unlink(missing_ok=True)
        self.record("heal", host, f"{filler} deleted")


class DiskFullPrimary(_DiskFull):
    name, role = "disk-full-primary", "primary"


class DiskFullSecondary(_DiskFull):
    name, role = "disk-full-secondary", "secondary"


# ---- failover in the middle of reintegration ----------------------------------------------

SHAPED_RATE = "40mbit"           # 12-20 MiB of bulk then take 2.5-4 s to reintegrate
BULK_NAME = "chaos-bulk.bin"     # one name, rewritten each time: the space it takes is bounded


class FailoverDuringReintegration(Nemesis):
    """The secondary cut off while a bulk file is written through the primary's mount;
    healed; the primary's host killed as soon as reintegration starts. The old secondary
    holds a half copy: it must not be made primary (it is not in the in-sync set). Heal
    boots the old primary, which must take over again and reintegrate the secondary."""
    name = "failover-during-reintegration"
    min_hold_s = 3.0       # long enough for a wrong promotion to show (lease 1.5 s)

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._excluded = False     # the in-sync set lacked the secondary when its primary died

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"primary": roles.primary, "secondary": roles.secondary,
                "bulk_mib": rng.randint(12, 20), "bulk_seed": rng.getrandbits(32)}

    def _start(self, ctx: NemesisContext) -> None:
        m, prim, sec = ctx.mirror, self.targets["primary"], self.targets["secondary"]
        ctx.lab.cut(sec)
        self.record("cut", sec, "secondary isolated")
        # the primary must run ALONE before the bulk write can be acknowledged
        wait_until(f"{prim} alone", lambda: (lambda st: st is not None and
                   st.get("in_sync") == [prim])(m.state(prim)), 15, 0.05)
        data = self._bulk_data()
        bulk = m.data_dir(prim) / BULK_NAME    # the primary's FUSE mount: replicated
        with open(bulk, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.record("write", prim, f"{bulk} {len(data)} bytes while {sec} is cut")
        # the primary's replication process logs the start of reintegration there
        log_dir = m.cluster.log_dir(prim) / m.module
        mount_logs = sorted(log_dir.glob("mount*.log"))
        if not mount_logs:
            raise RuntimeError(f"{self.name}: no mount*.log of module {m.module} under {log_dir}")
        offsets = {p: p.stat().st_size for p in mount_logs}
        # A LAN copies the bulk in a blink: slow the primary's egress so that reintegration
        # lasts seconds (tbf's latency bound keeps Raft's packets from queueing long).
        ctx.lab.run(prim, ["tc", "qdisc", "replace", "dev", self._iface(ctx), "root", "tbf",
                           "rate", SHAPED_RATE, "burst", "32kbit", "latency", "50ms"])
        self.record("shape", prim, f"egress {SHAPED_RATE}")
        ctx.lab.heal(sec)
        self.record("heal", sec, "secondary reconnected: reintegration starts")
        try:
            wait_until("reintegration started", lambda: any(
                b"event=reintegration_started" in _read_from(p, o) for p, o in offsets.items()),
                10, 0.005)
            caught = "reintegration started"
        except TimeoutError:
            caught = "reintegration start not seen in 10 s"
        # Cut first: no more commits from the primary, so its in-sync set read next (over
        # its Unix socket) is the one the survivors have (the secondary's own view may
        # still lag the removal committed while it was cut off).
        ctx.lab.cut(prim)
        st = m.state(prim)
        in_sync = st.get("in_sync") if st else None
        m.kill_host(prim)
        self._excluded = in_sync is not None and sec not in in_sync
        self.record("power-off", prim, f"{caught}; primary's in_sync={in_sync}"
                    + (f" reintegration={st['reintegration']}" if st and st.get("reintegration")
                       else "")
                    + ("" if self._excluded or in_sync is None
                       else ": reintegration had already completed"))
        self._watch = threading.Thread(target=self._watch_secondary, args=(ctx,),
                                       name="nemesis-watch-secondary", daemon=True)
        self._watch.start()

    def _iface(self, ctx: NemesisContext) -> str:
        return ctx.lab.hosts[self.targets["primary"]].ifaces["lan"]

    def _bulk_data(self) -> bytes:
        return random.Random(self.targets["bulk_seed"]).randbytes(self.targets["bulk_mib"] << 20)

    def verify(self, ctx: NemesisContext) -> list[str]:
        """The bulk file (fsynced, so acknowledged) is whole on both nodes after recovery."""
        want = hashlib.sha256(self._bulk_data()).hexdigest()
        bad = []
        for node in ctx.mirror.nodes:
            path = ctx.mirror.data_dir(node) / BULK_NAME
            got = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"
            if got != want:
                bad.append(f"bulk file {path} on {node}: sha256 {got[:12]}, want {want[:12]}")
        return bad

    def _watch_secondary(self, ctx: NemesisContext) -> None:
        sec = self.targets["secondary"]
        while not self._stop.wait(0.1):
            st = ctx.mirror.state(sec)
            if st and st["state"] == "PRIM" and self._excluded:
                v = (f"{sec} became PRIM (epoch {st['epoch']}) with a half copy: it was not "
                     "in the in-sync set when the primary died")
                self.violations.append(v)
                self.record("violation", sec, v)
                return

    def heal(self, ctx: NemesisContext) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(5)
        prim = self.targets.get("primary")
        if prim is not None:
            ctx.lab.run(prim, ["tc", "qdisc", "del", "dev", self._iface(ctx), "root"], check=False)
            ctx.lab.heal()
            ctx.mirror.restart_node(prim)
            self.record("power-on", prim)


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


# ---- five voters: majorities ring, membership change ----------------------------------------

def ring_neighbours(order: list[str]) -> dict[str, tuple[str, str]]:
    """Each host of a ring and its two neighbours (previous, next)."""
    if len(order) < 3 or len(set(order)) != len(order):
        raise ValueError(f"a ring needs at least 3 distinct hosts, got {order}")
    n = len(order)
    return {h: (order[i - 1], order[(i + 1) % n]) for i, h in enumerate(order)}


def ring_blocks(order: list[str], client: str | None = None,
                client_sees: list[str] | None = None) -> dict[str, list[str]]:
    """Who drops traffic to whom (both directions listed) so that every voter of the ring
    sees only its two neighbours; the client, if named, sees only ``client_sees``
    (None: everyone)."""
    near = ring_neighbours(order)
    blocks = {h: [o for o in order if o != h and o not in near[h]] for h in order}
    if client is not None and client_sees is not None:
        hidden = [h for h in order if h not in client_sees]
        blocks[client] = hidden
        for h in hidden:
            blocks[h].append(client)
    return {h: dsts for h, dsts in blocks.items() if dsts}


class MajoritiesRing(Nemesis):
    """Jepsen's majorities ring on five voters: each sees only its two ring neighbours,
    so each sees a majority (itself and two) but no two agree on which. The client sees
    everyone, or (seeded) only the primary and its neighbours."""
    name = "majorities-ring"
    lab_shape = "five_voters"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        order = list(roles.voters)
        rng.shuffle(order)
        client_view = rng.choice(["all", "primary-side"])
        sees = None
        if client_view == "primary-side":
            sees = [roles.primary, *ring_neighbours(order)[roles.primary]]
        # pairs, not a dict: targets hold host names as values only
        return {"ring": order, "client": client_view,
                "blocks": [[src, dsts] for src, dsts in ring_blocks(order, roles.client, sees).items()]}

    def _start(self, ctx: NemesisContext) -> None:
        for src, dsts in self.targets["blocks"]:
            ctx.lab.block(src, dsts)
        self.record("ring", None, f"ring {'-'.join(self.targets['ring'])}, client sees "
                    f"{self.targets['client']}")

    def heal(self, ctx: NemesisContext) -> None:
        ctx.lab.heal()
        self.record("heal", None)


CONVERGE_S = 30.0        # after heal: every member shows the committed membership
_MEMBER_CLI_TIMEOUT_S = 60.0
_MAJORITY_CHANGE_BOUND_S = 20.0   # a leader change during the change: try again until then


def one_line_error(stderr: str) -> str | None:
    """The CLI's error if it is one line naming itself ("hacluster: ..."), else None."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 and lines[0].startswith("hacluster: ") else None


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """``parent/prefix-N`` for the first N not used yet (each rejoin gets its own)."""
    n = 1
    while (parent / f"{prefix}-{n}").exists():
        n += 1
    return parent / f"{prefix}-{n}"


class MembershipChange(Nemesis):
    """A membership change while one voter (a witness or the secondary) is cut off.

    The majority side commits it with the real CLI; the isolated voter tries the same
    change, which must fail with a one-line error and never commit. After heal, every
    member must show the committed membership (``cluster status --json``); then the
    original five voters are restored (a removed witness stopped, added back with a
    fresh configuration, started) — part of heal, so a failure to restore is a violation.

    Changes: ``remove-isolated`` (the cut witness), ``remove-other`` (another witness
    while the isolated voter misses it) and ``readd`` (the cut witness removed and added
    back while it is still cut: it must rejoin on heal and stay up)."""
    name = "membership-change"
    lab_shape = "five_voters"

    def __init__(self) -> None:
        super().__init__()
        self._minority: threading.Thread | None = None
        self._minority_res: subprocess.CompletedProcess | None = None
        self._original: dict[str, str] = {}
        self._expected: dict[str, str] = {}

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        witnesses = list(roles.all_witnesses)
        if len(witnesses) < 2:
            raise ValueError(f"{self.name} needs at least two witnesses (lab shape "
                             f"{self.lab_shape}), got {witnesses}")
        isolated = rng.choice([roles.secondary, *witnesses])
        changes = (["remove-isolated", "readd", "remove-other"] if isolated in witnesses
                   else ["remove-other"])
        change = rng.choice(changes)
        target = (isolated if change != "remove-other"
                  else rng.choice([w for w in witnesses if w != isolated]))
        via = rng.choice([v for v in roles.voters if v not in (isolated, target)])
        return {"isolated": isolated, "change": change, "target": target, "via": via}

    # -- the CLI ------------------------------------------------------------------------
    def _cli(self, ctx: NemesisContext, member: str, *args: str) -> subprocess.CompletedProcess:
        return ctx.mirror.cluster.hacluster(member, *args, timeout=_MEMBER_CLI_TIMEOUT_S)

    def _change(self, ctx: NemesisContext, member: str, verb: str) -> subprocess.CompletedProcess:
        target = self.targets["target"]
        if verb == "add":
            return self._cli(ctx, member, "cluster", "add-witness", target, ctx.lab.addr(target))
        return self._cli(ctx, member, "cluster", "remove-witness", target)

    def _members_seen(self, ctx: NemesisContext, member: str) -> dict[str, str] | None:
        st = ctx.mirror.cluster.status(member, timeout=1.0)
        return {m["name"]: m["role"] for m in st["members"]} if st else None

    def _members_cli(self, ctx: NemesisContext, member: str) -> dict[str, str] | None:
        res = self._cli(ctx, member, "cluster", "status", "--json")
        if res.returncode != 0:
            return None
        return {m["name"]: m["role"] for m in json.loads(res.stdout)["members"]}

    # -- fault -------------------------------------------------------------------------
    def _start(self, ctx: NemesisContext) -> None:
        t = self.targets
        cluster = ctx.mirror.cluster
        self._original = {m: cluster.role(m) for m in cluster.members}
        self._expected = dict(self._original)
        ctx.lab.cut(t["isolated"])
        self.record("cut", t["isolated"], f"isolated for a {t['change']} of {t['target']}")
        # the same change tried from the minority side, at the same time
        self._minority = threading.Thread(target=self._try_minority, args=(ctx,),
                                          name="nemesis-minority-change", daemon=True)
        self._minority.start()
        verbs = ["remove", "add"] if t["change"] == "readd" else ["remove"]
        for verb in verbs:
            if not self._majority_change(ctx, verb):
                return
            if verb == "remove":
                self._expected.pop(t["target"], None)
            else:
                self._expected[t["target"]] = "witness"

    def _majority_change(self, ctx: NemesisContext, verb: str) -> bool:
        t = self.targets
        args = (("cluster", "add-witness", t["target"], ctx.lab.addr(t["target"])) if verb == "add"
                else ("cluster", "remove-witness", t["target"]))
        detail = self._until_committed(ctx, t["via"], args, t["target"], verb == "add",
                                       f"majority-{verb}")
        if detail is not None:
            self._violation(t["via"], f"majority-side {detail}")
        return detail is None

    def _until_committed(self, ctx: NemesisContext, via: str, args: tuple[str, ...],
                         member: str, present: bool, action: str) -> str | None:
        """A membership change made as an administrator makes it, through ``via``: a
        failure by a leader change (the outcome of a command sent to a deposed leader
        is not known) is checked against the committed membership and tried again.
        Returns None once committed, else what failed for the whole bound."""
        deadline = time.monotonic() + _MAJORITY_CHANGE_BOUND_S
        while True:
            res = self._cli(ctx, via, *args)
            detail = (f"{' '.join(args[1:3])} via {via}: rc={res.returncode} "
                      f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}")
            self.record(action, via, detail)
            if res.returncode == 0:
                return None
            members = self._members_cli(ctx, via)
            if members is not None and (member in members) == present:
                self.record(action, via, "committed although the CLI failed")
                return None
            if time.monotonic() > deadline:
                return f"{detail} (for {_MAJORITY_CHANGE_BOUND_S:.0f} s)"
            time.sleep(0.5)

    def _try_minority(self, ctx: NemesisContext) -> None:
        self._minority_res = self._change(ctx, self.targets["isolated"], "remove")

    def _violation(self, host: str | None, what: str) -> None:
        self.violations.append(what)
        self.record("violation", host, what)

    # -- heal ---------------------------------------------------------------------------
    def heal(self, ctx: NemesisContext) -> None:
        t = self.targets
        if self._minority is not None:
            self._minority.join(_MEMBER_CLI_TIMEOUT_S + 5)   # before heal: it must fail cut off
        self._judge_minority()
        ctx.lab.heal()
        self.record("heal", t.get("isolated"))
        if not self._original:
            return
        self._check_converged(ctx, self._expected, "after the change")
        self._restore(ctx)

    def _judge_minority(self) -> None:
        res, host = self._minority_res, self.targets["isolated"]
        if res is None:
            self._violation(host, "the minority-side change did not return")
            return
        err = one_line_error(res.stderr)
        self.record("minority-remove", host, f"rc={res.returncode} {res.stderr.strip()!r}")
        if res.returncode == 0:
            self._violation(host, f"remove-witness {self.targets['target']} succeeded on the "
                            f"isolated {host} (a change committed from a minority): "
                            f"{res.stdout.strip()!r}")
        elif err is None:
            self._violation(host, f"the minority-side change failed without a one-line "
                            f"error: {res.stderr.strip()!r}")

    def _anchor(self) -> str:
        """A member of the majority side that stays in the cluster: where to read the
        committed state and run the restore from."""
        return next(v for v in (self.targets["via"], *self._original)
                    if v in self._expected and v != self.targets["isolated"])

    def _check_converged(self, ctx: NemesisContext, expected: dict[str, str], when: str) -> bool:
        """Every member of ``expected`` shows exactly it, having applied at least what the
        anchor had committed when the check began (socket polls, then the real CLI).
        The index matters: a member that missed a remove and a re-add shows the right
        names before it has applied either."""
        st = ctx.mirror.cluster.status(self._anchor(), timeout=2.0)
        index = st["commit_index"] if st else 0

        def behind(m: str) -> object:
            st = ctx.mirror.cluster.status(m, timeout=1.0)
            if st is None:
                return "no answer"
            seen = {x["name"]: x["role"] for x in st["members"]}
            if seen != expected:
                return sorted(seen)
            return None if (st["last_applied"] or 0) >= index else f"applied {st['last_applied']} < {index}"
        deadline = time.monotonic() + CONVERGE_S
        while True:      # until one socket poll and then the real CLI both agree
            bad = {m: b for m in expected if (b := behind(m))}
            if not bad:
                bad = {m: f"cli: {sorted(s) if s else 'no answer'}" for m in expected
                       if (s := self._members_cli(ctx, m)) != expected}
            if not bad or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        if bad:
            self._violation(None, f"membership {when} not converged within {CONVERGE_S:g} s: "
                            f"expected {sorted(expected)} (index {index}), seen "
                            + "; ".join(f"{m}: {b}" for m, b in sorted(bad.items())))
            minority_wins = sorted(m for m in expected if m != self.targets["target"])
            if self._members_cli(ctx, self._anchor()) == {m: expected[m] for m in minority_wins}:
                self._violation(self.targets["isolated"], "the committed membership is "
                                f"{minority_wins}: the remove-witness {self.targets['target']} "
                                f"that failed on the isolated {self.targets['isolated']} was "
                                "committed after heal (a change committed from a minority)")
            return False
        self.record("converged", None, f"{when}: {','.join(sorted(expected))} applied to "
                    f"index {index} on every member")
        return True

    def _restore(self, ctx: NemesisContext) -> None:
        """Back to the original voters: a witness missing from the committed membership
        is stopped, added back with a fresh configuration and started; one that is
        listed but whose daemon is gone is removed first, then the same."""
        cluster = ctx.mirror.cluster
        anchor = self._anchor()
        committed = self._members_cli(ctx, anchor)
        if committed is None:
            self._restore_failed(anchor, f"cluster status on {anchor} did not answer")
            return
        for member, role in self._original.items():
            proc = cluster.procs.get(member)
            running = proc is not None and proc.alive()
            if member in committed and running:
                continue
            if member in committed:      # listed, but its daemon is gone
                failed = self._until_committed(ctx, anchor, ("cluster", f"remove-{role}", member),
                                               member, False, "restore-remove")
                if failed is not None:
                    self._restore_failed(member, failed)
                    return
            if running:
                proc.stop()
            self.record("restore-stop", member, "daemon stopped" if running
                        else "daemon had exited by itself")
            out = _fresh_dir(ctx.lab.workdir, f"rejoin-{member}")
            res = self._cli(ctx, anchor, "cluster", f"add-{role}", member, ctx.lab.addr(member),
                            "--out", str(out))
            self.record("restore-add", member, f"rc={res.returncode} {res.stderr.strip()!r}")
            if res.returncode != 0:
                self._restore_failed(member, f"add-{role} {member} failed: "
                                     f"{res.stderr.strip()!r}")
                return
            cluster.move_state_away(member)     # a member added back starts afresh
            cluster.start(member, config_dir=out / member)
            self.record("restore-start", member, f"config {out / member}")
        if not self._check_converged(ctx, self._original, "after the restore"):
            self.lab_broken = "the original membership was not restored"

    def _restore_failed(self, member: str, what: str) -> None:
        self._violation(member, f"restore: {what}")
        self.lab_broken = f"restore of {member} failed: {what}"


NEMESES: dict[str, type[Nemesis]] = {cls.name: cls for cls in (
    IsolatePrimary, IsolateSecondary, IsolateWitness, PartitionHalves, Bridge, OneWay,
    KillDaemon, KillReplication, KillHost, PausePrimary, KillAll, Flap,
    DiskFullPrimary, DiskFullSecondary, FailoverDuringReintegration, MajoritiesRing,
    MembershipChange)}


def make_nemesis(name: str) -> Nemesis:
    try:
        return NEMESES[name]()
    except KeyError:
        raise ValueError(f"unknown nemesis {name!r}; have {', '.join(NEMESES)}") from None
