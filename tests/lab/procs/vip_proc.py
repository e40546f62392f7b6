"""Runs vip functions inside a lab host's namespace for tests/test_vip.py.

    vip_proc.py add ADDR [--prefixlen N] [--interface IF]   -> {"interface": ...}
    vip_proc.py remove ADDR [--interface IF]                -> {"removed": bool}
    vip_proc.py has ADDR                                    -> {"interface": ... | null}
    vip_proc.py garp IF ADDR [--count N]                    -> {"sent": N}
    vip_proc.py announce ADDR --hold S [--refresh S] [--burst N]
        raise_, hold, drop (on uvloop, as the daemon) -> {"raised_before_drop": ...,
        "held_on": ..., "present_after_drop": ..., "dropped_at": monotonic}
    vip_proc.py race ADDR --rounds N
        N times: raise_ as a task, cancel it after a varying delay, drop; counts the
        rounds that left the address behind -> {"leftovers": n, "rounds": N}
    vip_proc.py lease ADDR --lease S --margin S [--raise-after S]
        holds ADDR on a simulated lease (renewed every lease/4, deadline = renewal start
        + lease - margin, as raft.lease): the announcer's kernel lifetime follows it.
        One JSON line per renewal {"deadline": monotonic}; runs until killed.
    vip_proc.py listen ADDR SECONDS
        prints {"ready": true} once listening, then one JSON line per ARP frame about ADDR
        ({"t": monotonic, "op": 1|2, "sender_mac": ..., "gratuitous": bool}).

A VipError exits with status 2 and its message as the last line of stderr.
"""
import argparse
import asyncio
import json
import logging
import select
import socket
import sys
import time

import uvloop

from vip import VipAnnouncer, VipError, add_vip, has_vip, remove_vip, send_gratuitous_arp
from vip.garp import ETH_P_ARP, is_gratuitous, parse_arp_frame


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def announce(args) -> dict:
    ann = VipAnnouncer(args.addr, None, None, refresh_s=args.refresh, burst=args.burst)
    await ann.raise_()
    await asyncio.sleep(args.hold)
    raised, held_on = ann.raised, ann.held_on
    await ann.drop()
    dropped_at = time.monotonic()
    # checked right when drop() has returned (netlink off the loop thread, as the daemon)
    present = await asyncio.get_running_loop().run_in_executor(None, has_vip, args.addr)
    return {"raised_before_drop": raised, "held_on": held_on, "raised_after_drop": ann.raised,
            "present_after_drop": present, "dropped_at": dropped_at}


async def race(args) -> dict:
    loop = asyncio.get_running_loop()
    leftovers = 0
    for i in range(args.rounds):
        ann = VipAnnouncer(args.addr, None, None, refresh_s=0.05, burst=2)
        task = asyncio.create_task(ann.raise_())
        await asyncio.sleep((i % 10) * 0.002)  # cancel at different points of raise_
        task.cancel()
        await asyncio.wait([task])
        await ann.drop()
        if await loop.run_in_executor(None, has_vip, args.addr) is not None:
            leftovers += 1
    return {"leftovers": leftovers, "rounds": args.rounds}


async def lease(args) -> None:
    from raft.lease import HolderLease, LeaseTiming
    timing = LeaseTiming(args.lease, args.margin)
    held = HolderLease(timing)

    class Holder:   # what VipAnnouncer needs of hacluster.node.lease_holder.LeaseHolder
        lease = held

        @staticmethod
        def renew_now() -> None:
            emit({"renew_now": True})
            held.renewal_succeeded(time.monotonic(), epoch=1)
            ann.lease_renewed(held.valid_until())
    ann = VipAnnouncer(args.addr, None, None, refresh_s=0, burst=1,
                       lease=lambda: Holder, renew_interval_s=timing.renew_interval_s)
    while True:
        started = time.monotonic()
        held.renewal_succeeded(started, epoch=1)
        if not ann.raised:
            # raised late in the lease: under a second left, raise_ must renew early
            await asyncio.sleep(args.raise_after)
            await ann.raise_()
        else:
            ann.lease_renewed(held.valid_until())
        emit({"deadline": held.valid_until()})
        await asyncio.sleep(timing.renew_interval_s)


def listen(addr: str, seconds: float) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    emit({"ready": True})
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            continue
        frame = parse_arp_frame(sock.recv(2048))
        if frame is None or addr not in (frame.sender_ip, frame.target_ip):
            continue
        emit({"t": time.monotonic(), "op": frame.op, "sender_mac": frame.sender_mac.hex(":"),
              "sender_ip": frame.sender_ip, "target_ip": frame.target_ip,
              "gratuitous": is_gratuitous(frame)})


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add")
    a.add_argument("addr")
    a.add_argument("--prefixlen", type=int)
    a.add_argument("--interface")
    r = sub.add_parser("remove")
    r.add_argument("addr")
    r.add_argument("--interface")
    sub.add_parser("has").add_argument("addr")
    g = sub.add_parser("garp")
    g.add_argument("interface")
    g.add_argument("addr")
    g.add_argument("--count", type=int, default=3)
    n = sub.add_parser("announce")
    n.add_argument("addr")
    n.add_argument("--hold", type=float, required=True)
    n.add_argument("--refresh", type=float, default=10.0)
    n.add_argument("--burst", type=int, default=3)
    ra = sub.add_parser("race")
    ra.add_argument("addr")
    ra.add_argument("--rounds", type=int, default=20)
    le = sub.add_parser("lease")
    le.add_argument("addr")
    le.add_argument("--lease", type=float, default=1.5)
    le.add_argument("--margin", type=float, default=0.3)
    le.add_argument("--raise-after", type=float, default=0.0)
    li = sub.add_parser("listen")
    li.add_argument("addr")
    li.add_argument("seconds", type=float)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    try:
        if args.cmd == "add":
            emit({"interface": add_vip(args.addr, args.prefixlen, args.interface)})
        elif args.cmd == "remove":
            emit({"removed": remove_vip(args.addr, args.interface)})
        elif args.cmd == "has":
            emit({"interface": has_vip(args.addr)})
        elif args.cmd == "garp":
            emit({"sent": send_gratuitous_arp(args.interface, args.addr, args.count)})
        elif args.cmd == "announce":
            emit(uvloop.run(announce(args)))
        elif args.cmd == "race":
            emit(uvloop.run(race(args)))
        elif args.cmd == "lease":
            uvloop.run(lease(args))
        elif args.cmd == "listen":
            listen(args.addr, args.seconds)
    except VipError as exc:
        print(f"VipError: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
