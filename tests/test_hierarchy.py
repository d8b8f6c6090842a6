"""The jurisdiction tree: ancestry from `parent` only, descendants at any depth, cycles."""

import numpy as np
import pytest

from geofence.errors import LayerError, UnknownCodeError
from geofence.geojson import Unit
from geofence.hierarchy import Hierarchy, find_cycles

# city 3704 > counties 370402, 370403 > townships; "9999" is a township whose code does
# not share its county's prefix (ancestry must come from parent, not digits).
CODES = ["370402001", "370402002", "370403001", "9999", "370402"]
PARENTS = ["370402", "370402", "370403", "370403", "3704"]
NAMES = ["Shizhong 1", "Shizhong 2", "Xuecheng 1", "Odd one", "Shizhong county (polygon)"]
UNITS = [Unit("370403", "Xuecheng", "3704"), Unit("3704", "Zaozhuang", None)]


@pytest.fixture
def tree():
    return Hierarchy(CODES, PARENTS, UNITS, NAMES)


def test_ancestors_nearest_first(tree):
    assert tree.ancestors("370403001") == ["370403", "3704"]
    assert tree.ancestors("9999") == ["370403", "3704"]
    assert tree.ancestors("370402001") == ["370402", "3704"]
    assert tree.ancestors("3704") == []


def test_chain_from_root_down_with_names(tree):
    assert tree.chain("370403001") == [
        ("3704", "Zaozhuang"),
        ("370403", "Xuecheng"),
        ("370403001", "Xuecheng 1"),
    ]


def test_features_under_at_every_depth(tree):
    def under(code):
        return tree.features_under(code).tolist()

    assert under("370402001") == [0]  # a township: itself
    assert under("370403") == [2, 3]  # a unit: its townships, whatever their digits
    assert under("370402") == [0, 1, 4]  # a feature with features below it: both
    assert under("3704") == [0, 1, 2, 3, 4]  # the city: three levels down
    got = tree.features_under("3704")
    assert got.dtype == np.int32 and not got.flags.writeable


def test_unknown_code_raises_keyerror_kind(tree):
    with pytest.raises(UnknownCodeError, match="'37'"):
        tree.features_under("37")
    with pytest.raises(KeyError):
        tree.ancestors("nope")
    assert not tree.is_known("37")


def test_implicit_parent_is_a_root_named_by_its_code():
    tree = Hierarchy(["a1", "a2"], ["A", "A"])
    assert tree.is_known("A") and tree.name_of("A") == "A"
    assert tree.roots() == ["A"]
    assert tree.features_under("A").tolist() == [0, 1]


def test_roots_and_names(tree):
    assert tree.roots() == ["3704"]
    assert tree.name_of("370402001") == "Shizhong 1"
    assert tree.name_of("3704") == "Zaozhuang"


def test_from_layer_uses_the_layer_fields():
    class Layer:
        codes, parents, names, units = ("x",), ("X",), ("Ex",), (Unit("X", "Big X", None),)

    tree = Hierarchy.from_layer(Layer())
    assert tree.chain("x") == [("X", "Big X"), ("x", "Ex")]


def test_find_cycles_names_each_cycle_once():
    parents = {"a": "b", "b": "c", "c": "a", "d": "a", "e": "e", "f": None, "g": "outside"}
    assert find_cycles(parents) == [["a", "b", "c"], ["e"]]
    assert find_cycles({"a": None, "b": "a"}) == []


def test_cycle_and_duplicate_raise_layer_error():
    with pytest.raises(LayerError, match="parent cycle: a -> b -> a"):
        Hierarchy(["a", "b"], ["b", "a"])
    with pytest.raises(LayerError, match="duplicate code 'a'"):
        Hierarchy(["a"], [None], [Unit("a", "A", None)])
