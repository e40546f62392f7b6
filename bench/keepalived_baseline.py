"""The failover baseline: keepalived (VRRP, default timers) moving a VIP between two lab hosts.

``python -m bench.keepalived_baseline --trials 3`` prints the figures.

Lab hosts k1, k2 (servers) and kc (client). keepalived runs in k1 (MASTER, priority 150)
and k2 (BACKUP, priority 100) with advert_int 1 and the default preemption; each server
also runs chaos.kvapp on 0.0.0.0:8080 answering with its node name. A poller in kc
probes http://VIP:8080/health every 20 ms (connect timeout 100 ms).

Each trial cuts k1 off and kills every process of k1 with SIGKILL, and measures from the
kill to the first answer from k2 through the VIP. Then k1's VIP is removed (as a reboot
would), its processes restart, k1 is healed, and the trial ends once the VIP answers from
k1 again: k1 preempts back (keepalived's default), so every trial kills k1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

from chaos.kv_workload import parse_poll_output
from chaos.lab import Lab, LabProcess, wait_until

from .stats import pct

log = logging.getLogger("bench.keepalived_baseline")

SERVERS = {"k1": ("MASTER", 150), "k2": ("BACKUP", 100)}
CLIENT = "kc"
APP_PORT = 8080
VRID = 51
POLL_INTERVAL_S = 0.02
CONNECT_TIMEOUT_S = 0.1
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
IP = shutil.which("ip") or "/usr/sbin/ip"


def vip_of(lab: Lab) -> str:
    """The VIP: the lab subnet's address with last octet 200."""
    return lab.addr("k1").rsplit(".", 1)[0] + ".200"


def keepalived_conf(host: str, iface: str, vip: str) -> str:
    state, priority = SERVERS[host]
    # Only what the setup needs: every timer stays at keepalived's default.
    return f"""global_defs {{
    router_id {host}
}}
vrrp_instance VI_1 {{
    state {state}
    interface {iface}
    virtual_router_id {VRID}
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
        {vip}/24 dev {iface}
    }}
}}
"""


class KeepalivedPair:
    """The running baseline: keepalived + kvapp on k1 and k2, a poller in kc."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.vip = vip_of(lab)
        self.poller: LabProcess | None = None
        self._starts = {h: 0 for h in SERVERS}

    def _paths(self, host: str) -> dict[str, Path]:
        d = self.lab.host_dir(host)
        return {name: d / name for name in
                ("keepalived.conf", "keepalived.pid", "vrrp.pid", "checkers.pid")}

    def start_server(self, host: str) -> None:
        paths = self._paths(host)
        for name in ("keepalived.pid", "vrrp.pid", "checkers.pid"):
            paths[name].unlink(missing_ok=True)  # stale pid files make keepalived refuse
        iface = self.lab.hosts[host].ifaces["lan"]
        paths["keepalived.conf"].write_text(keepalived_conf(host, iface, self.vip))
        data = self.lab.host_dir(host) / "kvdata"
        data.mkdir(exist_ok=True)
        self._starts[host] += 1
        self.lab.spawn(host, [sys.executable, "-m", "chaos.kvapp", "--data", str(data),
                              "--listen", f"0.0.0.0:{APP_PORT}", "--node", host,
                              "--epoch", str(self._starts[host])], name="kvapp",
                       cwd=Path(__file__).resolve().parent.parent)
        self.lab.spawn(host, [KEEPALIVED, "-n", "-l", "-D", "-f", str(paths["keepalived.conf"]),
                              "-p", str(paths["keepalived.pid"]), "-r", str(paths["vrrp.pid"]),
                              "-c", str(paths["checkers.pid"])], name="keepalived")

    def start_poller(self) -> None:
        self.poller = self.lab.spawn(
            CLIENT, [sys.executable, "-m", "chaos.kv_workload", "poll",
                     "--url", f"http://{self.vip}:{APP_PORT}", "--interval", str(POLL_INTERVAL_S),
                     "--connect-timeout", str(CONNECT_TIMEOUT_S)],
            name="poller", cwd=Path(__file__).resolve().parent.parent)

    def answers(self) -> list[tuple[float, str, int]]:
        assert self.poller is not None
        return parse_poll_output(self.poller.log_path.read_text(errors="replace"))

    def first_answer_from(self, host: str, after: float) -> float | None:
        return next((t for t, node, _ in self.answers() if node == host and t > after), None)

    def wait_serving(self, host: str, timeout: float = 30.0, steady: int = 10) -> None:
        """Until the last ``steady`` poller answers (after now) all come from ``host``."""
        since = time.monotonic()

        def steady_from_host() -> bool:
            recent = [node for t, node, _ in self.answers() if t > since][-steady:]
            return len(recent) == steady and all(node == host for node in recent)

        wait_until(f"{steady} answers in a row from {host} through VIP {self.vip}",
                   steady_from_host, timeout=timeout)

    def kill_host(self, host: str) -> float:
        """Power loss, as bench/failover_bench does it: network cut, then every process of
        the host's namespace SIGKILLed; returns the fault time."""
        t_kill = time.monotonic()
        self.lab.cut(host)
        self.lab.kill_host(host)
        return t_kill

    def drop_vip(self, host: str) -> None:
        """What a reboot does to an address keepalived had no chance to remove."""
        iface = self.lab.hosts[host].ifaces["lan"]
        self.lab.run(host, [IP, "addr", "del", f"{self.vip}/24", "dev", iface], check=False)


def measure_keepalived_failover(trials: int, workdir: str | os.PathLike | None = None,
                                seed: int = 1) -> dict:
    """Kill-to-first-answer-from-the-backup times through the keepalived VIP, seconds.
    Each kill comes at a random moment of a second (the default advert interval)."""
    rng = random.Random(seed)
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not Path(KEEPALIVED).exists():
        raise FileNotFoundError(f"keepalived not found at {KEEPALIVED} (apt-get install -y keepalived)")
    lab = Lab(list(SERVERS) + [CLIENT], workdir=workdir)
    failover: list[float] = []
    try:
        lab.start()
        pair = KeepalivedPair(lab)
        for host in SERVERS:
            pair.start_server(host)
        pair.start_poller()
        pair.wait_serving("k1")
        for trial in range(trials):
            time.sleep(rng.uniform(0.0, 1.0))
            t_kill = pair.kill_host("k1")
            t_answer = wait_until("an answer from k2 through the VIP",
                                  lambda: pair.first_answer_from("k2", t_kill), timeout=60)
            failover.append(t_answer - t_kill)
            log.info("event=keepalived_trial trial=%d failover_s=%.3f", trial, failover[-1])
            pair.drop_vip("k1")
            pair.start_server("k1")
            lab.heal("k1")
            pair.wait_serving("k1", timeout=60)
    finally:
        lab.cleanup()
    return {"trials": trials, "failover_s": failover,
            "p50": pct(failover, 50), "p99": pct(failover, 99)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.keepalived_baseline",
                                description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--workdir", help="lab workdir (default: a new temporary directory)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error(f"--trials must be >= 1, got {args.trials}")
    if os.geteuid() != 0:
        print("keepalived_baseline: needs root (the lab uses network namespaces)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING)
    try:
        result = measure_keepalived_failover(args.trials, args.workdir)
    except (FileNotFoundError, TimeoutError) as exc:
        print(f"keepalived_baseline: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        times = " ".join(f"{t:.3f}" for t in result["failover_s"])
        print(f"keepalived failover (advert_int 1, default timers): trials={result['trials']} "
              f"p50={result['p50']:.3f}s p99={result['p99']:.3f}s all=[{times}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
