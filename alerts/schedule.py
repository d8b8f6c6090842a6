"""Each subject's allowed area and supervising office over time (SPEC §2, §5, §6).

The allowed area at time t is home ∪ the destinations of permits active at t; during an
active delegation the delegation's home replaces the subject's and its office supervises,
with a copy of each alarm to the origin office. Every interval is half-open,
``start_ms <= t < end_ms``: at the instant a permit ends its destinations no longer count.
Overlapping delegations of one subject: `alerts.registry.active_delegation` decides.

Most subjects have neither permits nor delegations, so the timeline is stored as a base
area per subject index plus, only for the others, a CSR of non-overlapping time pieces
(`offsets` into `starts`, `ends`, `area`, `home_area`) where the area differs from the
base. A batch of fixes then costs one array lookup per fix, or a short binary search for
the few subjects with pieces, in one compiled call. The schedule is rebuilt from each
registry snapshot; it never changes in place.

Subject indices with no subject (gaps in the registry's numbering) have base area -1, a
value no area id takes; callers pass registered subjects only, as the worker does.
"""

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from alerts.registry import Delegation, Permit, Registry, Subject, active_delegation
from geofence._jit import body, kernel
from geofence.errors import GeofenceError

NO_END_MS = np.iinfo(np.int64).max  # end of an open-ended delegation
NO_AREA = -1                        # area of a subject index no subject holds

AreaId = Callable[[Iterable[str]], int]


class Route(NamedTuple):
    """Where a subject's alarms at some time go (a delegation changes all three)."""

    office: str                  # the supervising office
    copies: tuple[str, ...]      # offices that get a copy (the origin during a delegation)
    home: tuple[str, ...]        # the home codes the alarm names


class ScheduleError(GeofenceError, ValueError):
    """Bad input to the schedule: pass 1-D integer arrays of registered subject indices and
    int64 unix-ms times, of equal length."""


@body
def _piece_value(s, t, offsets, starts, ends, values, base):
    # Pieces of `s` are sorted by start and do not overlap: the only candidate is the last
    # one starting at or before t.
    first = offsets[s]
    lo = first
    hi = offsets[s + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        if starts[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    if lo > first and t < ends[lo - 1]:
        return values[lo - 1]
    return base[s]


@kernel
def _pieces_values(subject, t_ms, offsets, starts, ends, values, base, out):
    for i in range(subject.shape[0]):
        out[i] = _piece_value(subject[i], t_ms[i], offsets, starts, ends, values, base)


@dataclass(frozen=True)
class AreaSchedule:
    """Allowed and home area ids per subject over time, and the supervising office."""

    base: np.ndarray        # int32[n_subjects]: area of home, no permits, no delegation
    base_home: np.ndarray   # int32[n_subjects]: home only; the same ids as `base`
    offsets: np.ndarray     # int64[n_subjects + 1]: pieces of subject s are offsets[s]:offsets[s+1]
    starts: np.ndarray      # int64[pieces]
    ends: np.ndarray        # int64[pieces], NO_END_MS for an open-ended delegation
    area: np.ndarray        # int32[pieces]: home (or delegation home) ∪ active destinations
    home_area: np.ndarray   # int32[pieces]: home (or delegation home) only
    _subjects: dict[str, Subject]
    _delegations: dict[str, list[Delegation]]
    _permits_by_end: list[Permit]
    _permit_ends: list[int]

    @classmethod
    def build(cls, registry: Registry, area_id: AreaId) -> "AreaSchedule":
        """The schedule of a registry snapshot; `area_id` maps codes to an area id.

        `area_id` gets sorted, deduplicated codes, and each distinct code set once, so equal
        sets share an id however the registry spells them. Permits and delegations of a
        subject not in the registry are ignored (the registry never holds such references).
        """
        for s in registry.subjects.values():
            if s.index < 0:
                raise ScheduleError(f"subject {s.id!r} has no index; import it into a registry")
        n = max((s.index for s in registry.subjects.values()), default=-1) + 1
        ids: dict[tuple[str, ...], int] = {}

        def area_of(*code_lists: Iterable[str]) -> int:
            key = tuple(sorted({c for codes in code_lists for c in codes}))
            if key not in ids:
                ids[key] = int(area_id(key))
            return ids[key]

        permits: dict[str, list[Permit]] = defaultdict(list)
        for p in registry.permits.values():
            permits[p.subject].append(p)
        delegations: dict[str, list[Delegation]] = defaultdict(list)
        for d in registry.delegations.values():
            delegations[d.subject].append(d)

        base = np.full(n, NO_AREA, np.int32)
        counts = np.zeros(n + 1, np.int64)
        pieces: list[tuple[int, int, int, int]] = []
        for s in sorted(registry.subjects.values(), key=lambda s: s.index):
            base[s.index] = area_of(s.home)
            if s.id in permits or s.id in delegations:
                mine = _pieces(s, permits[s.id], delegations[s.id], area_of, int(base[s.index]))
                counts[s.index + 1] = len(mine)
                pieces += mine
        table = np.array(pieces, np.int64).reshape(-1, 4)
        by_end = sorted(registry.permits.values(), key=lambda p: (p.end_ms, p.id))
        base = _read_only(base)
        return cls(
            base, base, _read_only(np.cumsum(counts)),
            _read_only(table[:, 0].copy()), _read_only(table[:, 1].copy()),
            _read_only(table[:, 2].astype(np.int32)), _read_only(table[:, 3].astype(np.int32)),
            dict(registry.subjects),
            dict(delegations),
            by_end, [p.end_ms for p in by_end])

    @property
    def n_subjects(self) -> int:
        """Max subject index + 1 (0 for an empty registry)."""
        return len(self.base)

    def areas_at(self, subject, t_ms) -> np.ndarray:
        """Allowed-area id (int32) of each fix: home ∪ destinations of permits active at t."""
        return self._values_at(subject, t_ms, self.area, self.base)

    def home_areas_at(self, subject, t_ms) -> np.ndarray:
        """Home area id (int32) of each fix, permits ignored: `permit_overstay` asks whether
        the subject is back home, not merely inside some still-allowed area."""
        return self._values_at(subject, t_ms, self.home_area, self.base_home)

    def routing_at(self, subject_id: str, t_ms: int) -> Route:
        """Where an alarm of this subject at t goes, and the home it names."""
        subject = self._subjects.get(subject_id)
        if subject is None:
            raise ScheduleError(f"unknown subject {subject_id!r}")
        delegation = active_delegation(self._delegations.get(subject_id, ()), t_ms)
        if delegation is None:
            return Route(subject.office, (), subject.home)
        return Route(delegation.office, (subject.office,), delegation.home)

    def permits_ending(self, after_ms: int, upto_ms: int) -> list[Permit]:
        """Permits with ``after_ms < end_ms <= upto_ms``, by (end_ms, id): a clock that
        calls this with consecutive windows sees each permit end exactly once."""
        lo = bisect_right(self._permit_ends, after_ms)
        hi = bisect_right(self._permit_ends, upto_ms)
        return self._permits_by_end[lo:hi]

    def _values_at(self, subject, t_ms, values: np.ndarray, base: np.ndarray) -> np.ndarray:
        subject = _integers(subject, "subject", np.int32)
        t_ms = _integers(t_ms, "t_ms", np.int64)
        if len(subject) != len(t_ms):
            raise ScheduleError(f"subject and t_ms differ in length: {len(subject)} "
                                f"against {len(t_ms)}")
        if len(subject) and (subject.min() < 0 or subject.max() >= self.n_subjects):
            bad = subject[(subject < 0) | (subject >= self.n_subjects)][0]
            raise ScheduleError(f"subject index {bad} is not in 0..{self.n_subjects - 1}; "
                                f"rebuild the schedule from the current registry")
        out = np.empty(len(subject), np.int32)
        _pieces_values(subject, t_ms, self.offsets, self.starts, self.ends, values, base, out)
        return out


def _pieces(subject: Subject, permits: list[Permit], delegations: list[Delegation],
            area_of: Callable[..., int], base: int) -> list[tuple[int, int, int, int]]:
    """(start, end, area, home area) pieces of one subject where either differs from base.

    Cutting at every start and end makes the active set constant within each piece, so it
    is read at the piece's start. Neighbours with equal ids are merged first.
    """
    cuts = sorted({p.start_ms for p in permits} | {p.end_ms for p in permits}
                  | {d.start_ms for d in delegations}
                  | {_end(d) for d in delegations})
    merged: list[list[int]] = []
    for start, end in zip(cuts, cuts[1:]):
        delegation = active_delegation(delegations, start)
        home = delegation.home if delegation is not None else subject.home
        destinations = [p.destinations for p in permits if p.start_ms <= start < p.end_ms]
        area, home_area = area_of(home, *destinations), area_of(home)
        if merged and merged[-1][1] == start and merged[-1][2:] == [area, home_area]:
            merged[-1][1] = end
        else:
            merged.append([start, end, area, home_area])
    return [(s, e, a, h) for s, e, a, h in merged if (a, h) != (base, base)]


def _end(d: Delegation) -> int:
    return int(NO_END_MS) if d.end_ms is None else d.end_ms


def _integers(values, name: str, dtype) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ScheduleError(f"{name} must be a 1-D array of integers, not {arr.dtype} "
                            f"{arr.shape}")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ScheduleError(f"{name} out of range for {np.dtype(dtype).name}")
    return np.ascontiguousarray(arr, dtype)


def _read_only(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def warm_up() -> None:
    """Compile or load the schedule kernel once, on a tiny registry, before traffic."""
    subject = Subject("s", ("d",), "o", ("h",), index=0)
    permit = Permit("p", "s", 10, 20, ("x",), "o")
    schedule = AreaSchedule.build(Registry(subjects={"s": subject}, permits={"p": permit}),
                                  lambda codes: len(tuple(codes)))
    schedule.areas_at(np.zeros(3, np.int32), np.array([0, 10, 20], np.int64))
