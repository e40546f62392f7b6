"""Several heartbeat networks between Raft members, the pure part (Corosync's knet
links, SafeKit's several ``<heartbeat>`` networks): which of a peer's paths are alive,
which one its Raft connection should ride on, and the authenticated heartbeat
datagrams that tell. raft.link_transport does the I/O.

Path k of a member is its address on heartbeat network k: path 0 is the host of its
Raft address (``host:port``), paths 1.. its ``links`` in cluster.json, in network
order, all with the Raft port. Every member sends a small datagram on each network to
each peer every ``link_heartbeat_s``; a path is alive while one came within
``link_timeout_s``. A Raft connection rides on one path and moves only when that path
is dead and another is alive: a member whose own process stalled hears nothing on any
path, and then nothing moves (a reconnect would only cost messages).

Nothing here reads a clock or a socket: times are passed in.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"HCLk"
VERSION = 1
TAG_BYTES = 16
_HEAD = struct.Struct("!4sBBQB")      # magic, version, network, seq, sender length
MAX_DATAGRAM = _HEAD.size + 255 + TAG_BYTES
_KEY_INFO = b"hacluster raft link heartbeat v1"


class HeartbeatError(ValueError):
    """A datagram that is not a valid heartbeat; the message says why (one line)."""


@dataclass(frozen=True)
class Heartbeat:
    sender: str      # the sender's Raft address, host:port (its identity)
    network: int     # the heartbeat network it was sent on (0: the Raft network)
    seq: int


def heartbeat_key(raft_secret: str) -> bytes:
    """The HMAC key of heartbeats, derived from the member's Raft credential (so a
    witness, which holds only that, sends and checks them too)."""
    return HKDF(algorithm=SHA256(), length=32, salt=None,
                info=_KEY_INFO).derive(raft_secret.encode())


def encode_heartbeat(key: bytes, hb: Heartbeat) -> bytes:
    sender = hb.sender.encode()
    if not 0 < len(sender) <= 255:
        raise ValueError(f"bad heartbeat sender {hb.sender!r}")
    if not 0 <= hb.network <= 255 or not 0 <= hb.seq < 1 << 64:
        raise ValueError(f"bad heartbeat network {hb.network} or seq {hb.seq}")
    body = _HEAD.pack(MAGIC, VERSION, hb.network, hb.seq, len(sender)) + sender
    return body + hmac.new(key, body, hashlib.sha256).digest()[:TAG_BYTES]


def decode_heartbeat(key: bytes, data: bytes) -> Heartbeat:
    """The heartbeat in ``data``; HeartbeatError if it is malformed or forged."""
    if len(data) < _HEAD.size + 1 + TAG_BYTES or len(data) > MAX_DATAGRAM:
        raise HeartbeatError(f"{len(data)} bytes: not a heartbeat's size")
    magic, version, network, seq, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise HeartbeatError("not a hacluster heartbeat (bad magic)")
    if version != VERSION:
        raise HeartbeatError(f"heartbeat version {version}, this member speaks {VERSION}")
    if len(data) != _HEAD.size + n + TAG_BYTES or n == 0:
        raise HeartbeatError("length does not match the sender's name")
    body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()[:TAG_BYTES]):
        raise HeartbeatError("failed authentication (wrong cluster secret or forged)")
    try:
        sender = body[_HEAD.size:].decode()
    except UnicodeDecodeError:
        raise HeartbeatError("sender is not UTF-8") from None
    return Heartbeat(sender, network, seq)


@dataclass(frozen=True)
class LinkChange:
    """A path seen to come up or go down (for one log line)."""
    peer: str
    network: int
    host: str
    alive: bool


class LinkTable:
    """What this member knows of its paths to each peer.

    ``own``: this member's host per network (index 0: its Raft host; None where it has
    no address on that network). ``set_peers`` gives each peer's hosts the same way,
    keyed by the peer's Raft address. A path exists for a pair only on a network both
    are on."""

    def __init__(self, own: Sequence[str | None], timeout_s: float,
                 stale_s: float | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"link timeout must be > 0, got {timeout_s}")
        self.own = tuple(own)
        self.timeout_s = timeout_s
        # After this long without a heartbeat a sender's sequence is forgotten (it may
        # have restarted, or its clock stepped back): replay protection is per burst.
        self.stale_s = stale_s if stale_s is not None else 10 * timeout_s
        self._peers: dict[str, tuple[str | None, ...]] = {}
        self._heard: dict[tuple[str, int], float] = {}
        self._seq: dict[tuple[str, int], int] = {}
        self._reported: dict[tuple[str, int], bool] = {}

    # ---- configuration -------------------------------------------------------------
    def set_peers(self, peers: Mapping[str, Sequence[str | None]]) -> None:
        self._peers = {p: tuple(hosts) for p, hosts in peers.items()}
        for key in [k for k in self._heard if k[0] not in self._peers]:
            del self._heard[key]
            self._seq.pop(key, None)
            self._reported.pop(key, None)

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(self._peers)

    def shared(self, peer: str) -> list[int]:
        """The networks on which this member and ``peer`` both have an address."""
        hosts = self._peers.get(peer, ())
        return [i for i in range(min(len(self.own), len(hosts)))
                if self.own[i] is not None and hosts[i] is not None]

    def host(self, peer: str, network: int) -> str | None:
        hosts = self._peers.get(peer, ())
        return hosts[network] if network < len(hosts) else None

    def peer_of(self, host: str) -> tuple[str, int] | None:
        """(peer, network) whose path address is ``host`` (an incoming connection)."""
        for peer, hosts in self._peers.items():
            for i, h in enumerate(hosts):
                if h == host:
                    return peer, i
        return None

    def hosts(self) -> set[str]:
        """Every path address of every peer (connections from them are members')."""
        return {h for hosts in self._peers.values() for h in hosts if h is not None}

    @property
    def several(self) -> bool:
        """More than one network is configured somewhere: heartbeats are worth sending."""
        return any(len(self.shared(p)) > 1 for p in self._peers)

    # ---- events ------------------------------------------------------------------------
    def heard(self, hb: Heartbeat, now: float) -> bool:
        """A valid heartbeat arrived; False when it is not taken (unknown sender, a
        network the pair does not share, or a replay: a sequence not above the last)."""
        if hb.sender not in self._peers or hb.network not in self.shared(hb.sender):
            return False
        key = (hb.sender, hb.network)
        last = self._heard.get(key)
        if last is not None and now - last < self.stale_s and hb.seq <= self._seq.get(key, -1):
            return False
        self._heard[key] = now
        self._seq[key] = hb.seq
        return True

    def alive(self, peer: str, network: int, now: float) -> bool:
        last = self._heard.get((peer, network))
        return last is not None and now - last < self.timeout_s

    def alive_networks(self, peer: str, now: float) -> list[int]:
        return [i for i in self.shared(peer) if self.alive(peer, i, now)]

    # ---- decisions -----------------------------------------------------------------------
    def connect_choice(self, peer: str, now: float, attempt: int) -> int:
        """The network to open the Raft connection on: the first one alive, else (none
        heard yet, or all silent) each shared network in turn, one per attempt."""
        alive = self.alive_networks(peer, now)
        if alive:
            return alive[0]
        shared = self.shared(peer) or [0]
        return shared[attempt % len(shared)]

    def switch_to(self, peer: str, current: int, now: float) -> int | None:
        """The network the connection riding on ``current`` should move to, or None:
        only when ``current`` is dead and another shared network is alive."""
        if len(self.shared(peer)) < 2 or self.alive(peer, current, now):
            return None
        alive = self.alive_networks(peer, now)
        return alive[0] if alive else None

    def changes(self, now: float) -> list[LinkChange]:
        """Paths whose state changed since the last call (first: when first heard)."""
        out = []
        for peer in self._peers:
            for i in self.shared(peer):
                key = (peer, i)
                if key not in self._heard:
                    continue
                state = self.alive(peer, i, now)
                if self._reported.get(key) != state:
                    self._reported[key] = state
                    out.append(LinkChange(peer, i, self.host(peer, i) or "?", state))
        return out

    def status(self, now: float) -> dict[str, list[dict[str, object]]]:
        """Per peer, per shared network: address, alive, seconds since last heard."""
        out: dict[str, list[dict[str, object]]] = {}
        for peer in self._peers:
            rows: list[dict[str, object]] = []
            for i in self.shared(peer):
                last = self._heard.get((peer, i))
                rows.append({"network": i, "address": self.host(peer, i),
                             "alive": self.alive(peer, i, now),
                             "last_heard_s": None if last is None else round(now - last, 3)})
            out[peer] = rows
        return out


def member_paths(member: Mapping[str, object]) -> list[str | None]:
    """A member entry's hosts per network: its Raft address's host, then its links."""
    address = str(member["address"])
    links = member.get("links") or []
    assert isinstance(links, list)
    return [address.rsplit(":", 1)[0], *(str(h) if h else None for h in links)]
