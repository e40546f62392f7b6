"""hacluster/http/events.py: what changed between two readings of the cluster (pure),
and the hub that reads once for every listener, only while someone listens, and drops
a listener that does not keep up."""
from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from hacluster.http.events import EventHub, changes, frame, picture

CLUSTER = {"cluster": "c", "leader": "n1", "term": 3, "has_quorum": True, "members": [
    {"name": "n1", "live": True, "connected": True, "leader": True},
    {"name": "n2", "live": True, "connected": True, "leader": False}]}


def modules(n1: str | None, n2: str | None, epoch: int = 7) -> list[dict]:
    def row(node, state):
        if state is None:
            return {"node": node, "ok": False, "error": f"{node}: unreachable"}
        return {"node": node, "ok": True, "result": {"state": state, "epoch": epoch,
                                                     "primary": "n1", "ignored": node}}
    return [{"name": "db", "mode": "mirror", "nodes": [row("n1", n1), row("n2", n2)]}]


def test_a_failover_reads_as_module_member_and_raft_events():
    before = picture(CLUSTER, modules("PRIM", "SECOND"))
    after_cluster = {**CLUSTER, "leader": "n2", "term": 4, "members": [
        {"name": "n1", "live": False, "connected": False, "leader": False},
        {"name": "n2", "live": True, "connected": True, "leader": True}]}
    after = picture(after_cluster, modules(None, "ALONE", epoch=8))
    events = changes(before, after)
    assert [e["type"] for e in events] == ["raft", "member", "member", "module", "module"]
    assert events[0]["after"] == {"leader": "n2", "term": 4, "has_quorum": True}
    db = {e["node"]: (e["from"], e["to"]) for e in events if e["type"] == "module"}
    assert db == {"n1": ("PRIM", "UNKNOWN"), "n2": ("SECOND", "ALONE")}
    # only the state fields count: the same reading twice is no event; a first reading neither
    assert changes(after, picture(after_cluster, modules(None, "ALONE", epoch=8))) == []
    assert changes(None, after) == []


@given(st.lists(st.sampled_from(["PRIM", "SECOND", "ALONE", "WAIT", "STOP", None]),
                min_size=2, max_size=2),
       st.lists(st.sampled_from(["PRIM", "SECOND", "ALONE", "WAIT", "STOP", None]),
                min_size=2, max_size=2))
def test_no_event_exactly_when_nothing_changed(a, b):
    pa, pb = picture(CLUSTER, modules(*a)), picture(CLUSTER, modules(*b))
    assert (changes(pa, pb) == []) == (pa == pb)


def test_a_frame_is_one_server_sent_event():
    assert frame(3, "module", {"a": "x\ny"}) == b'id: 3\nevent: module\ndata: {"a": "x\\ny"}\n\n'


def test_the_hub_reads_once_for_all_listeners_and_only_while_someone_listens():
    states = {"n1": "PRIM", "n2": "SECOND"}
    reads = []

    async def read():
        reads.append(1)
        return CLUSTER, modules(states["n1"], states["n2"])

    async def go():
        hub = EventHub(read, period_s=0.01, wall=lambda: 100.0)
        async with hub.listen() as one, hub.listen() as two:
            first = await one.get()
            assert first[1] == "snapshot" and (await two.get())[1] == "snapshot"
            states["n1"] = "STOP"
            seen = []
            while len(seen) < 2:
                seen.append(await one.get())
            assert [k for _, k, _ in seen] == ["module", "snapshot"]
            assert seen[0][2]["from"] == "PRIM" and seen[0][2]["to"] == "STOP"
            assert seen[0][0] < seen[1][0]      # ids grow
            assert hub.listeners == 2
        assert hub.listeners == 0
        count = len(reads)
        await asyncio.sleep(0.05)
        assert len(reads) == count              # nobody listens: no reading
        # a new listener gets the last picture at once, then fresh readings
        async with hub.listen() as three:
            assert (await three.get())[1] == "snapshot"
        await hub.close()
    asyncio.run(go())


def test_a_listener_that_does_not_keep_up_is_dropped():
    flip = [0]

    async def read():
        flip[0] += 1
        return CLUSTER, modules("PRIM" if flip[0] % 2 else "STOP", "SECOND")

    async def go():
        hub = EventHub(read, period_s=0.001)
        async with hub.listen() as slow:
            while hub.listeners:
                await asyncio.sleep(0.01)
            items = []
            while not slow.empty():
                items.append(slow.get_nowait())
            assert items[-1] is None            # told it was dropped; the page starts again
        await hub.close()
    asyncio.run(go())
