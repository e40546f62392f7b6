"""vip/ in real lab namespaces: addresses, GARP, the announcer (the pure frame builder: tests/unit/test_vip.py)."""
import json
import sys
import time
from pathlib import Path


from chaos.lab import wait_until
from tests.conftest import needs_root
from tests.lab.test_kernel_fence_lab import vip_lifetime
from vip.lifetime import ADDRESS_EXPIRY_LAG_S
from vip.garp import ARP_REPLY, ARP_REQUEST

VIP_PROC = [sys.executable, str(Path(__file__).parent / "procs" / "vip_proc.py")]


# -- lab: real namespaces ------------------------------------------------------------

def vip_of(lab) -> str:
    return lab.addr("a").rsplit(".", 1)[0] + ".200"


def proc(lab, host, *args, check=True):
    res = lab.run(host, [*VIP_PROC, *args], check=False, timeout=20)
    if check:
        assert res.returncode == 0, f"vip_proc {args} on {host}: {res.stderr}"
        return json.loads(res.stdout.splitlines()[-1])
    return res


def mac_of(lab, host) -> str:
    out = lab.run(host, ["ip", "-j", "link", "show", lab.hosts[host].ifaces["lan"]]).stdout
    return json.loads(out)[0]["address"]


def neigh(lab, host, addr) -> str:
    return lab.run(host, ["ip", "neigh", "show", addr]).stdout.strip()


def v4_addrs(lab, host) -> str:
    return lab.run(host, ["ip", "-4", "addr", "show"]).stdout


def ping(lab, host, addr) -> bool:
    return lab.run(host, ["ping", "-c1", "-W1", addr], check=False).returncode == 0


@needs_root
def test_add_makes_vip_reachable_at_holders_mac(make_lab):
    lab = make_lab(["a", "b", "c"])
    vip = vip_of(lab)
    assert proc(lab, "a", "add", vip) == {"interface": "eth0"}
    assert proc(lab, "a", "add", vip) == {"interface": "eth0"}  # idempotent
    shown = v4_addrs(lab, "a")
    assert f"inet {vip}/24 " in shown and "eth0:hv" in shown  # subnet's prefix, our label
    assert shown.count(f"inet {vip}/") == 1
    assert proc(lab, "a", "has", vip) == {"interface": "eth0"}
    assert proc(lab, "b", "has", vip) == {"interface": None}
    assert ping(lab, "c", vip)
    assert f"lladdr {mac_of(lab, 'a')}" in neigh(lab, "c", vip)


@needs_root
def test_garp_moves_vip_without_client_traffic(make_lab):
    lab = make_lab(["a", "b", "c"])
    vip = vip_of(lab)
    mac_a, mac_b = mac_of(lab, "a"), mac_of(lab, "b")
    proc(lab, "a", "add", vip)
    assert ping(lab, "c", vip) and f"lladdr {mac_a}" in neigh(lab, "c", vip)

    assert proc(lab, "a", "remove", vip) == {"removed": True}
    assert proc(lab, "b", "add", vip) == {"interface": "eth0"}
    # adding the address announces nothing: c still points at a
    assert f"lladdr {mac_a}" in neigh(lab, "c", vip)
    assert proc(lab, "b", "garp", "eth0", vip, "--count", "3") == {"sent": 6}
    # read straight after the GARP, before c sends anything
    assert f"lladdr {mac_b}" in neigh(lab, "c", vip)
    assert ping(lab, "c", vip)
    assert f"lladdr {mac_b}" in neigh(lab, "c", vip)


@needs_root
def test_remove_is_idempotent_and_bad_input_changes_nothing(make_lab):
    lab = make_lab(["a", "b", "c"])
    vip = vip_of(lab)
    assert proc(lab, "a", "remove", vip) == {"removed": False}
    proc(lab, "a", "add", vip, "--prefixlen", "32", "--interface", "eth0")
    assert f"inet {vip}/32 " in v4_addrs(lab, "a")
    assert proc(lab, "a", "remove", vip, "--interface", "lo") == {"removed": False}
    assert proc(lab, "a", "remove", vip) == {"removed": True}
    assert proc(lab, "a", "remove", vip) == {"removed": False}
    assert proc(lab, "a", "has", vip) == {"interface": None}

    before = v4_addrs(lab, "a")
    for args, needle in [
        (("add", "172.31.99.7"), "virtual IP 172.31.99.7: no local interface"),
        (("add", vip, "--interface", "eth7"), f"virtual IP {vip}: no interface named 'eth7'"),
        (("add", vip.rsplit(".", 1)[0] + ".255"), "broadcast address"),
        (("garp", "eth7", vip), "interface 'eth7'"),
    ]:
        res = proc(lab, "a", *args, check=False)
        assert res.returncode == 2, res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("VipError: ") and needle in last, last
    assert v4_addrs(lab, "a") == before  # nothing half-applied


def listened_frames(log_path: Path) -> list[dict]:
    lines = [json.loads(line) for line in log_path.read_text().splitlines()
             if line.startswith("{")]
    return [x for x in lines if "t" in x]


def start_listener(lab, vip, name):
    listener = lab.spawn("c", [*VIP_PROC, "listen", vip, "30"], name=name)
    wait_until("listener ready", lambda: '"ready"' in listener.log_path.read_text(), 10)
    return listener


@needs_root
def test_announcer_bursts_refreshes_and_is_gone_when_drop_returns(make_lab):
    lab = make_lab(["a", "b", "c"])
    vip = vip_of(lab)
    mac_a = mac_of(lab, "a")
    listener = start_listener(lab, vip, "arp-refresh")
    result = proc(lab, "a", "announce", vip, "--hold", "1.0", "--refresh", "0.2")
    time.sleep(0.4)  # a frame sent after drop would arrive in this window
    listener.stop()
    assert result["raised_before_drop"] and result["held_on"] == "eth0"
    assert result["present_after_drop"] is None and not result["raised_after_drop"]
    assert f"{vip}/" not in v4_addrs(lab, "a")

    frames = [f for f in listened_frames(listener.log_path)
              if f["gratuitous"] and f["sender_mac"] == mac_a and f["sender_ip"] == vip]
    assert all(f["t"] < result["dropped_at"] for f in frames)
    requests = [f["t"] for f in frames if f["op"] == ARP_REQUEST]
    replies = [f for f in frames if f["op"] == ARP_REPLY]
    assert len(requests) == len(replies)  # every round sends both forms
    burst, refresh = requests[:3], requests[3:]
    # 1.0 s held with a 0.2 s refresh: never more than 5 refresh rounds (a sleep is never
    # short), and some even on a loaded machine. Exact spacing is bench/ material.
    assert 2 <= len(refresh) <= 5, requests
    mean_period = (refresh[-1] - burst[-1]) / len(refresh)
    assert mean_period > 0.15, requests  # not faster than the refresh period


@needs_root
def test_announcer_without_refresh_sends_only_the_burst(make_lab):
    lab = make_lab(["a", "b", "c"])
    vip = vip_of(lab)
    listener = start_listener(lab, vip, "arp-norefresh")
    result = proc(lab, "a", "announce", vip, "--hold", "0.5", "--refresh", "0", "--burst", "2")
    time.sleep(0.3)
    listener.stop()
    assert result["present_after_drop"] is None
    frames = [f for f in listened_frames(listener.log_path) if f["gratuitous"]]
    assert len(frames) == 4, frames  # 2 rounds x (request + reply), nothing after


@needs_root
def test_drop_after_cancelled_raise_leaves_nothing(make_lab):
    # The add of a cancelled raise_ still completes in its thread; drop must come after.
    lab = make_lab(["a", "b", "c"])
    assert proc(lab, "a", "race", vip_of(lab), "--rounds", "30") == {"leftovers": 0,
                                                                      "rounds": 30}
    assert f"{vip_of(lab)}/" not in v4_addrs(lab, "a")


KERNEL_EXPIRY_LAG_S = ADDRESS_EXPIRY_LAG_S   # the kernel removes an expired address this late


@needs_root
def test_vip_on_a_lease_is_refreshed_and_expires_in_the_kernel_when_its_holder_is_killed(make_lab):
    """The announcer's address carries a finite lifetime that renewals extend; SIGKILL
    its process and the kernel removes the address by itself, at the last lease
    deadline it was given (plus the kernel's own expiry lag)."""
    lab = make_lab(["a", "b", "c"])
    vip = vip_of(lab)
    # raised 0.5 s into a 1.2 s holder window: under a second left, so raise_ must get
    # an early renewal rather than give the kernel a lifetime past the deadline
    holder = lab.spawn("a", [*VIP_PROC, "lease", vip, "--lease", "1.5", "--margin", "0.3",
                             "--raise-after", "0.5"], name="vip-lease")

    def deadlines() -> list[float]:
        return [json.loads(ln)["deadline"] for ln in holder.log_path.read_text().splitlines()
                if ln.startswith('{"deadline"')]
    wait_until("VIP raised", lambda: deadlines() and vip_lifetime(lab, "a", vip) is not None, 10)
    lft = vip_lifetime(lab, "a", vip)
    assert lft is not None and 0 <= lft <= 1      # finite, never past the 1.2 s deadline
    assert '{"renew_now": true}' in holder.log_path.read_text()
    # 3 s of renewals, three times the kernel lifetime: the address never went away
    # and its lifetime never exceeded the lease's
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        lft = vip_lifetime(lab, "a", vip)
        assert lft is not None and 0 <= lft <= 1, lft
        time.sleep(0.05)

    holder.kill()
    killed_at = time.monotonic()
    last_deadline = deadlines()[-1]
    assert last_deadline <= killed_at + 1.2
    gone_at = None
    while time.monotonic() < last_deadline + KERNEL_EXPIRY_LAG_S + 2.0:
        if vip_lifetime(lab, "a", vip) is None:
            gone_at = time.monotonic()
            break
        time.sleep(0.02)
    assert gone_at is not None, f"{vip} still on a {time.monotonic() - killed_at:.2f} s after the kill"
    # the bound: the last deadline the kernel was given, plus its expiry lag (and the
    # time one `ip` poll takes on a loaded machine)
    assert gone_at <= last_deadline + KERNEL_EXPIRY_LAG_S + 0.3, (gone_at - last_deadline)
    print(f"VIP gone {gone_at - killed_at:.3f} s after SIGKILL, "
          f"{gone_at - last_deadline:+.3f} s from the last deadline")
