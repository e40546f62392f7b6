"""Farm traffic sharing in the lab: three servers hold one VIP (vip.farm_vip.FarmVip in a
real process each), a client host connects to it over the lab bridge.

The client side runs in this test process: a worker thread enters the client's network
namespace (setns) and makes real TCP connections there.
"""
import json
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from chaos.farm_client import ask_many, in_netns
from chaos.lab import wait_until
from tests.conftest import needs_root
from vip.farm_ruleset import bucket_of
from vip.shared_mac import shared_mac_for

pytestmark = needs_root

PROC = [sys.executable, str(Path(__file__).parent / "procs" / "farm_server_proc.py")]
SERVERS = ("a", "b", "c")
CLIENT = "d"
MODULE = "web"
SEED = 0x5EED1234
PORT_ON_PORT, PORT_ON_ADDR, PORT_UNLISTED = 8080, 8081, 8082
SPLIT = {"a": set(range(100)), "b": set(range(100, 180)), "c": set(range(180, 256))}
def owner_of(bucket: int, table: dict[str, set[int]]) -> str:
    owners = [h for h, owned in table.items() if bucket in owned]
    assert len(owners) == 1, f"bucket {bucket} owned by {owners}"
    return owners[0]


class Farm:
    def __init__(self, lab) -> None:
        self.lab = lab
        self.vip = lab.addr(SERVERS[0]).rsplit(".", 1)[0] + ".100"
        self.client_ns = lab.hosts[CLIENT].netns
        self.procs = {}
        for h in SERVERS:
            control = str(lab.host_dir(h) / "farm.sock")
            self.procs[h] = lab.spawn(h, [
                *PROC, h, control, "--module", MODULE, "--vip", self.vip,
                "--interface", "eth0", "--seed", str(SEED),
                "--port", str(PORT_ON_PORT), "--port", str(PORT_ON_ADDR),
                "--port", str(PORT_UNLISTED),
                "--rule", f"tcp:{PORT_ON_PORT}:on_port", "--rule", f"tcp:{PORT_ON_ADDR}:on_addr",
            ], name="farm")
        for h in SERVERS:
            wait_until(f"farm node {h} ready", lambda h=h: '"ready"' in self.log(h), timeout=10)

    def log(self, host: str) -> str:
        return self.procs[host].log_path.read_text()

    def control(self, host: str, op: str, owned=None, expect_ok: bool = True) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(str(self.lab.host_dir(host) / "farm.sock"))
            request = {"op": op} if owned is None else {"op": op, "owned": sorted(owned)}
            s.sendall((json.dumps(request) + "\n").encode())
            answer = json.loads(s.makefile("r").readline())
        assert answer["ok"] == expect_ok, f"{host} {op}: {answer}"
        return answer

    def raise_all(self, table: dict[str, set[int]]) -> None:
        for h, owned in table.items():
            self.control(h, "raise", owned)

    def ask_many(self, port: int, count: int, sources=(None,), timeout: float = 2.0) -> list:
        return in_netns(self.client_ns, ask_many, self.vip, port, count, sources, timeout)

    def leftovers(self, host: str) -> list[str]:
        """What of the farm is still visible in the host, read with ip/nft themselves."""
        found = []
        tables = self.lab.run(host, ["nft", "list", "tables"]).stdout
        found += [ln for ln in tables.splitlines() if "hacluster_farm_" in ln]
        maddr = self.lab.run(host, ["ip", "maddr", "show", "dev", "eth0"]).stdout
        found += [ln.strip() for ln in maddr.splitlines() if shared_mac_for(self.vip) in ln]
        addrs = self.lab.run(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        found += [ln.strip() for ln in addrs.splitlines() if f" {self.vip}/" in ln]
        return found


@pytest.fixture
def farm(make_lab):
    lab = make_lab([*SERVERS, CLIENT])
    f = Farm(lab)
    yield f
    for h in SERVERS:  # the lab's cleanup deletes the namespaces with all of it anyway
        if f.procs[h].alive():
            try:
                f.control(h, "drop")
            except (OSError, AssertionError):
                pass


def check_predicted(answers: list, port_filter: str, table: dict[str, set[int]]) -> Counter:
    """Every connection answered, by the owner of the bucket nft's jhash gives it."""
    unanswered = [a for a in answers if a[0] is None]
    assert not unanswered, f"{len(unanswered)}/{len(answers)} unanswered, e.g. {unanswered[:3]}"
    wrong = []
    for name, src, sport in answers:
        bucket = bucket_of(src, sport if port_filter == "on_port" else None, port_filter, SEED)
        if name != owner_of(bucket, table):
            wrong.append((src, sport, bucket, name))
    assert not wrong, f"answered by a node that does not own the bucket: {wrong[:5]}"
    return Counter(a[0] for a in answers)


def test_on_port_splits_connections_per_bucket_table(farm):
    farm.raise_all(SPLIT)
    answers = farm.ask_many(PORT_ON_PORT, 600)
    counts = check_predicted(answers, "on_port", SPLIT)
    assert len({sport for _n, _s, sport in answers}) > 550  # varied source ports
    for h, owned in SPLIT.items():
        share = len(owned) / 256
        # ports are random: allow 4 binomial standard deviations (about 20-25 % here)
        assert abs(counts[h] - 600 * share) <= 4 * (600 * share * (1 - share)) ** 0.5, counts
    neigh = farm.lab.run(CLIENT, ["ip", "neigh", "show", farm.vip]).stdout
    assert shared_mac_for(farm.vip) in neigh  # learned from our ARP responder
    print(f"on_port split of 600: {dict(counts)} (buckets 100/80/76)")


def test_on_addr_keeps_each_client_address_on_one_node(farm):
    farm.raise_all(SPLIT)
    base = farm.vip.rsplit(".", 1)[0]
    sources = [f"{base}.{150 + i}" for i in range(12)]
    for src in sources:
        farm.lab.run(CLIENT, ["ip", "addr", "add", f"{src}/32", "dev", "eth0"])
    answers = farm.ask_many(PORT_ON_ADDR, 5, sources)
    check_predicted(answers, "on_addr", SPLIT)
    by_source = {}
    for name, src, _sport in answers:
        by_source.setdefault(src, set()).add(name)
    assert all(len(names) == 1 for names in by_source.values()), by_source
    assert len({n for names in by_source.values() for n in names}) >= 2
    # a port that no rule lists is bucketed by source address too: one node answers
    check_predicted(farm.ask_many(PORT_UNLISTED, 2, sources), "on_addr", SPLIT)


def test_moving_buckets_keeps_new_and_unmoved_established_connections(farm):
    farm.raise_all(SPLIT)

    def open_conn_to(node: str):
        for _ in range(200):
            sock = socket.create_connection((farm.vip, PORT_ON_PORT), timeout=2)
            f = sock.makefile("rw")
            if f.readline().strip() == node:
                return sock, f
            f.close()
            sock.close()
        raise AssertionError(f"no connection landed on {node}")

    sock, stream = in_netns(farm.client_ns, open_conn_to, "a")
    moved = {"a": SPLIT["a"] | set(range(180, 220)), "b": SPLIT["b"] | set(range(220, 256)),
             "c": set()}
    t0 = time.monotonic()
    for h in ("a", "b", "c"):  # gain first, then give up: no bucket is ever unowned
        farm.control(h, "set", moved[h])
    swap_s = time.monotonic() - t0
    stream.write("still there\n")
    stream.flush()
    assert stream.readline() == "still there\n"  # unmoved bucket: connection kept
    stream.close()
    sock.close()
    counts = check_predicted(farm.ask_many(PORT_ON_PORT, 300), "on_port", moved)
    assert counts["c"] == 0
    print(f"after moving c's buckets: {dict(counts)}; three swaps took {swap_s:.3f} s")


def test_drop_leaves_nothing_and_cleanup_after_a_crash(farm):
    farm.raise_all(SPLIT)
    for h in SERVERS:
        assert len(farm.leftovers(h)) == 4, farm.leftovers(h)  # 2 tables, maddr, VIP
    farm.control("b", "drop")
    farm.control("b", "drop")  # idempotent
    assert farm.leftovers("b") == []
    farm.procs["c"].kill()  # crash: everything of c stays behind
    assert len(farm.leftovers("c")) == 4
    script = f"from vip.farm_vip import cleanup_leftovers; print(cleanup_leftovers({MODULE!r}))"
    out = farm.lab.run("c", [sys.executable, "-c", script]).stdout
    assert "vip" in out and "shared mac" in out, out
    assert farm.leftovers("c") == []
    again = farm.lab.run("c", [sys.executable, "-c", script]).stdout
    assert again.strip() == "[]"
    # a's buckets still served, b's and c's no longer answered by anyone
    answers = farm.ask_many(PORT_ON_PORT, 16, timeout=0.2)  # unanswered ones time out
    assert {a[0] for a in answers} <= {"a", None}
    for name, src, sport in answers:
        bucket = bucket_of(src, sport, "on_port", SEED)
        assert name == ("a" if bucket in SPLIT["a"] else None), (bucket, name)


def test_node_arp_requests_from_the_vip_do_not_repoint_the_client(farm):
    """A server resolving the client for a reply sent from the VIP asks with its own
    address (the arp table rewrites it); the client keeps the VIP on the shared MAC."""
    farm.raise_all(SPLIT)
    assert None not in {a[0] for a in farm.ask_many(PORT_ON_PORT, 3)}
    time.sleep(1.1)  # past the client's neighbour locktime (1 s): an update would stick
    for h in SERVERS:
        farm.lab.run(h, ["ip", "neigh", "flush", "dev", "eth0"])
    check_predicted(farm.ask_many(PORT_ON_PORT, 30), "on_port", SPLIT)
    neigh = farm.lab.run(CLIENT, ["ip", "neigh", "show", farm.vip]).stdout
    assert shared_mac_for(farm.vip) in neigh, neigh
    rewritten = 0
    for h in SERVERS:
        arp_table = farm.lab.run(h, ["nft", "list", "table", "arp", f"hacluster_farm_{MODULE}"])
        line = next(ln for ln in arp_table.stdout.splitlines() if "operation request" in ln)
        rewritten += int(line.split("packets ")[1].split()[0])
    assert rewritten >= 1  # the servers did ask from the VIP, and were rewritten


def test_failed_raise_leaves_nothing_half_applied(farm):
    # the VIP already sits on lo: add_vip refuses it after the ruleset and MAC are in place
    farm.lab.run("a", ["ip", "addr", "add", f"{farm.vip}/32", "dev", "lo"])
    answer = farm.control("a", "raise", SPLIT["a"], expect_ok=False)
    assert "already on lo" in answer["error"], answer
    assert farm.leftovers("a") == []  # no table, no maddr, nothing on eth0
    assert farm.control("a", "set", SPLIT["a"], expect_ok=False)["error"].endswith(
        "raise_ it before setting buckets")
