"""Nemeses against the copies' identity (DESIGN rule 6): replaced disks, a data file
system not mounted at boot, an old backup restored, a node booting first on an empty
directory. Each ends with the pair back in PRIM + SECOND — after the administrator's
documented action where one is needed (here: mount the file system, ``start``) — and
the runner checks that no acknowledged write was lost.

A replaced disk is modelled as what it leaves: the replicated directory replaced by
a new, empty one (a new inode, so without the identity record), while the node's
state directory (activity log, bitmaps, markers) survives, as it does on a server
whose data disk alone was swapped.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from replication.copy_identity import XATTR
from replication.mount import unmount

from .lab import wait_until
from .lab_mirror import MirrorLab
from .nemesis import Nemesis, NemesisContext, Roles, small_fs_dir

ALONE_WATCH_S = 6.0     # how long a node started alone is watched (4 leases of 1.5 s)
DAEMON_UP_S = 30.0      # for its daemon to answer first


def replace_disk(m: MirrorLab, node: str) -> str:
    """The node's replicated directory replaced by a new empty one (the node is down)."""
    d = m.data_dir(node)
    unmount(str(d))         # the dead FUSE mount of a killed primary, if any
    files = sum(len(f) for _, _, f in os.walk(d)) if d.exists() else 0
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return f"{d}: {files} files gone, new empty directory"


class _IdentityNemesis(Nemesis):
    min_hold_s = 2.0
    full_resync_on: str | None = "host"     # the target whose copy must be resynced in full

    def verify(self, ctx: NemesisContext) -> list[str]:
        """The damaged copy was not trusted: its node compared every block."""
        if self.full_resync_on is None:
            return []
        host = self.targets[self.full_resync_on]
        res = ctx.mirror.cli(host, "-m", ctx.mirror.module, "log", "--lines", "400")
        if "every block will be compared" not in res.stdout:
            return [f"{host}'s damaged copy was resynced without comparing every block"]
        return []

    def _watch_alone(self, ctx: NemesisContext, node: str, why_words: tuple[str, ...]) -> None:
        """``node`` was just started without its peer: it must not become primary, and
        its state must say why (one of ``why_words``)."""
        m = ctx.mirror
        said = None
        try:    # the watch starts when its daemon answers (a loaded machine boots slowly)
            wait_until(f"{node}'s daemon answering", lambda: m.state(node) is not None,
                       DAEMON_UP_S)
        except TimeoutError:
            self.violations.append(f"{node}'s daemon did not answer within {DAEMON_UP_S:g} s")
            return
        end = time.monotonic() + ALONE_WATCH_S
        while time.monotonic() < end:
            st = m.state(node)
            if st and st["state"] in ("PRIM", "ALONE"):
                self.violations.append(f"{node} became {st['state']} on a copy it cannot prove "
                                       f"(epoch {st['epoch']})")
                self.record("violation", node, f"primary on an unproven copy: {st}")
                return
            problem = (st or {}).get("copy", {}).get("problem") if st else None
            if problem and any(w in problem for w in why_words):
                said = problem
            time.sleep(0.2)
        if said is None:
            st = m.state(node)
            self.violations.append(f"{node} never said why it was not promoted "
                                   f"(expected {' or '.join(why_words)}; state {st})")
        self.record("waited-alone", node, said or "no reason given")


class ReplaceDiskSecondary(_IdentityNemesis):
    """The secondary's data disk replaced: power off, empty directory, power on. It must
    come back as SECOND by a full resync (its activity log and the primary's bitmaps
    describe the old disk, not this one)."""
    name = "replace-disk-secondary"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": roles.secondary}

    def _start(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.kill_host(host)
        self.record("power-off", host)
        self.record("replace-disk", host, replace_disk(ctx.mirror, host))

    def heal(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        ctx.mirror.restart_node(host)
        self.record("power-on", host)


class ReplaceDiskPrimary(ReplaceDiskSecondary):
    """The primary crashes and comes back with a new, empty data disk: the secondary
    takes over; the old primary must not push its empty copy anywhere, and gets a full
    resync."""
    name = "replace-disk-primary"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": roles.primary}


class _BothOff(_IdentityNemesis):
    """Both data nodes lose power while in sync; ``victim`` gets an empty directory and
    boots first, alone with the witness: it must wait (saying why); when the other one
    boots, that one becomes primary and the victim gets a full resync."""
    victim_role = "primary"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        victim = getattr(roles, self.victim_role)
        other = roles.secondary if victim == roles.primary else roles.primary
        return {"host": victim, "other": other}

    def _start(self, ctx: NemesisContext) -> None:
        for h in (self.targets["other"], self.targets["host"]):
            ctx.lab.cut(h)
        for h in (self.targets["other"], self.targets["host"]):
            ctx.lab.kill_host(h)
            self.record("power-off", h)
        self._damage(ctx)

    def _damage(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        self.record("replace-disk", host, replace_disk(ctx.mirror, host))

    why_words = ("no identity record",)

    def heal(self, ctx: NemesisContext) -> None:
        host, other = self.targets["host"], self.targets["other"]
        ctx.mirror.restart_node(host)
        self.record("power-on", host, "first, alone")
        self._watch_alone(ctx, host, self.why_words)
        ctx.mirror.restart_node(other)
        self.record("power-on", other)


class ReplaceDiskBothStopped(_BothOff):
    """Both nodes stopped; the primary's disk (the current copy Raft names) replaced and
    that node started alone."""
    name = "replace-disk-both-stopped"
    victim_role = "primary"


class PowerLossSecondaryBootsEmpty(_BothOff):
    """Both nodes lose power in sync; the former secondary boots first on an empty
    directory."""
    name = "power-loss-secondary-boots-empty"
    victim_role = "secondary"


class RestartPrimaryEmptied(_IdentityNemesis):
    """The primary crashes and its daemon is back at once — inside its old lease — on an
    emptied directory. Was: it took its lease back at the same epoch and its empty copy
    wiped the secondary. Now: a new session needs a new epoch and a matching copy, so it
    waits; the secondary takes over when the old lease expires."""
    name = "restart-primary-emptied"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": roles.primary}

    def _start(self, ctx: NemesisContext) -> None:
        host = self.targets["host"]
        leader = (ctx.mirror.cluster.status(host) or {}).get("raft", {}).get("leader")
        ctx.lab.kill_host(host)         # a crash of the server, not of its network
        self.record("crash", host, f"raft leader was {leader}")
        self.record("replace-disk", host, replace_disk(ctx.mirror, host))
        ctx.mirror.cluster.start(host)
        self.record("restart", host, "at once")
        st = None
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            st = ctx.mirror.state(host)
            if st and st["state"] in ("PRIM", "ALONE"):
                self.violations.append(f"{host} restarted on an emptied copy and became "
                                       f"{st['state']} at epoch {st['epoch']}")
                self.record("violation", host, str(st))
                break
            time.sleep(0.1)

    def heal(self, ctx: NemesisContext) -> None:
        self.record("heal", self.targets["host"], "nothing to undo")


class DataFsNotMounted(_IdentityNemesis):
    """A data node reboots and its data file system is not mounted: the replicated
    directory does not exist (the bare mount point is empty). The module must refuse
    to start there, saying so, and never create the directory; after the administrator
    mounts the file system and runs ``start``, the node is SECOND again."""
    name = "data-fs-not-mounted"
    needs_small_fs = True
    full_resync_on = None       # its copy is intact once mounted again

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": rng.choice([roles.primary, roles.secondary])}

    def _keep(self, ctx: NemesisContext) -> Path:
        return ctx.lab.workdir / f"kept-fs-{self.targets['host']}"

    def _start(self, ctx: NemesisContext) -> None:
        m, host = ctx.mirror, self.targets["host"]
        m.kill_host(host)
        self.record("power-off", host)
        unmount(str(m.data_dir(host)))
        where, keep = small_fs_dir(m, host), self._keep(ctx)
        keep.mkdir(exist_ok=True)
        # Keep the file system's data (a tmpfs) alive elsewhere while it is "not mounted".
        subprocess.run(["mount", "--bind", str(where), str(keep)], check=True, timeout=10)
        subprocess.run(["umount", str(where)], check=True, timeout=10)
        self.record("unmount", host, f"{where} (kept at {keep})")

    def heal(self, ctx: NemesisContext) -> None:
        m, host = ctx.mirror, self.targets["host"]
        where, keep = small_fs_dir(m, host), self._keep(ctx)
        try:
            m.restart_node(host)
            self.record("power-on", host, "file system not mounted")
            self._watch_alone(ctx, host, ("does not exist",))
            if m.data_dir(host).exists():
                self.violations.append(f"{m.data_dir(host)} was created on the bare mount point")
        finally:
            # The administrator mounts it where the daemon looks: the lab starts each
            # daemon in a mount namespace of its own (copied at its start, no
            # propagation here), so mount it there and in ours (the checks read it).
            pid = m.cluster.procs[host].pid
            subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", "mount", "--bind",
                            str(keep), str(where)], check=False, timeout=10)
            subprocess.run(["mount", "--bind", str(keep), str(where)], check=True, timeout=10)
            subprocess.run(["umount", str(keep)], check=True, timeout=10)
        self.record("mount", host, f"{where} mounted again")
        res = m.cli(host, "-m", m.module, "start")
        self.record("start", host, f"rc={res.returncode}")


class RestoreOldBackup(_IdentityNemesis):
    """A copy saved from one node (identity record included, as ``rsync -X`` would), a
    failover later restored onto that node — now the in-sync primary — after a power
    loss of both, and that node started first: its generation is older than the one
    Raft committed for it, so it waits; the other node becomes primary."""
    name = "restore-old-backup"

    def choose(self, rng: random.Random, roles: Roles) -> dict[str, object]:
        return {"host": roles.secondary, "other": roles.primary}

    def _start(self, ctx: NemesisContext) -> None:
        m, host, other = ctx.mirror, self.targets["host"], self.targets["other"]
        backup = ctx.lab.workdir / f"backup-{host}"
        shutil.rmtree(backup, ignore_errors=True)
        shutil.copytree(m.data_dir(host), backup)
        os.setxattr(backup, XATTR, os.getxattr(m.data_dir(host), XATTR))
        self.record("backup", host, f"{m.data_dir(host)} -> {backup}")
        # a failover: the backup's generation is old after it
        m.kill_host(other)
        self.record("power-off", other)
        m.wait_state(host, "ALONE", timeout=30)
        m.restart_node(other)
        self.record("power-on", other)
        m.wait_pair(host, timeout=60)
        for h in (other, host):
            ctx.lab.cut(h)
        for h in (other, host):
            ctx.lab.kill_host(h)
            self.record("power-off", h)
        replace_disk(m, host)
        d = m.data_dir(host)
        d.rmdir()
        shutil.copytree(backup, d)
        os.setxattr(d, XATTR, os.getxattr(backup, XATTR))
        self.record("restore", host, f"{backup} -> {d}")

    def heal(self, ctx: NemesisContext) -> None:
        m, host, other = ctx.mirror, self.targets["host"], self.targets["other"]
        m.restart_node(host)
        self.record("power-on", host, "first, alone")
        self._watch_alone(ctx, host, ("older than the committed generation",))
        m.restart_node(other)
        self.record("power-on", other)


IDENTITY_NEMESES = (ReplaceDiskSecondary, ReplaceDiskPrimary, ReplaceDiskBothStopped,
                    PowerLossSecondaryBootsEmpty, RestartPrimaryEmptied, DataFsNotMounted,
                    RestoreOldBackup)

__all__ = ["IDENTITY_NEMESES", "replace_disk"]
