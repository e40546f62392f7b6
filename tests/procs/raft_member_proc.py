"""A bare Raft member in its own process, for durability tests.

--commit N: once a leader is known, commit N entries one by one (set_eligible
on resource rN) and print "acked N" after each one is committed.
Always: write the applied state to <data>/state.json every 50 ms.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from raft.member import RaftCommandError, RaftMember  # noqa: E402
from raft.settings import RaftSettings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--peers", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--commit", type=int, default=0)
    args = p.parse_args()
    member = RaftMember(args.addr, args.peers.split(","), args.data, args.secret, RaftSettings())
    state_path = os.path.join(args.data, "state.json")
    next_dump = 0.0
    i = 0
    while True:
        now = time.monotonic()
        if now >= next_dump:
            snap = {"caught_up": member.caught_up(), "state": member.snapshot(),
                    "commit_index": member.raft_status()["commit_index"]}
            with open(state_path + ".tmp", "w") as f:
                json.dump(snap, f)
            os.replace(state_path + ".tmp", state_path)
            next_dump = now + 0.05
        if i < args.commit and member.leader_address():
            try:
                res = member.call("set_eligible", f"r{i}", None, 1.5, timeout=2.0)
            except RaftCommandError:
                continue
            if res["ok"]:
                print(f"acked {i}", flush=True)
                i += 1
        else:
            time.sleep(0.01)


if __name__ == "__main__":
    main()
