"""Farm traffic sharing on one VIP: the nftables ruleset that keeps this node's buckets.

Every farm node receives every frame sent to the VIP (a shared MAC, see vip.shared_mac);
each one hashes the client into 256 buckets and accepts only the buckets it owns.

The rendered script (``render_ruleset``, pure) holds two tables, replaced together in one
nft transaction (declare-then-delete, so a reload never leaves a moment with no filter):

``table inet hacluster_farm_<module>``
    ``prerouting`` at priority -300 (raw: before conntrack, so a node that drops a
    packet never creates conntrack state for it; after defragmentation at -400 when
    conntrack is loaded). Packets arriving on the farm interface for the VIP jump to
    ``to_vip``, which first does ``meta pkttype set host`` (TCP drops frames that came on
    a multicast MAC otherwise), then takes the first matching rule:
    ``on_addr`` hashes ``jhash ip saddr``, ``on_port`` hashes ``jhash ip saddr . <proto>
    sport``, ``mod 256 seed <seed>``, accepts the packet if the bucket is in the set
    ``owned``, and drops it otherwise.
    **TCP: a bucket decides only who takes a new connection** (DESIGN.md "Networking":
    rebalancing resets nothing). For a TCP rule only a SYN is judged by its bucket here;
    every other TCP segment goes on to ``flows``, a chain at priority -150 (after
    conntrack), which accepts it only if this node's conntrack knows the connection
    (``ct state established,related``) and drops it silently otherwise. So when a
    bucket moves (a node leaves, joins or comes back), its old owner keeps serving the
    connections it has, the new owner takes the bucket's new connections, and neither
    ever answers the other's segments (the new owner used to reset them; the old owner
    dropped them). A segment of an unknown connection gets no reset from any node: the
    connections of a node that died time out at their clients instead of being reset.
    A node whose daemon died keeps its established connections (its application is
    alive), but its ``owned`` elements lapse, so it takes no new connection.
    **The buckets expire in the kernel** (DESIGN.md rule 7): ``owned`` has ``flags
    timeout`` and each element a timeout ending at the node's liveness-lease deadline;
    the daemon renews them after each lease renewal (``render_refresh``, run in-process
    through libnftables: a fraction of a millisecond, where ``nft -f -`` costs a fork and
    about 5 ms of CPU). If the daemon dies or freezes, the elements lapse and the node
    accepts no bucket from its lease deadline on, before the Raft leader may hand its
    buckets to another node. The kernel checks timeouts on every lookup.
    **Packets to the VIP that match no rule** (other ports, ICMP, ...) are bucketed by
    source address like ``on_addr``: exactly one node answers any packet to the VIP, so
    a ping gets one reply and no service is answered by every node at once.
    Packets from loopback are not filtered: a node's own clients reach its own VIP.
    Limit: a non-first IPv4 fragment has no port, so with ``on_port`` it falls to the
    by-address rule; load conntrack (defragmentation) if fragmented UDP is served.
``table arp hacluster_farm_<module>``
    ``output``: drops the kernel's own ARP replies for the VIP (they would announce the
    node's real MAC; vip.arp_responder answers with the shared MAC instead), and rewrites
    the sender address of the kernel's ARP requests sent *from* the VIP to the node's own
    address: a request from the VIP with the real MAC would repoint the client's entry
    for the VIP at this one node.

The inet table carries a comment naming the VIP, interface and shared MAC, so that
``vip.farm_vip.cleanup_leftovers`` can undo a crashed node from the table alone.
``bucket_of`` computes the kernel's bucket for a client (bit-exact with nft_hash.c's
jhash and reciprocal_scale, checked against the kernel in tests/lab/test_farm_traffic.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from vip.address import VipError

log = logging.getLogger("hacluster.vip.farm_ruleset")

NFT = shutil.which("nft") or "/usr/sbin/nft"
BUCKETS = 256
TABLE_PREFIX = "hacluster_farm_"
PRIORITY = -300
FLOWS_PRIORITY = -150   # after conntrack (-200): ct state is known
SET = "owned"   # the inet table's set of this node's buckets
PROTOS = ("tcp", "udp")
FILTERS = ("on_addr", "on_port")
_MODULE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_NFT_TIMEOUT_S = 10


class LbRule(NamedTuple):
    """One ``<loadbalancing_list>`` rule: port (None = any), protocol, filter."""
    port: int | None
    proto: str
    filter: str


def table_name(module: str) -> str:
    """The nft table name (both families) of a farm module; ValueError if unusable."""
    if not isinstance(module, str) or not _MODULE_RE.match(module):
        raise ValueError(f"bad farm module name {module!r}: need 1-64 letters, digits, "
                         f"'_' or '-', starting with a letter or digit")
    return TABLE_PREFIX + module


def _ipv4(addr: object, what: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(addr)
    except (ValueError, TypeError):
        raise ValueError(f"bad {what} {addr!r}: not an IPv4 address") from None
    return ip


def _vip(vip: object) -> ipaddress.IPv4Address:
    ip = _ipv4(vip, "farm VIP")
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or str(ip) == "255.255.255.255":
        raise ValueError(f"bad farm VIP {vip!r}: not a unicast address")
    return ip


def _seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"bad farm hash seed {seed!r}: need an integer 0..2**32-1")
    return seed


def _filter(filter: object) -> str:
    if filter not in FILTERS:
        raise ValueError(f"bad farm filter {filter!r}: need on_addr or on_port")
    return filter


def check_rules(rules: Iterable[object]) -> list[LbRule]:
    """The rules as LbRule, in order; ValueError naming the first bad one."""
    checked = []
    for i, raw in enumerate(rules):
        fields: Any = raw       # unpacked as given: what does not unpack is refused below
        try:
            port, proto, filter = fields
        except (TypeError, ValueError):
            raise ValueError(f"bad farm rule #{i} {raw!r}: need (port, proto, filter)") from None
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 1 <= port <= 65535):
            raise ValueError(f"bad port {port!r} in farm rule #{i}: need 1..65535 or None")
        if proto not in PROTOS:
            raise ValueError(f"bad protocol {proto!r} in farm rule #{i}: need tcp or udp")
        if filter not in FILTERS:
            raise ValueError(f"bad filter {filter!r} in farm rule #{i}: need on_addr or on_port")
        checked.append(LbRule(port, proto, filter))
    return checked


def check_buckets(owned: Iterable[object]) -> frozenset[int]:
    """The owned bucket set; ValueError naming a bucket outside 0..255."""
    if isinstance(owned, (str, bytes)):
        raise ValueError(f"bad farm bucket set {owned!r}: need a set of integers 0..255")
    result = set()
    for b in owned:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < BUCKETS:
            raise ValueError(f"bad farm bucket {b!r}: need an integer 0..{BUCKETS - 1}")
        result.add(b)
    return frozenset(result)


def _elements(owned: frozenset[int], timeout_ms: int | None) -> str:
    """The ``owned`` set's elements, each with the timeout if one is given."""
    suffix = f" timeout {timeout_ms}ms" if timeout_ms is not None else ""
    return ", ".join(f"{b}{suffix}" for b in sorted(owned))


def _check_timeout(timeout_ms: object) -> int | None:
    if timeout_ms is None:
        return None
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 0:
        raise ValueError(f"bad bucket timeout {timeout_ms!r} ms: need an integer >= 0")
    return timeout_ms


def _hash(filter: str, proto: str | None, seed: int) -> str:
    key = "ip saddr" if filter == "on_addr" else f"ip saddr . {proto} sport"
    return f"jhash {key} mod {BUCKETS} seed {seed:#x}"


def table_comment(vip: str, interface: str, mac: str) -> str:
    return f"hacluster farm vip={vip} interface={interface} mac={mac}"


COMMENT_RE = re.compile(r'comment "hacluster farm vip=(\S+) interface=(\S+) mac=(\S+)"')


def render_ruleset(module: str, vip: str, rules: Sequence[object], owned: Iterable[object],
                   seed: int, interface: str, node_addr: str, mac: str = "",
                   timeout_ms: int | None = None) -> str:
    """The nft script that installs (or atomically replaces) the module's two tables.

    ``rules`` are (port|None, "tcp"|"udp", "on_addr"|"on_port"), first match wins;
    ``owned`` ⊆ range(256); ``node_addr`` is this node's own address on ``interface``
    (the sender of its ARP requests); ``mac`` is only recorded in the table comment;
    ``timeout_ms``: each owned bucket expires in the kernel after that long unless
    ``render_refresh`` renews it (0: none is installed, the node accepts no bucket;
    None: they never expire). Pure; ValueError with a one-line message for any bad input."""
    table = table_name(module)
    ip = _vip(vip)
    checked = check_rules(rules)
    buckets = check_buckets(owned)
    seed = _seed(seed)
    timeout_ms = _check_timeout(timeout_ms)
    if not isinstance(interface, str) or not _IFNAME_RE.match(interface):
        raise ValueError(f"bad farm interface name {interface!r}")
    node = _ipv4(node_addr, "node address")
    if node == ip:
        raise ValueError(f"bad node address {node_addr!r}: it is the farm VIP itself")
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}|", mac):
        raise ValueError(f"bad shared MAC {mac!r}: need xx:xx:xx:xx:xx:xx (lower case)")
    if timeout_ms == 0:
        buckets = frozenset()
    to_vip = ["meta pkttype set host"]  # the frame came to the shared multicast MAC
    flows = []
    for r in checked:
        match = f"{r.proto} dport {r.port}" if r.port is not None else f"meta l4proto {r.proto}"
        if r.proto == "tcp":
            syn = f"{match} tcp flags & (syn | ack) == syn"
            to_vip += [f"{syn} {_hash(r.filter, r.proto, seed)} @{SET} accept", f"{syn} drop",
                       f"{match} accept"]     # not a SYN: the flows chain decides
            flows += [f"{syn} accept", f"{match} ct state established,related accept",
                      f"{match} drop"]
        else:
            to_vip += [f"{match} {_hash(r.filter, r.proto, seed)} @{SET} accept", f"{match} drop"]
    to_vip += [f"{_hash('on_addr', None, seed)} @{SET} accept", "drop"]  # everything else
    set_lines = [
        f"  set {SET} {{",
        # A jhash result is a 32-bit integer; `typeof meta length` declares exactly that
        # (nft 1.0.6 crashes listing a set declared `typeof jhash ...`, and `type mark`
        # is refused as another data type).
        "    typeof meta length",
        "    flags timeout",
        *([f"    elements = {{ {_elements(buckets, timeout_ms)} }}"] if buckets else []),
        "  }",
    ]
    lines = [
        f"table inet {table} {{}}", f"delete table inet {table}",
        f"table arp {table} {{}}", f"delete table arp {table}",
        f"table inet {table} {{",
        f'  comment "{table_comment(str(ip), interface, mac)}"',
        *set_lines,
        "  chain prerouting {",
        f"    type filter hook prerouting priority {PRIORITY}; policy accept;",
        f'    iifname "{interface}" ip daddr {ip} jump to_vip',
        "  }",
        "  chain to_vip {",
        *(f"    {rule}" for rule in to_vip),
        "  }",
        *([
            "  chain established {",
            f"    type filter hook prerouting priority {FLOWS_PRIORITY}; policy accept;",
            f'    iifname "{interface}" ip daddr {ip} jump flows',
            "  }",
            "  chain flows {",
            *(f"    {rule}" for rule in flows),
            "  }",
        ] if flows else []),
        "}",
        f"table arp {table} {{",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        f"    arp operation reply arp saddr ip {ip} counter drop",
        f"    arp operation request arp saddr ip {ip} counter arp saddr ip set {node}",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_refresh(module: str, owned: Iterable[object], timeout_ms: int) -> str:
    """The nft script that renews the owned buckets' timeouts: the set's elements
    replaced in one transaction (a packet sees the old elements or the new, never an
    empty set). Pure; ValueError for bad input, or for a 0 timeout (nothing to renew:
    let them lapse)."""
    table = table_name(module)
    buckets = check_buckets(owned)
    checked = _check_timeout(timeout_ms)
    if not checked:
        raise ValueError(f"bad bucket timeout {timeout_ms!r} ms for a refresh: need >= 1")
    lines = [f"flush set inet {table} {SET}"]
    if buckets:
        lines.append(f"add element inet {table} {SET} {{ {_elements(buckets, checked)} }}")
    return "\n".join(lines) + "\n"


def render_removal(module: str) -> str:
    """The nft script removing the module's tables (idempotent, one transaction)."""
    table = table_name(module)
    return (f"table inet {table} {{}}\ndelete table inet {table}\n"
            f"table arp {table} {{}}\ndelete table arp {table}\n")


def _nft(args: Sequence[str], script: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([NFT, *args], input=script, capture_output=True, text=True,
                              check=False, timeout=_NFT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VipError(f"cannot run {NFT}: {exc}") from None


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln]
    return (errors or lines or ["no message"])[0]


class NftContext:
    """nft scripts run in-process through libnftables (one transaction per script, as
    ``nft -f -``), for the frequent bucket refreshes; falls back to the ``nft`` binary
    when the library cannot be loaded. One context per thread: use it from one only.
    Netlink sockets belong to the network namespace they are opened in: create it in
    the namespace it is meant for (the daemon's, for its whole life)."""

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._ctx = None
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            ctx = lib.nft_ctx_new(0)
            if not ctx:
                raise OSError("nft_ctx_new failed")
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            self._lib, self._ctx = lib, ctx
        except (OSError, AttributeError) as exc:
            log.info("event=libnftables_unavailable error=%r fallback=%s", str(exc), NFT)

    def run(self, script: str, what: str) -> None:
        if self._ctx is None or self._lib is None:       # both set together, or neither
            done = _nft(["-f", "-"], script)
            if done.returncode != 0:
                raise VipError(f"nft refused {what}: {_first_error(done.stderr)}")
            return
        if self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()) != 0:
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            raise VipError(f"nft refused {what}: {_first_error(err)}")

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None and self._lib is not None:
            self._lib.nft_ctx_free(ctx)


def apply_ruleset(script: str) -> None:
    """Load a rendered script with ``nft -f -``: one transaction, all or nothing."""
    done = _nft(["-f", "-"], script)
    if done.returncode != 0:
        raise VipError(f"nft refused the farm ruleset: {_first_error(done.stderr)}")


def remove_ruleset(module: str) -> None:
    """Remove the module's tables; nothing to remove is fine."""
    done = _nft(["-f", "-"], render_removal(module))
    if done.returncode != 0:
        raise VipError(f"nft cannot remove the farm tables of {module}: "
                       f"{_first_error(done.stderr)}")
    log.info("event=farm_ruleset_removed module=%s", module)


def read_table_comment(module: str) -> tuple[str, str, str] | None:
    """(vip, interface, mac) recorded in the module's inet table, or None if no table."""
    done = _nft(["list", "table", "inet", table_name(module)])
    if done.returncode != 0:
        return None  # no such table
    found = COMMENT_RE.search(done.stdout)
    return found.groups() if found else None  # type: ignore[return-value]


# -- the kernel's hash, in Python -----------------------------------------------------

_JHASH_INITVAL = 0xDEADBEEF
_M32 = 0xFFFFFFFF


def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _final(a: int, b: int, c: int) -> int:
    """__jhash_final; returns c."""
    c = ((c ^ b) - _rol32(b, 14)) & _M32
    a = ((a ^ c) - _rol32(c, 11)) & _M32
    b = ((b ^ a) - _rol32(a, 25)) & _M32
    c = ((c ^ b) - _rol32(b, 16)) & _M32
    a = ((a ^ c) - _rol32(c, 4)) & _M32
    b = ((b ^ a) - _rol32(a, 14)) & _M32
    c = ((c ^ b) - _rol32(b, 24)) & _M32
    return c


def jhash(key: bytes, initval: int) -> int:
    """Linux's jhash() (include/linux/jhash.h, Bob Jenkins' lookup3) on a little-endian
    CPU, for keys of up to 12 bytes (the farm's keys are 4 or 8; longer ones would need
    the mixing loop, which is left out rather than left untested)."""
    if len(key) > 12:
        raise ValueError(f"jhash key of {len(key)} bytes: only up to 12 are supported")
    a = b = c = (_JHASH_INITVAL + len(key) + initval) & _M32
    if not key:
        return c
    tail = key.ljust(12, b"\x00")  # the tail switch's fallthrough adds exactly these
    a = (a + int.from_bytes(tail[0:4], "little")) & _M32
    b = (b + int.from_bytes(tail[4:8], "little")) & _M32
    c = (c + int.from_bytes(tail[8:12], "little")) & _M32
    return _final(a, b, c)


def bucket_of(client_ip: str, client_port: int | None, filter: str, seed: int) -> int:
    """The bucket nft puts a client in: ``jhash ip saddr [. sport] mod 256 seed S``.

    nft hashes its registers: the address (4 bytes, network order) and, for on_port, the
    port in the next 32-bit register (2 bytes network order, 2 zero bytes); the bucket
    is reciprocal_scale(hash, 256) = hash * 256 >> 32."""
    key = _ipv4(client_ip, "client address").packed
    if _filter(filter) == "on_port":
        if isinstance(client_port, bool) or not isinstance(client_port, int) \
                or not 0 <= client_port <= 65535:
            raise ValueError(f"bad client port {client_port!r}: need 0..65535 for on_port")
        key += client_port.to_bytes(2, "big") + b"\x00\x00"
    return (jhash(key, _seed(seed)) * BUCKETS) >> 32
