"""The history checkers catch what they claim, and pass good histories."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.history_check import epoch_violations, lost_acked_writes
from chaos.kv_workload import Ack, failover_gap


def _sequential_acks(values_per_key: list[list[str]]) -> list[Ack]:
    """One writer: writes in order, each sent after the previous was acknowledged."""
    acks, t = [], 0.0
    for i, values in enumerate(values_per_key):
        for v in values:
            acks.append(Ack(f"rec-{i:06d}", v, "n1", 1, t, t + 0.5))
            t += 1.0
    return acks


values_st = st.lists(st.lists(st.text(min_size=0, max_size=5), min_size=1, max_size=4),
                     min_size=1, max_size=12)


@given(values_st)
def test_good_history_has_no_lost_write(values_per_key):
    acks = _sequential_acks(values_per_key)
    read_back = {f"rec-{i:06d}": vs[-1] for i, vs in enumerate(values_per_key)}
    read_back["unacked-extra"] = "x"  # keys nobody acknowledged do not matter
    assert lost_acked_writes(acks, read_back) == []


@given(values_st, st.data())
def test_a_missing_key_is_caught(values_per_key, data):
    acks = _sequential_acks(values_per_key)
    read_back = {f"rec-{i:06d}": vs[-1] for i, vs in enumerate(values_per_key)}
    victim = data.draw(st.sampled_from(sorted(read_back)))
    as_none = data.draw(st.booleans())
    if as_none:
        read_back[victim] = None
    else:
        del read_back[victim]
    lost = lost_acked_writes(acks, read_back)
    assert [w.key for w in lost] == [victim]
    assert lost[0].found is None and "missing" in str(lost[0])


@given(values_st, st.data())
def test_a_stale_value_is_caught(values_per_key, data):
    acks = _sequential_acks(values_per_key)
    read_back = {f"rec-{i:06d}": vs[-1] for i, vs in enumerate(values_per_key)}
    victim = data.draw(st.sampled_from(sorted(read_back)))
    stale = read_back[victim] + "-old"  # never an acknowledged value: values are <= 5 chars
    read_back[victim] = stale
    lost = lost_acked_writes(acks, read_back)
    assert [(w.key, w.found) for w in lost] == [(victim, stale)]
    assert "stale" in str(lost[0])


def test_an_earlier_acknowledged_value_is_stale():
    acks = [Ack("k", "v1", "n1", 1, 0.0, 1.0), Ack("k", "v2", "n1", 1, 2.0, 3.0)]
    assert [w.expected for w in lost_acked_writes(acks, {"k": "v1"})] == [("v2",)]
    assert lost_acked_writes(acks, {"k": "v2"}) == []


def test_overlapping_writes_accept_either_value():
    acks = [Ack("k", "a", "n1", 1, 0.0, 2.0), Ack("k", "b", "n1", 1, 1.0, 3.0)]
    assert lost_acked_writes(acks, {"k": "a"}) == []
    assert lost_acked_writes(acks, {"k": "b"}) == []
    assert len(lost_acked_writes(acks, {"k": "c"})) == 1


# -- epochs -------------------------------------------------------------------------------

@st.composite
def good_answers(draw):
    """A failover history: epochs rise, each served by one node, answers in time order."""
    n_epochs = draw(st.integers(1, 6))
    epochs = sorted(draw(st.sets(st.integers(0, 100), min_size=n_epochs, max_size=n_epochs)))
    answers, t = [], 0.0
    for epoch in epochs:
        node = draw(st.sampled_from(["n1", "n2", "n3"]))
        for _ in range(draw(st.integers(1, 5))):
            t += draw(st.floats(0.001, 1.0))
            answers.append((t, node, epoch))
    return answers


@given(good_answers(), st.randoms())
def test_good_answers_pass_in_any_input_order(answers, rnd):
    shuffled = list(answers)
    rnd.shuffle(shuffled)  # the checker sorts by time itself
    assert epoch_violations(shuffled) == []


@given(good_answers(), st.data())
def test_two_nodes_in_one_epoch_are_caught(answers, data):
    t, node, epoch = data.draw(st.sampled_from(answers))
    other = data.draw(st.sampled_from([n for n in ("n1", "n2", "n3") if n != node]))
    bad = answers + [(t + 1e-6, other, epoch)]
    violations = epoch_violations(bad)
    assert any(f"two primaries in epoch {epoch}" in v for v in violations)


@given(good_answers(), st.data())
@settings(max_examples=200)
def test_an_epoch_going_back_is_caught(answers, data):
    epochs = sorted({e for _, _, e in answers})
    if len(epochs) < 2:
        epochs.append(epochs[0] + 1)
        answers = answers + [(answers[-1][0] + 1, "n9", epochs[1])]
    old = data.draw(st.sampled_from(epochs[:-1]))
    owner = next(n for _, n, e in answers if e == old)  # same node: only the epoch is wrong
    bad = answers + [(answers[-1][0] + 1, owner, old)]
    violations = epoch_violations(bad)
    assert any(f"answered epoch {old}" in v and "went back" in v for v in violations)
    assert not any("two primaries" in v for v in violations)


def test_violation_names_both_nodes():
    v = epoch_violations([(0.0, "a", 3), (1.0, "b", 3)])
    assert v == ["two primaries in epoch 3: 'a' (t=0.000) and 'b' (t=1.000)"]


# -- failover gap (pure arithmetic of kv_workload) ----------------------------------------

def test_failover_gap_measures_to_first_newer_epoch():
    answers = [(1.0, "a", 1), (2.0, "a", 1), (2.5, "a", 1), (4.2, "b", 2), (5.0, "b", 2)]
    assert failover_gap(answers, 2.1) == 4.2 - 2.1
    assert failover_gap(answers, 0.5) is None  # nothing answered before the fault
    assert failover_gap(answers, 5.5) is None  # nothing after


@given(good_answers(), st.floats(0, 50))
def test_failover_gap_is_nonnegative_and_lands_on_a_newer_epoch(answers, t_fault):
    gap = failover_gap(answers, t_fault)
    if gap is not None:
        before = max(e for t, _, e in answers if t <= t_fault)
        assert gap > 0
        assert any(abs(t - (t_fault + gap)) < 1e-9 and e > before for t, _, e in answers)
