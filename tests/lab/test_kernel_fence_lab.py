"""Fences the kernel keeps (DESIGN.md rule 7), end to end with real daemons: what a node
holds on the network — the mirror VIP, a farm node's VIP and buckets — lapses by itself
at the holder's lease deadline when its daemon is SIGKILLed or frozen (SIGSTOP), with
no help from that daemon. Judged against the lease bound, never against a quiet machine.
"""
from __future__ import annotations

import json
import math
import sys
import time

import pytest

from chaos.lab import wait_until
from chaos.lab_mirror import MirrorLab
from raft.settings import RaftSettings
from tests.conftest import needs_root
from vip.lifetime import ADDRESS_EXPIRY_LAG_S, BACKSTOP_S

pytestmark = [needs_root, pytest.mark.lab]

LEASE = RaftSettings()                       # the lab runs the shipped timing
HOLDER_S = LEASE.lease_s - LEASE.lease_margin_s   # last refresh -> holder deadline, at most
KERNEL_EXPIRY_LAG_S = ADDRESS_EXPIRY_LAG_S   # the kernel removes an expired address this late
# A farm node's VIP backs its buckets up (vip.lifetime.backstop_lifetime_s): after the last
# refresh it lives a whole second more than they do, rounded up.
VIP_BACKSTOP_S = math.ceil(HOLDER_S) + BACKSTOP_S
POLL_SLACK_S = 0.3                           # one `ip`/`nft` look on a loaded machine


def vip_lifetime(lab, host: str, addr: str) -> int | None:
    """The address's remaining valid lifetime in seconds on host, None if absent
    (``ip`` prints 4294967295 for forever)."""
    out = json.loads(lab.run(host, ["ip", "-j", "-4", "addr", "show"]).stdout)
    for link in out:
        for a in link.get("addr_info", []):
            if a.get("local") == addr:
                return a.get("valid_life_time")
    return None


def wait_gone(what: str, present, since: float, bound_s: float) -> float:
    """Poll until ``present()`` is false; seconds since ``since`` (monotonic).
    Fails if it is still there well past ``bound_s``."""
    limit = since + bound_s + POLL_SLACK_S + 3.0     # keep looking a while, to report
    while time.monotonic() < limit:
        if not present():
            return time.monotonic() - since
        time.sleep(0.02)
    raise AssertionError(f"{what} still present {time.monotonic() - since:.2f} s after the fault "
                         f"(bound {bound_s:.2f} s)")


@pytest.fixture
def mirror(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    return MirrorLab(lab).start(prim="n1")


def test_frozen_mirror_primary_loses_its_vip_within_the_lease_and_never_takes_it_back(mirror):
    m = mirror
    lft = vip_lifetime(m.lab, "n1", m.vip)
    assert lft is not None and lft <= HOLDER_S, f"the primary's VIP must carry a lease-long lifetime, has {lft}"
    time.sleep(2 * LEASE.lease_s)                 # renewals keep extending it meanwhile
    assert vip_lifetime(m.lab, "n1", m.vip) is not None

    m.cluster.pause("n1")                         # SIGSTOP of the daemon: it cannot act
    stopped = time.monotonic()
    try:
        took = wait_gone("the frozen primary's VIP", lambda: vip_lifetime(m.lab, "n1", m.vip) is not None,
                         stopped, HOLDER_S + KERNEL_EXPIRY_LAG_S)
        # the last refresh came before the SIGSTOP and gave at most HOLDER_S
        assert took <= HOLDER_S + KERNEL_EXPIRY_LAG_S + POLL_SLACK_S, took
        print(f"mirror VIP gone from the frozen primary {took:.3f} s after SIGSTOP "
              f"(lease {LEASE.lease_s} s, holder deadline {HOLDER_S} s)")
        # the secondary takes over (PRIM or ALONE: the frozen daemon's mount may still
        # be connected to it) and holds the VIP
        wait_until("n2 primary with the VIP", lambda: (m.state("n2") or {}).get("state") in
                   ("PRIM", "ALONE") and vip_lifetime(m.lab, "n2", m.vip) is not None, 30)
    finally:
        m.cluster.resume("n1")
    # thawed, n1 finds its lease gone: it demotes and never brings the VIP back
    wait_until("n1 no longer primary", lambda: (m.state("n1") or {}).get("state") not in (None, "PRIM"), 30)
    for _ in range(20):
        assert vip_lifetime(m.lab, "n1", m.vip) is None
        time.sleep(0.1)


# ---- farm: a node's VIP and buckets, held on its liveness lease node/<name> --------------

@pytest.fixture
def farm(make_lab):
    from chaos.lab_farm import FarmLab
    lab = make_lab(["f1", "f2", "f3", "c"])
    return FarmLab(lab).start()


def _app_alive_on(farm, node: str) -> bool:
    from chaos.lab_farm import MODULE
    pidfile = farm.root(node) / "run" / MODULE / "names.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return False
    try:
        import os
        os.kill(pid, 0)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
def test_farm_node_whose_daemon_dies_or_freezes_stops_accepting_within_the_lease(farm, fault):
    """The victim's daemon is SIGKILLed or SIGSTOPped by its PID; its application keeps
    running. Within the holder's deadline its nft set holds no bucket (no bucket is then
    accepted by two nodes), its VIP (only the buckets' backstop: see
    vip.lifetime.backstop_lifetime_s) goes at most a second plus BACKSTOP_S plus the
    kernel's address-expiry lag after that, and no client connection is answered by it
    afterwards."""
    from chaos.lab_farm import PORT_ON_PORT
    victim, live = "f3", ["f1", "f2"]
    lft = vip_lifetime(farm.lab, victim, farm.vip)
    assert lft is not None and lft <= math.ceil(HOLDER_S) + BACKSTOP_S, \
        f"the farm VIP must carry its backstop lifetime, has {lft}"
    before = farm.ruleset_buckets(victim)
    assert before, "the victim owns buckets before the fault"
    answers = farm.ask_many(PORT_ON_PORT, 200)
    assert victim in {a[0] for a in answers}

    app = None
    if fault == "sigkill":
        farm.cluster.kill(victim)
    else:
        farm.cluster.pause(victim)
    fault_at = time.monotonic()
    try:
        if not _app_alive_on(farm, victim):
            # the daemon's scripts' children may die with it: the point is an application
            # still listening on the victim, so start a plain one (the lab stops it)
            app = farm.lab.spawn(victim, [sys.executable, "-m", "chaos.name_server", "--name", victim,
                                          "--port", str(PORT_ON_PORT)], name="plain-names")
        # sample all three nodes' sets and the victim's address: when did the victim's
        # set empty, when did its VIP go, and when was a bucket last accepted by two nodes
        emptied = last_double = vip_gone = None
        while time.monotonic() < fault_at + VIP_BACKSTOP_S + KERNEL_EXPIRY_LAG_S + POLL_SLACK_S + 3.0:
            t = time.monotonic()
            sets = {n: farm.ruleset_buckets(n) or frozenset() for n in farm.nodes}
            if sets[victim] & (sets["f1"] | sets["f2"]):
                last_double = t
            if emptied is None and not sets[victim]:
                emptied = time.monotonic() - fault_at
            if vip_gone is None and vip_lifetime(farm.lab, victim, farm.vip) is None:
                vip_gone = time.monotonic() - fault_at
            if emptied is not None and vip_gone is not None and farm.complete_on(live):
                break
            time.sleep(0.02)
        assert emptied is not None, f"the victim's set still holds {sorted(sets[victim])[:10]}..."
        assert emptied <= HOLDER_S + POLL_SLACK_S, emptied
        assert last_double is None or last_double - fault_at <= HOLDER_S + POLL_SLACK_S, \
            last_double - fault_at
        assert vip_gone is not None, "the victim's VIP is still there"
        assert vip_gone <= VIP_BACKSTOP_S + KERNEL_EXPIRY_LAG_S + 2 * POLL_SLACK_S, vip_gone
        print(f"farm {fault}: victim's buckets lapsed {emptied:.3f} s, its VIP {vip_gone:.3f} s "
              f"after the fault (holder deadline {HOLDER_S} s); last double acceptance "
              f"{'none' if last_double is None else f'{last_double - fault_at:.3f} s'}")

        # the survivors take every bucket; the victim answers no connection any more
        farm.wait_farm(live, timeout=30)
        assert _app_alive_on(farm, victim) or (app is not None and app.alive())
        answers = farm.ask_many(PORT_ON_PORT, 300)
        names = [a[0] for a in answers]
        assert victim not in names, "the victim still answers"
        assert None not in names, f"{names.count(None)} connections unanswered"
    finally:
        if fault == "sigstop":
            farm.cluster.resume(victim)
        if app is not None:
            app.stop()
    if fault == "sigstop":
        # thawed: the daemon finds its lease gone, then rejoins with fresh buckets
        farm.wait_farm(farm.nodes, timeout=60)
    else:
        assert farm.ruleset_buckets(victim) == frozenset()     # and it stays so
