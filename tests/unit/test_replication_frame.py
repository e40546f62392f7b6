"""Frames of the replication channel: round trips and refusal of anything damaged."""
import random

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replication import frame as fr
from replication.frame import (HEADER_SIZE, MAX_PATH, MAX_PAYLOAD, AckMode, Flag, FrameDecoder,
                               FrameError, FrameType, QueryKind, decode_frame, encode_ack,
                               encode_op)
from replication.ops import UTIME_NOW, UTIME_OMIT, Op, OpKind

U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-2**63, 2**63 - 1)
IDS = st.integers(-1, 2**32 - 2)

# any file name bytes (as FUSE hands them over), decoded the way os.fsdecode does
paths = st.binary(max_size=300).map(lambda b: b.decode("utf-8", "surrogateescape"))


@st.composite
def payloads(draw):
    size = draw(st.sampled_from([0, 1, 100, 4096, 65536, 300_000, 1 << 20, 3 << 20]))
    style = draw(st.sampled_from(["zeros", "random", "text", "mixed"]))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    if style == "zeros":
        return bytes(size)
    if style == "random":
        return rnd.randbytes(size)
    if style == "text":
        words = [b"replicated ", b"block ", b"epoch ", b"mirror\n", b"0123456789 "]
        out = bytearray()
        while len(out) < size:
            out += rnd.choice(words)
        return bytes(out[:size])
    return bytes(size // 2) + rnd.randbytes(size - size // 2)


ops = st.builds(Op, kind=st.sampled_from(list(OpKind)), path=paths, path2=paths, offset=U64,
                length=U64, mode=st.integers(0, 2**32 - 1), uid=IDS, gid=IDS, rdev=U64,
                atime_ns=st.one_of(I64, st.sampled_from([UTIME_NOW, UTIME_OMIT])),
                mtime_ns=I64, data=payloads())


def _resign(buf: bytearray) -> bytes:
    """Recompute the header checksum (to craft frames a peer with a bug could send)."""
    n = fr._HDR.size
    buf[n:n + 8] = fr._CHK.pack(xxhash.xxh3_64_intdigest(bytes(buf[:n])))
    return bytes(buf)


def _set_field(frame_bytes: bytes, name: str, value: int) -> bytes:
    names = ["magic", "version", "ftype", "flags", "kind", "status", "epoch", "seq", "offset",
             "length", "mode", "uid", "gid", "rdev", "atime_ns", "mtime_ns", "path_len",
             "path2_len", "payload_len", "raw_len", "payload_digest", "body_digest"]
    fields = list(fr._HDR.unpack_from(frame_bytes))
    fields[names.index(name)] = value
    buf = bytearray(frame_bytes)
    buf[:fr._HDR.size] = fr._HDR.pack(*fields)
    return _resign(buf)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(op=ops, epoch=U64, seq=U64)
def test_round_trip_any_op(op, epoch, seq):
    data = encode_op(op, epoch, seq)
    frame = decode_frame(data)
    assert frame.op == op
    assert (frame.header.epoch, frame.header.seq, frame.ftype) == (epoch, seq, FrameType.OP)
    assert frame.header.payload_digest == xxhash.xxh3_64_intdigest(op.data)


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(ops, min_size=1, max_size=4), cuts=st.lists(st.integers(1, 70_000),
                                                                  max_size=20))
def test_decoder_reassembles_frames_from_any_split(batch, cuts):
    stream = b"".join(encode_op(op, 7, i) for i, op in enumerate(batch))
    dec = FrameDecoder()
    out, pos = [], 0
    for cut in cuts:
        out += dec.feed(stream[pos:pos + cut])
        pos += cut
    out += dec.feed(stream[pos:])
    assert [f.op for f in out] == batch
    assert [f.seq for f in out] == list(range(len(batch)))
    assert dec.buffered == 0


small_ops = st.builds(Op, kind=st.sampled_from(list(OpKind)), path=paths, path2=paths,
                      offset=U64, mode=st.integers(0, 2**32 - 1),
                      data=st.one_of(st.binary(max_size=600),
                                     st.integers(0, 5000).map(lambda n: b"ab" * n)))


@settings(max_examples=400, deadline=None)
@given(op=small_ops, where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_single_byte_corruption_is_detected(op, where, xor):
    data = bytearray(encode_op(op, 3, 42))
    data[int(where * len(data))] ^= xor
    with pytest.raises(FrameError):
        decode_frame(bytes(data))
    # the incremental decoder never yields a frame from it either
    dec = FrameDecoder()
    with pytest.raises(FrameError):
        dec.feed(bytes(data))


@pytest.mark.parametrize("data", [b"", b"hello world " * 2000, random.Random(1).randbytes(5000)],
                         ids=["empty", "compressible", "random"])
def test_every_byte_position_of_a_frame_is_covered(data):
    op = Op(OpKind.WRITE, "dir/file", offset=4096, data=data)
    good = encode_op(op, 1, 9)
    for i in range(len(good)):
        for xor in (0x01, 0x80, 0xFF):
            bad = bytearray(good)
            bad[i] ^= xor
            with pytest.raises(FrameError):
                decode_frame(bytes(bad))


def test_compression_only_when_it_pays():
    text = Op(OpKind.WRITE, "f", data=b"all work and no play " * 50_000)
    noise = Op(OpKind.WRITE, "f", data=random.Random(2).randbytes(1 << 20))
    zeros = Op(OpKind.WRITE, "f", data=bytes(MAX_PAYLOAD))
    for op, compressed in ((text, True), (noise, False), (zeros, True)):
        data = encode_op(op, 1, 1)
        frame = decode_frame(data)
        assert bool(frame.header.flags & Flag.COMPRESSED) == compressed
        assert frame.op == op
        if compressed:
            assert len(data) < len(op.data) * 0.9
        else:
            assert len(data) == HEADER_SIZE + 1 + len(op.data)


def test_refusals_name_what_is_wrong():
    good = encode_op(Op(OpKind.WRITE, "a/b", data=random.Random(3).randbytes(300)), 5, 77)
    with pytest.raises(FrameError, match="bad magic"):
        decode_frame(b"GET / HTTP/1.1\r\n" + good[16:])
    with pytest.raises(FrameError, match="unsupported protocol version 9"):
        decode_frame(good[:4] + b"\x09" + good[5:])
    with pytest.raises(FrameError, match=r"header checksum mismatch"):
        decode_frame(good[:40] + bytes([good[40] ^ 1]) + good[41:])
    with pytest.raises(FrameError, match=r"exceeds MAX_PAYLOAD .*seq=77"):
        decode_frame(_set_field(good, "payload_len", 1 << 30))
    with pytest.raises(FrameError, match=r"unknown frame type 99"):
        decode_frame(_set_field(good, "ftype", 99))
    with pytest.raises(FrameError, match=r"unknown OpKind 200"):
        decode_frame(_set_field(good, "kind", 200))
    with pytest.raises(FrameError, match=r"over MAX_PATH"):
        decode_frame(_set_field(good, "path_len", MAX_PATH + 1))
    with pytest.raises(FrameError, match=r"unknown flags"):
        decode_frame(_set_field(good, "flags", 0x40))
    with pytest.raises(FrameError, match=r"payload digest mismatch.*seq=77 path='a/b'"):
        decode_frame(good[:-1] + bytes([good[-1] ^ 0x20]))
    with pytest.raises(FrameError, match=r"body digest mismatch"):
        decode_frame(good[:HEADER_SIZE] + b"a/c" + good[HEADER_SIZE + 3:])
    with pytest.raises(FrameError, match=r"frame is \d+ bytes, header says"):
        decode_frame(good[:-1])


def test_decompression_failure_is_a_frame_error():
    op = Op(OpKind.WRITE, "f", data=b"compress me " * 1000)
    good = bytearray(encode_op(op, 1, 3))
    assert decode_frame(bytes(good)).header.flags & Flag.COMPRESSED
    body = HEADER_SIZE + 1
    garbage = bytes([0xF0]) + bytes(len(good) - body - 1)   # a literal run past the end
    good[body:] = garbage
    with pytest.raises(FrameError, match=r"body digest mismatch"):
        decode_frame(bytes(good))
    # a sender bug (valid digests over a broken lz4 block) is refused by lz4 itself
    crafted = _set_field(bytes(good), "body_digest",
                         xxhash.xxh3_64_intdigest(garbage, seed=xxhash.xxh3_64_intdigest(b"f")))
    with pytest.raises(FrameError, match=r"lz4 decompression failed|decompressed to \d+"):
        decode_frame(crafted)


def test_encoder_refuses_oversize_and_out_of_range():
    with pytest.raises(FrameError, match="exceeds MAX_PAYLOAD"):
        encode_op(Op(OpKind.WRITE, "f", data=bytes(MAX_PAYLOAD + 1)), 1, 1)
    with pytest.raises(FrameError, match="over MAX_PATH"):
        encode_op(Op(OpKind.CREATE, "a" * (MAX_PATH + 1)), 1, 1)
    with pytest.raises(FrameError, match="out of range"):
        encode_op(Op(OpKind.WRITE, "f", offset=-1), 1, 1)
    with pytest.raises(FrameError, match="uid"):
        encode_op(Op(OpKind.CHOWN, "f", uid=-5), 1, 1)


def test_decoder_header_is_checked_before_the_body_arrives():
    big = _set_field(encode_op(Op(OpKind.WRITE, "f", data=b"x"), 1, 5), "raw_len", 1 << 30)
    dec = FrameDecoder()
    with pytest.raises(FrameError, match="exceeds MAX_PAYLOAD"):
        dec.feed(big[:HEADER_SIZE])            # no body sent: refused at once
    with pytest.raises(FrameError):            # and the stream stays refused
        dec.feed(encode_op(Op(OpKind.WRITE, "f"), 1, 6))


def test_control_frames_round_trip():
    ack = decode_frame(encode_ack(10, first_seq=3, epoch=4))
    assert (ack.ftype, ack.header.offset, ack.seq, ack.header.status) == (FrameType.ACK, 3, 10, 0)
    err = decode_frame(encode_ack(11, 2, "no such file " * 200, late=True))
    assert err.header.status == 2 and err.header.flags & Flag.LATE
    assert err.message.startswith("no such file") and len(err.payload) <= fr.MAX_MESSAGE
    with pytest.raises(ValueError):
        encode_ack(11, 2, first_seq=5)
    hello = decode_frame(fr.encode_hello(8, AckMode.RECEIPT, b"n" * 32))
    assert (hello.header.epoch, hello.header.kind, hello.payload) == (8, AckMode.RECEIPT, b"n" * 32)
    q = decode_frame(fr.encode_query(4, QueryKind.DIGESTS, "d/f", offset=8192, length=4096))
    assert (q.header.kind, q.path, q.header.offset, q.header.length) == (2, "d/f", 8192, 4096)
    rep = decode_frame(fr.encode_reply(4, b"z" * 100000, more=True))
    assert rep.header.flags & Flag.MORE and rep.payload == b"z" * 100000
    assert decode_frame(fr.encode_ping(17)).header.offset == 17
    assert decode_frame(fr.encode_reset(71, "why")).message == "why"
    assert decode_frame(fr.encode_epoch(12)).header.epoch == 12
    assert AckMode.parse("async") is AckMode.ASYNC
    with pytest.raises(ValueError, match="unknown ack mode"):
        AckMode.parse("sometimes")


def _recv_style(dec: FrameDecoder, stream: bytes, chunk: int) -> list:
    """Feed ``stream`` the way FrameReader does: into the decoder's own body
    buffer when it offers one, else through feed()."""
    out, pos = [], 0
    while pos < len(stream):
        target = dec.body_target()
        if target is not None:
            n = min(len(target), chunk, len(stream) - pos)
            target[:n] = stream[pos:pos + n]
            out += dec.body_received(n)
        else:
            n = min(chunk, len(stream) - pos)
            out += dec.feed(stream[pos:pos + n])
        pos += n
    return out


@settings(max_examples=40, deadline=None)
@given(batch=st.lists(st.builds(Op, kind=st.just(OpKind.WRITE), path=paths, offset=U64,
                                data=payloads()), min_size=1, max_size=4),
       chunk=st.integers(1, 200_000))
def test_big_bodies_received_into_their_own_buffer(batch, chunk):
    stream = b"".join(encode_op(op, 2, i) for i, op in enumerate(batch))
    dec = FrameDecoder()
    out = _recv_style(dec, stream, chunk)
    assert [f.op for f in out] == batch
    assert dec.buffered == 0 and dec.body_target() is None
    for f in out:
        if len(f.payload) >= fr.DIRECT_BODY_MIN and not f.header.flags & Flag.COMPRESSED \
                and f.header.body_len > chunk:
            assert isinstance(f.payload, memoryview) and f.payload.readonly   # not copied


def test_corrupt_big_body_is_refused_in_its_own_buffer():
    data = random.Random(5).randbytes(300_000)
    good = encode_op(Op(OpKind.WRITE, "big", data=data), 1, 9)
    bad = bytearray(good)
    bad[-1000] ^= 0x40
    dec = FrameDecoder()
    assert dec.feed(bytes(bad[:HEADER_SIZE + 10])) == []
    assert dec.buffered == 10
    target = dec.body_target()
    assert target is not None and len(target) == len(bad) - HEADER_SIZE - 10
    target[:] = bad[HEADER_SIZE + 10:]
    with pytest.raises(FrameError, match=r"payload digest mismatch.*seq=9"):
        dec.body_received(len(target))
    with pytest.raises(FrameError):          # the stream stays refused
        dec.feed(encode_op(Op(OpKind.WRITE, "f"), 1, 10))
    with pytest.raises(ValueError, match="does not match"):
        FrameDecoder().body_received(5)


@pytest.mark.parametrize("size", [32 * 1024, 128 * 1024, 256 * 1024])
def test_mid_size_blocks_probe_before_compressing(size):
    """cp-style 128 KiB writes: random data goes raw (found by a 16 KiB probe,
    not by compressing the whole block), text is compressed."""
    noise = Op(OpKind.WRITE, "f", data=random.Random(size).randbytes(size))
    text = Op(OpKind.WRITE, "f", data=(b"mirror block " * size)[:size])
    raw = decode_frame(encode_op(noise, 1, 1))
    packed = encode_op(text, 1, 2)
    assert not raw.header.flags & Flag.COMPRESSED and raw.op == noise
    assert decode_frame(packed).header.flags & Flag.COMPRESSED and len(packed) < size * 0.9
