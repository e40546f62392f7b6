"""Which byte ranges of a file to send so that the remote copy equals the local one.

Pure: the inputs are per-block xxh3_64 digests and sizes of both copies; the
output is a ``BlockDiff`` (ranges of the local file to write onto the remote
copy, then the size to truncate or extend it to). ``file_digests`` is the one
helper that touches a file object, so both sides compute digests the same way:
block i covers bytes [i*block_size, min((i+1)*block_size, size)), the last block
may be short, an empty file has no blocks.

Blocks past the remote end of file that are all zeros locally are not sent:
extending the remote copy with the final truncate makes them zeros (and keeps
sparse files sparse).
"""
from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import xxhash

DEFAULT_BLOCK_SIZE = 1 << 20
# Large reads amortise the per-call cost; a multiple of the block size is read.
READ_SIZE = 8 << 20


def block_digest(data: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


@functools.lru_cache(maxsize=64)
def zero_digest(length: int) -> int:
    """Digest of ``length`` zero bytes (a hole or an all-zero block)."""
    return block_digest(bytes(length))


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def file_digests(f: io.BufferedIOBase | io.RawIOBase, block_size: int, read_size: int = READ_SIZE) -> tuple[list[int], int]:
    """Digests of consecutive ``block_size`` blocks of ``f`` from its current
    position to its end, and the number of bytes read (the size they describe,
    even if the file changes meanwhile)."""
    if block_size <= 0:
        raise ValueError(f"block size must be > 0, got {block_size}")
    buf = bytearray(max(1, read_size // block_size) * block_size)
    view = memoryview(buf)
    digests: list[int] = []
    size = 0
    while True:
        filled = 0
        # readinto may return short counts before EOF (pipes, FUSE); fill the buffer.
        while filled < len(buf):
            n = f.readinto(view[filled:])
            if not n:
                break
            filled += n
        for start in range(0, filled, block_size):
            digests.append(block_digest(view[start:min(start + block_size, filled)]))
        size += filled
        if filled < len(buf):
            return digests, size


@dataclass(frozen=True)
class BlockDiff:
    """Write ``ranges`` (offset, length) of the local file onto the remote copy,
    in order, then truncate/extend the remote copy to ``truncate_to`` if it is
    not None."""
    ranges: tuple[tuple[int, int], ...]
    truncate_to: int | None

    @property
    def bytes(self) -> int:
        return sum(length for _, length in self.ranges)


def split_ranges(spans: Iterable[tuple[int, int]], max_chunk: int) -> list[tuple[int, int]]:
    """Cut (offset, length) spans into pieces of at most ``max_chunk`` bytes."""
    if max_chunk <= 0:
        raise ValueError(f"max chunk must be > 0, got {max_chunk}")
    pieces = []
    for offset, length in spans:
        end = offset + length
        while offset < end:
            step = min(max_chunk, end - offset)
            pieces.append((offset, step))
            offset += step
    return pieces


def blocks_to_ranges(blocks: Iterable[int], block_size: int, size: int,
                     max_chunk: int) -> list[tuple[int, int]]:
    """Byte ranges covering the given block indices (ascending), adjacent blocks
    merged, clipped to ``size``, cut at ``max_chunk``."""
    spans: list[tuple[int, int]] = []
    for block in blocks:
        start = block * block_size
        end = min(start + block_size, size)
        if start >= end:
            continue
        if spans and spans[-1][0] + spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end - spans[-1][0])
        else:
            spans.append((start, end - start))
    return split_ranges(spans, max_chunk)


def diff_blocks(local_digests: Sequence[int], local_size: int,
                remote_digests: Sequence[int], remote_size: int,
                block_size: int, max_chunk: int) -> BlockDiff:
    """The ranges to send and the final size so that remote becomes local."""
    for name, digests, size in (("local", local_digests, local_size),
                                ("remote", remote_digests, remote_size)):
        if len(digests) != block_count(size, block_size):
            raise ValueError(f"{name}: {len(digests)} digests for {size} bytes "
                             f"in blocks of {block_size}")
    differing = []
    for i, digest in enumerate(local_digests):
        local_len = min(block_size, local_size - i * block_size)
        if i < len(remote_digests):
            remote_len = min(block_size, remote_size - i * block_size)
            same = local_len == remote_len and digest == remote_digests[i]
        else:
            same = digest == zero_digest(local_len)
        if not same:
            differing.append(i)
    ranges = blocks_to_ranges(differing, block_size, local_size, max_chunk)
    size_after_writes = max([remote_size] + [offset + length for offset, length in ranges])
    return BlockDiff(tuple(ranges), None if size_after_writes == local_size else local_size)
