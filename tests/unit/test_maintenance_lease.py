"""Maintenance holds (raft.cluster_state.set_maintenance, renew_many's extensions,
raft.lease): the holder of a lease must always stop acting before the Raft leader may
take the lease away, through maintenance on and off, extended and plain renewals,
renewals applied late or never answered, and a holder that drops its extension."""
import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.cluster_state import ClusterState, mirror_resource
from raft.lease import HOLD_DRIFT, HolderLease, LeaderLeaseClock, LeaseTiming, check_expiry

MEMBERS = {"a": {"address": "10.0.0.1:7400", "role": "node"},
           "b": {"address": "10.0.0.2:7400", "role": "node"},
           "w": {"address": "10.0.0.9:7400", "role": "witness"}}
TIMING = LeaseTiming(lease_s=1.2, margin_s=0.3)
RES = mirror_resource("m")


def _state(level: int = 1) -> ClusterState:
    s = ClusterState()
    s.bootstrap(copy.deepcopy(MEMBERS))
    if level:
        assert s.raise_feature_level(level)["ok"]
    s.install_module("m", "a" * 64, "mirror", 10, "a", TIMING.lease_s, 1)
    assert s.name_good_copy(RES, "a")["ok"]
    return s


def test_maintenance_needs_the_feature_level_every_member_applies():
    s = _state(level=0)
    refused = s.set_maintenance(None, 60.0)
    assert not refused["ok"] and "feature level 1" in refused["error"]
    epoch = s.acquire(RES, "a", TIMING.lease_s)["epoch"]
    # the form an older version cannot apply is refused here too: both stay the same
    assert not s.renew_many("a", [[RES, epoch]], [RES])["ok"]
    assert s.renew_many("a", [[RES, epoch]])["ok"]
    assert not s.raise_feature_level(2)["ok"]       # newer than this version
    assert s.raise_feature_level(1) == {"ok": True, "level": 1, "raised": True}


def test_a_renewal_in_maintenance_is_granted_the_hold_and_the_leader_counts_it():
    s = _state()
    epoch = s.acquire(RES, "a", TIMING.lease_s)["epoch"]
    assert s.set_maintenance("m", 600.0)["ok"] and s.in_maintenance("m")
    one = s.renew_many("a", [[RES, epoch]], [RES])["results"][RES]
    assert one == {"ok": True, "epoch": epoch, "hold_s": 600.0}
    assert s.leases[RES]["hold_s"] == 600.0
    clock = LeaderLeaseClock()
    clock.became_leader(0.0)
    clock.renewal_applied(RES, 10.0)
    leases = {r: dict(v) for r, v in s.leases.items()}
    assert check_expiry(leases, clock, 10.0 + 1.2 + 599.0, 1.0).expire == ()
    assert [e.resource for e in check_expiry(leases, clock, 10.0 + 1.2 + 600.0, 1.0).expire] == [RES]
    # maintenance off: the hold stays until the holder renews without asking
    assert s.set_maintenance("m", None)["ok"] and not s.in_maintenance("m")
    assert s.renew_many("a", [[RES, epoch]], [RES])["results"][RES]["hold_s"] == 0.0
    assert s.leases[RES]["hold_s"] == 600.0
    assert s.renew_many("a", [[RES, epoch]])["ok"]
    assert "hold_s" not in s.leases[RES]


def test_cluster_maintenance_holds_every_lease_and_bad_input_is_refused():
    s = _state()
    assert s.set_maintenance(None, 30.0)["ok"]
    assert s.maintenance_hold("node/a") == 30.0 and s.maintenance_hold(RES) == 30.0
    assert s.set_maintenance("m", 90.0)["ok"] and s.maintenance_hold(RES) == 90.0
    for module, hold in (("nope", 10.0), ("m", -1.0), ("m", float("nan")), (None, 10 ** 9)):
        before = s.to_dict()
        assert not s.set_maintenance(module, hold)["ok"]
        assert s.to_dict() == before
    assert s.set_maintenance(None, None)["ok"] and s.set_maintenance("m", None)["ok"]
    assert "maintenance" not in s.to_dict()


# ---- the property ------------------------------------------------------------------------
STEP = st.one_of(
    st.tuples(st.just("maintenance"), st.sampled_from([None, 5.0, 60.0])),
    st.tuples(st.just("renew"), st.floats(0.0, 0.5), st.floats(0.0, 0.5), st.booleans()),
    st.tuples(st.just("wait"), st.floats(0.0, 3.0)),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(STEP, min_size=1, max_size=40))
def test_the_holder_always_stops_before_the_leader_may_take_its_lease(steps):
    """The holder asks for a hold while it sees maintenance on; once it sees it off it
    drops its extension (``drop_extension``) before it renews without asking. Each
    renewal starts at ``now``, is applied by the leader ``apply_delay`` later and
    answered ``answer_delay`` after that, or never (lost answer: the holder does not
    count it). At every step the holder's deadline is before the leader's expiry."""
    s = _state()
    epoch = s.acquire(RES, "a", TIMING.lease_s)["epoch"]
    holder = HolderLease(TIMING)
    holder.renewal_succeeded(0.0, epoch)
    clock = LeaderLeaseClock()
    clock.became_leader(0.0)
    clock.renewal_applied(RES, 0.0)
    now = 0.0
    for step in steps:
        if step[0] == "maintenance":
            assert s.set_maintenance("m", step[1])["ok"]
        elif step[0] == "wait":
            now += step[1]
        else:
            _, apply_delay, answer_delay, answered = step
            wants = s.in_maintenance("m")       # what the holder saw committed
            if not wants and holder.extended():
                holder.drop_extension()
            started = now
            result = s.renew_many("a", [[RES, epoch]], [RES] if wants else [])
            one = result["results"][RES]
            assert one["ok"]
            clock.renewal_applied(RES, started + apply_delay)
            if answered:
                holder.renewal_succeeded(started, epoch, one.get("hold_s", 0.0))
            now = started + apply_delay + answer_delay
        lease = s.leases[RES]
        leader_expiry = clock.expires_at(RES, lease["lease_s"] + lease.get("hold_s", 0.0))
        valid_until = holder.valid_until()
        assert valid_until is not None and leader_expiry is not None
        assert valid_until < leader_expiry, (valid_until, leader_expiry, lease)


def test_the_holder_gives_up_a_share_of_a_long_hold_for_clock_drift():
    holder = HolderLease(TIMING)
    holder.renewal_succeeded(100.0, 3, hold_s=3600.0)
    assert holder.extended()
    assert holder.valid_until() == 100.0 + 1.2 - 0.3 + 3600.0 * (1 - HOLD_DRIFT)
    holder.drop_extension()
    assert not holder.extended() and holder.valid_until() == 100.0 + 1.2 - 0.3


def test_no_node_joins_a_farm_in_cluster_maintenance():
    """A join moves buckets away from nodes whose daemons may be away, their kernels
    still accepting those buckets within their hold: refused until maintenance ends."""
    s = _state()
    s.install_module("f", "f" * 64, "farm", 10, "a", TIMING.lease_s)
    for n in ("a", "b"):
        s.acquire(f"node/{n}", n, TIMING.lease_s)
    assert s.farm_join("f", "a", 1)["changed"]
    assert s.set_maintenance(None, 60.0)["ok"]
    refused = s.farm_join("f", "b", 1)
    assert not refused["ok"] and "maintenance" in refused["error"]
    assert s.farm_join("f", "a", 1)["ok"]           # already in, same power: no change
    assert s.farm_leave("f", "a")["ok"]             # leaving only gives buckets to others
    assert s.set_maintenance(None, None)["ok"]
    assert s.farm_join("f", "b", 1)["ok"]
