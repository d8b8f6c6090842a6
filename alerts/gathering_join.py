"""Who is linked to whom, and which linked people's fixes of one window are together.

`Links` holds, per subject index, the link groups it belongs to: one group per case id
(同案犯: the registry's `cases`) and group `KEY_GROUP` for every key person, so that two
people are linked when they share a group. It is kept as offsets and a flat array (the
shape the compiled join reads), built from the few linked subjects only.

`join_window` runs the compiled join (`alerts._gathering_kernel`) over one window's
fixes; the fixes it is given are already filtered (linked, accurate enough).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from alerts import _gathering_kernel as gk

KEY_GROUP = 0     # the group of all key persons (重点人员); case groups are numbered from 1
KEY_NAME = "key"


@dataclass(frozen=True)
class Links:
    """Link groups by subject index: those of subject s are
    ``groups[start[s]:start[s + 1]]``, ascending; `names[g]` is group g's case id (or
    "key")."""

    start: np.ndarray    # int64[n_subjects + 1]
    groups: np.ndarray   # int32[...]
    names: tuple[str, ...]

    @classmethod
    def build(cls, n_subjects: int, groups_of: Mapping[int, Iterable[int]],
              names: Iterable[str]) -> "Links":
        """From the linked subjects' group lists (index -> groups; others have none)."""
        counts = np.zeros(n_subjects + 1, np.int64)
        lists = {s: sorted(set(g)) for s, g in groups_of.items() if s < n_subjects}
        for s, g in lists.items():
            counts[s + 1] = len(g)
        start = np.cumsum(counts)
        flat = np.zeros(int(start[-1]), np.int32)
        for s, g in lists.items():
            flat[start[s]:start[s + 1]] = g
        return cls(start, flat, tuple(names))

    @property
    def n_subjects(self) -> int:
        return len(self.start) - 1

    @cached_property
    def linked(self) -> np.ndarray:
        """Per subject index: in any link group."""
        return np.diff(self.start) > 0


class CaseNumbers:
    """Case ids as link group numbers (from 1; `KEY_GROUP` is the key persons'), kept
    for the life of the process so that a group keeps its number across changes."""

    def __init__(self):
        self.names: list[str] = [KEY_NAME]
        self._number: dict[str, int] = {}

    def groups(self, cases: Iterable[str], key: bool) -> list[int]:
        numbers = [KEY_GROUP] if key else []
        for case in cases:
            if case not in self._number:
                self._number[case] = len(self.names)
                self.names.append(case)
            numbers.append(self._number[case])
        return numbers


@dataclass(frozen=True)
class JoinSettings:
    """`[rules]` gathering_radius_m, gathering_acc_k, gathering_max_dt_s (see README)."""

    radius_m: float
    acc_k: float
    max_acc_m: float
    max_dt_ms: int

    @property
    def cell_m(self) -> float:
        """The grid cell: the largest distance two kept fixes can be apart and together."""
        return (self.radius_m + self.acc_k * self.max_acc_m * 2 ** 0.5) * 1.001 + 1.0


@dataclass(frozen=True)
class Together:
    """Pairs of fixes together: indices into the window (`i` a fresh fix) and the group
    they share."""

    i: np.ndarray
    j: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.i)


def join_window(lon, lat, t_ms, acc_m, subject, fresh, links: Links,
                settings: JoinSettings) -> Together:
    """The pairs of fixes of linked subjects together (see `_gathering_kernel`). Degrees
    in; every fix must belong to a subject of `links` and have acc_m <= max_acc_m."""
    lon_rad = np.radians(np.asarray(lon, np.float64))
    lat_rad = np.radians(np.asarray(lat, np.float64))
    t = np.ascontiguousarray(t_ms, np.int64)
    acc = np.ascontiguousarray(acc_m, np.float64)
    s = np.ascontiguousarray(subject, np.int32)
    fresh = np.ascontiguousarray(fresh, np.bool_)
    n = len(s)
    if not len(lon_rad) == len(lat_rad) == len(t) == len(acc) == n == len(fresh):
        raise ValueError("lon, lat, t_ms, acc_m, subject and fresh must have one length")
    if n and (s.min() < 0 or s.max() >= links.n_subjects):
        raise ValueError(f"subject indices must be in 0..{links.n_subjects - 1}")
    keys = gk.cell_keys(lon_rad, lat_rad, settings.cell_m)
    order = np.argsort(keys)
    sorted_keys = np.ascontiguousarray(keys[order])
    fresh_at = np.flatnonzero(fresh[order])
    capacity = n + 16
    while True:
        out = (np.empty(capacity, np.int64), np.empty(capacity, np.int64),
               np.empty(capacity, np.int32))
        found = gk.pairs_together(order, sorted_keys, fresh_at, lon_rad, lat_rad, t, acc, s, fresh,
                                  float(settings.radius_m), float(settings.acc_k),
                                  int(settings.max_dt_ms), links.start, links.groups, *out)
        if found <= capacity:
            return Together(out[0][:found], out[1][:found], out[2][:found])
        capacity = found
