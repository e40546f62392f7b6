"""PostgreSQL 15 in a mirror module (the modules/postgresql template), end to end: real
daemons, pgbench and numbered autocommit inserts from the client host through the VIP,
the primary host killed, the old primary back while pgbench keeps writing, a swap back
(issue 15's acceptance)."""
from __future__ import annotations

import re
import time

import pytest

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_workload import Ack
from chaos.lab import wait_until
from chaos.pg_module import PgMirrorLab
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]

IN_SYNC_BOUND_S = 30.0      # the acceptance's bound, judged with the lab's (monotonic) clock
PROGRESS = re.compile(r"^progress: ([\d.]+) s, ([\d.]+) tps", re.M)


def _acks(m: PgMirrorLab, *writers) -> list[Ack]:
    return [Ack(**a) for w in writers for a in m.acks(w)]


def _all_acked_present(m: PgMirrorLab, acks: list[Ack], where: str) -> None:
    rows = m.rows()
    assert rows is not None, f"{where}: no answer through the VIP"
    lost = lost_acked_writes(acks, rows)
    assert not lost, f"{where}: {len(lost)} acknowledged commits missing, e.g. {lost[:3]}"
    answers = sorted((a.t_acked, a.node, a.epoch) for a in acks)
    assert not epoch_violations(answers), epoch_violations(answers)


def _amcheck_clean(m: PgMirrorLab) -> None:
    res = m.client_tool("pg_amcheck", "--all", "--install-missing", "--heapallindexed",
                        check=False)
    assert res.returncode == 0 and not res.stdout.strip(), \
        f"pg_amcheck: rc {res.returncode}: {res.stdout[-2000:]} {res.stderr[-2000:]}"


def _pgbench_progress(proc) -> list[tuple[float, float]]:
    return [(float(t), float(tps)) for t, tps in PROGRESS.findall(proc.log_path.read_text(errors="replace"))]


def test_postgres_failover_reintegration_under_pgbench_and_swap_back(make_lab):
    lab = make_lab(["n1", "n2", "w", "c"])
    m = PgMirrorLab(lab).start(prim="n1")
    m.init_pgbench(scale=2)
    bench1 = m.start_pgbench("pgbench-1")
    w1 = m.start_writer("before")
    m.wait_acks(100, timeout=60)
    wait_until("pgbench running", lambda: _pgbench_progress(bench1), 30)

    # ---- the primary host loses power -------------------------------------------------
    t_kill = m.kill_host("n1")
    m.wait_state("n2", "ALONE", timeout=90)
    wait_until("commits acknowledged by n2", lambda: any(a.node == "n2" for a in _acks(m, w1)), 60)
    w1.stop()
    bench1.stop()
    acks = _acks(m, w1)
    assert any(a.node == "n1" and a.t_acked < t_kill for a in acks)
    _all_acked_present(m, acks, "new primary n2")
    _amcheck_clean(m)
    # the dead primary's postmaster.pid was in the copy: start_prim saw it was stale
    script_log = (m.cluster.log_dir("n2") / m.module / "script.log")
    assert "removing stale postmaster.pid" in script_log.read_text(errors="replace")

    # ---- the old primary returns while pgbench keeps writing ---------------------------
    bench2 = m.start_pgbench("pgbench-2")
    w2 = m.start_writer("during")
    wait_until("pgbench writing on n2", lambda: _pgbench_progress(bench2), 30)
    t_back = time.monotonic()
    m.restart_node("n1")
    in_sync_s = None
    try:
        wait_until("n1 SECOND in sync", lambda: (lambda st: st and st["state"] == "PRIM"
                                                 and sorted(st["in_sync"]) == ["n1", "n2"])(
            m.state("n2")), 60, 0.1)
        in_sync_s = time.monotonic() - t_back
        print(f"postgres_lab: n1 back in sync {in_sync_s:.1f} s after its return, pgbench writing")
        writing_at_sync = bench2.alive() and any(t > 0 and tps > 0 for t, tps in
                                                 _pgbench_progress(bench2)[-3:])
    except TimeoutError:
        writing_at_sync = None
    pgbench_tx_after = _pgbench_progress(bench2)
    bench2.stop()
    w2.stop()
    quiet_needed = []
    if in_sync_s is None:
        # Before issue 15 items 1-2: in sync only once the writes stop.
        quiet_needed.append("n1's return")
    m.wait_pair("n2", timeout=90)

    # ---- swap back, the inserts going on ----------------------------------------------
    w3 = m.start_writer("swap")
    m.wait_acks(20, timeout=60)
    t_swap = time.monotonic()
    m.cli("n2", "-m", m.module, "swap", check=True)
    wait_until("commits acknowledged by n1 again", lambda: any(
        a.node == "n1" and a.t_acked > t_swap for a in _acks(m, w3)), 60)
    try:
        m.wait_pair("n1", timeout=60)
    except TimeoutError:
        quiet_needed.append("the swap back")
        w3.stop()
        m.wait_pair("n1", timeout=90)
    w3.stop()
    acks = _acks(m, w1, w2, w3)
    _all_acked_present(m, acks, "n1 after the swap back")
    _amcheck_clean(m)
    m.checkpoint()
    differ: list[str] = []

    def identical() -> bool:
        nonlocal differ
        differ = m.copies_differ()
        return not differ
    try:
        wait_until("identical copies after a checkpoint", identical, 20, 0.5)
    except TimeoutError:
        pass
    assert not differ, f"the two copies differ after a checkpoint: {differ[:10]}"

    # The acceptance's bound, checked last so that every other part above ran. Before
    # issue 15 items 1-2 land, this is the assertion that fails (reintegration restarts
    # while PostgreSQL writes).
    assert in_sync_s is not None and in_sync_s <= IN_SYNC_BOUND_S, (
        f"n1 not in sync within {IN_SYNC_BOUND_S:g} s of its return while pgbench wrote "
        f"(took {in_sync_s if in_sync_s is None else round(in_sync_s, 1)} s; pgbench progress "
        f"lines meanwhile: {len(pgbench_tx_after)}; in sync only once the writes stopped "
        f"after: {quiet_needed})")
    assert writing_at_sync, "pgbench was not writing when n1 got in sync"
