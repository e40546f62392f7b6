"""The primary's link to its secondary: connect, reintegrate while live writes
flow, then replicate synchronously; on loss, run ALONE and try again.

The FUSE layer talks to ``link.sender`` (the Replicator). This class owns the
connection loop around it:

  ALONE/lost ──connect──▶ reintegrating (live ops sent AND namespace ops
  journaled; ops the receiver refuses recorded, not a lost peer) ──final pass
  under the ordering lock──▶ in sync (``on_in_sync``) ──receiver silent, or a
  refusal──▶ sender calls ``peer_lost`` ──▶ ALONE, retry.

``peer_lost`` and ``on_in_sync`` are the owner's hooks (the mirror module
commits the in-sync set there); standalone, they only log.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator

from . import activity_log
from .activity_log import NOTE, ActivityLog
from .channel import ChannelClient
from .dirty_bitmap import BitmapStore
from .durable_file import atomic_write, fsync_dir
from .frame import Feature
from .ops import NAMESPACE_KINDS, Op, OpKind
from .reintegration import Entry, Reintegration, tree_from_manifest
from .sender import Durability, Sender, SenderState

log = logging.getLogger("replication.link")


class ChannelRemote:
    """reintegration.Remote over a connected ChannelClient. ``sent(seq, op)``:
    told of each op sent (a late refusal of it can then be recorded)."""

    def __init__(self, client: ChannelClient, timeout: float,
                 sent: Callable[[int, Op], None] | None = None) -> None:
        self.client = client
        self.timeout = timeout
        self.sent = sent

    def query_tree(self) -> dict[str, Entry]:
        return tree_from_manifest(self.client.query_tree(timeout=self.timeout, include_root=True))

    def query_digests(self, path: str, block_size: int) -> list[int]:
        return self.client.query_digests(path, block_size)

    def send(self, op: Op) -> None:
        seq = self.client.send_op(op)
        if self.sent is not None:
            self.sent(seq, op)
        self.client.wait(seq, self.timeout)


class _JournalingRecorder:
    """While reintegration runs, live namespace ops are sent *and* journaled so
    the driver re-checks the paths they touched; ALONE, everything is recorded."""

    def __init__(self, store: BitmapStore) -> None:
        self.store = store
        self.journaling = False

    def record(self, op: Op) -> None:
        self.store.record(op)

    def sent(self, op: Op) -> None:
        if self.journaling and op.kind in NAMESPACE_KINDS:
            self.store.record(op)

    def refused(self, op: Op, error: OSError) -> None:
        """The receiver, not in sync yet, refused a live op that succeeded
        here: record it (a namespace op was journaled when it was sent), so
        that the running reintegration re-checks its path."""
        if op.kind not in NAMESPACE_KINDS:
            self.store.record(op)


class PrimaryLink:
    def __init__(self, local_root_fd: int, host: str, port: int, secret: str, epoch: int,
                 state_dir: str, *, ack_mode: str = "apply", ack_timeout_s: float = 3.0,
                 durability: Durability = Durability.WRITE,
                 peer_lost: Callable[[str], None] | None = None,
                 on_in_sync: Callable[[], None] | None = None,
                 bandwidth: float | None = None, retry_s: float = 1.0,
                 alone: bool = False) -> None:
        """``local_root_fd``: the real directory, opened before the FUSE mount
        covered it. ``alone``: the peer is known to be out of sync already."""
        # "/." so that lstat() of the root sees the directory, not the fd magic link.
        self.local_root = f"/proc/self/fd/{local_root_fd}/."
        self.host, self.port, self.secret, self.epoch = host, port, secret, epoch
        # BARRIER durability streams without waiting: the channel runs in async
        # ack mode (refusals come as late errors) whatever ``ack_mode`` says.
        self.ack_mode = "async" if durability is Durability.BARRIER else ack_mode
        self.ack_timeout_s = ack_timeout_s
        self.state_dir = state_dir
        self.bandwidth = bandwidth
        self.retry_s = retry_s
        os.makedirs(state_dir, exist_ok=True)
        self.store = BitmapStore(os.path.join(state_dir, "changes"))
        self._baseline_path = os.path.join(state_dir, "baseline")
        self._recorder = _JournalingRecorder(self.store)
        self._peer_lost_hook = peer_lost or (lambda reason: None)
        self._on_in_sync = on_in_sync or (lambda: None)
        self.sender = Sender(self._recorder, self._peer_lost, ack_timeout_s=ack_timeout_s,
                             alone=alone, durability=durability)
        self.sender.on_sent = self._recorder.sent
        self.sender.on_refused = self._recorder.refused
        # Regions are marked here before the FUSE layer applies a change to them.
        self.activity = ActivityLog(state_dir, epoch)
        self.sender.activity = self.activity
        self._client: ChannelClient | None = None
        self._clearer = threading.Thread(target=self._clear_cold_loop, name="activity-log",
                                         daemon=True)
        self.phase = "alone" if alone else "connecting"
        self.reintegration: Reintegration | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replication-link", daemon=True)

    # ---- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._clearer.start()

    def stop(self) -> None:
        self._stop.set()
        self._lost.set()
        self._thread.join(10)
        self.sender.shutdown("stopping")
        self._clearer.join(5)
        self.activity.close()
        self.store.close()

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {"phase": self.phase, "sender": self.sender.status(),
                              "peer": f"{self.host}:{self.port}", "epoch": self.epoch,
                              "store_trusted": self.store.trusted()}
        if self.reintegration is not None:
            st["reintegration"] = self.reintegration.progress()
        return st

    # ---- activity log ----------------------------------------------------------------
    def _quiescent(self) -> bool:
        """The receiver acknowledged every op sent so far (so it holds every
        change made before): only then may cold regions be cleared."""
        client = self._client
        return (client is not None and self.sender.state is SenderState.CONNECTED
                and client.closed is None and client.unacked == 0)

    def _clear_cold_loop(self) -> None:
        while not self._stop.wait(min(0.5, self.activity.cold_s / 2)):
            try:
                self.activity.clear_cold(self._quiescent)
            except OSError as e:
                log.warning("event=activity_log_clear_failed error=%r", str(e))

    def _use_peer_activity(self, client: ChannelClient) -> bool:
        """After a change of primary: if this node was the in-sync receiver of
        the old primary (``al_pending``) and the returning node's activity log
        is trustworthy, add its active regions to the store (on top of this
        node's own marks) and keep the bitmaps trusted. Else False: digests."""
        after = activity_log.pending_epoch(self.state_dir)
        if after is None:
            return False
        reason: str | None
        if not client.features & Feature.ACTIVITY_LOG:
            reason = "receiver does not report activity logs"
        else:
            report = client.query_activity(self.ack_timeout_s)
            reason = activity_log.check_report(report, after)
        if reason is not None:
            log.warning("event=activity_log_refused peer=%s:%d reason=%r action=full_digest",
                        self.host, self.port, reason)
            return False
        size = report["region_size"]
        regions = notes = 0
        for path, region in report["keys"]:
            if region == NOTE:
                self.store.note(path)
                notes += 1
            else:
                self.store.mark(path, region * size, size)
                regions += 1
        # The marks now cover every difference: as good as a baseline.
        atomic_write(self._baseline_path, f"copies identical at epoch {after} "
                                          f"outside the activity log merged at epoch {self.epoch}\n",
                     mode=0o644)
        os.unlink(os.path.join(self.state_dir, activity_log.PENDING_FILE))
        fsync_dir(self.state_dir)
        log.info("event=activity_log_used peer=%s:%d after_epoch=%d regions=%d notes=%d "
                 "region_size=%d", self.host, self.port, after, regions, notes, size)
        return True

    # ---- the loop -------------------------------------------------------------------
    def _peer_lost(self, reason: str) -> None:
        self._recorder.journaling = False
        self.phase = "alone"
        self._peer_lost_hook(reason)
        self._lost.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect_and_sync()
            except Exception as e:  # noqa: BLE001 - any failure: run alone, retry later
                log.warning("event=link_down peer=%s:%d reason=%r", self.host, self.port, str(e))
                self.sender.detach(f"link down: {e}")
            if self.sender.state is SenderState.CONNECTED and not self._stop.is_set():
                # In sync: wait until the sender reports the receiver lost.
                self._lost.wait()
            self._lost.clear()
            self._stop.wait(self.retry_s)

    def _connect_and_sync(self) -> None:
        client = ChannelClient(self.host, self.port, self.secret, self.epoch, self.ack_mode,
                               on_late_error=lambda seq, err, message: self.sender.late_error(
                                   client, seq, err, message))
        client.connect()
        self.phase = "reintegrating"
        log.info("event=link_connected peer=%s:%d", self.host, self.port)
        self._recorder.journaling = True
        with self.sender.ordering_lock:
            # The peer is out of the in-sync set only if this side went ALONE
            # (or started so): only then may its refusals wait for the
            # reintegration. A peer said to be in sync must apply every op.
            settling = self.sender.state is SenderState.ALONE
            self.sender.attach(client, settling=settling, late_errors=self.ack_mode != "apply")
            self._client = client
        if not os.path.exists(self._baseline_path):
            self._use_peer_activity(client)
        self.reintegration = Reintegration(
            self.local_root, ChannelRemote(client, self.ack_timeout_s,
                                           sent=lambda seq, op: self.sender.remember(client, seq, op)),
            store=self.store,
            state_dir=self.state_dir, bandwidth=self.bandwidth,
            # The bitmaps only cover changes since the copies were last identical:
            # before a first complete reintegration there is no such point.
            force_digests=not os.path.exists(self._baseline_path),
            guard=lambda path: self.sender.ordering_lock,
            final_guard=lambda: self._final_pass(client),
            on_progress=lambda p: log.info(
                "event=reintegration_progress phase=%s pass=%d files=%d/%d bytes=%d/%d "
                "rate_Bps=%.0f eta_s=%s pending_paths=%d pending_bytes=%d",
                p["phase"], p["pass"], p["files_done"], p["files_total"], p["bytes_done"],
                p["bytes_total"], p["rate_Bps"],
                "-" if p["eta_s"] is None else f"{p['eta_s']:.1f}",
                p["pending_paths"], p["pending_bytes"]))
        started = time.monotonic()
        log.info("event=reintegration_started peer=%s:%d force_digests=%s settling=%s",
                 self.host, self.port, self.reintegration.force_digests, settling)
        result = self.reintegration.run()
        log.info("event=in_sync peer=%s:%d seconds=%.3f bytes_sent=%d bytes_read=%d "
                 "force_digests=%s passes=%d refusals_recorded=%d", self.host, self.port,
                 time.monotonic() - started, result.get("bytes_sent", 0),
                 result.get("bytes_done", 0), self.reintegration.force_digests,
                 result.get("pass", 0), self.sender.status()["refusals_recorded"])
        self._on_in_sync()

    def _settle(self, client: ChannelClient) -> None:
        """Under the ordering lock: every op sent so far answered, and each one
        the receiver refused recorded. A receiver that does not answer within
        the bounds here is a lost peer (the reintegration fails)."""
        self.sender.quiesce(2 * self.ack_timeout_s)
        if self.ack_mode != "apply":
            # Acknowledged on receipt (or not at all): a refusal comes later, as a
            # late error. An FSYNC of the tree is acknowledged only once every op
            # before it was applied (the receiver applies in order), so after it
            # every such refusal has arrived; then wait until each was handled.
            client.send_op(Op(OpKind.FSYNC, ""))
            client.drain(4 * self.ack_timeout_s)
            self.sender.quiesce_late(client, lambda: client.late_error_count, self.ack_timeout_s)

    @contextlib.contextmanager
    def _final_pass(self, client: ChannelClient) -> Iterator[Callable[[], None]]:
        """Reintegration's final pass runs inside: the ordering lock held (no
        live op starts); it calls what this yields (``_settle``) before each
        look at what is pending, so every refusal is recorded by then. After
        the pass, still under the lock,
        the copies are identical: the in-sync transition happens here, so no
        live op can fall between the last check and the switch to strict
        replication (where a refusal is a lost peer again)."""
        with self.sender.ordering_lock:
            yield lambda: self._settle(client)
            if self.sender.state is not SenderState.CONNECTED:
                raise ConnectionError("receiver lost during reintegration")
            # Everything up to here is on the receiver; live ops are replicated.
            if client.features & Feature.ACTIVITY_LOG:
                client.declare_in_sync(self.ack_timeout_s)
            self.sender.settled()
            self._recorder.journaling = False
            self.store.reset()
            if not os.path.exists(self._baseline_path):
                atomic_write(self._baseline_path, f"copies identical at epoch {self.epoch}\n",
                             mode=0o644)
            self.phase = "in_sync"
