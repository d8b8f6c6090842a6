"""The jurisdiction tree: which codes lie above a code, and which features lie below it.

Ancestry comes only from each code's `parent` (SPEC §2). The digits of Chinese codes
usually encode it too (3704 > 370402 > 370402001), but data with re-numbered townships,
development zones or delegated areas breaks that rule, so it is never used here.

The tree holds two kinds of node: features (the polygons of a layer, indexed 0..n-1 in
file order) and units (upper levels without a polygon of their own). A parent code that
names neither becomes an implicit root unit whose name is its code, so a township layer
can point at counties it does not describe.

A rule's allowed area is a set of codes; `features_under` turns each code into feature
indices. It is asked once per allowed area, not per fix, so every answer is computed up
front and returned as a read-only array.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from geofence.errors import LayerError, UnknownCodeError


class UnitLike(Protocol):
    """Anything with `code`, `name` and `parent`, such as `geofence.geojson.Unit`."""

    code: str
    name: str
    parent: str | None


def find_cycles(parents: Mapping[str, str | None]) -> list[list[str]]:
    """Every cycle in a parent map, each listed once, in walking order.

    A code whose parent is itself is a cycle of one. Parents that are not keys end a walk
    (they are implicit roots). Each code is walked at most once: linear in the map size.
    """
    state: dict[str, int] = {}  # 1: on the current walk, 2: finished
    cycles: list[list[str]] = []
    for start in parents:
        path: list[str] = []
        code: str | None = start
        while code is not None and code in parents and code not in state:
            state[code] = 1
            path.append(code)
            code = parents[code]
        if code is not None and state.get(code) == 1:  # the walk ran into itself
            cycles.append(path[path.index(code):])
        for seen in path:
            state[seen] = 2
    return cycles


class Hierarchy:
    """Parent links of a layer's features and units, with descendants precomputed.

    `codes[i]`, `parents[i]` and `names[i]` describe feature i; `units` are the upper
    levels. Duplicate codes and cycles raise `LayerError` (the layer loader reports them
    first, with feature numbers; this is the guard for other callers).
    """

    def __init__(
        self,
        codes: Sequence[str],
        parents: Sequence[str | None],
        units: Iterable[UnitLike] = (),
        names: Sequence[str] | None = None,
    ):
        names = list(codes) if names is None else list(names)
        if not len(codes) == len(parents) == len(names):
            raise ValueError("codes, parents and names must have the same length")
        self._parent: dict[str, str | None] = {}
        self._name: dict[str, str] = {}
        duplicates: list[str] = []
        nodes = [(c, p, n) for c, p, n in zip(codes, parents, names)]
        nodes += [(u.code, u.parent, u.name) for u in units]
        for code, parent, name in nodes:
            if code in self._parent:
                duplicates.append(code)
            self._parent[code] = parent or None
            self._name[code] = name
        for code, parent, _ in nodes:  # implicit roots, in order of first mention
            if parent and parent not in self._parent:
                self._parent[parent] = None
                self._name[parent] = parent
        problems = [f"duplicate code {c!r}" for c in dict.fromkeys(duplicates)]
        problems += [f"parent cycle: {' -> '.join(c + [c[0]])}" for c in find_cycles(self._parent)]
        if problems:
            raise LayerError(problems)

        under: dict[str, list[int]] = {code: [] for code in self._parent}
        for index, code in enumerate(codes):
            for holder in [code, *self.ancestors(code)]:
                under[holder].append(index)
        self._under = {code: _frozen(indices) for code, indices in under.items()}

    def _check(self, code: str) -> None:
        if code not in self._parent:
            raise UnknownCodeError(f"unknown jurisdiction code {code!r}")

    def is_known(self, code: str) -> bool:
        """True for a feature, a declared unit or an implicit root."""
        return code in self._parent

    def name_of(self, code: str) -> str:
        """The name of a code (an implicit root is named by its code)."""
        self._check(code)
        return self._name[code]

    def ancestors(self, code: str) -> list[str]:
        """Parent codes upward, nearest first; empty for a root."""
        self._check(code)
        chain = []
        parent = self._parent[code]
        while parent is not None:
            chain.append(parent)
            parent = self._parent[parent]
        return chain

    def chain(self, code: str) -> list[tuple[str, str]]:
        """(code, name) pairs from the root down to `code` itself."""
        path = [*reversed(self.ancestors(code)), code]
        return [(c, self._name[c]) for c in path]

    def features_under(self, code: str) -> np.ndarray:
        """Sorted int32 indices of the feature `code` (if it is one) and every feature below it."""
        self._check(code)
        return self._under[code]

    def roots(self) -> list[str]:
        """Codes without a parent: features first, then units, then implicit roots."""
        return [code for code, parent in self._parent.items() if parent is None]

    @classmethod
    def from_layer(cls, data) -> "Hierarchy":
        """The tree of a `geofence.geojson.LayerData`."""
        return cls(data.codes, data.parents, data.units, data.names)


def _frozen(indices: list[int]) -> np.ndarray:
    out = np.array(sorted(indices), dtype=np.int32)
    out.setflags(write=False)
    return out
