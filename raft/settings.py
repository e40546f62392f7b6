"""Raft timers and lease timing, with LAN defaults.

pysyncobj's defaults batch appends and tick every 50 ms (~200 ms commits).
These defaults (measured in bench/raft_bench.py; see README) give ~1 ms
commits and sub-second re-election on a LAN.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .lease import LeaseConfigError, LeaseTiming


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class RaftSettings:
    # Not a latency: commands and messages wake the tick thread at once, and it
    # sleeps until its next timer (heartbeat, election deadline, lease check; see
    # raft.member). This only bounds the sleep for timers without a known
    # deadline: reconnect attempts, the one-second flush of the commit index.
    tick_period_s: float = 0.1
    append_entries_period_s: float = 0.05
    election_timeout_min_s: float = 0.3
    election_timeout_max_s: float = 0.6
    connection_timeout_s: float = 1.0
    connection_retry_s: float = 0.5
    # A leader that hears from no majority for this long steps down (pysyncobj: 30 s).
    leader_fallback_s: float = 1.0
    lease_s: float = 1.5
    lease_margin_s: float = 0.3
    # How often the leader looks for expired leases.
    lease_check_period_s: float = 0.05
    log_compaction_entries: int = 5000
    log_compaction_min_time_s: float = 300.0
    # pysyncobj batches appends by default: better throughput, ~100x slower commits.
    batch_appends: bool = False
    # Several heartbeat networks (raft.links, members' "links"): a datagram per network
    # and peer this often; a path is dead after link_timeout_s without one. Below the
    # election timeout, so a Raft connection moves to a live network before followers
    # miss the leader. Unused with one network.
    link_heartbeat_s: float = 0.05
    link_timeout_s: float = 0.15

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(f.default, bool):
                if not isinstance(v, bool):
                    raise SettingsError(f"raft: {f.name} must be true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SettingsError(f"raft: {f.name} must be a finite number, got {v!r}")
            # pysyncobj accepts a zero connection retry time; every other setting is a
            # positive period, duration or count.
            if v < 0 or (v == 0 and f.name != "connection_retry_s"):
                raise SettingsError(f"raft: {f.name} must be > 0, got {v!r}")
        if self.log_compaction_entries < 2:
            raise SettingsError("raft: log_compaction_entries must be >= 2")
        if not self.election_timeout_min_s > 3 * self.append_entries_period_s:
            raise SettingsError("raft: election_timeout_min_s must be > 3 x append_entries_period_s")
        if not self.election_timeout_max_s > self.election_timeout_min_s:
            raise SettingsError("raft: election_timeout_max_s must be > election_timeout_min_s")
        if not self.connection_timeout_s >= self.election_timeout_max_s:
            raise SettingsError("raft: connection_timeout_s must be >= election_timeout_max_s")
        if not self.link_timeout_s >= 2 * self.link_heartbeat_s:
            raise SettingsError("raft: link_timeout_s must be >= 2 x link_heartbeat_s")
        if not self.link_timeout_s < self.election_timeout_min_s:
            raise SettingsError("raft: link_timeout_s must be < election_timeout_min_s (a Raft "
                                "connection must move before followers miss the leader)")
        if not self.leader_fallback_s > self.append_entries_period_s:
            raise SettingsError("raft: leader_fallback_s must be > append_entries_period_s")
        try:
            _ = self.lease_timing  # validates lease_s / lease_margin_s
        except LeaseConfigError as e:
            raise SettingsError(f"raft: lease_s={self.lease_s}, lease_margin_s={self.lease_margin_s}: "
                                f"{e}") from None

    @property
    def leader_wait_s(self) -> float:
        """How long a command waits for a leader before it is refused unsent: two
        election timeouts, so one split vote does not fail it."""
        return 2 * self.election_timeout_max_s

    @property
    def lease_timing(self) -> LeaseTiming:
        return LeaseTiming(self.lease_s, self.lease_margin_s)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "raft settings") -> "RaftSettings":
        if data is not None and not isinstance(data, dict):
            raise SettingsError(f"{where}: must be an object, got {type(data).__name__}")
        data = dict(data or {})
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = sorted(set(data) - set(defaults))
        if unknown:
            raise SettingsError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        for k, v in data.items():
            if isinstance(defaults[k], bool):
                if not isinstance(v, bool):
                    raise SettingsError(f"{where}: {k} must be true or false, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SettingsError(f"{where}: {k} must be a number, got {v!r}")
            elif isinstance(defaults[k], int) and not isinstance(v, int):
                raise SettingsError(f"{where}: {k} must be an integer, got {v!r}")
        try:
            return cls(**data)
        except ValueError as e:
            raise SettingsError(f"{where}: {e}") from None

    @classmethod
    def pysyncobj_defaults(cls) -> "RaftSettings":
        """pysyncobj 0.3.17's own timers: the baseline our defaults are measured against."""
        return cls(tick_period_s=0.05, append_entries_period_s=0.1, election_timeout_min_s=0.4,
                   election_timeout_max_s=1.4, connection_timeout_s=3.5, connection_retry_s=5.0,
                   leader_fallback_s=30.0, batch_appends=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def syncobj_kwargs(self) -> dict[str, Any]:
        return dict(
            appendEntriesUseBatch=self.batch_appends,
            autoTickPeriod=self.tick_period_s,
            appendEntriesPeriod=self.append_entries_period_s,
            raftMinTimeout=self.election_timeout_min_s,
            raftMaxTimeout=self.election_timeout_max_s,
            connectionTimeout=self.connection_timeout_s,
            connectionRetryTime=self.connection_retry_s,
            leaderFallbackTimeout=self.leader_fallback_s,
            logCompactionMinEntries=self.log_compaction_entries,
            logCompactionMinTime=self.log_compaction_min_time_s,
        )
