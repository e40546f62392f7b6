"""replication/block_diff.py: digests and the ranges that make a remote copy equal."""
from __future__ import annotations

import io
import os

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.applier import Applier
from replication.block_diff import (blocks_to_ranges, diff_blocks, file_digests, split_ranges,
                                    zero_digest)


def digests_of(data: bytes, block_size: int) -> list[int]:
    return [xxhash.xxh3_64_intdigest(data[i:i + block_size])
            for i in range(0, len(data), block_size)]


def apply_diff(remote: bytes, local: bytes, diff) -> bytes:
    """What the receiver does with a diff: pwrite each range, then truncate/extend."""
    out = bytearray(remote)
    for offset, length in diff.ranges:
        if len(out) < offset:
            out.extend(bytes(offset - len(out)))
        out[offset:offset + length] = local[offset:offset + length]
    if diff.truncate_to is not None:
        del out[diff.truncate_to:]
        out.extend(bytes(diff.truncate_to - len(out)))
    return bytes(out)


def mutated(draw, local: bytes) -> bytes:
    """A remote copy that shares most of the local one (the usual case)."""
    out = bytearray(local)
    for _ in range(draw(st.integers(0, 4))):
        if out and draw(st.booleans()):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        elif draw(st.booleans()):
            del out[draw(st.integers(0, len(out))):]
        else:
            out.extend(draw(st.sampled_from([bytes(7), b"\x01" * 5, bytes(40)])))
    return bytes(out)


@st.composite
def copies(draw):
    block_size = draw(st.integers(1, 16))
    local = draw(st.binary(max_size=200) | st.binary(max_size=50).map(lambda b: b + bytes(60)))
    remote = draw(st.binary(max_size=200)) if draw(st.booleans()) else mutated(draw, local)
    return block_size, local, remote, draw(st.integers(1, 40))


@given(copies())
def test_applying_the_diff_yields_the_local_copy(case):
    block_size, local, remote, max_chunk = case
    diff = diff_blocks(digests_of(local, block_size), len(local),
                       digests_of(remote, block_size), len(remote), block_size, max_chunk)
    assert apply_diff(remote, local, diff) == local


@given(copies())
def test_never_sends_a_block_whose_digest_matches(case):
    block_size, local, remote, max_chunk = case
    ld, rd = digests_of(local, block_size), digests_of(remote, block_size)
    diff = diff_blocks(ld, len(local), rd, len(remote), block_size, max_chunk)
    sent = {b for offset, length in diff.ranges
            for b in range(offset // block_size, (offset + length - 1) // block_size + 1)}
    for block in sent:
        local_block = local[block * block_size:(block + 1) * block_size]
        remote_block = remote[block * block_size:(block + 1) * block_size]
        assert local_block != remote_block
        if block * block_size >= len(remote):       # past the remote EOF: zeros come free
            assert local_block != bytes(len(local_block))


@given(copies())
def test_ranges_are_ordered_disjoint_bounded_and_inside_the_file(case):
    block_size, local, remote, max_chunk = case
    diff = diff_blocks(digests_of(local, block_size), len(local),
                       digests_of(remote, block_size), len(remote), block_size, max_chunk)
    end = 0
    for offset, length in diff.ranges:
        assert offset >= end and 0 < length <= max_chunk and offset + length <= len(local)
        end = offset + length
    assert diff.bytes == sum(length for _, length in diff.ranges)


def test_identical_copies_need_nothing():
    data = os.urandom(1000)
    diff = diff_blocks(digests_of(data, 64), 1000, digests_of(data, 64), 1000, 64, 4096)
    assert diff.ranges == () and diff.truncate_to is None


def test_adjacent_blocks_coalesce_up_to_max_chunk():
    assert blocks_to_ranges([0, 1, 2, 5, 6], 10, 100, 25) == [(0, 25), (25, 5), (50, 20)]
    assert blocks_to_ranges([9, 10], 10, 95, 1000) == [(90, 5)]      # clipped at the size
    assert split_ranges([(3, 7)], 3) == [(3, 3), (6, 3), (9, 1)]


def test_sparse_tail_is_left_to_the_final_extension():
    local = b"x" * 10 + bytes(30)
    diff = diff_blocks(digests_of(local, 10), 40, digests_of(b"", 10), 0, 10, 100)
    assert diff.ranges == ((0, 10),) and diff.truncate_to == 40


def test_shorter_local_copy_is_truncated():
    remote = b"abcdefghij" * 3
    diff = diff_blocks(digests_of(remote[:15], 10), 15, digests_of(remote, 10), 30, 10, 100)
    assert diff.ranges == ((10, 5),) and diff.truncate_to == 15


def test_inconsistent_digest_counts_are_refused():
    with pytest.raises(ValueError, match="remote: 1 digests for 30 bytes"):
        diff_blocks([], 0, [1], 30, 10, 100)


@settings(max_examples=30)
@given(st.binary(max_size=3000), st.integers(1, 700), st.integers(1, 2000))
def test_file_digests_reads_in_chunks_but_hashes_blocks(data, block_size, read_size):
    assert file_digests(io.BytesIO(data), block_size, read_size) == (digests_of(data, block_size),
                                                                     len(data))


def test_file_digests_match_the_receivers_on_a_sparse_file(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.seek(3 * 4096 + 100)
        f.write(b"data")
        f.truncate(9 * 4096 + 7)
    with open(path, "rb") as f:
        digests, size = file_digests(f, 4096)
    with Applier(str(tmp_path)) as applier:
        assert applier.block_digests("sparse", 4096) == digests
    assert size == 9 * 4096 + 7 and digests[0] == zero_digest(4096)
