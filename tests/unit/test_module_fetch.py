import asyncio
import hashlib
import logging
import os
import time

import pytest

from hacluster.modules.fetch import ModuleFetchError, ModuleFetchServer, fetch_module

SECRET = "cluster-secret"
CONTENT = os.urandom(300_000)
DIGEST = hashlib.sha256(CONTENT).hexdigest()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def started(lookup=None, **kw) -> ModuleFetchServer:
    store = {DIGEST: CONTENT}
    server = ModuleFetchServer("127.0.0.1", 0, SECRET, lookup or store.get, **kw)
    await server.start()
    return server


def test_good_fetch():
    async def main():
        server = await started()
        try:
            assert server.port != 0
            assert await fetch_module("127.0.0.1", server.port, SECRET, DIGEST) == CONTENT
            # Several at once.
            results = await asyncio.gather(*(fetch_module("127.0.0.1", server.port, SECRET, DIGEST)
                                             for _ in range(5)))
            assert results == [CONTENT] * 5
        finally:
            await server.close()
    run(main())


def test_wrong_secret_is_refused_and_logged(caplog):
    async def main():
        server = await started()
        try:
            with pytest.raises(ModuleFetchError, match=r"^fetch [0-9a-f]{12} from 127.0.0.1:\d+: refused"):
                await fetch_module("127.0.0.1", server.port, "not-the-secret", DIGEST)
        finally:
            await server.close()
    with caplog.at_level(logging.INFO, logger="hacluster.module_fetch"):
        run(main())
    assert any('event=fetch_refused peer=127.0.0.1:' in r.getMessage()
               and 'reason="wrong cluster secret"' in r.getMessage() for r in caplog.records)


def test_unknown_digest():
    async def main():
        server = await started()
        try:
            with pytest.raises(ModuleFetchError, match=r"the peer does not have this module content"):
                await fetch_module("127.0.0.1", server.port, SECRET, "0" * 64)
        finally:
            await server.close()
    run(main())


def test_content_with_the_wrong_digest_is_refused_by_the_client():
    async def main():
        server = await started(lookup=lambda digest: b"other bytes")
        try:
            with pytest.raises(ModuleFetchError, match=r"content has digest [0-9a-f]{12}, not the one asked for"):
                await fetch_module("127.0.0.1", server.port, SECRET, DIGEST)
        finally:
            await server.close()
    run(main())


def test_client_limits_and_bad_arguments():
    async def main():
        server = await started()
        try:
            with pytest.raises(ModuleFetchError, match=r"300000 bytes is over the 1000 byte limit"):
                await fetch_module("127.0.0.1", server.port, SECRET, DIGEST, max_bytes=1000)
            with pytest.raises(ValueError, match=r"is not a sha256 hex digest"):
                await fetch_module("127.0.0.1", server.port, SECRET, DIGEST.upper())
            with pytest.raises(ValueError, match=r"secret must be a non-empty string"):
                await fetch_module("127.0.0.1", server.port, "", DIGEST)
        finally:
            await server.close()
        with pytest.raises(ModuleFetchError, match=r"from 127.0.0.1:\d+: Connection refused$"):
            await fetch_module("127.0.0.1", server.port, SECRET, DIGEST)  # nothing listens now
    run(main())


def test_client_times_out_on_a_silent_server():
    async def main():
        silent = await asyncio.start_server(lambda r, w: asyncio.sleep(10), "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        try:
            start = time.monotonic()
            with pytest.raises(ModuleFetchError, match=r"no complete answer within 0.3 s"):
                await fetch_module("127.0.0.1", port, SECRET, DIGEST, timeout=0.3)
            assert time.monotonic() - start < 2
        finally:
            silent.close()
    run(main())


def test_garbage_or_silent_clients_do_not_block_others(caplog):
    def silent_ones_dropped() -> bool:
        return any("event=fetch_dropped" in r.getMessage() and "reason=timeout" in r.getMessage()
                   for r in caplog.records)

    async def main():
        server = await started(request_timeout=0.5, max_connections=9)
        try:
            # Silent clients that take every slot but one, and one that sends garbage.
            # (from another address: one address gets at most a few slots of its own)
            silent = [await asyncio.open_connection("127.0.0.1", server.port,
                                                    local_addr=("127.0.0.2", 0)) for _ in range(7)]
            _, garbage = await asyncio.open_connection("127.0.0.1", server.port,
                                                       local_addr=("127.0.0.2", 0))
            garbage.write(os.urandom(96))
            await garbage.drain()
            # A good client is served while they hang on (before their request timeout).
            assert await fetch_module("127.0.0.1", server.port, SECRET, DIGEST) == CONTENT
            assert not silent_ones_dropped()
            # The silent ones are dropped after the request timeout.
            for reader, _ in silent:
                data = await asyncio.wait_for(reader.read(), 3)
                assert len(data) == 32  # the nonce, then EOF
            assert await fetch_module("127.0.0.1", server.port, SECRET, DIGEST) == CONTENT
            for _, writer in silent:
                writer.close()
            garbage.close()
            assert silent_ones_dropped()
        finally:
            await server.close()
    with caplog.at_level(logging.INFO, logger="hacluster.module_fetch"):
        run(main())


def test_connections_over_the_handshake_cap_are_closed_at_once_and_hogs_take_no_slot():
    from hacluster.node.tcp_service import HandshakeLimits

    async def main():
        # Silent hogs used to take the serving slots (2 here) until their timeout.
        server = await started(request_timeout=60.0, max_connections=2,
                               handshake=HandshakeLimits(per_address=2, deadline_s=60.0))
        try:
            hogs = [await asyncio.open_connection("127.0.0.1", server.port, local_addr=("127.0.0.2", 0))
                    for _ in range(2)]
            for hog, _ in hogs:
                await hog.readexactly(32)  # the nonce: this hog is in its handshake
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                           local_addr=("127.0.0.2", 0))
            assert await asyncio.wait_for(reader.read(), 10) == b""  # over the cap: closed
            writer.close()
            # Another address is served, both slots free.
            for _ in range(3):
                assert await fetch_module("127.0.0.1", server.port, SECRET, DIGEST) == CONTENT
            for _, w in hogs:
                w.close()
        finally:
            await server.close()
    run(main())
