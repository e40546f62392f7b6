"""``make demo``: the mirror module, the product's main job, on the built-in lab.

Two nodes, a witness and a client host (network namespaces on a private
bridge). The demo key/value service is packaged as a ``.safe`` and installed
through the cluster; the client writes numbered records through the virtual
IP; the primary's host is killed (every process SIGKILLed, network cut); the
demo shows the failover time, checks every acknowledged record on the new
primary, brings the old primary back, shows reintegration and the end state
PRIM/SECOND in sync, prints a short report and cleans up.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time

from .history_check import epoch_violations, lost_acked_writes
from .kv_workload import Ack
from .lab import Lab, wait_until
from .lab_mirror import MODULE, MirrorLab


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def cli(m: MirrorLab, node: str, *args: str) -> None:
    print(f"$ [{node}] hacluster {' '.join(args)}", flush=True)
    res = m.cli(node, *args)
    out = (res.stdout + res.stderr).rstrip()
    print("\n".join("    " + line for line in out.splitlines()), flush=True)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if shutil.which("nft") is None or shutil.which("fusermount3") is None:
        print("demo: nftables/fuse3 missing (make demo installs them)", file=sys.stderr)
        return 1
    report: dict[str, object] = {}
    with Lab(["n1", "n2", "w", "c"]) as lab:
        m = MirrorLab(lab)
        say(f"lab {lab.id}: " + ", ".join(f"{h}={lab.addr(h)}" for h in lab.hosts)
            + f"; virtual IP {m.vip}")
        say("cluster init, daemons started, the demo app packaged and installed through Raft")
        m.start(prim=None)
        cli(m, "n1", "module", "list")
        say("first start: nothing runs until the administrator names the good copy (prim) and the other node (second)")
        cli(m, "n1", "-m", MODULE, "state")
        cli(m, "n1", "-m", MODULE, "prim")
        cli(m, "n2", "-m", MODULE, "second")
        m.wait_pair("n1")
        cli(m, "n1", "-m", MODULE, "state")
        cli(m, "n2", "-m", MODULE, "state")

        say(f"the client on c writes numbered records through {m.url}")
        m.start_writer()
        m.wait_acks(100)
        print(f"    {len(m.acks())} records acknowledged, all by n1 (epoch 1)")

        say("power loss of n1: every process on it SIGKILLed and its network cut")
        t_kill = m.kill_host("n1")
        m.wait_state("n2", "ALONE", timeout=30)
        wait_until("writes through the VIP on n2", lambda: any(a["node"] == "n2" for a in m.acks()), 30)
        first = min(a["t_acked"] for a in m.acks() if a["node"] == "n2")
        report["failover_s"] = round(first - t_kill, 3)
        print(f"    first acknowledged write from n2 {report['failover_s']} s after the kill")
        cli(m, "n2", "-m", MODULE, "state")
        m.wait_acks(len(m.acks()) + 100)
        m.writer.stop()
        acks = m.acks()
        lost = lost_acked_writes([Ack(**a) for a in acks], m.log_records("n2"))
        violations = epoch_violations([(a["t_acked"], a["node"], a["epoch"]) for a in acks])
        via_vip = m.keys_via_vip() or set()
        missing_vip = {a["key"] for a in acks} - via_vip
        report.update(acked=len(acks), lost=len(lost), epoch_violations=len(violations),
                      missing_via_vip=len(missing_vip))
        print(f"    {len(acks)} acknowledged records; lost on n2: {len(lost)}; missing through "
              f"the VIP: {len(missing_vip)}; epoch violations: {len(violations)}")

        say("n1 comes back: its copy is resynchronised, then it is SECOND in sync")
        m.restart_node("n1")
        t0 = time.monotonic()
        while True:
            st = m.state("n2") or {}
            sec = m.state("n1") or {}
            rp = st.get("reintegration")
            if rp:
                print(f"    reintegration: files {rp.get('reintegration.files_done', rp.get('files_done', '?'))}"
                      f" bytes {rp.get('reintegration.bytes_done', rp.get('bytes_done', '?'))}", flush=True)
            if st.get("state") == "PRIM" and sec.get("state") == "SECOND" and sec.get("ready") == "Ready":
                break
            if time.monotonic() - t0 > 90:
                raise TimeoutError("n1 did not return as SECOND within 90 s")
            time.sleep(0.5)
        report["reintegration_s"] = round(time.monotonic() - t0, 3)
        cli(m, "n1", "-m", MODULE, "state")
        cli(m, "n2", "-m", MODULE, "state")
        same = m.log_records("n1") == m.log_records("n2")
        report["copies_identical"] = same
        cli(m, "n2", "-m", MODULE, "log", "--lines", "8")

        say("report")
        for k, v in report.items():
            print(f"    {k}: {v}")
        ok = report["lost"] == 0 and report["epoch_violations"] == 0 and same and not missing_vip
        print("\n    " + ("OK: failover without losing an acknowledged write" if ok else "PROBLEM"))
        say("cleaning up the lab")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
