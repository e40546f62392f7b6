"""raft/plain_data.py: replicated arguments are plain data only."""
from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raft.plain_data import NotPlainData, check_plain

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.tuples(children, children)
    | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(plain)
def test_plain_values_pass_unchanged(value):
    assert check_plain(value) is value


@pytest.mark.parametrize("value", [None, True, 0, -1, 1.5, "", "x", [], (), {}, [1, "a", None],
                                   {"a": [1, {"b": (2, 3.0)}]}])
def test_examples_pass(value):
    assert check_plain(value, "op arguments") is value


class Thing:
    pass


@pytest.mark.parametrize("value, message", [
    (Thing(), "argument: Thing is not plain data"),
    ({1, 2}, "argument: set is not plain data"),
    (frozenset(), "argument: frozenset is not plain data"),
    (b"x", "argument: bytes is not plain data"),
    (bytearray(b"x"), "argument: bytearray is not plain data"),
    (1j, "argument: complex is not plain data"),
    ([1, 2, b"x"], "argument[2]: bytes is not plain data"),
    ({"a": {"b": [0, {1, 2}]}}, "argument['a']['b'][1]: set is not plain data"),
    ({1: "x"}, "argument: dict key 1 is not a string"),
    ({"ok": {("t",): 1}}, "argument['ok']: dict key ('t',) is not a string"),
    ({None: 1}, "argument: dict key None is not a string"),
    ([print], "argument[0]: builtin_function_or_method is not plain data"),
    (pickle, "argument: module is not plain data"),
])
def test_non_plain_refused_naming_the_path(value, message):
    with pytest.raises(NotPlainData) as e:
        check_plain(value)
    assert str(e.value) == message


def test_where_prefix_is_used():
    with pytest.raises(NotPlainData, match=r"^acquire arguments\[1\]: set is not plain data$"):
        check_plain(["r", {"a"}], "acquire arguments")


def test_not_plain_is_a_type_error():
    assert issubclass(NotPlainData, TypeError)


@given(plain, st.sampled_from([b"", Thing(), {1}, object()]), st.data())
def test_one_bad_leaf_anywhere_is_found(value, bad, data):
    # bury the bad value somewhere inside a plain structure: it is always found
    wrapped = data.draw(st.sampled_from([[value, bad], {"k": [bad, value]}, (value, (bad,))]))
    with pytest.raises(NotPlainData):
        check_plain(wrapped)


def test_dict_subclass_is_accepted_as_dict():
    assert check_plain(OrderedDict(a=1))["a"] == 1
