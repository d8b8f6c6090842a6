"""Each subject's allowed area and supervising office over time (SPEC §2, §5, §6, §12).

The allowed area at time t is home ∪ the destinations of permits active at t; during an
active delegation the delegation's home replaces the subject's and its office supervises,
with a copy of each alarm to the origin office. Every interval is half-open,
``start_ms <= t < end_ms``: at the instant a permit ends its destinations no longer count.
A standing permit (`Permit.recurring`) is active only in its weekly windows (local time,
China Standard Time, UTC+8, which has no daylight saving). Overlapping delegations of one
subject: `alerts.registry.active_delegation` decides.

Most subjects have neither permits nor delegations, so the timeline is stored as a base
area per subject index plus, only for the others, time pieces (`starts`, `ends`, `area`,
`home_area`) where the area differs from the base: subject s owns pieces
``first[s] : first[s] + count[s]``, sorted and non-overlapping. A batch of fixes then
costs one array lookup per fix, or a short binary search for the few subjects with
pieces, in one compiled call.

A registry change is applied per subject (`update`): its base is rewritten and its new
pieces appended, so one change costs the same on a registry of 700,000 people as on one
of 700 (the pieces it replaced are dropped when they outnumber the live ones).

Subject indices with no subject (gaps in the registry's numbering) have base area -1, a
value no area id takes; callers pass registered subjects only, as the worker does.
"""

from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
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
def _piece_value(s, t, first, count, starts, ends, values, base):
    # Pieces of `s` are sorted by start and do not overlap: the only candidate is the last
    # one starting at or before t.
    lo = first[s]
    begin = lo
    hi = lo + count[s]
    while lo < hi:
        mid = (lo + hi) >> 1
        if starts[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    if lo > begin and t < ends[lo - 1]:
        return values[lo - 1]
    return base[s]


@kernel
def _pieces_values(subject, t_ms, first, count, starts, ends, values, base, out):
    for i in range(subject.shape[0]):
        out[i] = _piece_value(subject[i], t_ms[i], first, count, starts, ends, values, base)


LOCAL_UTC_OFFSET_MS = 8 * 3600 * 1000   # China Standard Time: standing permits' hours
DAY_MS = 86_400_000
PIECE_FIELDS = 4                         # start, end, area, home area


class AreaSchedule:
    """Allowed and home area ids per subject over time, and the supervising office.

    Built from a registry snapshot, then kept current with `update` on each change."""

    def __init__(self, area_id: AreaId):
        self._area_id = area_id
        self._ids: dict[tuple[str, ...], int] = {}
        self._n = 0                             # max subject index + 1
        self.base = np.zeros(0, np.int32)      # area of home, no permits, no delegation
        self.first = np.zeros(0, np.int64)     # subject s: pieces first[s]:first[s]+count[s]
        self.count = np.zeros(0, np.int64)
        self._starts = np.zeros(0, np.int64)   # the pieces, each array of capacity rows
        self._ends_ms = np.zeros(0, np.int64)
        self._area = np.zeros(0, np.int32)      # home (or delegation home) ∪ destinations
        self._home = np.zeros(0, np.int32)      # home (or delegation home) only
        self._used = 0                          # piece rows written
        self._live = 0                          # piece rows some subject points at
        self._subjects: dict[str, Subject] = {}
        self._permit: dict[str, Permit] = {}                 # by id
        self._delegation: dict[str, Delegation] = {}         # by id
        self._permits: dict[str, dict[str, Permit]] = defaultdict(dict)   # by subject
        self._delegations: dict[str, dict[str, Delegation]] = defaultdict(dict)
        self._ends: list[tuple[int, str]] = []  # (end_ms, permit id) of one-off permits
        self._standing: dict[str, Permit] = {}  # recurring permits by id

    @classmethod
    def build(cls, registry: Registry, area_id: AreaId) -> "AreaSchedule":
        """The schedule of a registry snapshot; `area_id` maps codes to an area id.

        `area_id` gets sorted, deduplicated codes, and each distinct code set once, so equal
        sets share an id however the registry spells them. Permits and delegations of a
        subject not in the registry are ignored (the registry never holds such references).
        """
        schedule = cls(area_id)
        for p in registry.permits.values():
            schedule._take_permit(p, sort=False)
        schedule._ends.sort()
        for d in registry.delegations.values():
            schedule._take_delegation(d)
        schedule._set_subjects(registry, registry.subjects.keys())
        return schedule

    def update(self, registry: Registry, subjects: Iterable[str] = (),
               permits: Iterable[str] = (), delegations: Iterable[str] = ()) -> None:
        """Take `registry`'s state of the subjects, permits and delegations with these ids
        (the ones a change touched; one gone from the registry is dropped). Everything
        else stays as it was."""
        affected = set(subjects)
        for pid in permits:
            affected |= self._drop_permit(pid)
            if pid in registry.permits:
                affected.add(self._take_permit(registry.permits[pid]))
        for did in delegations:
            old = self._delegation.pop(did, None)
            if old is not None:
                self._delegations[old.subject].pop(did, None)
                affected.add(old.subject)
            if did in registry.delegations:
                affected.add(self._take_delegation(registry.delegations[did]))
        self._set_subjects(registry, affected)

    def _take_permit(self, p: Permit, sort: bool = True) -> str:
        self._permit[p.id] = p
        self._permits[p.subject][p.id] = p
        if p.recurring is not None:
            self._standing[p.id] = p
        elif sort:
            insort(self._ends, (p.end_ms, p.id))
        else:
            self._ends.append((p.end_ms, p.id))
        return p.subject

    def _drop_permit(self, pid: str) -> set[str]:
        old = self._permit.pop(pid, None)
        if old is None:
            return set()
        self._permits[old.subject].pop(pid, None)
        self._standing.pop(pid, None)
        at = bisect_left(self._ends, (old.end_ms, old.id))
        if at < len(self._ends) and self._ends[at] == (old.end_ms, old.id):
            del self._ends[at]
        return {old.subject}

    def _take_delegation(self, d: Delegation) -> str:
        self._delegation[d.id] = d
        self._delegations[d.subject][d.id] = d
        return d.subject

    def _set_subjects(self, registry: Registry, ids: Iterable[str]) -> None:
        for sid in ids:
            s = registry.subjects.get(sid)
            if s is None:
                continue
            if s.index < 0:
                raise ScheduleError(f"subject {s.id!r} has no index; import it into a registry")
            self._subjects[sid] = s
            self._grow(s.index + 1)
            base = self._area_of(s.home)
            self.base[s.index] = base
            permits = list(self._permits[sid].values()) if sid in self._permits else []
            delegations = list(self._delegations[sid].values()) \
                if sid in self._delegations else []
            mine = _pieces(s, permits, delegations, self._area_of, base) \
                if permits or delegations else []
            self._set_pieces(s.index, mine)

    def _area_of(self, *code_lists: Iterable[str]) -> int:
        key = tuple(sorted({c for codes in code_lists for c in codes}))
        if key not in self._ids:
            self._ids[key] = int(self._area_id(key))
        return self._ids[key]

    def _grow(self, n: int) -> None:
        self._n = max(self._n, n)
        if n <= len(self.base):
            return
        size = max(n, 2 * len(self.base))
        self.base = _resized(self.base, size, NO_AREA)
        self.first = _resized(self.first, size, 0)
        self.count = _resized(self.count, size, 0)

    def _set_pieces(self, s: int, pieces: list[tuple[int, int, int, int]]) -> None:
        self._live -= int(self.count[s])
        self.count[s] = 0
        if not pieces:
            return
        if self._used + len(pieces) > len(self._starts):
            self._compact(len(pieces))
        rows = slice(self._used, self._used + len(pieces))
        table = np.array(pieces, np.int64)
        self._starts[rows], self._ends_ms[rows] = table[:, 0], table[:, 1]
        self._area[rows], self._home[rows] = table[:, 2], table[:, 3]
        self.first[s], self.count[s] = self._used, len(pieces)
        self._used += len(pieces)
        self._live += len(pieces)

    def _compact(self, room: int) -> None:
        """Keep only the pieces subjects point at, with room for `room` more (amortised:
        the arrays double, so appending stays O(1) per piece)."""
        has = np.flatnonzero(self.count[:self._n])
        keep = np.concatenate([np.arange(f, f + c) for f, c in
                               zip(self.first[has], self.count[has])]) \
            if len(has) else np.zeros(0, np.int64)
        size = max(64, 2 * (len(keep) + room))
        self._starts = _resized(self._starts[keep], size, 0)
        self._ends_ms = _resized(self._ends_ms[keep], size, 0)
        self._area = _resized(self._area[keep], size, NO_AREA)
        self._home = _resized(self._home[keep], size, NO_AREA)
        if len(has):
            self.first[has] = np.concatenate([[0], np.cumsum(self.count[has])[:-1]])
        self._used = len(keep)

    @property
    def n_subjects(self) -> int:
        """Max subject index + 1 (0 for an empty registry)."""
        return self._n

    @property
    def starts(self) -> np.ndarray:
        """Start of every live piece, by subject (for inspection and tests)."""
        has = np.flatnonzero(self.count[:self._n])
        return np.concatenate([self._starts[f:f + c] for f, c in
                               zip(self.first[has], self.count[has])]) \
            if len(has) else np.zeros(0, np.int64)

    def areas_at(self, subject, t_ms) -> np.ndarray:
        """Allowed-area id (int32) of each fix: home ∪ destinations of permits active at t."""
        return self._values_at(subject, t_ms, self._area)

    def home_areas_at(self, subject, t_ms) -> np.ndarray:
        """Home area id (int32) of each fix, permits ignored: `permit_overstay` asks whether
        the subject is back home, not merely inside some still-allowed area."""
        return self._values_at(subject, t_ms, self._home)

    def routing_at(self, subject_id: str, t_ms: int) -> Route:
        """Where an alarm of this subject at t goes, and the home it names."""
        subject = self._subjects.get(subject_id)
        if subject is None:
            raise ScheduleError(f"unknown subject {subject_id!r}")
        delegations = self._delegations.get(subject_id)
        delegation = active_delegation(delegations.values(), t_ms) if delegations else None
        if delegation is None:
            return Route(subject.office, (), subject.home)
        return Route(delegation.office, (subject.office,), delegation.home)

    def permits_ending(self, after_ms: int, upto_ms: int) -> list[Permit]:
        """Permits with an end in ``(after_ms, upto_ms]``, by (end, id): a clock that calls
        this with consecutive windows sees each end exactly once. A standing permit ends
        at the close of each of its weekly windows: it is returned once per window end,
        as a Permit whose `end_ms` is that window's end."""
        lo = bisect_right(self._ends, (after_ms, _LAST_ID))
        hi = bisect_right(self._ends, (upto_ms, _LAST_ID))
        ending = [(end, pid, self._permit[pid]) for end, pid in self._ends[lo:hi]]
        for p in self._standing.values():
            for _, end in recurring_windows(p, after_ms, upto_ms + 1):
                if after_ms < end <= upto_ms:
                    ending.append((end, p.id, replace(p, end_ms=end)))
        return [p for _, _, p in sorted(ending, key=lambda e: (e[0], e[1]))]

    def _values_at(self, subject, t_ms, values: np.ndarray) -> np.ndarray:
        subject = _integers(subject, "subject", np.int32)
        t_ms = _integers(t_ms, "t_ms", np.int64)
        if len(subject) != len(t_ms):
            raise ScheduleError(f"subject and t_ms differ in length: {len(subject)} "
                                f"against {len(t_ms)}")
        n = self._n
        if len(subject) and (subject.min() < 0 or subject.max() >= n):
            bad = subject[(subject < 0) | (subject >= n)][0]
            raise ScheduleError(f"subject index {bad} is not in 0..{n - 1}; "
                                f"rebuild the schedule from the current registry")
        out = np.empty(len(subject), np.int32)
        _pieces_values(subject, t_ms, self.first, self.count, self._starts, self._ends_ms,
                       values, self.base, out)
        return out


_LAST_ID = "\U0010ffff"   # sorts after every permit id: (t, _LAST_ID) follows all (t, id)


def recurring_windows(permit: Permit, from_ms: int, to_ms: int) -> list[tuple[int, int]]:
    """The active windows of `permit` that meet [from_ms, to_ms), clipped to the permit."""
    if permit.recurring is None:
        start, end = max(permit.start_ms, from_ms), min(permit.end_ms, to_ms)
        return [(permit.start_ms, permit.end_ms)] if start < end else []
    r = permit.recurring
    lo, hi = max(permit.start_ms, from_ms), min(permit.end_ms, to_ms)
    windows = []
    day = (lo + LOCAL_UTC_OFFSET_MS) // DAY_MS * DAY_MS - LOCAL_UTC_OFFSET_MS
    while day < hi:
        weekday = ((day + LOCAL_UTC_OFFSET_MS) // DAY_MS + 3) % 7 + 1   # 1970-01-01: Thursday
        if weekday in r.days:
            start = max(day + r.from_min * 60_000, permit.start_ms)
            end = min(day + r.to_min * 60_000, permit.end_ms)
            if start < end and end > lo and start < hi:
                windows.append((start, end))
        day += DAY_MS
    return windows


def _pieces(subject: Subject, permits: list[Permit], delegations: list[Delegation],
            area_of: Callable[..., int], base: int) -> list[tuple[int, int, int, int]]:
    """(start, end, area, home area) pieces of one subject where either differs from base.

    Cutting at every window start and end makes the active set constant within each
    piece, so it is read at the piece's start. Neighbours with equal ids are merged first.
    """
    windows = [(p, recurring_windows(p, p.start_ms, p.end_ms)) for p in permits]
    cuts = sorted({t for _, ws in windows for w in ws for t in w}
                  | {d.start_ms for d in delegations} | {_end(d) for d in delegations})
    merged: list[list[int]] = []
    for start, end in zip(cuts, cuts[1:]):
        delegation = active_delegation(delegations, start)
        home = delegation.home if delegation is not None else subject.home
        destinations = [p.destinations for p, ws in windows if _within(ws, start)]
        area, home_area = area_of(home, *destinations), area_of(home)
        if merged and merged[-1][1] == start and merged[-1][2:] == [area, home_area]:
            merged[-1][1] = end
        else:
            merged.append([start, end, area, home_area])
    return [(s, e, a, h) for s, e, a, h in merged if (a, h) != (base, base)]


def _within(windows: list[tuple[int, int]], t: int) -> bool:
    at = bisect_right(windows, (t, NO_END_MS)) - 1
    return at >= 0 and windows[at][0] <= t < windows[at][1]


def _end(d: Delegation) -> int:
    return int(NO_END_MS) if d.end_ms is None else d.end_ms


def _resized(arr: np.ndarray, size: int, fill) -> np.ndarray:
    out = np.full(size, fill, arr.dtype)
    out[:len(arr)] = arr
    return out


def _integers(values, name: str, dtype) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ScheduleError(f"{name} must be a 1-D array of integers, not {arr.dtype} "
                            f"{arr.shape}")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ScheduleError(f"{name} out of range for {np.dtype(dtype).name}")
    return np.ascontiguousarray(arr, dtype)


def warm_up() -> None:
    """Compile or load the schedule kernel once, on a tiny registry, before traffic."""
    subject = Subject("s", ("d",), "o", ("h",), index=0)
    permit = Permit("p", "s", 10, 20, ("x",), "o")
    schedule = AreaSchedule.build(Registry(subjects={"s": subject}, permits={"p": permit}),
                                  lambda codes: len(tuple(codes)))
    schedule.areas_at(np.zeros(3, np.int32), np.array([0, 10, 20], np.int64))
