"""``make demo``: a coordinator tour on the built-in lab.

Two nodes and a witness, each a network namespace running the real daemon;
both nodes contend for a lease named ``demo`` (the mirror module will use the
same lease for its primary). The demo kills the Raft leader, then the lease
holder, shows who took over and with which epoch, then removes a node and
adds it back through the CLI, and cleans everything up.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time

from .lab import Lab
from .lab_cluster import LabCluster

NODES = ["n1", "n2"]
WITNESSES = ["w"]


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(res) -> None:
    out = (res.stdout + res.stderr).rstrip()
    print("\n".join("    " + line for line in out.splitlines()), flush=True)


def cli(cluster: LabCluster, member: str, *args: str):
    print(f"$ [{member}] hacluster {' '.join(args)}", flush=True)
    res = cluster.hacluster(member, *args)
    show(res)
    return res


def holder_of(cluster: LabCluster, via: str):
    lease = cluster.lease(via, "demo")
    return (lease["holder"], lease["epoch"]) if lease and lease["holder"] else None


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if shutil.which("nft") is None:
        print("demo: nftables is missing (make demo installs it)", file=sys.stderr)
        return 1
    with Lab(NODES + WITNESSES) as lab:
        cluster = LabCluster(lab, NODES, WITNESSES, contend={n: ["demo"] for n in NODES},
                             name="demo")
        say(f"lab {lab.id}: hosts " + ", ".join(f"{h}={lab.addr(h)}" for h in lab.hosts)
            + " (network namespaces on a private bridge)")
        say("write the cluster configuration and secret for every member")
        argv = ["cluster", "init", "--name", "demo", "--out", str(cluster.cfg_root)]
        for n in NODES:
            argv += ["--node", f"{n}={lab.addr(n)}"]
        for w in WITNESSES:
            argv += ["--witness", f"{w}={lab.addr(w)}"]
        print(f"$ hacluster {' '.join(argv)}")
        show(cluster.hacluster(None, *argv))

        say("start hacluster node run (n1, n2: --contend demo) and witness run (w)")
        cluster.start_all()
        leader = cluster.wait_leader()
        cluster.wait_for("every member live", lambda: all(
            r["live"] for r in (cluster.status(leader) or {"members": [{"live": False}]})["members"]))
        cluster.wait_for("demo lease held", lambda: holder_of(cluster, leader))
        cli(cluster, "n1", "cluster", "status")

        say(f"kill -9 the Raft leader's daemon ({leader})")
        survivors = [m for m in cluster.members if m != leader]
        t0 = time.monotonic()
        cluster.kill(leader)
        new_leader = cluster.wait_leader(among=survivors, exclude=leader)
        print(f"    new leader {new_leader} after {time.monotonic() - t0:.2f} s")
        cluster.wait_for("lease settled", lambda: holder_of(cluster, new_leader), timeout=20)
        cli(cluster, new_leader, "cluster", "status")
        say(f"restart {leader}; it rejoins as a follower")
        cluster.start(leader)
        cluster.wait_for(f"{leader} live", lambda: all(
            r["live"] for r in (cluster.status(new_leader) or {"members": [{"live": False}]})["members"]),
            timeout=20)

        holder, epoch = holder_of(cluster, new_leader)
        other = next(n for n in NODES if n != holder)
        say(f"kill -9 the lease holder's daemon ({holder}, epoch {epoch}) and cut its host off")
        t0 = time.monotonic()
        cluster.kill(holder)
        lab.cut(holder)
        cluster.wait_for("lease moved", lambda: (lambda h: h and h[0] == other)(
            holder_of(cluster, other)), timeout=20)
        new_holder, new_epoch = holder_of(cluster, other)
        print(f"    lease demo: {holder} epoch {epoch} -> {new_holder} epoch {new_epoch} "
              f"after {time.monotonic() - t0:.2f} s")
        cli(cluster, other, "lease", "list")
        say(f"heal {holder}'s network and restart it: it does not take the lease back")
        lab.heal(holder)
        cluster.start(holder)
        cluster.wait_for(f"{holder} live", lambda: all(
            r["live"] for r in (cluster.status(other) or {"members": [{"live": False}]})["members"]),
            timeout=20)
        cli(cluster, holder, "cluster", "status")

        say(f"membership: {new_holder} holds the demo lease, so removing it is refused")
        cli(cluster, "w", "cluster", "remove-node", new_holder)
        say("and removing the witness would leave two voters without one")
        cli(cluster, "w", "cluster", "remove-witness", "w")
        say(f"remove {holder} (its daemon leaves by itself), then add it back")
        cli(cluster, "w", "cluster", "remove-node", holder)
        cluster.wait_for(f"{holder} exited", lambda: not cluster.procs[holder].alive(), timeout=20)
        cli(cluster, "w", "cluster", "status")
        readd = lab.workdir / "readd"
        cli(cluster, "w", "cluster", "add-node", holder, lab.addr(holder), "--out", str(readd))
        cluster.move_state_away(holder)      # a member added back starts afresh
        cluster.start(holder, config_dir=readd / holder)
        cluster.wait_for(f"{holder} back", lambda: any(
            r["name"] == holder and r["live"] for r in (cluster.status("w") or {"members": []})["members"]),
            timeout=20)
        cli(cluster, holder, "cluster", "status")

        say("stop every daemon with SIGTERM and remove the lab")
        cluster.stop_all()
        removed = lab.cleanup()
        print(f"    removed: {', '.join(removed) if removed else 'nothing left'}")
    say("demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
