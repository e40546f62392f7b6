"""Nemesis target selection: from the roles and a seeded rng only, so a chaos run is
reproducible from its seed; every choice names real hosts in a sensible role."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from chaos.chaos_run import episode_plan, episode_rng   # registers them all
from chaos.nemesis import (NEMESES, Nemesis, Roles, make_nemesis)
from chaos.lab_shapes import SHAPES

ROLES = Roles(primary="n1", secondary="n2", witness="w", client="c")
SWAPPED = Roles(primary="n2", secondary="n1", witness="w", client="c")
FIVE = ("w", "w2", "w3")
# the roles each lab shape gives its nemeses (chaos.lab_shapes)
SHAPE_ROLES = {"standard": (ROLES, SWAPPED),
               "five_voters": (Roles("n1", "n2", "w", "c", FIVE), Roles("n2", "n1", "w", "c", FIVE)),
               "two_networks": (ROLES, SWAPPED)}


def _choose(name: str, seed: int, roles: Roles | None = None) -> dict:
    roles = roles or SHAPE_ROLES[NEMESES[name].lab_shape][0]
    return make_nemesis(name).choose(random.Random(seed), roles)


@given(name=st.sampled_from(sorted(NEMESES)), seed=st.integers(0, 2**32))
def test_same_seed_same_roles_same_targets(name, seed):
    assert _choose(name, seed) == _choose(name, seed)


@pytest.mark.parametrize("name", sorted(NEMESES))
def test_targets_follow_the_roles_not_the_host_names(name):
    """The same seed with the primary on the other node picks the mirrored targets."""
    def rename(obj):
        if isinstance(obj, str):
            return {"n1": "n2", "n2": "n1"}.get(obj, obj)
        if isinstance(obj, list):
            return [rename(o) for o in obj]
        if isinstance(obj, dict):
            return {k: rename(v) for k, v in obj.items()}
        return obj
    roles, swapped = SHAPE_ROLES[NEMESES[name].lab_shape]
    for seed in range(20):
        assert _choose(name, seed, swapped) == rename(_choose(name, seed, roles))


def test_random_choices_vary_with_the_seed():
    for name in ("partition-halves", "one-way", "kill-replication", "kill-host", "flap", "kill-all"):
        assert len({repr(_choose(name, seed)) for seed in range(40)}) > 1, name


def test_fixed_role_nemeses_hit_the_role():
    for seed in range(10):
        assert _choose("isolate-primary", seed) == {"host": "n1"}
        assert _choose("isolate-secondary", seed) == {"host": "n2"}
        assert _choose("isolate-witness", seed) == {"host": "w"}
        assert _choose("kill-daemon", seed) == {"host": "n1"}
        assert _choose("pause-primary", seed) == {"host": "n1"}
        assert _choose("bridge", seed) == {"groups": [["n1"], ["n2"]], "bridge": "w"}


def test_partition_halves_puts_the_witness_with_one_node_and_everyone_somewhere():
    seen = set()
    for seed in range(60):
        groups = _choose("partition-halves", seed)["groups"]
        assert sorted(h for g in groups for h in g) == ["c", "n1", "n2", "w"]
        majority, minority = groups
        assert "w" in majority and len({"n1", "n2"} & set(majority)) == 1
        assert len({"n1", "n2"} & set(minority)) == 1
        seen.add((tuple(sorted(majority)), tuple(sorted(minority))))
    assert len(seen) == 4   # witness with either node, client on either side


def test_one_way_blocks_a_data_node_towards_the_other_voters():
    for seed in range(20):
        t = _choose("one-way", seed)
        assert t["src"] in ("n1", "n2")
        assert sorted(t["dst"]) == sorted({"n1", "n2", "w"} - {t["src"]})


def test_kill_replication_kills_the_primary_mount_or_the_secondary_receiver():
    kinds = {tuple(_choose("kill-replication", s).items()) for s in range(40)}
    assert kinds == {(("host", "n1"), ("kind", "mount")), (("host", "n2"), ("kind", "receive"))}


def test_flap_schedule_is_short_and_on_a_voter():
    for seed in range(20):
        t = _choose("flap", seed)
        assert t["host"] in ("n1", "n2", "w")
        assert 3 <= len(t["schedule"]) <= 6
        assert all(0.2 <= d <= 0.8 and 0.2 <= u <= 0.8 for d, u in t["schedule"])


def test_kill_all_powers_off_every_voter():
    for seed in range(10):
        assert sorted(_choose("kill-all", seed)["hosts"]) == ["n1", "n2", "w"]


def test_zombie_pause_outlasts_the_lease():
    from raft.settings import RaftSettings
    assert NEMESES["pause-primary"].min_hold_s >= 2 * RaftSettings().lease_s


def test_zombie_pause_outlasts_the_vip_expiry_it_judges():
    # the paused primary's VIP is judged at the heal: it must have had time to lapse
    from raft.settings import RaftSettings
    from vip.lifetime import ADDRESS_EXPIRY_LAG_S
    st = RaftSettings()
    bound = st.lease_s - st.lease_margin_s + ADDRESS_EXPIRY_LAG_S
    assert NEMESES["pause-primary"].min_hold_s >= bound + 0.3


def test_episode_rng_is_stable_per_episode():
    a = episode_rng(7, 3, "flap")
    b = episode_rng(7, 3, "flap")
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]
    assert episode_rng(7, 3, "flap").random() != episode_rng(7, 4, "flap").random()
    assert episode_rng(7, 3, "flap").random() != episode_rng(8, 3, "flap").random()


def test_episode_plan_runs_every_nemesis_each_round():
    assert episode_plan(["a", "b"], 3) == ["a", "b", "a", "b", "a", "b"]


def test_unknown_nemesis_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown nemesis 'nope'.*isolate-primary"):
        make_nemesis("nope")


def test_every_nemesis_is_registered_under_its_name():
    assert all(issubclass(cls, Nemesis) and cls.name == name for name, cls in NEMESES.items())
    # with chaos.chaos_run's cut-replication-network and the 7 copy-identity nemeses
    assert len(NEMESES) == 25
    assert {cls.lab_shape for cls in NEMESES.values()} <= set(SHAPES)


def test_an_event_is_recorded_with_time_action_and_host():
    n = make_nemesis("isolate-witness")
    ev = n.record("cut", "w", "witness isolated")
    assert n.events == [ev] and ev.nemesis == "isolate-witness" and ev.host == "w" and ev.t > 0


@pytest.mark.parametrize("argv, message", [
    (["run", "--nemesis", "nope"], "unknown nemesis 'nope'; have all, isolate-primary"),
    (["run", "--episodes", "0"], "--episodes: must be > 0, got 0"),
    (["run", "--hold", "3", "1"], "--hold: MIN_S 3.0 is above MAX_S 1.0"),
])
def test_cli_refuses_bad_arguments_before_starting_a_lab(argv, message, capsys):
    from chaos.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_disk_full_fills_the_role_it_names():
    for seed in range(10):
        assert _choose("disk-full-primary", seed) == {"host": "n1"}
        assert _choose("disk-full-secondary", seed) == {"host": "n2"}
        assert _choose("disk-full-primary", seed, SWAPPED) == {"host": "n2"}
    assert NEMESES["disk-full-primary"].needs_small_fs and NEMESES["disk-full-secondary"].needs_small_fs
    assert not NEMESES["failover-during-reintegration"].needs_small_fs


def test_failover_during_reintegration_targets_the_pair_with_a_seeded_bulk():
    bulks = set()
    for seed in range(40):
        t = _choose("failover-during-reintegration", seed)
        assert (t["primary"], t["secondary"]) == ("n1", "n2")
        assert 12 <= t["bulk_mib"] <= 20 and 0 <= t["bulk_seed"] < 2**32
        bulks.add((t["bulk_mib"], t["bulk_seed"]))
    assert len(bulks) > 30       # the bulk content varies with the seed
    # a wrong promotion must have time to show: longer than the lease
    from raft.settings import RaftSettings
    assert NEMESES["failover-during-reintegration"].min_hold_s >= 2 * RaftSettings().lease_s


# ---- lab shapes, the majorities ring, membership changes ----------------------------------

from chaos.chaos_run import shape_of  # noqa: E402
from chaos.lab_shapes import FIVE_VOTERS, STANDARD, TWO_NETWORKS, plan_by_shape, shape  # noqa: E402
from chaos.nemesis import one_line_error, ring_blocks, ring_neighbours  # noqa: E402


@given(names=st.lists(st.sampled_from(sorted(NEMESES)), min_size=1, max_size=6, unique=True),
       episodes=st.integers(1, 4))
def test_plan_by_shape_keeps_every_episode_with_its_index_in_plan_order(names, episodes):
    plan = episode_plan(names, episodes)
    groups = plan_by_shape(plan, shape_of)
    flat = [item for _, items in groups for item in items]
    assert sorted(flat) == list(enumerate(plan))          # every episode, its seeded index
    for lab_shape, items in groups:
        assert all(NEMESES[n].lab_shape == lab_shape for _, n in items)
        assert [i for i, _ in items] == sorted(i for i, _ in items)   # seeded order kept
    assert len({s for s, _ in groups}) == len(groups)     # one lab per shape
    assert plan_by_shape(plan, shape_of) == groups         # reproducible


def test_plan_by_shape_orders_shapes_by_first_use():
    shapes = {"a": "x", "b": "y", "c": "x"}
    assert plan_by_shape(["b", "a", "c", "b"], shapes.__getitem__) == [
        ("y", [(0, "b"), (3, "b")]), ("x", [(1, "a"), (2, "c")])]


def test_lab_shapes_have_the_same_pair_client_and_first_witness():
    assert STANDARD.hosts == ("n1", "n2", "w", "c")
    assert FIVE_VOTERS.hosts == ("n1", "n2", "w", "w2", "w3", "c") and len(FIVE_VOTERS.voters) == 5
    assert TWO_NETWORKS.lab_kwargs == {"networks": ("lan", "repl")}
    assert TWO_NETWORKS.mirror_kwargs == {"flow_network": "repl"}
    with pytest.raises(ValueError, match="unknown lab shape 'nope'; have standard, five_voters"):
        shape("nope")


@given(order=st.permutations(["n1", "n2", "w", "w2", "w3"]))
def test_every_ring_voter_sees_exactly_its_two_neighbours(order):
    blocks = ring_blocks(order)
    near = ring_neighbours(order)
    for i, h in enumerate(order):
        sees = {o for o in order if o != h and o not in blocks.get(h, [])}
        assert sees == {order[i - 1], order[(i + 1) % 5]} == set(near[h])
        # each sees a majority (itself and two), blocked both ways
        assert len(sees) + 1 == 3
        assert all(h in blocks[o] for o in blocks.get(h, []))
    # no two voters see the same majority
    majorities = {frozenset({h, *near[h]}) for h in order}
    assert len(majorities) == 5


def test_ring_client_sees_everyone_or_only_the_primary_side():
    order = ["n1", "w", "n2", "w3", "w2"]
    assert "c" not in {d for dsts in ring_blocks(order, "c", None).values() for d in dsts}
    blocks = ring_blocks(order, "c", ["n1", "w", "w2"])
    assert sorted(blocks["c"]) == ["n2", "w3"]
    assert "c" in blocks["n2"] and "c" in blocks["w3"] and "c" not in blocks.get("w", [])


def test_ring_needs_three_distinct_hosts():
    with pytest.raises(ValueError, match="at least 3 distinct hosts"):
        ring_neighbours(["a", "b"])


def test_majorities_ring_targets_are_the_seeded_ring_of_all_voters():
    seen_views = set()
    for seed in range(30):
        t = _choose("majorities-ring", seed)
        assert sorted(t["ring"]) == ["n1", "n2", "w", "w2", "w3"]
        assert dict(map(tuple, t["blocks"])) == ring_blocks(
            t["ring"], "c", None if t["client"] == "all"
            else ["n1", *ring_neighbours(t["ring"])["n1"]])
        seen_views.add(t["client"])
    assert seen_views == {"all", "primary-side"}
    assert len({tuple(_choose("majorities-ring", s)["ring"]) for s in range(30)}) > 5


def test_membership_change_keeps_a_majority_and_never_touches_a_data_node():
    kinds = set()
    for seed in range(80):
        t = _choose("membership-change", seed)
        assert t["isolated"] in ("n2", "w", "w2", "w3")        # the secondary or a witness
        assert t["target"] in FIVE                              # only witnesses change
        assert t["via"] not in (t["isolated"], t["target"])     # from the majority side
        if t["change"] == "remove-other":
            assert t["target"] != t["isolated"]
        else:
            assert t["target"] == t["isolated"]
        kinds.add((t["change"], t["isolated"] == "n2"))
    assert kinds == {("remove-isolated", False), ("readd", False), ("remove-other", False),
                     ("remove-other", True)}


def test_membership_change_refuses_a_lab_without_two_witnesses():
    with pytest.raises(ValueError, match="membership-change needs at least two witnesses"):
        make_nemesis("membership-change").choose(random.Random(1), ROLES)


def test_one_line_error_is_the_clis_own_single_line():
    assert one_line_error("hacluster: remove_member: not committed within 5.0 s (no quorum?)\n") \
        == "hacluster: remove_member: not committed within 5.0 s (no quorum?)"
    assert one_line_error("Traceback (most recent call last):\n  File ...\nKeyError: 'x'\n") is None
    assert one_line_error("") is None


def test_a_broken_lab_is_rebuilt_for_the_episodes_after_it(monkeypatch):
    """_run_on_shape gives the rest of the plan to a new lab when one breaks."""
    import chaos.chaos_run as cr
    labs = []

    def one_lab(run, lab_shape, plan, on_episode, workload="kv"):
        labs.append([i for i, _ in plan])
        for n, (index, name) in enumerate(plan):
            run.episodes.append(cr.EpisodeRecord(index, name, "s", 1.0, "n1", 1,
                                                 lab_broken="x" if index == 2 else None))
            if index == 2:
                return n + 1
        return len(plan)
    monkeypatch.setattr(cr, "_run_on_lab", one_lab)
    run = cr.ChaosRun(1, ["membership-change"], 5)
    cr._run_on_shape(run, FIVE_VOTERS, [(i, "membership-change") for i in range(5)], None)
    assert labs == [[0, 1, 2, 3, 4], [3, 4]]
    assert [e.index for e in run.episodes] == [0, 1, 2, 3, 4]


def test_lab_acks_are_only_those_of_the_current_lab():
    from chaos.chaos_run import ChaosRun
    from chaos.kv_workload import Ack
    run = ChaosRun(1, ["bridge"], 1)
    run.acks += [Ack("a", "1", "n1", 3, 0.0, 0.1)]
    run.epoch_violations_seen = 2
    run.new_lab(FIVE_VOTERS.hosts)
    run.acks += [Ack("b", "1", "n1", 1, 1.0, 1.1)]
    assert [a.key for a in run.lab_acks()] == ["b"] and run.epoch_violations_seen == 0
    assert run.to_history()["hosts"] == ["n1", "n2", "w", "c", "w2", "w3"]


def test_cli_takes_a_comma_list_of_nemeses():
    import argparse
    from chaos.__main__ import _nemeses
    assert _nemeses("majorities-ring, membership-change") == ["majorities-ring", "membership-change"]
    assert _nemeses("all") == list(NEMESES)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown nemesis 'ring'"):
        _nemeses("majorities-ring,ring")


def test_every_rejoin_gets_a_configuration_folder_of_its_own(tmp_path):
    from chaos.nemesis import _fresh_dir
    first = _fresh_dir(tmp_path, "rejoin-w")
    first.mkdir()
    second = _fresh_dir(tmp_path, "rejoin-w")
    assert first != second and not second.exists() and _fresh_dir(tmp_path, "rejoin-w2").name == "rejoin-w2-1"
