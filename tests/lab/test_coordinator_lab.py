"""The coordinator with real daemons in the lab: elections, leases under
partition, membership changes from the CLI, clean stop."""
import pytest

from hacluster.node import exit_status
from tests.conftest import needs_root

pytestmark = [needs_root, pytest.mark.lab]


def _lease_agreement(cluster, members, resource):
    """(holder, epoch) if every given member reports the same, else None."""
    seen = set()
    for m in members:
        lease = cluster.lease(m, resource)
        if lease is None:
            return None
        seen.add((lease["holder"], lease["epoch"]))
    return seen.pop() if len(seen) == 1 else None


def test_leader_killed_new_leader_elected(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"])
    leader = cluster.wait_leader()
    term = cluster.status(leader)["term"]
    cluster.kill(leader)
    survivors = [m for m in cluster.members if m != leader]
    new = cluster.wait_leader(among=survivors, exclude=leader, timeout=10)
    assert new != leader
    assert cluster.status(new)["term"] > term
    # The dead member's liveness lease expires through Raft.
    cluster.wait_for(f"{leader} seen dead", lambda: not next(
        r for r in cluster.status(new)["members"] if r["name"] == leader)["live"], timeout=10)


def test_cut_off_holder_stops_before_new_grant(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], contend={"n1": ["demo"], "n2": ["demo"]})
    holder, epoch = cluster.wait_for("demo lease held", lambda: (
        lambda a: a if a and a[0] else None)(_lease_agreement(cluster, cluster.members, "demo")))
    others = [m for m in cluster.members if m != holder]
    other_node = next(n for n in cluster.nodes if n != holder)

    cluster.lab.cut(holder)
    new_holder, new_epoch = cluster.wait_for("lease moved", lambda: (
        lambda a: a if a and a[0] == other_node else None)(
            _lease_agreement(cluster, others, "demo")), timeout=15)
    assert new_epoch > epoch

    lost = [e for e in cluster.events(holder, "lease_lost") if e.get("resource") == "demo"]
    assert lost, "the cut-off holder never stopped considering itself holder"
    granted = [float(e["mono"]) for m in others for e in cluster.events(m, "lease_granted")
               if e.get("resource") == "demo" and e.get("epoch") == str(new_epoch)]
    assert granted, "no member logged the new grant"
    # CLOCK_MONOTONIC is shared by the lab hosts: the order is meaningful.
    assert float(lost[0]["mono"]) < min(granted), (lost[0], granted)

    cluster.lab.heal(holder)
    final = cluster.wait_for("one holder after heal", lambda: (
        lambda a: a if a and a[0] else None)(_lease_agreement(cluster, cluster.members, "demo")),
        timeout=15)
    assert final[1] >= new_epoch
    # The old holder never took the lease back with its old epoch.
    reacquired = [e for e in cluster.events(holder, "lease_acquired")
                  if e.get("resource") == "demo" and int(e["epoch"]) <= new_epoch
                  and float(e["mono"]) > float(lost[0]["mono"])]
    assert reacquired == []


def test_membership_changes_from_cli(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], extra_hosts=["n3"])
    def all_live() -> bool:
        rows = (cluster.status("n1") or {}).get("members", [])
        # (the member list is empty until the bootstrap entry is applied)
        return len(rows) == len(cluster.members) and all(r["live"] for r in rows)
    cluster.wait_for("all live", all_live)

    # Refused: removing the witness leaves two voters without one.
    res = cluster.hacluster("n1", "cluster", "remove-witness", "w")
    assert res.returncode == 1
    assert "two voters without a witness" in res.stderr
    assert res.stderr.count("\n") == 1  # one line
    # Refused: unknown member; duplicate address.
    res = cluster.hacluster("n1", "cluster", "remove-node", "nope")
    assert res.returncode == 1 and "unknown member 'nope'" in res.stderr
    res = cluster.hacluster("n1", "cluster", "add-node", "n9", cluster.lab.addr("n2"))
    assert res.returncode == 1 and "duplicate address" in res.stderr

    out = cluster.lab.workdir / "added"
    res = cluster.hacluster("n2", "cluster", "add-node", "n3", cluster.lab.addr("n3"),
                            "--out", str(out))
    assert res.returncode == 0, res.stderr
    cluster.nodes.append("n3")
    cluster.start("n3", config_dir=out / "n3")
    cluster.wait_for("n3 live", lambda: any(
        r["name"] == "n3" and r["live"] for r in cluster.status("n1")["members"]), timeout=15)
    cluster.wait_for("n3 caught up", lambda: (cluster.status("n3", ) or {}).get("leader"))

    # Each member keeps the committed membership in its state directory (members.json);
    # its cluster.json, the administrator's, is left as written (tests/lab/test_fhs_layout_lab.py).
    import json
    cluster.wait_for("n1's members.json has n3", lambda: "n3" in json.loads(
        (cluster.state_dir("n1") / "members.json").read_text())["members"])
    assert "n3" not in json.loads((cluster.config_dir("n1") / "cluster.json").read_text())["members"]

    res = cluster.hacluster("w", "cluster", "remove-node", "n3")
    assert res.returncode == 0, res.stderr
    cluster.wait_for("n3 exits by itself", lambda: not cluster.procs["n3"].alive(), timeout=15)
    # The status the units do not restart (RestartPreventExitStatus=).
    assert cluster.procs["n3"].returncode == exit_status.REMOVED == 78
    assert [e for e in cluster.events("n3", "daemon_stopped")
            if "removed from the cluster" in e.get("reason", "")]
    members = {r["name"] for r in cluster.status("n1")["members"]}
    assert members == {"n1", "n2", "w"}


def test_sigterm_stops_cleanly_and_releases(make_cluster):
    cluster = make_cluster(["n1", "n2"], ["w"], contend={"n1": ["demo"], "n2": ["demo"]})
    holder, epoch = cluster.wait_for("demo lease held", lambda: (
        lambda a: a if a and a[0] else None)(_lease_agreement(cluster, cluster.members, "demo")))
    assert cluster.stop(holder) == 0
    assert cluster.events(holder, "daemon_stopped")
    other = next(n for n in cluster.nodes if n != holder)
    # Released, not expired: the other node takes over without waiting for expiry.
    cluster.wait_for("handover", lambda: (lambda l: l and l["holder"] == other)(
        cluster.lease(other, "demo")), timeout=10)
    assert not [e for m in cluster.members for e in cluster.events(m, "lease_expired")
                if e.get("resource") == "demo"]
