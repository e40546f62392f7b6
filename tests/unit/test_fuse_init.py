"""The FUSE layer's init: what it records of libfuse's offer, and what it asks for."""
from types import SimpleNamespace

import pytest

from replication.fuse_fs import (FUSE_CAP_WRITEBACK_CACHE, FUSE_CAPS, ReplicatedFS, caps_named,
                                 negotiated_of)


def _conn(capable: int, want: int) -> SimpleNamespace:
    return SimpleNamespace(proto_major=7, proto_minor=41, max_write=1 << 20, max_read=0,
                           max_readahead=131072, max_background=12, congestion_threshold=9,
                           capable=capable, want=want)


def test_caps_named_lists_known_bits_and_shows_unknown_ones_in_hex() -> None:
    assert caps_named(0) == "none"
    assert caps_named(FUSE_CAPS["async_read"] | FUSE_CAPS["splice_read"]) == "async_read+splice_read"
    assert caps_named(FUSE_CAPS["async_read"] | 1 << 30) == "async_read+0x40000000"


def test_negotiated_of_reads_sizes_and_capabilities() -> None:
    got = negotiated_of(_conn(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAPS["async_read"],
                              FUSE_CAPS["async_read"]))
    assert got == {"proto": "7.41", "max_write": 1 << 20, "max_read": 0, "max_readahead": 131072,
                   "max_background": 12, "congestion_threshold": 9,
                   "capable": "async_read+writeback_cache", "want": "async_read"}


def test_init_records_the_offer_never_asks_for_the_writeback_cache_and_reports_ready() -> None:
    ready = []
    fs = ReplicatedFS(-1, SimpleNamespace(), ready=lambda: ready.append(True))
    conn = _conn(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAPS["async_read"], FUSE_CAPS["async_read"])
    fs.init_with_config(conn, None)
    assert not conn.want & FUSE_CAP_WRITEBACK_CACHE
    assert fs.negotiated["capable"] == "async_read+writeback_cache"
    assert ready == [True]


def test_a_trusting_primary_drops_auto_inval_data_the_default_and_the_read_only_view_keep_it() -> None:
    offer = FUSE_CAPS["auto_inval_data"] | FUSE_CAPS["async_read"]
    primary = ReplicatedFS(-1, SimpleNamespace(), trust_page_cache=True)
    conn = _conn(offer, offer)
    primary.init_with_config(conn, None)
    assert conn.want == FUSE_CAPS["async_read"]         # auto_inval_data off

    view = ReplicatedFS(-1, SimpleNamespace(), read_only=True)
    conn = _conn(offer, offer)
    view.init_with_config(conn, None)
    assert conn.want == offer                             # libfuse's default kept

    untrusting = ReplicatedFS(-1, SimpleNamespace())                   # the default
    conn = _conn(offer, offer)
    untrusting.init_with_config(conn, None)
    assert conn.want == offer
    with pytest.raises(ValueError, match="receiver writes underneath"):
        ReplicatedFS(-1, SimpleNamespace(), read_only=True, trust_page_cache=True)
