"""Binary frames of the replication channel (pure: no I/O, no clocks).

Layout of one frame (little-endian)::

    offset size field
         0    4 magic            b"HArp"
         4    1 version          PROTOCOL_VERSION
         5    1 ftype            FrameType
         6    1 flags            COMPRESSED | MORE | LATE
         7    1 kind             OpKind (OP), QueryKind (QUERY), AckMode (HELLO), else 0
         8    4 status           errno (ACK, REPLY, AUTH, RESET), else 0
        12    8 epoch            u64
        20    8 seq              u64: op sequence (OP, ACK), query id (QUERY, REPLY)
        28    8 offset           u64 (ACK: first seq of the acknowledged range)
        36    8 length           u64
        44    4 mode             u32
        48    4 uid              u32, 0xFFFFFFFF = -1 (unchanged)
        52    4 gid              u32, same
        56    8 rdev             u64
        64    8 atime_ns         i64
        72    8 mtime_ns         i64
        80    2 path_len         <= MAX_PATH
        82    2 path2_len        <= MAX_PATH
        84    4 payload_len      bytes on the wire (compressed or raw) <= MAX_PAYLOAD
        88    4 raw_len          uncompressed payload length <= MAX_PAYLOAD
        92    8 payload_digest   xxh3_64 of the *uncompressed* payload
       100    8 body_digest      xxh3_64 of path + path2 (+ the wire payload if compressed)
       108    8 header_checksum  xxh3_64 of bytes 0..107
       116      path (utf-8, surrogateescape), path2, payload

The header checksum is verified before any length is trusted, so a corrupted
header can neither make the reader wait for a gigabyte nor mis-frame the
stream. The body digest covers the bytes as sent that the payload digest does
not: the paths, and a compressed payload (lz4 has redundant encodings, so a
damaged block can decompress to the same data; it is refused all the same).
The payload digest stays a pure digest of the data, the value reintegration's
block digests use.
xxh3 detects accidents, not attackers: the channel authenticates the peer at
connection time (HMAC handshake, see channel.py), and every byte after the
handshake, both ways, travels in AEAD records (secure_stream.py).
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Iterator

import lz4.block
import xxhash

from .ops import Op, OpKind

MAGIC = b"HArp"
PROTOCOL_VERSION = 1
MAX_PAYLOAD = 8 * 1024 * 1024
MAX_PATH = 4096
MAX_MESSAGE = 1024              # ACK/AUTH/RESET texts are truncated to this
COMPRESS_MIN = 128              # below this, lz4 cannot pay for itself
COMPRESS_RATIO = 0.9            # compress only when the result is < 90 % of raw
DIRECT_BODY_MIN = 64 * 1024     # bodies this big are received into a buffer of their own
_PROBE = 16 * 1024              # payloads of 2 probes or more: try the first one before the whole

_HDR = struct.Struct("<4sBBBBIQQQQIIIQqqHHIIQQ")
_CHK = struct.Struct("<Q")
HEADER_SIZE = _HDR.size + _CHK.size
_U32_NONE = 0xFFFFFFFF
_xxh = xxhash.xxh3_64_intdigest


class FrameType(enum.IntEnum):
    OP = 1       # one Op (client -> receiver)
    ACK = 2      # seqs offset..seq applied/received (status 0), or seq failed (status errno)
    QUERY = 3    # reintegration question (kind = QueryKind), seq = query id
    REPLY = 4    # answer chunk(s) for query id seq; MORE set on all but the last
    HELLO = 5    # handshake: client nonce/epoch/ack mode, then receiver nonce
    AUTH = 6     # handshake: HMAC proof, or refusal (status errno, payload message)
    EPOCH = 7    # receiver -> client: this receiver now refuses epochs < epoch
    PING = 8     # liveness probe, offset = ping id
    PONG = 9
    RESET = 10   # receiver -> client: closing the channel, payload says why


class QueryKind(enum.IntEnum):
    TREE = 1     # manifest of the receiver's tree
    DIGESTS = 2  # xxh3 per block of path, length = block size, offset = start
    READ = 3     # bytes of path at offset, length
    ACTIVITY = 4  # the receiver's activity report (JSON; activity_log.read_report)
    IN_SYNC = 5   # primary: the copies are identical now (epoch); the receiver notes it


class AckMode(enum.IntEnum):
    APPLY = 1    # ack after the op is applied (default)
    RECEIPT = 2  # ack once verified and queued (FSYNC still waits for durability)
    ASYNC = 3    # the client does not wait (acks still flow, for lag and errors)

    @classmethod
    def parse(cls, name: "str | AckMode") -> "AckMode":
        if isinstance(name, AckMode):
            return name
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown ack mode {name!r} (apply, receipt or async)") from None


class Flag(enum.IntFlag):
    COMPRESSED = 1  # payload is an lz4 block of raw_len bytes
    MORE = 2        # REPLY: more chunks follow for this query
    LATE = 4        # ACK: an op acknowledged on receipt failed when applied
    DURABLE = 8     # ACK: every op up to seq that was applied is durable (syncfs)


class Feature(enum.IntFlag):
    """Optional protocol features, offered by the client in its HELLO's mode field
    and accepted (echoed) by the receiver in its own. A peer from before this
    field sends and echoes 0, so each side knows what the other understands."""
    WRITE_TIMES = 1       # WRITE ops may carry WRITE_SETS_TIMES (no separate UTIMENS)
    QUERY_ONLY = 2        # client: this connection only asks questions (verify); it
                          # sends no ops and must not take the sender's place
    ACTIVITY_LOG = 4      # ACTIVITY and IN_SYNC queries are understood
    AEAD = 8              # everything after the handshake in AEAD records (secure_stream);
                          # required: a peer without it is refused
    DURABLE_MARK = 16     # the receiver reports how far its copy is durable (DURABLE acks)
    NEGOTIATE = 1 << 31   # set by every peer that knows this field


_KNOWN_FLAGS = int(Flag.COMPRESSED | Flag.MORE | Flag.LATE | Flag.DURABLE)
# Plain ints and lookup tables for the per-frame paths: an IntFlag "&" builds a Flag
# and an IntEnum call searches (~2 us each under cProfile, Python 3.11); a receiver
# under a database decodes ~150k frames in 40 s (1.6 s of them went to enum calls).
_COMPRESSED = int(Flag.COMPRESSED)
_FRAME_TYPES = {int(t): t for t in FrameType}
_OP_KINDS = {int(k): k for k in OpKind}
_KIND_ENUM = {FrameType.OP: OpKind, FrameType.QUERY: QueryKind, FrameType.HELLO: AckMode}


class FrameError(ValueError):
    """A frame that must not be used. ``seq``/``path`` are set when known
    (i.e. the header was trustworthy)."""

    def __init__(self, reason: str, seq: int | None = None, path: str | None = None) -> None:
        where = ""
        if seq is not None:
            where += f" seq={seq}"
        if path is not None:
            where += f" path={path!r}"
        super().__init__(f"bad frame: {reason}{' (' + where.strip() + ')' if where else ''}")
        self.reason = reason
        self.seq = seq
        self.path = path


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    ftype: FrameType
    flags: int
    kind: int
    status: int
    epoch: int
    seq: int
    offset: int
    length: int
    mode: int
    uid: int
    gid: int
    rdev: int
    atime_ns: int
    mtime_ns: int
    path_len: int
    path2_len: int
    payload_len: int
    raw_len: int
    payload_digest: int
    body_digest: int

    @property
    def body_len(self) -> int:
        return self.path_len + self.path2_len + self.payload_len


@dataclass(frozen=True, slots=True)
class Frame:
    header: Header
    path: str
    path2: str
    payload: bytes          # uncompressed (a read-only memoryview for a body received
    op: Op | None = None    # set for OP frames         straight into its own buffer)

    @property
    def ftype(self) -> FrameType:
        return self.header.ftype

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def message(self) -> str:
        """The text of an ACK/AUTH/RESET payload."""
        return bytes(self.payload).decode("utf-8", "replace")


# ---------------------------------------------------------------- encoding


def _fsencode(text: str, what: str) -> bytes:
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise FrameError(f"{what} is not encodable as file name bytes: {exc.reason}",
                         path=text) from None
    if len(raw) > MAX_PATH:
        raise FrameError(f"{what} is {len(raw)} bytes, over MAX_PATH {MAX_PATH}", path=text[:80])
    return raw


def _compress(data: bytes) -> tuple[int, bytes]:
    """(flags, wire payload): lz4 only when it pays; incompressible data goes raw."""
    n = len(data)
    if n < COMPRESS_MIN:
        return 0, data
    limit = n * COMPRESS_RATIO
    if n >= 2 * _PROBE:
        # a cheap look at the start avoids compressing a whole random block for nothing
        probe = memoryview(data)[:_PROBE]
        if len(lz4.block.compress(probe, store_size=False)) >= _PROBE * COMPRESS_RATIO:
            return 0, data
    packed = lz4.block.compress(data, store_size=False)
    if len(packed) < limit:
        return int(Flag.COMPRESSED), packed
    return 0, data


def _body_digest(names: bytes | memoryview, flags: int, wire: bytes | memoryview) -> int:
    if flags & _COMPRESSED:
        return xxhash.xxh3_64_intdigest(wire, seed=_xxh(names))
    return _xxh(names)


def _u32_id(value: int, what: str) -> int:
    if value == -1:
        return _U32_NONE
    if not 0 <= value < _U32_NONE:
        raise FrameError(f"{what} {value} out of range (-1 or 0..{_U32_NONE - 1})")
    return value


class PreparedOp:
    """An Op whose payload is compressed and digested, waiting for its seq.

    Lets a sender do the expensive part outside its send lock and assign the
    sequence number (header) only when it is its turn to send."""

    __slots__ = ("op", "_paths", "_payload", "_flags", "_fields", "_digests")

    def __init__(self, op: Op, compress: bool = True) -> None:
        self.op = op
        path = _fsencode(op.path, "path")
        path2 = _fsencode(op.path2, "path2")
        data = op.data
        if len(data) > MAX_PAYLOAD:
            raise FrameError(f"payload of {len(data)} bytes exceeds MAX_PAYLOAD {MAX_PAYLOAD}",
                             path=op.path)
        self._flags, self._payload = _compress(data) if compress else (0, data)
        self._paths = path + path2
        self._fields = (int(op.kind), len(path), len(path2), len(data))
        self._digests = (_xxh(data), _body_digest(self._paths, self._flags, self._payload))

    @property
    def wire_size(self) -> int:
        return HEADER_SIZE + len(self._paths) + len(self._payload)

    def parts(self, epoch: int, seq: int) -> list[bytes]:
        """The frame as buffers for sendmsg/join: header+paths, payload."""
        op = self.op
        kind, plen, p2len, rawlen = self._fields
        head = _pack(FrameType.OP, self._flags, kind, 0, epoch, seq, op.offset, op.length,
                     op.mode, _u32_id(op.uid, "uid"), _u32_id(op.gid, "gid"), op.rdev,
                     op.atime_ns, op.mtime_ns, plen, p2len, len(self._payload), rawlen,
                     self._digests[0], self._digests[1], seq=seq, path=op.path)
        if self._payload:
            return [head + self._paths, self._payload]
        return [head + self._paths]


def _pack(ftype: int, flags: int, kind: int, status: int, epoch: int, seqno: int,
          offset: int, length: int, mode: int, uid: int, gid: int, rdev: int,
          atime_ns: int, mtime_ns: int, plen: int, p2len: int, paylen: int, rawlen: int,
          pdigest: int, bdigest: int, *, seq: int | None = None, path: str | None = None
          ) -> bytes:
    try:
        head = _HDR.pack(MAGIC, PROTOCOL_VERSION, ftype, flags, kind, status, epoch, seqno,
                         offset, length, mode, uid, gid, rdev, atime_ns, mtime_ns, plen, p2len,
                         paylen, rawlen, pdigest, bdigest)
    except struct.error as exc:
        raise FrameError(f"field out of range: {exc}", seq=seq, path=path) from None
    return head + _CHK.pack(_xxh(head))


def prepare_op(op: Op, compress: bool = True) -> PreparedOp:
    """compress=False skips lz4 (a fast LAN where the CPU is the bottleneck)."""
    return PreparedOp(op, compress)


def encode_op(op: Op, epoch: int, seq: int, compress: bool = True) -> bytes:
    return b"".join(PreparedOp(op, compress).parts(epoch, seq))


def encode_frame(ftype: FrameType, *, epoch: int = 0, seq: int = 0, kind: int = 0,
                 status: int = 0, flags: int = 0, offset: int = 0, length: int = 0,
                 mode: int = 0, path: str = "", path2: str = "", payload: bytes = b"",
                 compress: bool = True) -> bytes:
    """Any non-OP frame (and the generic form behind the helpers below)."""
    pathb = _fsencode(path, "path")
    path2b = _fsencode(path2, "path2")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD {MAX_PAYLOAD}",
                         seq=seq)
    cflags, wire = _compress(payload) if compress else (0, payload)
    names = pathb + path2b
    head = _pack(ftype, flags | cflags, kind, status, epoch, seq, offset, length, mode,
                 _U32_NONE, _U32_NONE, 0, 0, 0, len(pathb), len(path2b), len(wire),
                 len(payload), _xxh(payload), _body_digest(names, cflags, wire), seq=seq,
                 path=path or None)
    return b"".join((head, names, wire))


def _text(message: str) -> bytes:
    return message.encode("utf-8", "replace")[:MAX_MESSAGE]


def encode_ack(seq: int, errno: int = 0, message: str = "", *, first_seq: int | None = None,
               late: bool = False, epoch: int = 0) -> bytes:
    """Success for seqs first_seq..seq (default: just seq), or failure of seq with errno."""
    if errno and first_seq not in (None, seq):
        raise ValueError("an error ACK names exactly one seq")
    return encode_frame(FrameType.ACK, epoch=epoch, seq=seq, status=errno,
                        offset=seq if first_seq is None else first_seq,
                        flags=int(Flag.LATE) if late else 0, payload=_text(message),
                        compress=False)


def encode_durable(seq: int, epoch: int = 0) -> bytes:
    """Every op up to ``seq`` that this receiver applied is on its disk (it ran
    syncfs after applying them); seq 0: everything from before this connection."""
    return encode_frame(FrameType.ACK, epoch=epoch, seq=seq, offset=seq,
                        flags=int(Flag.DURABLE), compress=False)


def encode_query(qid: int, qkind: QueryKind, path: str = "", *, offset: int = 0,
                 length: int = 0, epoch: int = 0) -> bytes:
    return encode_frame(FrameType.QUERY, epoch=epoch, seq=qid, kind=int(qkind), path=path,
                        offset=offset, length=length)


def encode_reply(qid: int, payload: bytes = b"", *, status: int = 0, more: bool = False,
                 offset: int = 0, length: int = 0) -> bytes:
    return encode_frame(FrameType.REPLY, seq=qid, status=status, offset=offset, length=length,
                        flags=int(Flag.MORE) if more else 0, payload=payload)


def encode_hello(epoch: int, ack_mode: AckMode, nonce: bytes, features: int = 0) -> bytes:
    """``features``: Feature bits offered (client) or accepted (receiver)."""
    return encode_frame(FrameType.HELLO, epoch=epoch, kind=int(ack_mode), mode=int(features),
                        payload=nonce, compress=False)


def encode_auth(proof: bytes = b"", *, status: int = 0, message: str = "") -> bytes:
    return encode_frame(FrameType.AUTH, status=status,
                        payload=_text(message) if status else proof, compress=False)


def encode_epoch(epoch: int, message: str = "") -> bytes:
    return encode_frame(FrameType.EPOCH, epoch=epoch, payload=_text(message), compress=False)


def encode_ping(ping_id: int) -> bytes:
    return encode_frame(FrameType.PING, offset=ping_id)


def encode_pong(ping_id: int) -> bytes:
    return encode_frame(FrameType.PONG, offset=ping_id)


def encode_reset(status: int, message: str) -> bytes:
    return encode_frame(FrameType.RESET, status=status, payload=_text(message), compress=False)


# ---------------------------------------------------------------- decoding


def decode_header(buf: bytes | bytearray | memoryview, max_payload: int = MAX_PAYLOAD
                  ) -> Header:
    """Check and unpack the first HEADER_SIZE bytes of buf. Raises FrameError."""
    if len(buf) < HEADER_SIZE:
        raise FrameError(f"truncated header: {len(buf)} of {HEADER_SIZE} bytes")
    view = memoryview(buf)[:HEADER_SIZE]
    if view[:4] != MAGIC:
        raise FrameError(f"bad magic {bytes(view[:4])!r} (not a replication peer?)")
    if view[4] != PROTOCOL_VERSION:
        raise FrameError(f"unsupported protocol version {view[4]} (this side speaks "
                         f"{PROTOCOL_VERSION})")
    (stored,) = _CHK.unpack_from(view, _HDR.size)
    if _xxh(view[:_HDR.size]) != stored:
        raise FrameError("header checksum mismatch (corrupted header)")
    (_, version, ftype, flags, kind, status, epoch, seq, offset, length, mode, uid, gid, rdev,
     atime_ns, mtime_ns, plen, p2len, paylen, rawlen, pdigest, bdigest) = _HDR.unpack_from(view)
    known = _FRAME_TYPES.get(ftype)
    if known is None:
        raise FrameError(f"unknown frame type {ftype}", seq=seq)
    ftype = known
    kinds = _KIND_ENUM.get(ftype)
    if kinds is None:
        if kind:
            raise FrameError(f"{ftype.name} frame with kind {kind}", seq=seq)
    elif kind not in kinds._value2member_map_:
        raise FrameError(f"unknown {kinds.__name__} {kind} in {ftype.name} frame", seq=seq)
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown flags {flags:#x}", seq=seq)
    if plen > MAX_PATH or p2len > MAX_PATH:
        raise FrameError(f"path length {max(plen, p2len)} over MAX_PATH {MAX_PATH}", seq=seq)
    if rawlen > max_payload or paylen > max_payload:
        raise FrameError(f"payload of {max(rawlen, paylen)} bytes exceeds MAX_PAYLOAD "
                         f"{max_payload}", seq=seq)
    if flags & _COMPRESSED:
        if paylen == 0 or rawlen == 0:
            raise FrameError("compressed flag on an empty payload", seq=seq)
    elif paylen != rawlen:
        raise FrameError(f"raw payload of {paylen} bytes but raw_len {rawlen}", seq=seq)
    return Header(version, ftype, flags, kind, status, epoch, seq, offset, length, mode,
                  -1 if uid == _U32_NONE else uid, -1 if gid == _U32_NONE else gid, rdev,
                  atime_ns, mtime_ns, plen, p2len, paylen, rawlen, pdigest, bdigest)


def decode_body(header: Header, body: bytes | bytearray | memoryview, *,
                owned: bool = False) -> Frame:
    """Verify and decode the header.body_len bytes that follow a header.
    ``owned``: body is a buffer of this frame alone, never changed afterwards, so
    a raw payload is a read-only view of it rather than a copy."""
    h = header
    if len(body) != h.body_len:
        raise FrameError(f"body is {len(body)} bytes, header says {h.body_len}", seq=h.seq)
    view = memoryview(body)
    names = view[:h.path_len + h.path2_len]
    path = bytes(names[:h.path_len]).decode("utf-8", "surrogateescape")
    wire = view[h.path_len + h.path2_len:]
    if _body_digest(names, h.flags, wire) != h.body_digest:
        raise FrameError("body digest mismatch (corrupted path or compressed payload)",
                         seq=h.seq, path=path)
    path2 = bytes(names[h.path_len:]).decode("utf-8", "surrogateescape")
    if h.flags & _COMPRESSED:
        try:
            payload = lz4.block.decompress(wire, uncompressed_size=h.raw_len)
        except lz4.block.LZ4BlockError as exc:
            raise FrameError(f"lz4 decompression failed: {exc}", seq=h.seq, path=path) from None
        if len(payload) != h.raw_len:
            raise FrameError(f"decompressed to {len(payload)} bytes, expected {h.raw_len}",
                             seq=h.seq, path=path)
    elif owned:
        payload = wire.toreadonly()
    else:
        payload = bytes(wire)
    if _xxh(payload) != h.payload_digest:
        raise FrameError("payload digest mismatch (corrupted data)", seq=h.seq, path=path)
    op = None
    if h.ftype == FrameType.OP:
        op = Op(_OP_KINDS[h.kind], path, path2, h.offset, h.length, h.mode, h.uid, h.gid, h.rdev,
                h.atime_ns, h.mtime_ns, payload)
    return Frame(h, path, path2, payload, op)


def decode_frame(buf: bytes | bytearray | memoryview, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Decode exactly one complete frame (no bytes missing or left over)."""
    header = decode_header(buf, max_payload)
    end = HEADER_SIZE + header.body_len
    if len(buf) != end:
        raise FrameError(f"frame is {len(buf)} bytes, header says {end}", seq=header.seq)
    return decode_body(header, memoryview(buf)[HEADER_SIZE:])


class FrameDecoder:
    """Incremental decoder: feed() bytes as they arrive, get complete frames.

    The header is checked as soon as it is complete, so a bad or oversized
    header fails before its body is awaited. After a FrameError the stream is
    out of step and the decoder refuses further input.

    A body of DIRECT_BODY_MIN bytes or more that is still incomplete gets a
    buffer of its own: ``body_target()`` is where its next bytes go (a reader
    can ``recv_into`` it, then call ``body_received``), and its raw payload
    is handed out as a view of that buffer: one copy per byte (the kernel's)
    instead of three."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._header: Header | None = None
        self._max_payload = max_payload
        self._failed: FrameError | None = None
        self._body: bytearray | None = None   # the current frame's own body buffer
        self._have = 0                        # bytes of it filled

    @property
    def buffered(self) -> int:
        return len(self._buf) + (self._have if self._body is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        return list(self.iter_feed(data))

    def body_target(self) -> memoryview | None:
        """The unfilled part of the current frame's own body buffer, or None."""
        if self._failed is not None or self._body is None:
            return None
        return memoryview(self._body)[self._have:]

    def body_received(self, n: int) -> list[Frame]:
        """``n`` bytes were written at the start of ``body_target()``."""
        if self._failed is not None:
            raise self._failed
        if self._body is None or not 0 < n <= len(self._body) - self._have:
            raise ValueError(f"body_received({n}) does not match the body buffer")
        self._have += n
        return self._finish_body()

    def _finish_body(self) -> list[Frame]:
        header, body = self._header, self._body
        assert header is not None and body is not None      # called while a body is received
        if self._have < len(body):
            return []
        self._header, self._body, self._have = None, None, 0
        try:
            return [decode_body(header, body, owned=True)]
        except FrameError as exc:
            self._failed = exc
            raise

    def iter_feed(self, data: bytes | bytearray | memoryview) -> Iterator[Frame]:
        if self._failed is not None:
            raise self._failed
        if self._body is not None:
            take = min(len(data), len(self._body) - self._have)
            self._body[self._have:self._have + take] = data[:take]
            self._have += take
            yield from self._finish_body()
            data = data[take:]
            if not len(data):
                return
        self._buf += data
        buf = self._buf
        try:
            while True:
                if self._header is None:
                    if len(buf) < HEADER_SIZE:
                        return
                    self._header = decode_header(buf, self._max_payload)
                end = HEADER_SIZE + self._header.body_len
                if len(buf) < end:
                    if self._header.body_len >= DIRECT_BODY_MIN:
                        self._body = bytearray(self._header.body_len)
                        self._have = len(buf) - HEADER_SIZE
                        self._body[:self._have] = memoryview(buf)[HEADER_SIZE:]
                        buf.clear()
                    return
                header, self._header = self._header, None
                frame = decode_body(header, memoryview(buf)[HEADER_SIZE:end])
                del buf[:end]   # bytearray: deleting a prefix is cheap
                yield frame
        except FrameError as exc:
            self._failed = exc
            raise
