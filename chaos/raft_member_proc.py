"""A bare Raft member (raft.RaftMember) in its own process, for durability
tests and the Raft benchmark.

Prints "role <role> mono=<CLOCK_MONOTONIC>" on every role change.
--commit N: once a leader is known, commit N entries one by one (set_eligible
  on resource r<i>) and print "acked <i>" after each is committed.
--bench N: commit N entries one by one and print one JSON line
  {"commit_ms": [...]} with each synchronous commit's latency.
--pysyncobj-defaults: run with pysyncobj's own timers (the baseline).
Always: write the applied state to <data>/state.json every 50 ms.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raft.member import RaftCommandError, RaftMember  # noqa: E402
from raft.settings import RaftSettings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--peers", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--commit", type=int, default=0)
    p.add_argument("--bench", type=int, default=0)
    p.add_argument("--pysyncobj-defaults", action="store_true")
    args = p.parse_args()
    settings = RaftSettings.pysyncobj_defaults() if args.pysyncobj_defaults else RaftSettings()
    member = RaftMember(args.addr, args.peers.split(","), args.data, args.secret, settings,
                        on_role_change=lambda role: print(f"role {role} mono={time.monotonic():.6f}",
                                                          flush=True))
    state_path = os.path.join(args.data, "state.json")
    next_dump = 0.0
    i = 0
    latencies = []
    while True:
        now = time.monotonic()
        if now >= next_dump:
            snap = {"caught_up": member.caught_up(), "state": member.snapshot(),
                    "leader": member.leader_address(), "role": member.role,
                    "commit_index": member.raft_status()["commit_index"]}
            try:
                with open(state_path + ".tmp", "w") as f:
                    json.dump(snap, f)
                os.replace(state_path + ".tmp", state_path)
            except OSError as e:  # out of file descriptors under a test's flood: next time
                print(f"state dump skipped: {e}", flush=True)
            next_dump = now + 0.05
        todo = max(args.commit, args.bench)
        if i < todo and member.leader_address():
            t0 = time.perf_counter()
            try:
                res = member.call("set_eligible", f"r{i}", None, 1.5, timeout=2.0)
            except RaftCommandError:
                continue
            if res["ok"]:
                latencies.append((time.perf_counter() - t0) * 1e3)
                if args.commit:
                    print(f"acked {i}", flush=True)
                i += 1
                if args.bench and i == args.bench:
                    print(json.dumps({"commit_ms": latencies}), flush=True)
        else:
            time.sleep(0.01)


if __name__ == "__main__":
    main()
