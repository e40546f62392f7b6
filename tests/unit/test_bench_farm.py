"""The pure part of python -m bench farm: when is a bucket in two nodes' owned sets."""
from bench.farm_bench import _twice


def test_a_bucket_in_two_loaded_sets_is_accepted_twice():
    assert _twice({"f1": frozenset({1, 2}), "f2": frozenset({3}), "f3": frozenset({2})})
    assert not _twice({"f1": frozenset({1, 2}), "f2": frozenset({3}), "f3": frozenset()})
    # a node without a farm table (None) or with an empty set accepts nothing
    assert not _twice({"f1": frozenset(range(256)), "f2": None, "f3": frozenset()})
