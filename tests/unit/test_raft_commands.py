"""raft/commands.py: the one table of Raft commands, and what each says it changed."""
import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raft import commands
from raft.cluster_state import ClusterState, liveness_resource, mirror_resource
from raft.member import OPS

NODES = ["a", "b", "c"]
MEMBERS = {"a": {"address": "10.0.0.1:7400", "role": "node"},
           "b": {"address": "10.0.0.2:7400", "role": "node"},
           "c": {"address": "10.0.0.3:7400", "role": "node"},
           "w": {"address": "10.0.0.9:7400", "role": "witness"}}
MODULES = ["m1", "m2", "f1"]
RESOURCES = [mirror_resource("m1"), mirror_resource("m2"), "vip"] + [liveness_resource(n) for n in NODES]
READS = ("live_members", "holder", "to_dict", "from_dict", "farm_table", "generation",
         "maintenance_hold", "in_maintenance")


def test_the_table_is_every_command_of_the_state_machine():
    methods = {name for name in vars(ClusterState) if not name.startswith("_")} - set(READS)
    assert set(OPS) == methods
    assert OPS == tuple(commands.COMMANDS)
    assert all(commands.COMMANDS[name].name == name for name in OPS)


def test_a_renewal_changes_nothing_a_reader_sees():
    s = ClusterState()
    s.bootstrap(copy.deepcopy(MEMBERS))
    granted = s.acquire(mirror_resource("m1"), "a", 1.5)
    assert commands.ACQUIRE.changed((mirror_resource("m1"), "a", 1.5), granted) == commands.Changed(
        leases=frozenset({mirror_resource("m1")}))
    args = ("a", [[mirror_resource("m1"), granted["epoch"]]])
    renewed = s.renew_many(*args)
    assert renewed["ok"] and commands.RENEW_MANY.changed(args, renewed).nothing


def test_a_liveness_expiry_names_the_farms_its_node_left():
    s = ClusterState()
    s.bootstrap(copy.deepcopy(MEMBERS))
    s.install_module("f1", "f" * 64, "farm", 10, "a", 1.5)
    epoch = s.acquire(liveness_resource("b"), "b", 1.5)["epoch"]
    assert s.farm_join("f1", "b", 1)["ok"]
    seq = s.leases[liveness_resource("b")]["seq"]
    args = (liveness_resource("b"), epoch, seq)
    result = s.expire(*args)
    assert result["farms_left"] == ["f1"]
    assert commands.EXPIRE.changed(args, result) == commands.Changed(
        leases=frozenset({liveness_resource("b")}), modules=frozenset({"f1"}))


def _seen(state: ClusterState) -> tuple[dict, dict, dict]:
    """What readers see: members, module entries (with whether each is in maintenance),
    leases without their seq and hold (the leader's, raft.lease.check_expiry)."""
    leases = {r: {k: v for k, v in lease.items() if k not in ("seq", "hold_s")}
              for r, lease in state.leases.items()}
    modules = {name: {**entry, "in maintenance": state.in_maintenance(name)}
               for name, entry in state.modules.items()}
    return copy.deepcopy(state.members), copy.deepcopy(modules), copy.deepcopy(leases)


@st.composite
def command(draw, state: ClusterState) -> tuple[str, tuple]:
    """One command with arguments that are often valid (current epochs, members)."""
    op = draw(st.sampled_from(sorted(OPS)))
    node = draw(st.sampled_from(NODES + ["w", "x"]))
    resource = draw(st.sampled_from(RESOURCES))
    module = draw(st.sampled_from(MODULES))
    lease = state.leases.get(resource) or {"epoch": 0, "seq": 0, "holder": None}
    holder = lease["holder"] or node
    epoch = lease["epoch"] + draw(st.sampled_from([0, 0, 0, 1]))
    copy_id = draw(st.sampled_from(["0" * 32, "1" * 32]))
    nodes = draw(st.lists(st.sampled_from(NODES), max_size=3, unique=True))
    mode = "farm" if module.startswith("f") else "mirror"
    args = {
        "bootstrap": (copy.deepcopy(MEMBERS),),
        "add_member": (draw(st.sampled_from(["d", "a"])), "10.0.0.4:7400", "node"),
        "remove_member": (node, "node"),
        "acquire": (resource, node, 1.5, draw(st.booleans())),
        "renew": (resource, holder, epoch),
        "renew_many": (holder, [[resource, epoch]]) + draw(st.sampled_from([(), ([resource],)])),
        "raise_feature_level": (draw(st.sampled_from([1, 2])),),
        "stage_module": (module, draw(st.sampled_from(["a" * 64, "c" * 64])), mode, 10, node),
        "apply_staged": (module, node, draw(st.sampled_from(["a" * 64, "c" * 64]))),
        "set_maintenance": (draw(st.sampled_from([None, module, "nope"])),
                            draw(st.sampled_from([None, 60.0, -1]))),
        "release": (resource, holder, epoch),
        "expire": (resource, epoch, lease["seq"]),
        "set_eligible": (resource, draw(st.sampled_from([None, nodes])), 1.5),
        "install_module": (module, draw(st.sampled_from(["a" * 64, "b" * 64])), mode, 10, node, 1.5),
        "uninstall_module": (module,),
        "set_intent": (module, node, draw(st.sampled_from(["start", "stop"]))),
        "set_failover": (module, draw(st.booleans())),
        "begin_generation": (resource, holder, epoch, copy_id),
        "set_in_sync": (resource, holder, epoch, sorted(set(nodes) | {holder}), {}),
        "name_good_copy": (resource, node, draw(st.booleans())),
        "leave_in_sync": (resource, node, draw(st.booleans())),
        "farm_join": (module, node, draw(st.sampled_from([1, 2]))),
        "farm_leave": (module, node),
        "set_user": (draw(st.sampled_from(["alice", "bob", "9bad"])),
                     draw(st.sampled_from(["monitor", "admin", "root"])),
                     draw(st.sampled_from([None, "scrypt$15$8$1$" + "A" * 22 + "$" + "B" * 43,
                                           "plain"]))),
        "remove_user": (draw(st.sampled_from(["alice", "carol"])),),
    }[op]
    return op, args


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_a_command_says_it_changed_covers_every_change_a_reader_sees(data):
    s = ClusterState()
    s.bootstrap(copy.deepcopy(MEMBERS))
    for _ in range(data.draw(st.integers(1, 25))):
        op, args = data.draw(command(s))
        members, modules, leases = _seen(s)
        users = copy.deepcopy(s.users)
        result = getattr(s, op)(*args)
        changed = commands.changed(op, args, result)
        after_members, after_modules, after_leases = _seen(s)
        if changed.everything:
            continue
        assert changed.users or s.users == users, (op, args, result)
        assert changed.members or after_members == members, (op, args, result)
        for name in set(modules) | set(after_modules):
            if modules.get(name) != after_modules.get(name):
                assert changed.concerns(name), (op, args, result, name)
        for resource in set(leases) | set(after_leases):
            if leases.get(resource) != after_leases.get(resource):
                assert resource in changed.leases, (op, args, result, resource)
