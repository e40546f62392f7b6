import asyncio
import os
import socket
from pathlib import Path

import pytest

# The repository's root (tests/unit/ and tests/lab/ are one level further down).
REPO = Path(__file__).resolve().parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def make_lab():
    """Start labs that are cleaned up even when the test fails."""
    from chaos.lab import Lab

    labs = []

    def make(hosts, networks=("lan",)):
        lab = Lab(hosts, networks=networks)
        labs.append(lab)
        return lab.start()

    yield make
    for lab in labs:
        lab.cleanup()


@pytest.fixture
def make_cluster(make_lab):
    """A hacluster cluster of real daemons on lab hosts: make_cluster(nodes, witnesses, ...)."""
    from chaos.lab_cluster import LabCluster

    def make(nodes, witnesses=(), extra_hosts=(), contend=None, start=True, **kw):
        lab = make_lab(list(nodes) + list(witnesses) + list(extra_hosts))
        cluster = LabCluster(lab, list(nodes), list(witnesses), contend=contend, **kw)
        cluster.init()
        if start:
            cluster.start_all()
            cluster.wait_leader()
        return cluster

    return make


def free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now (for in-process Raft members)."""
    socks = [socket.socket() for _ in range(n)]
    for sk in socks:
        sk.bind(("127.0.0.1", 0))
    ports = [sk.getsockname()[1] for sk in socks]
    for sk in socks:
        sk.close()
    return ports


async def loop_until(what: str, predicate, polls: int = 2000) -> None:
    """Let an asyncio loop run until ``predicate()`` holds: polls it every few
    milliseconds, a bounded number of times (a bound on turns, not a timed assertion)."""
    for _ in range(polls):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")
