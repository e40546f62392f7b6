"""The mirror module's driver: carries out what ``MirrorMachine`` decides.

I/O lives here and only here: the module's Raft lease (``mirror/<module>``),
commits of intents and in-sync sets, the replication processes (one
``python -m replication mount`` per replicated directory on the primary, one
``receive`` on the secondary — out of the daemon so that disk and FUSE load
never starve lease renewals), the virtual IPs and the scripts.

Plans run one at a time in a task. An *urgent* plan (lease lost) cancels the
running one and is carried out at once; its first two actions (drop the VIP,
kill the mount) are synchronous enough that writes stop within the lease.
"""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from raft.cluster_state import liveness_resource, mirror_resource
from raft.commands import (BEGIN_GENERATION, LEAVE_IN_SYNC, NAME_GOOD_COPY, SET_IN_SYNC,
                           SET_INTENT)
from raft.replication_ports import ports_of
from replication import copy_identity as ci
from replication.activity_log import AL_FILE
from replication.durable_file import atomic_write
from replication.mount import unmount
from vip import VipAnnouncer, has_vip

from hacluster.http.snapshot import LinkSnapshot, ModuleSnapshot, Reintegration
from hacluster.modules.checks import RESUME
from hacluster.modules.host import ModuleSlice
from hacluster.modules.machine import ViewChanged
from hacluster.modules.nodes import ModuleNodesError, replication_hosts
from hacluster.modules.rotating_log import DEFAULT_KEEP, DEFAULT_MAX_BYTES, RotatingLog, utc_timestamp
from hacluster.modules.runtime import ModuleRuntime, Placement, PlanFailed, PlanNotYet, stop_scripts_time_s
from hacluster.node.commands import MODULE_CMD
from hacluster.node.control import ControlError
from hacluster.node.lease_holder import LeaseHolder
from hacluster.node.peer_control import PeerControlError, call_member

from . import default_primary
from . import machine as mm

log = logging.getLogger("hacluster.mirror")

PROCESS_READY_S = 20.0
PROCESS_STOP_S = 15.0
# replication.mount.unmount at its worst: fusermount -u, then -u -z, then umount -l,
# 10 s each.
UNMOUNT_WORST_S = 30.0
PEER_LOST_RETRY_S = 5.0     # below the mount's hook timeout (replication.hook_client, 10 s)
# A daemon stopping in maintenance waits this long at most for its mounts to confirm
# their maintenance hold (each reports once a second: replication.hook_client).
MOUNT_HOLD_WAIT_S = 2.5


def mirror_stop_time_s(scripts_timeout_s: float, directories: int) -> float:
    """A mirror module's stop at its worst: the stop script and its forced call, then
    per replicated directory its mount or receiver: unmounted (twice at worst),
    waited for, killed."""
    per_directory = 2 * UNMOUNT_WORST_S + PROCESS_STOP_S
    return stop_scripts_time_s(scripts_timeout_s) + directories * per_directory


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the daemon dies, so a killed daemon
    never leaves a mount accepting writes or a receiver behind."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Proc:
    """A replication child process whose output goes to the module's log."""

    def __init__(self, kind: str, root: str, argv: list[str], log_path: Path,
                 log_max_bytes: int = DEFAULT_MAX_BYTES, log_keep: int = DEFAULT_KEEP) -> None:
        self.kind, self.root, self.argv, self.log_path = kind, root, argv, log_path
        # read from its pipe by the daemon, which alone writes (and rotates) the file
        self.out = RotatingLog(log_path, log_max_bytes, log_keep)
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.stopping = False
        self.reader: asyncio.Task | None = None
        self.last_line = ""         # what it said last: why it exited, when it did

    async def start(self, ready_marker: str, on_exit, die_with_parent: bool = True) -> None:
        """``die_with_parent``: SIGKILL when the daemon dies (a receiver); a mount watches
        its owner itself instead (``--owner-pid``: replication.owner_watch), so that it
        may outlive the daemon within a maintenance hold."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None)
        self.reader = asyncio.create_task(self._read(ready_marker, on_exit))
        try:
            await asyncio.wait_for(self.ready.wait(), PROCESS_READY_S)
        except asyncio.TimeoutError:
            await self.stop(kill=True)
            raise PlanFailed(f"{self.kind} for {self.root} not ready within {PROCESS_READY_S} s "
                             f"(see {self.log_path})") from None
        if self.proc.returncode is not None:
            raise PlanFailed(f"{self.kind} for {self.root} exited with {self.proc.returncode}"
                             f"{': ' + self.last_line if self.last_line else ''} "
                             f"(see {self.log_path})")

    async def _read(self, marker: str, on_exit) -> None:
        assert self.proc and self.proc.stdout
        try:
            while line := await self.proc.stdout.readline():
                # stamped here, as every line of a module's logs: UTC, ISO 8601
                self.out.write_line(utc_timestamp().encode() + b" " + line.rstrip(b"\n"))
                self.last_line = line.decode(errors="replace").strip()[:300] or self.last_line
                if line.startswith(marker.encode()):
                    self.ready.set()
        finally:
            self.out.close()
        rc = await self.proc.wait()
        self.ready.set()
        if not self.stopping:
            on_exit(f"{self.kind} for {self.root} exited with {rc}")

    def adopt(self, pid: int, on_exit) -> None:
        """A mount an earlier daemon started (maintenance): watched through a pidfd; its
        output goes to its log file by itself (replication.owner_watch)."""
        self.proc = _AdoptedProcess(pid)   # type: ignore[assignment]
        self.ready.set()

        async def watch() -> None:
            assert self.proc is not None
            rc = await self.proc.wait()
            if not self.stopping:
                on_exit(f"{self.kind} for {self.root} (adopted, pid {pid}) exited ({rc})")
        self.reader = asyncio.create_task(watch())

    def detach(self) -> None:
        """The daemon stops in maintenance and leaves this process running: stop reading
        its output (it writes its log file itself once the daemon is gone)."""
        self.stopping = True
        if self.reader is not None:
            self.reader.cancel()

    async def stop(self, kill: bool) -> None:
        self.stopping = True
        p = self.proc
        if p is None or p.returncode is not None:
            return
        try:
            p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(p.wait(), PROCESS_STOP_S)
        except asyncio.TimeoutError:
            log.warning("event=process_kill kind=%s root=%s pid=%d", self.kind, self.root, p.pid)
            p.kill()
            await p.wait()


class _AdoptedProcess:
    """What ``_Proc`` uses of asyncio's Process, for a process this daemon did not start
    (it cannot wait() for it: a pidfd tells when it exits; its status is not ours)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        self._fd = os.pidfd_open(pid)
        asyncio.get_running_loop().add_reader(self._fd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._fd)
        os.close(self._fd)
        self.returncode = -1        # unknown: reaped by whoever is its parent now
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        return self.returncode if self.returncode is not None else -1

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


MOUNT_PID_FILE = "mount.pid"


def running_mount(state: Path, root: str, epoch: int) -> int | None:
    """The pid of the mount an earlier daemon started for ``root`` at ``epoch`` (its pid
    file in the directory's state, checked against the process's command line), None
    when there is none: a reused pid or another session is never adopted."""
    try:
        record = json.loads((state / MOUNT_PID_FILE).read_text())
        pid = int(record["pid"])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    args = [a.decode(errors="replace") for a in argv]
    want = {"--root": root, "--epoch": str(epoch)}
    if "mount" not in args or any(args[args.index(k) + 1] != v if k in args[:-1] else True
                                  for k, v in want.items()):
        return None
    return pid


class MirrorModule(ModuleRuntime):
    mode = "mirror"

    def __init__(self, placement: Placement) -> None:
        host, config = placement.host, placement.config
        # A mirror module runs on two nodes (module_nodes): this one and its peer.
        peer = next(n for n in placement.nodes if n != host.name)
        super().__init__(placement,
                         mm.MirrorMachine(host.name, peer, config.maxloop, config.loop_interval_s),
                         {"HACLUSTER_PEER": peer, "HACLUSTER_EPOCH": "0"})
        self.peer = peer
        self.resource = mirror_resource(self.name)
        self.leases_read = frozenset({self.resource, liveness_resource(peer)})
        # The VIP expires in the kernel at the lease deadline unless renewals extend it.
        self.vips = [VipAnnouncer(v.addr, v.prefixlen, v.interface, refresh_s=v.garp_refresh_s,
                                  lease=lambda: self.holder,
                                  renew_interval_s=host.config.raft.lease_timing.renew_interval_s,
                                  marker=self.state_dir / f"vip-held-{v.addr}")
                     for v in config.vips]
        self.holder: LeaseHolder | None = None
        self.mounts: list[_Proc] = []
        self.receivers: list[_Proc] = []
        # What each mount reported of its link last (every second, replication.hook_client),
        # by the receiver it sends to (one per replicated directory): (monotonic, status).
        self.links: dict[str, tuple[float, dict[str, Any]]] = {}
        # For the metrics: changes of primary seen committed, promotions of this node.
        self.failovers = 0
        self.promotions = 0
        self._last_holder: str | None = None
        self._last_epoch_path = self.state_dir / "last_primary_epoch"
        self._deferred: asyncio.TimerHandle | None = None
        self._deferral_done = False
        self._overwrite_ok = False      # second fullsync / --force: a newer copy may be overwritten
        # Maintenance: the epoch of a primary session left running by the daemon before
        # this one, while its first renewal is asked (start); the maintenance hold each
        # mount may hold (by pid, see replication_progress).
        self._adopting: int | None = None
        self._adoption_decided: asyncio.Event | None = None
        self._mount_hold: dict[int, float | None] = {}
        self._mount_reported: dict[int, float | None] = {}  # the hold each mount said it has

    # ---- paths ---------------------------------------------------------------
    def real_dir(self, d: str) -> str:
        return self.prefix + d if self.prefix else d

    @property
    def epoch(self) -> int | None:
        return self.machine.epoch

    async def start(self) -> None:
        """Before following the cluster: a daemon stopped in maintenance may have left
        its primary session running (mounts, application, VIP): take it over if Raft
        still names this node's session (``_adopt``). Otherwise a daemon that died as
        primary may have left the VIP on this host and the application running: remove
        both."""
        loop = asyncio.get_running_loop()
        if await self._adopt():
            self.started = True
            self._start_checks()
            self.refresh()
            self.host.track(asyncio.create_task(self._watch_local_copy()))
            return
        was_primary = False
        for v in self.vips:
            if await loop.run_in_executor(None, v.left_behind):  # the kernel may have expired it
                was_primary = True
            await v.drop()
        if was_primary:
            log.warning("event=leftovers_cleaned module=%s reason=%r", self.name,
                        "the VIP was still here: the daemon died as primary")
            await self.runner.run_stop("stop_prim", "STOP", "STOP", "force")
        self.started = True
        self._start_checks()
        self.refresh()
        self.host.track(asyncio.create_task(self._watch_local_copy()))

    # ---- maintenance: a daemon restarted under a running primary session ---------------
    async def _adopt(self) -> bool:
        """Adopt the primary session the daemon before this one left running in
        maintenance: the committed state names this node holder at epoch E, the module is
        in maintenance, and a mount of epoch E runs for every replicated directory. Its
        lease is renewed at E (the same session: no new epoch, since its writer never
        stopped; DESIGN.md "Maintenance"); granted, the machine adopts it (``Adopted``);
        refused, what was left running is fenced and stopped like a daemon's leftovers."""
        part = self._read_slice()
        lease = part.lease(self.resource)
        epoch = lease.get("epoch")
        if not part.maintenance or lease.get("holder") != self.node or not isinstance(epoch, int):
            return False
        pids = [running_mount(self.state_dir / f"rfs{i}", self.real_dir(d), epoch)
                for i, d in enumerate(self.config.rfs.dirs)]
        if not all(pids):
            return False
        for i, (d, pid) in enumerate(zip(self.config.rfs.dirs, pids, strict=True)):
            assert pid is not None
            p = _Proc("mount", self.real_dir(d), [], self.log_dir / f"mount{i}.log",
                      self.host.config.log_max_bytes, self.log_keep)
            try:
                p.adopt(pid, lambda reason: self._died(reason))
            except ProcessLookupError:
                # it ended meanwhile: no session to adopt; the others are stopped, and
                # the leftovers handled as after a crash
                log.warning("event=adoption_failed module=%s epoch=%d reason=%r", self.name,
                            epoch, f"mount {pid} ended before it was adopted")
                await self._stop_mounts(kill=True)
                return False
            self.mounts.append(p)
            self._mount_hold[pid] = math.inf     # what the daemon before gave: until it reports
        self._adopting = epoch
        self._adoption_decided = asyncio.Event()
        log.info("event=adopting module=%s node=%s epoch=%d mounts=%s", self.name, self.node,
                 epoch, ",".join(str(p) for p in pids))
        self._module_log(f"daemon restarted in maintenance: adopting the running primary "
                         f"session of epoch {epoch}")
        self._hold_lease(resume_epoch=epoch)
        wait_s = 4 * self.host.config.raft.lease_s
        try:
            await asyncio.wait_for(self._adoption_decided.wait(), wait_s)
        except asyncio.TimeoutError:
            pass
        adopted = self.machine.epoch == epoch and self.machine.state in mm.PRIMARY
        self._adopting = None
        if adopted:
            return True
        log.error("event=adoption_failed module=%s epoch=%d reason=%r", self.name, epoch,
                  "the lease was not renewed at that epoch: the session left running is stopped")
        self._module_log(f"the primary session of epoch {epoch} could not be adopted: stopped")
        if self.holder is not None:
            holder, self.holder = self.holder, None
            holder._on_lost = None
            await self.host.release(self.resource, hand_back=False)
            del holder
        for v in self.vips:
            await v.drop()
        await self._stop_mounts(kill=True)
        await self.runner.run_stop("stop_prim", "ALONE", "STOP", "force")
        return False

    def _adoption_answer(self, epoch: int, granted: bool) -> None:
        if self._adopting != epoch or self._adoption_decided is None:
            return
        if granted:
            self.feed(mm.Adopted(epoch))
        self._adoption_decided.set()

    def _mounts_held_s(self) -> float | None:
        """How long every mount may still serve without the daemon, by what each last
        reported (None: some mount holds no maintenance hold)."""
        now = time.monotonic()
        reported = [self._mount_reported.get(p.proc.pid) if p.proc is not None else None
                    for p in self.mounts]
        if not reported or any(r is None for r in reported):
            return None
        return min(r for r in reported if r is not None) - now

    async def _leaves_running(self) -> bool:
        """Daemon shutdown in maintenance: may this primary session go on without it? Only
        under a hold Raft granted (the leader will not take the lease for that long) and
        that every mount holds (a mount without one stops when its daemon does: waited
        for up to MOUNT_HOLD_WAIT_S, the time of two of its reports)."""
        view = self._last_view or mm.View()
        if not (view.maintenance and self.machine.state in mm.PRIMARY and bool(self.mounts)
                and self.holder is not None and self.holder.holding()
                and self.holder.lease.extended()):
            return False
        give_up = time.monotonic() + MOUNT_HOLD_WAIT_S
        while (self._mounts_held_s() or 0.0) <= 1.0:
            if time.monotonic() >= give_up:
                log.warning("event=not_left_running module=%s reason=%r", self.name,
                            "a mount did not confirm its maintenance hold: stopping normally")
                return False
            await asyncio.sleep(0.05)
        return True

    # ---- the committed view --------------------------------------------------------
    def view_from(self, part: ModuleSlice) -> mm.View:
        lease = part.lease(self.resource)
        module = part.entry()
        peer_lease = part.lease(liveness_resource(self.peer))
        return mm.View(holder=lease.get("holder"), epoch=lease.get("epoch", 0),
                       in_sync=frozenset(lease.get("eligible") or ()),
                       peer_live=peer_lease.get("holder") == self.peer,
                       failover=module.get("failover", True),
                       intent=(module.get("intent") or {}).get(self.node),
                       copy_problem=self._copy_problem(module),
                       maintenance=part.maintenance)

    # ---- the copy's identity (DESIGN rule 6) ----------------------------------------------
    def _local_copy(self) -> ci.Local:
        """Each replicated directory's identity record, read from the directory
        itself (never through our own FUSE mount: only while not primary)."""
        dirs = [self.real_dir(d) for d in self.config.rfs.dirs]
        local = ci.read_local(dirs)
        if self.config.rfs.mountpoints:
            local = [ci.LocalDir(e.path, e.record, ci.check_mount_point(e.path) or e.problem,
                                 e.missing) if mp else e
                     for e, mp in zip(local, self.config.rfs.mountpoints, strict=True)]
        return local

    def _copy_problem(self, module: Mapping[str, Any]) -> str | None:
        if self.machine.state in mm.PRIMARY or self.mounts:
            return None         # its own session's copy, stamped at promotion
        return ci.promotion_problem(self._local_copy(), ci.Committed.from_module(module),
                                    self.node, self.host.config.cluster, self.name)

    async def _watch_local_copy(self) -> None:
        """The copy's identity lives on this node's disk, not in Raft: look at it again
        every renewal interval (an administrator may restore or replace a copy) even
        when nothing this module reads was committed meanwhile."""
        interval = self.host.config.raft.lease_timing.renew_interval_s
        while not self.closed:
            await asyncio.sleep(interval)
            self._view_maybe_changed()

    def _committed_identity(self) -> ci.Committed:
        return ci.Committed.from_module(self._read_slice().module)

    async def _begin_generation(self, epoch: int, forced: bool) -> None:
        """Promotion: check the copy, stamp the new generation on every replicated
        directory, then commit it. Stamp first: a crash in between leaves the disk
        one generation ahead of Raft, which ``copy_identity.matches`` accepts (no
        write can have happened under it: the mount starts after the commit); the
        other order would leave a current copy that no longer proves it."""
        committed = self._committed_identity()
        local = self._local_copy()
        if not forced:
            problem = ci.promotion_problem(local, committed, self.node,
                                           self.host.config.cluster, self.name)
            if problem:
                raise PlanFailed(f"not promoted: {problem}")
        for entry in local:
            if entry.missing and committed.generation == 0:
                # The very first start may create the directory (nothing to lose yet).
                os.makedirs(entry.path)
                self._module_log(f"created the replicated directory {entry.path} (first start)")
            elif entry.problem is not None:
                raise PlanFailed(f"not promoted: {entry.problem}")
        local = self._local_copy()
        record = ci.next_record(local, self.host.config.cluster, self.name, epoch)
        for entry in local:
            ci.write_record(entry.path, record)
        await self._commit(BEGIN_GENERATION, self.resource, self.node, epoch, record.copy)
        log.info("event=generation_started module=%s node=%s epoch=%d copy=%s forced=%s",
                 self.name, self.node, epoch, record.copy[:8], forced)
        self._module_log(f"generation {epoch} started on {record.short()}"
                         + (" (primforce)" if forced else ""))

    async def _prepare_copy_for_resync(self) -> None:
        """Before the receiver starts: may this copy be a resync target, and may the
        primary trust its sync point for it? A copy that is not exactly the one Raft
        last recorded for this node (replaced disk, restored backup, empty directory)
        gets every block compared: its activity log is dropped (it describes another
        copy) and the primary forgets its sync point. A newer copy is refused."""
        committed = self._committed_identity()
        local = self._local_copy()
        mode, why = ci.resync_mode(local, committed, self.node, self.host.config.cluster,
                                   self.name)
        if mode == ci.REFUSE and self._overwrite_ok and not any(e.missing for e in local):
            mode, why = ci.FULL, f"{why} (overwritten: second fullsync/--force)"
        if mode == ci.REFUSE:
            raise PlanFailed(f"not a secondary: {why}")
        for entry in local:
            if entry.missing:       # first generation only (resync_mode refuses otherwise)
                os.makedirs(entry.path)
                self._module_log(f"created the replicated directory {entry.path} (first start)")
        if mode == ci.FULL:
            log.warning("event=copy_unknown module=%s node=%s reason=%r action=full_resync",
                        self.name, self.node, why)
            self._module_log(f"copy not trusted ({why}): every block will be compared")
            for i in range(len(self.config.rfs.dirs)):
                (self.state_dir / f"rfs{i}" / AL_FILE).unlink(missing_ok=True)
            await self._primary_forgets_sync_point()
        self._overwrite_ok = False

    async def _primary_forgets_sync_point(self) -> None:
        """The running primary session must not trust its bitmaps for this copy. A
        peer whose module is not running (a daemon still starting after a power
        loss) has no session to forget: its next one starts without a sync point.
        Unreachable: not yet — starting the receiver now could let a running primary
        resync this unknown copy incrementally."""
        view = self._last_view or mm.View()
        if view.holder != self.peer:
            return
        try:
            reply = await self._call_peer_module("forget_sync_point", timeout=5)
        except PeerControlError as e:
            raise PlanNotYet(f"module {self.name}: the primary {self.peer} must forget its sync "
                             f"point for this copy first: {e}") from None
        if not reply.get("ok") and "unknown module" not in str(reply.get("error")):
            raise PlanNotYet(f"module {self.name}: the primary {self.peer} did not forget its sync "
                             f"point: {reply.get('error')}")

    async def stamp_copy(self, epoch: int) -> dict:
        """The primary (epoch ``epoch``) found this secondary in sync: stamp its
        generation before the primary commits the copy as in sync."""
        view = self._last_view or mm.View()
        running = self.machine.running
        becoming = self.machine.state is mm.State.SECOND or (
            running is not None and running.next_state is mm.State.SECOND)
        if not becoming or view.holder != self.peer or view.epoch != epoch or not self.receivers:
            raise ControlError(f"module {self.name}: {self.node} is not the secondary of "
                               f"{self.peer} at epoch {epoch}")
        local = ci.read_local([self.real_dir(d) for d in self.config.rfs.dirs])
        record = ci.next_record(local, self.host.config.cluster, self.name, epoch)
        for entry in local:
            try:
                ci.write_record(entry.path, record)
            except ci.IdentityError as e:
                raise ControlError(f"module {self.name}: {e}") from None
        log.info("event=copy_stamped module=%s node=%s generation=%d copy=%s",
                 self.name, self.node, epoch, record.copy[:8])
        return {"copy": record.copy}

    async def _call_peer_module(self, cmd_name: str, timeout: float, **extra: Any) -> dict:
        """A command of this module on the peer's daemon, over peer control."""
        request = {"cmd": MODULE_CMD.name, "module": self.name, "cmd_name": cmd_name, **extra}
        return await call_member(self.host.members()[self.peer], self.host.config.read_secret(),
                                 request, timeout=timeout)

    async def _peer_stamps_copy(self, epoch: int) -> str:
        try:
            reply = await self._call_peer_module("stamp_copy", timeout=5, epoch=epoch)
        except PeerControlError as e:
            raise ControlError(f"module {self.name}: stamping the copy on {self.peer}: {e}") from None
        copy_id = (reply.get("result") or {}).get("copy") if reply.get("ok") else None
        if not isinstance(copy_id, str):
            raise ControlError(f"module {self.name}: {self.peer} did not stamp its copy: "
                               f"{reply.get('error')}")
        return copy_id

    def primforce_preview(self) -> str:
        """What ``primforce`` here would overwrite, in words."""
        committed = self._committed_identity()
        view = self._last_view or mm.View()
        local = self._local_copy()
        mine = None
        for e in local:
            if e.problem:
                return f"the copy on {self.node} cannot be used: {e.problem}"
            mine = mine or e.record
        here = mine.short() if mine else "a copy with no identity record"
        others = sorted(n for n in view.in_sync if n != self.node)
        if not others:
            lost = "no other copy is current"
        else:
            parts = []
            for n in others:
                entry = committed.copies.get(n)
                gen = entry[1] if entry else committed.generation
                newer = ci.generations_newer(committed, mine.generation) if mine else None
                parts.append(f"the copy on {n} (in sync, generation {gen}"
                             + (f", {newer} primary session(s) newer than this one" if newer else "")
                             + ")")
            lost = "overwrites " + " and ".join(parts)
        return f"primforce makes {here} on {self.node} the truth; it {lost}"

    # ---- hooks of ModuleRuntime ---------------------------------------------------------
    def _on_output(self, out: mm.Output) -> None:
        if out.contend is not None:
            self._set_contend(out.contend)

    def _state_fields(self) -> tuple[str, str]:
        return f"epoch={self.epoch}", f"epoch {self.epoch}"

    def _before_script(self) -> None:
        self.runner.env["HACLUSTER_EPOCH"] = str(
            self.epoch if self.epoch is not None else (self._last_view.epoch if self._last_view else 0))

    # ---- actions ----------------------------------------------------------------------
    async def _do(self, a: mm.Action) -> None:
        if isinstance(a, mm.RunScript):
            await self._run_script(a)
        elif isinstance(a, mm.CommitIntent):
            await self._commit(SET_INTENT, self.name, self.node, a.intent)
        elif isinstance(a, mm.CommitGoodCopy):
            await self._commit(NAME_GOOD_COPY, self.resource, self.node, a.force)
        elif isinstance(a, mm.CommitLeaveInSync):
            await self._commit(LEAVE_IN_SYNC, self.resource, self.node, a.force)
        elif isinstance(a, mm.CommitInSyncSelf):
            await self._begin_generation(a.epoch, a.forced)
        elif isinstance(a, mm.ReleaseLease):
            holder, self.holder = self.holder, None
            epoch = self.machine.epoch
            if holder is not None:
                await self.host.release(self.resource)    # a release is not a loss: no fence
            if epoch is not None:
                self.feed(mm.LeaseReleased(epoch))
        elif isinstance(a, mm.StartReceiver):
            await self._start_receivers(a.epoch)
        elif isinstance(a, mm.StopReceiver):
            await asyncio.gather(*(p.stop(kill=False) for p in self.receivers))
            self.receivers = []
        elif isinstance(a, mm.StartMount):
            await self._start_mounts(a.epoch)
        elif isinstance(a, mm.StopMount):
            await self._stop_mounts(a.kill)
        elif isinstance(a, mm.RaiseVip):
            for v in self.vips:
                await v.raise_()
        elif isinstance(a, mm.DropVip):
            for v in self.vips:
                await v.drop()
        elif isinstance(a, mm.Pause):
            await asyncio.sleep(a.seconds)
        else:
            raise PlanFailed(f"unknown action {a!r}")

    def _set_contend(self, on: bool) -> None:
        if on and self.holder is None:
            if self._deferred is not None:
                return
            view = self._last_view or mm.View()
            if not self._deferral_done and default_primary.preferred_is_peer(
                    self.config.defaultprim, self.node, self.peer, view,
                    self._last_primary_epoch(), starting=self.machine.state is not mm.State.SECOND):
                # defaultprim prefers the peer: give it one lease to take the role first.
                delay = self.host.config.raft.lease_s
                log.info("event=contend_deferred module=%s preferred=%s defaultprim=%s delay_s=%.1f",
                         self.name, self.peer, self.config.defaultprim, delay)
                self._deferred = asyncio.get_running_loop().call_later(delay, self._deferred_contend)
                return
            self._hold_lease()
        elif not on:
            self._deferral_done = False
            if self._deferred is not None:
                self._deferred.cancel()
                self._deferred = None
            if self.holder is not None and self.holder.lease.epoch is None:
                self.holder = None
                self.host.release(self.resource, hand_back=False)   # not held: nothing to hand back

    def _hold_lease(self, resume_epoch: int | None = None) -> None:
        def lost(epoch: int, reason: str) -> None:
            if self._adopting == epoch:
                self._adoption_answer(epoch, False)
            else:
                self.feed(mm.LeaseLost(epoch, reason))
        self.holder = self.host.hold(self.resource, on_acquired=self._lease_acquired,
                                     on_lost=lost, resume_epoch=resume_epoch)
        for v in self.vips:
            self.holder.watch_renewals(v.lease_renewed)
            self.holder.add_fence(v.fence_until)
        self.holder.add_fence(self._fence_until)

    def _deferred_contend(self) -> None:
        # After one deferral ask regardless: a preference must never keep the module down.
        self._deferred = None
        self._deferral_done = True
        if not self.closed and self.machine.contending:
            self._set_contend(True)

    def _lease_acquired(self, epoch: int) -> None:
        if self._adopting == epoch:
            self._adoption_answer(epoch, True)
            return
        try:
            atomic_write(self._last_epoch_path, f"{epoch}\n", mode=0o644)
        except OSError as e:
            log.warning("event=last_epoch_not_saved module=%s error=%r", self.name, str(e))
        self.feed(mm.LeaseAcquired(epoch))

    def _last_primary_epoch(self) -> int | None:
        try:
            return int(self._last_epoch_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _replication_hosts(self) -> dict[str, str]:
        """node -> replication host: the flow heartbeat's addresses, else the Raft
        address hosts. Only the data moves there; leases, fencing and the peer_lost
        commit stay on Raft's network, so a cut flow network is a lost secondary
        (DESIGN rule 3), never a lost quorum."""
        try:
            return replication_hosts(self.config, self.host.members(), [self.node, self.peer])
        except ModuleNodesError as e:
            raise PlanFailed(f"module {self.name}: {e}") from None

    async def _check_local_flow_address(self, host: str) -> None:
        """Before listening: a flow address that is not on this host means the flow
        servers are listed in the wrong order (see module_nodes); say so plainly."""
        if self.config.heart.flow is None:
            return
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return      # a host name or IPv6: the receiver's bind tells whether it is here
        if await asyncio.get_running_loop().run_in_executor(None, has_vip, host) is None:
            raise PlanFailed(f"module {self.name}: the flow heartbeat "
                             f"{self.config.heart.flow.name!r} gives {self.node} the replication "
                             f"address {host}, which is not configured on this host: list its "
                             "servers in the order of the first heartbeat's servers (or of the "
                             "node names when that lists none)")

    async def _start_receivers(self, epoch: int) -> None:
        procs = []
        my_host = self._replication_hosts()[self.node]
        await self._check_local_flow_address(my_host)
        await self._prepare_copy_for_resync()
        ports = self.replication_ports()
        for i, d in enumerate(self.config.rfs.dirs):
            root = self.real_dir(d)
            state = self.state_dir / f"rfs{i}"     # its activity log, if it was primary
            state.mkdir(exist_ok=True)
            argv = [sys.executable, "-m", "replication", "receive", "--root", root,
                    "--state", str(state),
                    "--listen", f"{my_host}:{ports[i]}",
                    "--secret-file", str(self.host.config.secret_path),
                    "--min-epoch", str(epoch), "--status-interval", "0"]
            p = _Proc("receiver", root, argv, self.log_dir / f"receiver{i}.log",
                      self.host.config.log_max_bytes, self.log_keep)
            procs.append(p)
            await p.start("event=listening", lambda reason: self._died(reason))
        self.receivers = procs

    async def _start_mounts(self, epoch: int) -> None:
        procs = []
        peer_host = self._replication_hosts()[self.peer]
        ack = {"none": "apply", "second": "receipt", "async": "async"}[self.config.rfs.async_mode]
        ports = self.replication_ports()
        for i, d in enumerate(self.config.rfs.dirs):
            root = self.real_dir(d)     # checked and stamped by _begin_generation
            state = self.state_dir / f"rfs{i}"
            state.mkdir(exist_ok=True)
            # After a change of primary the peer's copy may hold writes this node
            # never acknowledged (in flight when the old primary died): the baseline
            # goes; if this node's receiver was in sync with that primary, the first
            # reintegration resyncs the old primary's activity-log regions plus this
            # node's marks, else it compares every block.
            from replication.activity_log import prepare_promotion
            prepare_promotion(str(state))
            unmount(root)   # a mount left by a killed server of ours
            argv = [sys.executable, "-m", "replication", "mount", "--root", root,
                    "--peer", f"{peer_host}:{ports[i]}",
                    "--secret-file", str(self.host.config.secret_path),
                    "--state", str(state), "--epoch", str(epoch), "--alone",
                    "--ack-mode", ack, "--ack-timeout", str(self.config.rfs.ack_timeout_s),
                    "--durability", self.config.rfs.durability,
                    "--hook-socket", str(self.host.config.socket_path), "--module", self.name,
                    "--status-interval", "0",
                    "--owner-pid", str(os.getpid()),
                    "--log-file", str(self.log_dir / f"mount{i}.log")]
            if self.config.rfs.reintegration_bandwidth_Bps:
                argv += ["--bandwidth", str(self.config.rfs.reintegration_bandwidth_Bps)]
            p = _Proc("mount", root, argv, self.log_dir / f"mount{i}.log",
                      self.host.config.log_max_bytes, self.log_keep)
            procs.append(p)
            self.mounts = procs
            await p.start("event=mounted", lambda reason: self._died(reason), die_with_parent=False)
            assert p.proc is not None
            self._mount_hold[p.proc.pid] = None
            # for a daemon started in maintenance after this one (_adopt)
            atomic_write(state / MOUNT_PID_FILE, json.dumps(
                {"pid": p.proc.pid, "epoch": epoch, "root": root}) + "\n", mode=0o644)

    async def _stop_mounts(self, kill: bool) -> None:
        mounts, self.mounts = self.mounts, []
        self.links = {}
        self._mount_hold = {}
        self._mount_reported = {}
        for i in range(len(self.config.rfs.dirs)):
            (self.state_dir / f"rfs{i}" / MOUNT_PID_FILE).unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        if not kill:
            # The mount process ends when its file system is unmounted (libfuse
            # keeps SIGTERM from reaching Python while it serves).
            for p in mounts:
                p.stopping = True
                try:
                    await loop.run_in_executor(None, unmount, p.root)
                except RuntimeError as e:
                    log.error("event=unmount_failed module=%s root=%s error=%r", self.name, p.root, str(e))
            for p in mounts:
                if p.proc is not None:
                    try:
                        await asyncio.wait_for(p.proc.wait(), PROCESS_STOP_S)
                    except asyncio.TimeoutError:
                        pass
        await asyncio.gather(*(p.stop(kill=True) for p in mounts))
        for p in mounts:
            try:
                await asyncio.get_running_loop().run_in_executor(None, unmount, p.root)
            except RuntimeError as e:
                log.error("event=unmount_failed module=%s root=%s error=%r", self.name, p.root, str(e))

    def _died(self, reason: str) -> None:
        log.warning("event=replication_process_ended module=%s reason=%r", self.name, reason)
        self.feed(mm.ReplicationDied(reason))

    # ---- hooks from the mount process (control socket) ---------------------------------
    async def replication_peer_lost(self, epoch: int, reason: str) -> dict:
        """DESIGN rule 3: the secondary leaves the in-sync set *before* the blocked
        writes are answered. Any failure here makes the mount fail them with EIO."""
        if self.epoch is None or epoch != self.epoch:
            raise ControlError(f"module {self.name}: not primary at epoch {epoch} "
                               f"(holding {self.epoch})")
        started = time.monotonic()
        # A leader change discards an entry without refusing it (a bridge partition cuts
        # the primary off the old leader): retry while this lease lasts. The entry is
        # fenced by the epoch, so a late retry cannot remove the secondary for a newer primary.
        while True:
            try:
                result = await self.host.commit(SET_IN_SYNC, self.resource, self.node, epoch,
                                                [self.node])
                break
            except ControlError:
                if self.epoch != epoch or time.monotonic() - started > PEER_LOST_RETRY_S:
                    raise
                await asyncio.sleep(0.1)
        if not result.get("ok"):
            raise ControlError(f"module {self.name}: {result.get('error')}")
        log.warning("event=secondary_out_of_sync module=%s peer=%s epoch=%d reason=%r commit_s=%.3f",
                    self.name, self.peer, epoch, reason, time.monotonic() - started)
        self.refresh()
        return {"in_sync": result["eligible"]}

    async def replication_in_sync(self, epoch: int) -> dict:
        if self.epoch is None or epoch != self.epoch:
            raise ControlError(f"module {self.name}: not primary at epoch {epoch}")
        # Rule 6: the secondary's copy carries this generation before Raft says so.
        copy_id = await self._peer_stamps_copy(epoch)
        result = await self.host.commit(SET_IN_SYNC, self.resource, self.node, epoch,
                                        [self.node, self.peer], {self.peer: copy_id})
        if not result.get("ok"):
            raise ControlError(f"module {self.name}: {result.get('error')}")
        log.info("event=secondary_in_sync module=%s peer=%s epoch=%d", self.name, self.peer, epoch)
        self.refresh()
        return {"in_sync": result["eligible"]}

    def replication_progress(self, progress: dict) -> dict[str, Any]:
        """A mount's link status (``replication.primary_link.PrimaryLink.status``); the
        answer is the mount's maintenance hold (replication.owner_watch): this primary's
        lease deadline while maintenance covers the module, else none. While the daemon
        is still adopting the mounts of the one before it, the mount keeps what it has."""
        pid = progress.get("pid")
        mine = [p for p in self.mounts if p.proc is not None and p.proc.pid == pid]
        if not mine:
            return {}       # not a mount of this primary session (or a late report): no hold
        if self._adopting is not None:
            reported = progress.get("hold_until")
            self._mount_hold[pid] = reported if isinstance(reported, (int, float)) else None
            return {"hold_until": reported}
        self.links[str(progress.get("peer", "?"))] = (time.monotonic(), progress)
        hold = None
        view = self._last_view or mm.View()
        if view.maintenance and self.holder is not None and self.holder.holding():
            hold = self.holder.lease.valid_until()
        # What the mount may hold from now: the hold it reported, or this answer's if
        # larger (an answer may be lost: then it keeps what it reported). Its next report
        # says which.
        reported = progress.get("hold_until")
        self._mount_reported[pid] = (float(reported) if isinstance(reported, (int, float))
                                     and not isinstance(reported, bool) else None)
        held = [v for v in (reported, hold)
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self._mount_hold[pid] = max(held) if held else None
        return {"hold_until": hold, "owner_pid": os.getpid()}

    def _fence_until(self) -> float | None:
        """Until when a mount may act for this primary's lease without the daemon
        (LeaseHolder.add_fence): the largest maintenance hold a mount may still hold
        (infinite for an adopted mount that has not reported yet). The VIP is a fence of
        its own (its kernel lifetime)."""
        holds = [h for h in self._mount_hold.values() if h is not None]
        return max(holds) if holds else None

    def reintegration(self) -> dict[str, Any] | None:
        """The progress of a reintegration running now (the first directory's that runs)."""
        for _, link in self.links.values():
            if link.get("phase") == "reintegrating" and isinstance(link.get("reintegration"), dict):
                return link["reintegration"]
        return None

    def feed(self, event: Any) -> Any:
        if isinstance(event, ViewChanged):
            holder = event.view.holder
            if holder is not None:
                if self._last_holder is not None and holder != self._last_holder:
                    self.failovers += 1
                self._last_holder = holder
        was_primary = self.machine.state in mm.PRIMARY
        out = super().feed(event)
        if not was_primary and self.machine.state in mm.PRIMARY:
            self.promotions += 1
        return out

    def http_module(self) -> ModuleSnapshot:
        view = self._last_view or mm.View()
        now = time.monotonic()
        links = tuple(LinkSnapshot(
            peer=peer, phase=str(st.get("phase", "?")),
            sender_state=str((st.get("sender") or {}).get("state", "?")),
            in_flight=int((st.get("sender") or {}).get("in_flight", 0)),
            ops_sent=int((st.get("sender") or {}).get("ops_sent", 0)),
            bytes_sent=int((st.get("sender") or {}).get("bytes_sent", 0)),
            age_s=now - at) for peer, (at, st) in sorted(self.links.items()))
        ri = self.reintegration()
        return dataclasses.replace(
            super().http_module(), epoch=self.epoch if self.epoch is not None else view.epoch,
            primary=view.holder, nodes=tuple(self.nodes), in_sync=frozenset(view.in_sync),
            lease_held=self.holder is not None and self.holder.holding(),
            failovers=self.failovers, promotions=self.promotions, links=links,
            reintegration=Reintegration(
                bytes_done=int(ri.get("bytes_done", 0)), bytes_total=int(ri.get("bytes_total", 0)),
                files_done=int(ri.get("files_done", 0)), files_total=int(ri.get("files_total", 0)),
                passes=int(ri.get("pass", 0))) if ri is not None else None)

    # ---- commands -------------------------------------------------------------------------
    async def command(self, name: str, request: Mapping[str, Any]) -> str | dict[str, Any]:
        note = ""
        view = self._last_view or mm.View()
        if name == "start" and default_primary.first_start_names_good_copy(
                self.config.defaultprim, self.node, view):
            name, note = "prim", " (defaultprim: first start, this node's copy is the good one)"
            self._module_log(f"defaultprim={self.node}: first start names this copy good")
        elif name == "prim_fullsync":
            # Every start as primary compares all blocks' digests with the secondary
            # (the sync point is dropped at promotion): a full check already.
            name, note = "prim", " (the first reintegration compares every block)"
        elif name in ("second_fullsync", "second_fullsync_force"):
            if self.machine.state not in (mm.State.STOP, mm.State.WAIT):
                raise ControlError(f"module {self.name}: second fullsync starts a stopped or "
                                   f"waiting module (state {self.machine.display[0].value}); "
                                   "stop it first")
            if view.holder == self.peer:
                await self._peer_forgets_sync_point()
            self._overwrite_ok = True
            name = "second_force" if name.endswith("_force") else "second"
            note = " (the primary will compare every block)"
        elif name == "second_force":
            self._overwrite_ok = True
        elif name == "forget_sync_point":
            return self.forget_sync_point()
        elif name == "why":
            return "\n".join(self.machine.why())
        elif name == "stamp_copy":      # from the primary's daemon, through peer control
            epoch = request.get("epoch")
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise ControlError(f"stamp_copy needs an integer epoch, got {epoch!r}")
            return await self.stamp_copy(epoch)
        elif name == "primforce":
            if self.machine.state not in mm.PRIMARY and view.holder in (None, self.node):
                raise ControlError(f"module {self.name}: {self.primforce_preview()}; "
                                   "run 'primforce --force' to do it")
        elif name == "primforce_force":
            preview = self.primforce_preview()
            name, note = "primforce", f" ({preview})"
            self._module_log(f"PRIMFORCE asked: {preview}")
        out = self.feed(mm.Command(name))
        if out.refused:
            raise ControlError(f"module {self.name}: {out.refused}")
        return f"{name}: accepted{note}"

    def checker_action(self, action: str, cause: str) -> None:
        """What a fired failover rule asks (after the action loop): restart, stopstart,
        stop, wait, swap, or resume (the wait of ``cause`` is over)."""
        if action != RESUME and (self._last_view or mm.View()).maintenance:
            log.warning("event=checker_action_ignored module=%s action=%s cause=%s reason=%r",
                        self.name, action, cause, "maintenance")
            self._module_log(f"checker {cause}: {action} ignored: the module is in maintenance")
            return
        event = mm.CheckerUp(cause) if action == RESUME else mm.CheckerDown(cause, action)
        out = self.feed(event)
        if out.refused:
            log.warning("event=checker_action_refused module=%s action=%s cause=%s reason=%r",
                        self.name, action, cause, out.refused)
            self._module_log(f"checker {cause}: {action} refused: {out.refused}")

    def forget_sync_point(self) -> str:
        """Drop the record that both copies were identical: the next reintegration
        compares the digests of every block instead of trusting the bitmaps."""
        for i in range(len(self.config.rfs.dirs)):
            (self.state_dir / f"rfs{i}" / "baseline").unlink(missing_ok=True)
        self._module_log("sync point dropped: the next reintegration compares every block")
        log.info("event=sync_point_dropped module=%s", self.name)
        return "sync point dropped: the next reintegration compares every block"

    async def _peer_forgets_sync_point(self) -> None:
        try:
            reply = await self._call_peer_module("forget_sync_point", timeout=10)
        except PeerControlError as e:
            raise ControlError(f"module {self.name}: second fullsync: {e}") from None
        if not reply.get("ok"):
            raise ControlError(f"module {self.name}: second fullsync: the primary {self.peer} "
                               f"refused: {reply.get('error')}")

    def status(self) -> dict:
        state, ready = self.machine.display
        view = self._last_view or mm.View()
        st: dict[str, Any] = {
            "module": self.name, "mode": "mirror", "node": self.node, "peer": self.peer,
            "state": state.value, "ready": ready, "exit_code": state.exit_code,
            "epoch": self.epoch if self.epoch is not None else view.epoch,
            "primary": view.holder, "in_sync": sorted(view.in_sync), "failover": view.failover,
            "intent": view.intent, "vip": [v.addr for v in self.vips if v.raised],
            "transition": self.machine.running.reason if self.machine.running else None,
        }
        reintegration = self.reintegration()
        if reintegration is not None:
            st["reintegration"] = reintegration
        if view.maintenance:
            # how long the mounts may serve without the daemon (None: not all hold a hold)
            held = self._mounts_held_s() if self.mounts else None
            st["maintenance"] = {"mounts_held_s": round(held, 1) if held is not None else None}
        committed = self._committed_identity()
        st["generation"] = committed.generation
        mine = committed.copies.get(self.node)
        st["copy"] = {"committed": ({"copy": mine[0], "generation": mine[1]} if mine else None),
                      "problem": view.copy_problem}
        return st

    def stop_time_s(self) -> float:
        return mirror_stop_time_s(self.config.scripts_timeout_s, len(self.config.rfs.dirs))

    def replication_ports(self) -> list[int]:
        """One per replicated directory, committed with the module at install
        (raft.replication_ports): the same on both nodes, never another module's."""
        return ports_of(self.name, self._read_slice().entry())

    async def close(self) -> None:
        """Daemon shutdown: stop acting the way a clean stop would, keep the intent. In
        maintenance, under a granted hold, leave the primary session running (the mounts
        watch for their owner and keep serving within the hold; the VIP's lifetime and
        the lease reach as far), for the next daemon to adopt."""
        if await self._leaves_running():
            assert self.holder is not None
            holder = self.holder
            await self._stop_following()
            holder._on_lost = None
            for v in self.vips:
                await v.detach()
            for p in self.mounts:
                p.detach()
            until = holder.lease.valid_until() or 0.0
            log.warning("event=left_running module=%s node=%s epoch=%s hold_left_s=%.1f reason=%r",
                        self.name, self.node, self.epoch, until - time.monotonic(),
                        "maintenance: the daemon stops, the application goes on")
            self._module_log(f"daemon stopping in maintenance: the primary session of epoch "
                             f"{self.epoch} goes on without it for {until - time.monotonic():.0f} s")
            await self.host.release(self.resource, hand_back=False)
            return
        await self._stop_following()
        for v in self.vips:
            await v.drop()
        cur = self.machine.display[0].value
        if self.mounts:
            await self.runner.run_stop("stop_prim", cur, "STOP", "stop")
            await self._stop_mounts(kill=False)
        if self.receivers:
            await self.runner.run_stop("stop_second", cur, "STOP", "stop")
            await asyncio.gather(*(p.stop(kill=False) for p in self.receivers))
        await self.runner.kill_leftovers()
