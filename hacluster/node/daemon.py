"""The daemon base class, shared by the node and the Raft-only witness.

asyncio on uvloop; pysyncobj runs in its own tick thread and its callbacks
hop onto the loop with ``call_soon_threadsafe``. The base class runs the Raft
member, the cluster bootstrap, this member's liveness lease, the control API,
and follows committed membership changes (keeps them in its state directory,
``member_cache``, never in the configuration directory; stops when this member is
removed, with ``exit_status.REMOVED``). Subclasses add what a role
does on top: the witness nothing, a data node its modules
(``hacluster.node_daemon``), to which the base class is their
``hacluster.modules.host.ModuleHost``.

Every listener binds the member's own address, and a failed bind stops the start
with one line (``raft.listen``). Under systemd (``sd_notify``) it reports ready once
its Raft is up, feeds the watchdog from the liveness lease loop and, on SIGTERM,
asks for the time its stop sequence may need.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import uvloop

import hacluster
from hacluster.http import metrics as http_metrics
from hacluster.http.api_server import ApiServer
from hacluster.http.roles import name_error, role_error
from hacluster.http.server import HttpServer
from hacluster.http.tls import TlsError, server_context
from hacluster.http.snapshot import MemberSnapshot, ModuleSnapshot, NodeSnapshot, RaftSnapshot

from raft.cluster_state import LIVENESS_PREFIX, MAINTENANCE_LEVEL, liveness_resource
from raft import commands as raft_commands
from raft.commands import (ACQUIRE, ADD_MEMBER, BOOTSTRAP, EXPIRE, FEATURE_LEVEL, RAISE_FEATURE_LEVEL,
                           RELEASE, REMOVE_MEMBER, SET_MAINTENANCE, Answer, RaftCommand)
from raft.durable_storage import private_dir
from raft.links import member_paths
from raft.hardened_transport import raise_open_files_limit
from raft.listen import ListenError, check_can_listen
from raft.member import RAFT_PURPOSE, RaftCommandError, RaftMember

from replication.durable_file import atomic_write

from . import commands, control, exit_status, layout_upgrade, member_cache, structured_log
from . import support_snapshot
from .api_backend import DaemonApi
from .cluster_config import API_PORT_OFFSET, HTTP_CERT_FILE, HTTP_KEY_FILE, ClusterConfig
from .control import ControlError, ControlServer, Handler
from .lease_holder import LeaseHolder, RenewalBatch
from .maintenance import MaintenanceView
from .event_hooks import (EventTracker, HookConfigError, HookRunner, RefusedTap, load_hooks,
                          module_events, quorum_event)
from .peer_control import PeerControlError, PeerControlServer, call_member, peer_control_address
from .sd_notify import Notifier, raft_up, watchdog_due
from .support_part import PartStore, Source, build_part, node_sources, read_credentials

log = logging.getLogger("hacluster.daemon")

COMMIT_TIMEOUT_S = 5.0
READY_POLL_S = 0.2
# How often the daemon looks at what only it sees (quorum, its modules) for event hooks.
EVENT_POLL_S = 0.5
# Beyond handing the leases back: closing the listeners and Raft (its journal's last sync).
STOP_MARGIN_S = 10.0
# The leader looks this often whether every member applies this version's commands, as
# heard in their Raft messages within FEATURE_LEVEL_HEARD_S (raft.member.peer_feature_levels).
FEATURE_LEVEL_CHECK_S = 2.0
FEATURE_LEVEL_HEARD_S = 10.0
REMOVAL_CONFIRM_S = 2.0   # a member seeing itself removed stops if it still is this much later
RUN_DIR_MODE = 0o755    # the socket in it is 0600; the pid file may be read by monitors
LOG_DIR_MODE = 0o755
AUDIT_FILE = "audit.log"     # the HTTPS API's audit trail, in the log directory (bounded)
API_UPLOAD_DIR = "api-uploads"   # module packages sent to the HTTPS API, kept while installed (private)
R = TypeVar("R", bound=Answer)
T = TypeVar("T")


class Daemon:
    kind = "node"

    def __init__(self, config: ClusterConfig) -> None:
        if config.role != self.kind:
            raise ValueError(f"{config.directory}: member {config.self_name!r} is a {config.role}; "
                             f"start it with hacluster {config.role} run")
        self.config = config
        self.name = config.self_name
        self.raft: RaftMember | None = None
        self.holders: dict[str, LeaseHolder] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._control: ControlServer | None = None
        self.exit_reason = "stopped"
        self._levels_behind: list[str] = []
        self._maintenance: MaintenanceView | None = None
        self.removed = False        # removed from the cluster: exit_status.REMOVED
        self._removal_pending = False   # a removal seen, confirmed REMOVAL_CONFIRM_S later
        self.notifier = Notifier()  # systemd's, when it started us
        self.hooks: HookRunner | None = None
        self._event_tracker = EventTracker()
        self._refused_tap: RefusedTap | None = None
        self._watchdog_fed = 0.0
        self._cached_members: dict[str, dict[str, str]] | None = None   # members.json's
        self._pid_file: Path | None = None
        self.started_at = time.time()           # for the metrics (wall, Unix seconds)
        self._started_mono = time.monotonic()
        self.http: HttpServer | None = None
        self.api: ApiServer | None = None
        self._parts = PartStore()       # support snapshot parts, until fetched

    def member_hosts(self) -> set[str]:
        """The current members' hosts, as their connections come from (on every
        heartbeat network: their links too)."""
        return {h for m in self.config.members.values() for h in member_paths(m) if h}

    # ---- entry point --------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT or removal; the exit status (exit_status). Raises
        raft.listen.ListenError, one line, when a listener cannot bind."""
        structured_log.setup(self.name, lambda: self.raft.role if self.raft else "starting")
        soft, hard = raise_open_files_limit()
        log.info("event=open_files_limit soft=%d hard=%d", soft, hard)
        try:
            return uvloop.run(self._main())
        finally:
            # Only the pid file this daemon wrote: a second daemon of this member stops
            # before writing one, and must not remove the first one's.
            if self._pid_file is not None:
                self._pid_file.unlink(missing_ok=True)

    def listeners(self) -> list[tuple[str, int, str]]:
        """(host, port, what it is for) of every TCP listener this member opens: all on
        its own address (README, Ports)."""
        host, port = self.config.me["address"].rsplit(":", 1)
        found = [(host, int(port), RAFT_PURPOSE)]
        if self.config.holds_data_secret:
            found.append((*peer_control_address(self.config.me["address"]), PeerControlServer.purpose))
        if self.config.http_address is not None:
            found.append((*self.config.http_address, HttpServer.purpose))
        if self._serves_api():
            assert self.config.api_address is not None
            found.append((*self.config.api_address, ApiServer.purpose))
        return found

    def _serves_api(self) -> bool:
        """The HTTPS API runs on a data node (it needs the cluster secret for its session
        key) with HTTP enabled and a certificate (cluster init's, or http.cert/key)."""
        return (self.config.api_address is not None and self.config.holds_data_secret
                and self.config.api_certificate is not None)

    def stop_time_s(self) -> float:
        """The longest the stop sequence may take: what systemd is asked to wait for
        (EXTEND_TIMEOUT_USEC) beyond the unit's TimeoutStopSec. The base: handing the
        leases back (up to a lease) and closing Raft."""
        return self.config.raft.lease_s + STOP_MARGIN_S

    async def _main(self) -> int:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._stop.set)
        raft_secret = self.config.read_raft_secret()
        # A witness holds no cluster secret (only the Raft credential): no peer control.
        secret = self.config.read_secret() if self.config.holds_data_secret else None
        # Every port first, before the journal is opened: a second daemon of this
        # member stops here, having touched nothing.
        for host, port, purpose in self.listeners():
            check_can_listen(host, port, purpose)
        self._prepare_directories()
        peers = [m["address"] for m in self.config.members.values()]
        # SyncObj's constructor blocks until its port is bound: keep it off the loop.
        self.raft = await self._loop.run_in_executor(None, lambda: RaftMember(
            self.config.me["address"], peers, self.config.paths.raft_dir, raft_secret,
            self.config.raft, on_applied=self._applied_threadsafe,
            on_role_change=self._role_changed_threadsafe, members=self.config.members))
        self.notifier.watchdog()    # the journal is read: the start goes on
        control: ControlServer | None = None
        peer_control: PeerControlServer | None = None
        try:
            handlers = self.control_handlers()
            commands.check_handlers(handlers, with_modules=self.serves_modules)
            control = ControlServer(self.config.socket_path, handlers)
            await control.start()
            self._control = control
            if secret is not None:
                host, port = peer_control_address(self.config.me["address"])
                peer_control = PeerControlServer(host, port, secret, control.dispatch,
                                                 member_hosts=self.member_hosts,
                                                 extra_hosts=self.config.me.get("links") or ())
                await peer_control.start()
            else:
                log.info("event=peer_control_off reason=%r", "a witness holds only the Raft credential")
            if self.config.http_address is not None:
                self.http = HttpServer(*self.config.http_address, probe=self)
                await self.http.start()
            else:
                log.info("event=http_off reason=%r", "disabled in cluster.json (http.enabled)")
            await self._start_api(secret)
            log.info("event=daemon_started kind=%s address=%s members=%s control=%s",
                     self.kind, self.config.me["address"], ",".join(sorted(self.config.members)),
                     self.config.socket_path)
            self._tasks.append(asyncio.create_task(self._bootstrap()))
            self._start_hooks()
            self.hold(liveness_resource(self.name), on_turn=self._lease_loop_turned)
            self.track(asyncio.create_task(self._raise_feature_level()))
            self._check_watchdog_interval()
            await self.started()
            self.track(asyncio.create_task(self._report_ready()))
            await self._stop.wait()
        except ListenError:
            self.exit_reason = "a listener could not bind"
            raise
        finally:
            await self._shutdown(control, peer_control)
        return exit_status.REMOVED if self.removed else exit_status.STOPPED

    def _prepare_directories(self) -> None:
        """Before the journal is opened: an old layout's state moved into the state
        directory (``layout_upgrade``, or a refusal naming the command), the
        directories made, the members to start from chosen (``member_cache``), the pid
        file written. Nothing here writes into the configuration directory."""
        paths = self.config.paths
        moved = layout_upgrade.upgrade(paths)
        if moved:
            log.info("event=state_moved from=%s to=%s reason=%r", paths.legacy_state_dir,
                     paths.state_dir, "the FHS layout: state under the state directory")
        private_dir(paths.state_dir)
        os.makedirs(paths.run_dir, mode=RUN_DIR_MODE, exist_ok=True)
        os.makedirs(paths.log_dir, mode=LOG_DIR_MODE, exist_ok=True)
        cached = member_cache.read(paths.members_file)
        members, source = member_cache.starting_members(
            self.config.members, self.config.cluster, self.name, cached, paths.members_file)
        if source == "state" and members != self.config.members:
            log.info("event=members_from_state file=%s members=%s configured=%s reason=%r",
                     paths.members_file, ",".join(sorted(members)),
                     ",".join(sorted(self.config.members)),
                     "Raft's committed membership wins over cluster.json once joined")
        self.config.members = members
        self._cached_members = members if source == "state" else None
        atomic_write(paths.pid_file(self.kind), f"{os.getpid()}\n", mode=0o644)
        self._pid_file = paths.pid_file(self.kind)
        log.info("event=paths config=%s state=%s run=%s log=%s", paths.config_dir,
                 paths.state_dir, paths.run_dir, paths.log_dir)

    async def _shutdown(self, control: ControlServer | None,
                        peer_control: PeerControlServer | None) -> None:
        """The stop sequence: the modules stop (scripts, unmounts, VIPs), the leases are
        handed back, the listeners and Raft close. Also after a failed start."""
        log.info("event=daemon_stopping reason=%r", self.exit_reason)
        self.notifier.stopping(f"stopping: {self.exit_reason}", self.stop_time_s())
        await self.stopping()
        # In maintenance a lease held under a granted hold is not released: what acts on
        # it (a farm's buckets, a mirror session left running) goes on within the hold.
        await asyncio.gather(*(h.stop(release=not self._kept_in_maintenance(h))
                               for h in self.holders.values()))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_hooks()
        if peer_control is not None:
            await peer_control.close()
        if self.http is not None:
            await self.http.close()
        if self.api is not None:
            await self.api.close()
        if control is not None:
            await control.close()
        await self._loop.run_in_executor(None, self.raft.destroy)
        log.info("event=daemon_stopped reason=%r", self.exit_reason)

    # ---- versions (raft.commands.FEATURE_LEVEL) ------------------------------------------
    async def _raise_feature_level(self) -> None:
        """On the leader: once every member has said (in its Raft messages, within
        FEATURE_LEVEL_HEARD_S) that it applies this version's commands, commit the
        level, which lets them be used (maintenance). A member of an older version
        says nothing: the level waits until it is upgraded."""
        while True:
            await asyncio.sleep(FEATURE_LEVEL_CHECK_S)
            # A Raft snapshot installed from the leader applies no entries: read again.
            self._maintenance = None
            if not self.raft.is_leader():
                continue
            snap = self.raft.snapshot()
            if snap.get("feature_level", 0) >= FEATURE_LEVEL or not snap["members"]:
                continue
            heard = self.raft.peer_feature_levels(FEATURE_LEVEL_HEARD_S)
            behind = sorted(n for n, m in snap["members"].items()
                            if m["address"] != self.config.me["address"]
                            and heard.get(m["address"], 0) < FEATURE_LEVEL)
            if behind:
                if behind != self._levels_behind:
                    log.info("event=feature_level_waits level=%d cluster_level=%d members=%s "
                             "reason=%r", FEATURE_LEVEL, snap.get("feature_level", 0),
                             ",".join(behind), "not heard at this version's level (older version?)")
                self._levels_behind = behind
                continue
            try:
                result = await self.commit(RAISE_FEATURE_LEVEL, FEATURE_LEVEL)
            except ControlError as e:
                log.warning("event=feature_level_not_raised level=%d error=%r", FEATURE_LEVEL, str(e))
                continue
            if result.get("raised"):
                log.info("event=feature_level_raised level=%d reason=%r", FEATURE_LEVEL,
                         "every member applies this version's commands")

    # ---- cluster event hooks (event_hooks) -----------------------------------------------
    def _start_hooks(self) -> None:
        try:
            hooks = load_hooks(self.config.directory)
        except HookConfigError as e:
            # A typo in hooks.json must not take a serving node down: said, and no hooks.
            log.error("event=hooks_unusable error=%r", str(e))
            hooks = []
        self.hooks = HookRunner(hooks, self.name)
        self.hooks.start()
        if hooks:
            assert self._loop is not None
            self._refused_tap = RefusedTap(self.hooks, self._loop)
            logging.getLogger("hacluster.raft").addHandler(self._refused_tap)
            log.info("event=hooks_loaded hooks=%d", len(hooks))
        self._tasks.append(asyncio.create_task(self._watch_for_events()))

    async def _stop_hooks(self) -> None:
        if self._refused_tap is not None:
            logging.getLogger("hacluster.raft").removeHandler(self._refused_tap)
            self._refused_tap = None
        if self.hooks is not None:
            await self.hooks.close()

    def module_statuses(self) -> dict[str, dict]:
        """This node's modules, by name, as ``hacluster state`` shows them (none here)."""
        return {}

    async def _watch_for_events(self) -> None:
        """What only this node sees: its quorum, its modules serving after a failover."""
        quorum: bool | None = None
        modules: dict[str, dict] = {}
        while True:
            await asyncio.sleep(EVENT_POLL_S)
            if self.hooks is None or self.raft is None:
                continue
            now = bool(self.raft.raft_status()["has_quorum"])
            event = quorum_event(quorum, now)
            if quorum is not None or now:       # nothing to say before the first quorum
                quorum = now
            fired = [event] if event is not None else []
            # Every module's status, twice a second, only when a hook runs on failover_done.
            current = self.module_statuses() if self.hooks.wants("failover_done") else {}
            fired += module_events(modules, current, self.name)
            modules = current
            for e in fired:
                self.hooks.fire(e)

    # ---- systemd (sd_notify): ready, watchdog -------------------------------------------
    async def _report_ready(self) -> None:
        """READY=1 once this member's Raft is up (sd_notify.raft_up); until then STATUS
        says what it waits for. Logged as event=daemon_ready with or without systemd."""
        said = None
        while True:
            members = self.raft.snapshot()["members"]
            leader = self.raft.leader_address()
            if raft_up(leader, members, self.name, self.raft.caught_up()):
                break
            if leader is None:
                peers = self.raft.raft_status()["peers"]
                text = (f"waiting for a Raft leader: connected to "
                        f"{sum(1 for v in peers.values() if v == 2)} of {len(peers)} other members")
            else:
                text = "waiting to catch up with the Raft leader"
            if text != said:
                self.notifier.status(text)
                said = text
            await asyncio.sleep(READY_POLL_S)
        name = next((n for n, m in members.items() if m["address"] == leader), leader)
        self._save_members()        # caught up: what this member applied is current
        self.notifier.ready(f"member {self.name} of cluster {self.config.cluster}; Raft leader {name}")
        log.info("event=daemon_ready leader=%s", name)

    def _lease_loop_turned(self) -> None:
        """Each turn of the liveness lease loop: feed systemd's watchdog when due."""
        interval = self.notifier.watchdog_s
        if interval is None:
            return
        now = time.monotonic()
        if watchdog_due(now, self._watchdog_fed, interval, self.raft.last_tick):
            self.notifier.watchdog()
            self._watchdog_fed = now

    def _check_watchdog_interval(self) -> None:
        """The lease loop turns at least every two renewal intervals (a renewal that
        times out, then the wait before the next try): WatchdogSec must leave room for
        that twice over."""
        interval = self.notifier.watchdog_s
        turn = 2 * self.config.raft.lease_timing.renew_interval_s
        if interval is not None and interval < 4 * turn:
            log.warning("event=watchdog_too_short watchdog_s=%.1f lease_s=%.1f reason=%r",
                        interval, self.config.raft.lease_s,
                        f"the lease loop may turn only every {turn:.1f} s: set WatchdogSec to "
                        f"{4 * turn:.0f} s or more")

    # ---- hooks for subclasses -------------------------------------------------
    async def started(self) -> None:
        """Called once the Raft member and control API run."""

    async def stopping(self) -> None:
        """Called on SIGTERM before leases are released."""

    # Whether this member's modules serve the module commands (commands.py).
    serves_modules = False

    def control_handlers(self) -> dict[str, Handler]:
        """Every control command this member serves, by name (checked against commands.py)."""
        return {
            commands.STATUS.name: self._status,
            commands.LEASES.name: self._leases,
            commands.ADD_MEMBER.name: self._add_member,
            commands.REMOVE_MEMBER.name: self._remove_member,
            commands.FORWARD.name: self._forward,
            commands.SNAPSHOT_PART.name: self._snapshot_part,
            commands.USER_SET.name: self._user_set,
            commands.USER_REMOVE.name: self._user_remove,
            commands.USER_LIST.name: self._user_list,
            commands.MAINTENANCE.name: self._set_maintenance,
        }

    def support_sources(self) -> Iterable[Source]:
        """The files a role adds to this member's snapshot part (a data node: its
        modules'); plain data taken here, on the loop, the files read by the build thread."""
        return ()

    # ---- what the modules are given (hacluster.modules.host.ModuleHost) ----------------
    def track(self, task: "asyncio.Task[T]") -> "asyncio.Task[T]":
        """A background task cancelled at shutdown."""
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(task)
        return task

    def cluster_state(self) -> dict[str, Any]:
        return self.raft.snapshot()

    def members(self) -> dict[str, dict[str, str]]:
        return self.raft.snapshot()["members"] or self.config.members

    def caught_up(self) -> bool:
        return self.raft.caught_up()

    def liveness_serves_on(self) -> bool:
        """At shutdown in maintenance: does this member go on serving without its
        daemon (a data node's farms left running)? A member without farms does."""
        return True

    def _kept_in_maintenance(self, holder: LeaseHolder) -> bool:
        # A liveness lease is kept only when every farm here went on serving: a farm
        # that stopped with its daemon must leave the farms at once, for the others to
        # take its buckets (its node leaves them with its liveness lease).
        liveness = holder.resource.startswith(LIVENESS_PREFIX)
        kept = (self.raft is not None and (not liveness or self.liveness_serves_on())
                and self.maintenance().hold(holder.resource) is not None
                and holder.holding() and holder.lease.extended())
        if kept:
            log.warning("event=lease_kept resource=%s epoch=%s reason=%r", holder.resource,
                        holder.lease.epoch, "maintenance: held until the hold ends, not released")
        return kept

    def maintenance(self) -> MaintenanceView:
        """The committed feature level and maintenance, cached between the entries that
        change them (read at every renewal; a full snapshot is a deep copy)."""
        if self._maintenance is None:
            self._maintenance = MaintenanceView.of(self.raft.snapshot())
        return self._maintenance

    def hold(self, resource: str, *, force: bool = False,
             on_acquired: Callable[[int], None] | None = None,
             on_lost: Callable[[int, str], None] | None = None,
             on_turn: Callable[[], None] | None = None,
             resume_epoch: int | None = None) -> LeaseHolder:
        holder = LeaseHolder(self.raft, resource, self.name, self.config.raft.lease_timing,
                             on_acquired=on_acquired, on_lost=on_lost, force=force,
                             on_turn=on_turn, resume_epoch=resume_epoch)
        holder.wants_hold = lambda: self.maintenance().hold(resource) is not None
        holder.batch.extensions_allowed = lambda: self.maintenance().level >= MAINTENANCE_LEVEL
        self.holders[resource] = holder
        self.track(asyncio.create_task(holder.run()))
        return holder

    def holder(self, resource: str) -> LeaseHolder | None:
        return self.holders.get(resource)

    def release(self, resource: str, *, hand_back: bool = True) -> "asyncio.Future[None]":
        holder = self.holders.pop(resource, None)
        if holder is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self.track(asyncio.create_task(holder.hand_back() if hand_back
                                              else holder.stop(release=False)))

    async def commit(self, command: RaftCommand[R], *args: Any,
                     timeout: float = COMMIT_TIMEOUT_S) -> R:
        op = command.name
        try:
            return await asyncio.wait_for(asyncio.wrap_future(self.raft.submit(op, *args)), timeout)
        except asyncio.TimeoutError:
            raise ControlError(f"{op}: not committed within {timeout} s (no quorum?)",
                               control.NO_QUORUM) from None
        except RaftCommandError as e:
            raise ControlError(str(e), control.NO_QUORUM if "no Raft leader" in str(e) else None) from None

    # ---- what the HTTP endpoints see (hacluster.http.snapshot.NodeProbe) -------------------
    def http_snapshot(self) -> NodeSnapshot:
        """This member now, for /metrics and the readiness endpoints: one read of the
        committed state (as ``cluster status`` does) and of each module here."""
        now = time.monotonic()
        modules, known = self.module_snapshots()
        return NodeSnapshot(cluster=self.config.cluster, node=self.name, kind=self.kind,
                            version=hacluster.__version__, started_at=self.started_at,
                            uptime_s=now - self._started_mono, raft=self._raft_snapshot(),
                            modules=modules, known_modules=known)

    def module_snapshots(self) -> tuple[tuple[ModuleSnapshot, ...], frozenset[str]]:
        """The modules running here, and every module installed in the cluster (a
        witness runs none)."""
        return (), frozenset()

    def _raft_snapshot(self) -> RaftSnapshot | None:
        if self.raft is None:
            return None
        snap = self.raft.snapshot()
        raft = self.raft.raft_status()
        by_address = {m["address"]: n for n, m in snap["members"].items()}
        leader = by_address.get(raft["leader"], raft["leader"]) if raft["leader"] else None
        members = tuple(MemberSnapshot(
            name=name, role=m["role"],
            live=(snap["leases"].get(liveness_resource(name)) or {}).get("holder") == name,
            connected=name == self.name or raft["peers"].get(m["address"], 0) == 2,
            leader=name == leader) for name, m in sorted(snap["members"].items()))
        holder = self.holders.get(liveness_resource(self.name))
        batch = RenewalBatch.of(self.raft, self.name)
        return RaftSnapshot(role=raft["role"], term=raft["term"] or 0,
                            commit_index=raft["commit_index"] or 0,
                            last_applied=raft["last_applied"] or 0, leader=leader,
                            has_quorum=bool(raft["has_quorum"]), members=members,
                            live=holder is not None and holder.holding(),
                            renewals=batch.latency.snapshot(), renewals_unconfirmed=batch.unconfirmed)

    # ---- Raft callbacks (tick thread → loop) ----------------------------------------
    def _applied_threadsafe(self, op: str, args: tuple, result: dict) -> None:
        self._loop.call_soon_threadsafe(self._applied, op, args, result)

    def _role_changed_threadsafe(self, role: str) -> None:
        self._loop.call_soon_threadsafe(self._role_changed, role)

    def _role_changed(self, role: str) -> None:
        status = self.raft.raft_status()
        log.info("event=raft_role role=%s term=%s mono=%.6f", role, status["term"], time.monotonic())

    def _applied(self, op: str, args: tuple, result: dict) -> None:
        events = self._event_tracker.applied(op, args, result)
        # Cluster events fire on the leader only (once per cluster), never for history
        # replayed at start.
        if events and self.hooks is not None and self.raft.is_leader() and self.raft.caught_up():
            for event in events:
                self.hooks.fire(event)
        if op in (EXPIRE.name, RELEASE.name) and result.get("ok"):
            holder = self.holders.get(args[0])
            if holder is not None:
                holder.wake()
            if op == EXPIRE.name:
                log.info("event=lease_expired resource=%s holder=%s epoch=%s mono=%.6f",
                         args[0], result.get("holder"), result.get("epoch"), time.monotonic())
        if op == ACQUIRE.name and result.get("ok"):
            log.info("event=lease_granted resource=%s holder=%s epoch=%s forced=%s mono=%.6f",
                     args[0], args[1], result["epoch"], result.get("forced", False), time.monotonic())
        if op in (BOOTSTRAP.name, ADD_MEMBER.name, REMOVE_MEMBER.name) and result.get("ok"):
            self._membership_changed(op, args, result)
        if op in MaintenanceView.CHANGED_BY and result.get("ok"):
            self._maintenance = None
            if op == SET_MAINTENANCE.name:
                log.info("event=maintenance module=%s state=%s hold_s=%s", args[0] or "*",
                         "on" if args[1] is not None else "off", args[1])

    def _membership_changed(self, op: str, args: tuple, result: dict) -> None:
        members = self.raft.snapshot()["members"]
        log.info("event=membership_changed op=%s member=%s members=%s",
                 op, result.get("name", "-"), ",".join(sorted(members)))
        # Replayed history (restart, or a re-added member catching up) may hold
        # an old removal of this member: act only once caught up with the leader,
        # and only if the removal still stands REMOVAL_CONFIRM_S later. Caught up
        # means caught up with the leader's commit index, which for a member being
        # re-added may still end at its removal: the add is in flight to it (seen
        # by the chaos suite: a re-added witness stopped itself as removed).
        if self.name not in members and self.raft.caught_up():
            if not self._removal_pending:
                self._removal_pending = True
                self._loop.call_later(REMOVAL_CONFIRM_S, self._confirm_removed)
            return
        self.raft.set_link_members(members)
        if self.name in members:
            self.config.members = members
            self._save_members()

    def _confirm_removed(self) -> None:
        """REMOVAL_CONFIRM_S after this member saw itself removed: stop if it still
        is (a removed member hears from no leader meanwhile: nothing is lost)."""
        self._removal_pending = False
        members = self.raft.snapshot()["members"]
        if self.name in members or not self.raft.caught_up():
            log.info("event=removal_not_confirmed members=%s", ",".join(sorted(members)))
            return
        self.exit_reason = "removed from the cluster"
        self.removed = True
        self._save_members(removed=True)
        self._stop.set()

    def _save_members(self, removed: bool = False) -> None:
        """Keep the committed membership in the state directory (``member_cache``),
        once caught up: a replayed history passes through older memberships."""
        if not (removed or self.raft.caught_up()):
            return
        members = self.raft.snapshot()["members"]
        if not members or (members == self._cached_members and not removed):
            return
        member_cache.write(self.config.paths.members_file,
                           member_cache.CachedMembers(self.config.cluster, members, removed))
        self._cached_members = members

    async def _bootstrap(self) -> None:
        """The first leader records the initial members; every member offers them."""
        initial = {n: dict(m) for n, m in self.config.members.items()}
        while not self.raft.snapshot()["members"]:
            if self.raft.leader_address() is not None:
                try:
                    await self.commit(BOOTSTRAP, initial, timeout=2.0)
                except ControlError:
                    pass
            await asyncio.sleep(0.2)

    # ---- control handlers ----------------------------------------------------------
    async def _start_api(self, secret: str | None) -> None:
        if not self._serves_api():
            why = ("disabled in cluster.json (http.enabled)" if self.config.api_address is None
                   else "a witness holds no cluster secret" if secret is None
                   else f"no certificate ({HTTP_CERT_FILE}/{HTTP_KEY_FILE} in {self.config.directory} "
                        "or http.cert/http.key in cluster.json): never passwords over plain HTTP")
            log.info("event=api_off reason=%r", why)
            return
        assert self.config.api_address is not None and self.config.api_certificate is not None
        try:
            context = server_context(*self.config.api_certificate)
        except TlsError as e:
            # the node serves its modules without the API rather than not at all
            log.error("event=api_off reason=%r", str(e))
            return
        uploads = self.config.paths.state_dir / API_UPLOAD_DIR
        # packages of uploads a crash interrupted (each is removed once installed or refused)
        for leftover in uploads.glob("upload-*.safe") if uploads.is_dir() else ():
            leftover.unlink(missing_ok=True)
        backend = DaemonApi(self.http_snapshot, secret, self.raft.snapshot, self._status_now,
                            self._forward, self.commit, local=self._control.dispatch,
                            upload_dir=uploads,
                            api_url=self._api_url)
        self.api = ApiServer(*self.config.api_address, backend, context,
                             self.config.paths.log_dir / AUDIT_FILE)
        await self.api.start()

    def _api_url(self, member: dict) -> str | None:
        """Where a member's HTTPS API listens, as this node's configuration places its
        own (Raft port + 5 or http.api_port; the Raft address's host): the console
        reconnects there when its node dies. None for a witness (it serves no API)."""
        if member.get("role") != "node" or self.config.api_address is None:
            return None
        host, port = str(member.get("address", "")).rsplit(":", 1)
        api_port = (self.config.http.api_port if self.config.http.api_port is not None
                    else int(port) + API_PORT_OFFSET)
        return f"https://{host}:{api_port}"

    # ---- the API's users, from the CLI (hacluster user ...) ----------------------------
    async def _user_set(self, request: dict) -> dict:
        name, role, password_hash = request.get("name"), request.get("role"), request.get("hash")
        error = name_error(name) or role_error(role)
        if error:
            raise ControlError(error)
        result = await self.commit(raft_commands.SET_USER, name, role, password_hash)
        if not result["ok"]:
            raise ControlError(result.get("error", "refused"))
        log.info("event=api_audit user=root address=control-socket action=user_set target=%r "
                 "result=ok detail=%r", name, f"role={role}" + (" password changed"
                                                               if password_hash else ""))
        return dict(result)

    async def _user_remove(self, request: dict) -> dict:
        result = await self.commit(raft_commands.REMOVE_USER, request.get("name"))
        if not result["ok"]:
            raise ControlError(result.get("error", "refused"))
        log.info("event=api_audit user=root address=control-socket action=user_remove "
                 "target=%r result=ok detail=''", request.get("name"))
        return dict(result)

    async def _user_list(self, request: dict) -> list[dict]:
        users = self.raft.snapshot().get("users") or {}
        return [{"name": n, "role": users[n]["role"]} for n in sorted(users)]

    async def _set_maintenance(self, request: dict) -> dict:
        """``{"module": name|None, "on": bool, "hold_s": seconds}``: maintenance for a
        module or the whole cluster, committed (raft.cluster_state.set_maintenance)."""
        module, on, hold_s = request.get("module"), request.get("on"), request.get("hold_s")
        if module is not None and not isinstance(module, str):
            raise ControlError(f"maintenance: module must be a name, got {module!r}")
        if not isinstance(on, bool):
            raise ControlError(f"maintenance: on must be true or false, got {on!r}")
        if on and (isinstance(hold_s, bool) or not isinstance(hold_s, (int, float))):
            raise ControlError(f"maintenance: hold_s must be a number of seconds, got {hold_s!r}")
        result = await self.commit(SET_MAINTENANCE, module, float(hold_s) if on else None)
        if not result.get("ok"):
            raise ControlError(f"maintenance: {result.get('error')}")
        return {"module": module, "maintenance": "on" if on else "off",
                "hold_s": result.get("hold_s")}

    async def _status(self, request: dict) -> dict:
        return self._status_now()

    def _status_now(self) -> dict:
        snap = self.raft.snapshot()
        raft = self.raft.raft_status()
        by_address = {m["address"]: n for n, m in snap["members"].items()}
        leader = by_address.get(raft["leader"], raft["leader"])
        live = {n for n in snap["members"]
                if (snap["leases"].get(liveness_resource(n)) or {}).get("holder") == n}
        links = self.raft.link_status()
        members = []
        for name, m in sorted(snap["members"].items()):
            if name == self.name:
                connected = True
            else:
                connected = raft["peers"].get(m["address"], 0) == 2
            row = {"name": name, "role": m["role"], "address": m["address"],
                   "live": name in live, "connected": connected, "leader": name == leader}
            if m.get("links"):
                row["links"] = m["links"]
            if links.get(m["address"]):
                # from this node: each heartbeat network's path to that member
                row["paths"] = links[m["address"]]
            members.append(row)
        return {
            "cluster": self.config.cluster, "node": self.name, "kind": self.kind,
            "leader": leader, "term": raft["term"], "commit_index": raft["commit_index"],
            "last_applied": raft["last_applied"], "role": raft["role"],
            "has_quorum": raft["has_quorum"], "members": members,
            "leases": self._lease_rows(snap),
            # versions: what this daemon is and applies, and the level the cluster committed
            "version": hacluster.__version__, "feature_level": FEATURE_LEVEL,
            "maintenance": MaintenanceView.of(snap).as_dict(),
        }

    @staticmethod
    def _lease_rows(snap: dict) -> list[dict]:
        return [{"resource": r, "holder": lease["holder"], "epoch": lease["epoch"],
                 "lease_s": lease["lease_s"], "eligible": lease["eligible"],
                 **({"hold_s": lease["hold_s"]} if "hold_s" in lease else {})}
                for r, lease in sorted(snap["leases"].items())]

    async def _leases(self, request: dict) -> list[dict]:
        return self._lease_rows(self.raft.snapshot())

    async def _forward(self, request: dict) -> list[dict]:
        """Run ``request["request"]`` on each of ``request["hosts"]`` ("all" = every node)
        and return one ``{"node", "ok", "result" | "error"}`` per host, in order."""
        inner, hosts = request.get("request"), request.get("hosts")
        if not isinstance(inner, dict) or inner.get("cmd") == commands.FORWARD.name:
            raise ControlError("forward: 'request' must be a control request (not a forward)")
        members = self.members()
        if hosts == "all" or hosts == ["all"]:
            names = sorted(n for n, m in members.items() if m["role"] == "node")
        elif isinstance(hosts, list) and hosts and all(isinstance(h, str) for h in hosts):
            unknown = [h for h in hosts if h not in members]
            if unknown:
                raise ControlError(f"-H: unknown node(s) {', '.join(unknown)} "
                                   f"(members: {', '.join(sorted(members))})")
            names = list(dict.fromkeys(hosts))
        else:
            raise ControlError("forward: 'hosts' must be 'all' or a list of member names")
        timeout = float(inner.get("wait_s") or 0) + 30.0
        asked = request.get("timeout_s")
        if isinstance(asked, (int, float)) and not isinstance(asked, bool) and 0 < asked < timeout:
            timeout = float(asked)      # a caller that wants a quick answer (snapshot)
        if not self.config.holds_data_secret:
            raise ControlError("-H: this member is a witness; it holds only the Raft credential "
                               "and cannot drive other members: run it on a data node")
        secret = self.config.read_secret()

        async def one(name: str) -> dict:
            if name == self.name:
                reply = await self._control.dispatch(inner)
            else:
                try:
                    reply = await call_member(members[name], secret, inner, timeout=timeout)
                except PeerControlError as e:
                    reply = {"ok": False, "error": str(e)}
            return {"node": name, **reply}
        return list(await asyncio.gather(*(one(n) for n in names)))

    async def _snapshot_part(self, request: dict) -> dict:
        """This member's part of a support snapshot: without ``id``, start building it
        (the answer is its id at once); with ``id`` and ``offset``, ``{"ready": false}``
        while it is built, then its bytes from ``offset`` in chunks (support_part)."""
        part_id = request.get("id")
        if part_id is None:
            return self._start_part()
        offset = request.get("offset", 0)
        if not isinstance(part_id, str) or not isinstance(offset, int) or isinstance(offset, bool):
            raise ControlError("snapshot_part: 'id' must be a string and 'offset' an integer")
        try:
            return self._parts.chunk(part_id, offset)
        except (KeyError, RuntimeError, ValueError) as e:
            raise ControlError(f"snapshot part of {self.name}: {e.args[0] if e.args else e}") from None

    def _start_part(self) -> dict:
        """What only the loop knows, taken now as plain data; the files are read and
        packed in a thread, bounded (support_snapshot: PART_DEADLINE_S, PART_MAX_BYTES),
        so that building a part never delays a lease renewal."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + support_snapshot.PART_DEADLINE_S
        try:
            part_id = self._parts.begin()
        except ValueError as e:
            raise ControlError(f"snapshot part of {self.name}: {e}") from None
        status = raft_status = state = None
        note = None
        if self.raft is not None:
            status = self._status_now()
            raft_status = self.raft.raft_status()
            state = self.raft.snapshot()
            # the API's users by name and role: their password hashes stay in the cluster
            if state.get("users"):
                state["users"] = {n: {"role": u["role"]} for n, u in state["users"].items()}
        else:
            note = "the daemon's Raft member was not running"
        metrics_text = http_metrics.render(self.http_snapshot()) if self.http is not None else None
        sources: list[Iterable[Source]] = [
            node_sources(self.config, deadline=deadline, status=status, raft_status=raft_status,
                         cluster_state=state, metrics=metrics_text, daemon_note=note,
                         metrics_off="the HTTP endpoints are disabled (cluster.json: http.enabled)"),
            self.support_sources()]

        def build() -> bytes:
            return build_part(self.name, (s for group in sources for s in group),
                              lambda: read_credentials(self.config), deadline=deadline)

        def done(fut: "asyncio.Future[bytes]") -> None:
            if fut.cancelled():
                self._parts.finish(part_id, None, "the build was cancelled (the daemon is stopping)")
            elif fut.exception() is not None:
                log.error("event=snapshot_part_failed id=%s error=%r", part_id, str(fut.exception()))
                self._parts.finish(part_id, None, f"building it failed: {fut.exception()}")
            else:
                data = fut.result()
                log.info("event=snapshot_part_built id=%s bytes=%d", part_id, len(data))
                self._parts.finish(part_id, data)
        loop.run_in_executor(None, build).add_done_callback(done)
        log.info("event=snapshot_part_started id=%s", part_id)
        return {"id": part_id, "ready": False, "node": self.name}

    async def _add_member(self, request: dict) -> dict:
        name, address, role = request.get("name"), request.get("address"), request.get("role")
        links = request.get("links")
        # Without links the entry has the three arguments older versions apply too.
        result = await (self.commit(ADD_MEMBER, name, address, role, links) if links
                        else self.commit(ADD_MEMBER, name, address, role))
        if not result["ok"]:
            raise ControlError(result["error"])
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.raft.change_peers("add", address)),
                                   COMMIT_TIMEOUT_S)
        except (asyncio.TimeoutError, RaftCommandError) as e:
            # Keep cluster state and Raft configuration in step: undo the first half.
            await self.commit(REMOVE_MEMBER, name, role)
            raise ControlError(f"adding {name} to the Raft configuration failed ({e}); "
                               "the change was rolled back") from None
        log.info("event=member_added member=%s role=%s address=%s", name, role, address)
        return {"name": name, "address": address, "role": role,
                "members": self.raft.snapshot()["members"]}

    async def _remove_member(self, request: dict) -> dict:
        name, role = request.get("name"), request.get("role")
        result = await self.commit(REMOVE_MEMBER, name, role)
        if not result["ok"]:
            raise ControlError(result["error"])
        address = result["address"]
        # If the removed member leads, it hands leadership over first (RaftMember);
        # until then the leader refuses to drop itself, so retry for a while.
        deadline = time.monotonic() + 3 * COMMIT_TIMEOUT_S
        while True:
            try:
                await asyncio.wait_for(asyncio.wrap_future(self.raft.change_peers("remove", address)),
                                       COMMIT_TIMEOUT_S)
                break
            except (asyncio.TimeoutError, RaftCommandError) as e:
                if time.monotonic() > deadline:
                    raise ControlError(f"{name} left the cluster state but the Raft configuration "
                                       f"change failed: {e}") from None
                await asyncio.sleep(0.2)
        log.info("event=member_removed member=%s role=%s address=%s", name, role, address)
        return {"name": name, "address": address, "members": self.raft.snapshot()["members"]}


class WitnessDaemon(Daemon):
    """A Raft voter with no modules: it only breaks ties."""

    kind = "witness"
