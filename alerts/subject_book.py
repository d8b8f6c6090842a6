"""What evaluation needs of the registry, by subject index, kept current with each change.

The compiled stages address subjects by index (`Subject.index`); this book turns the
registry's current snapshot into the arrays they take (exclusion set, rule class (level
and key flag), end of supervision, registered) and the schedule of allowed areas and routing
(`alerts.schedule`). A running worker polls the registry's version five times a second;
a change is applied to the subjects it touched only (the registry's change log says
which), so an approval reaches the verdicts well within a second even on a national
registry; a large import is rebuilt from scratch.

A key period (重大活动/敏感节点, `alerts.registry.KeyPeriod`) raises the rule class of the
subjects it covers to strict's for its duration (`rule_class` is the effective class,
`base_class` the subject's own), and marks them `in_key_period` (signal_lost sooner). The
clock rules tell the book the time (`key_periods_at`); a registry change is applied at the
last time told, so a period declared on the desk reaches the fixes within a poll.
It also keeps who is linked to whom for the gathering rule (`links`: shared case ids
and key persons, `alerts.gathering_join.Links`), following the same changes.
"""

import time

import numpy as np

import geofence
from alerts.gathering_join import CaseNumbers, Links
from alerts.registry import LEVELS, Registry, RegistryChange, RegistryStore, Subject
from alerts.schedule import AreaSchedule

REGISTRY_POLL_S = 0.2
REBUILD_SHARE = 0.25   # a change touching more than this share of subjects: rebuild
NEVER_MS = np.iinfo(np.int64).max   # `ended_ms` of a subject still supervised


def rule_class_of(subject: Subject) -> int:
    """The subject's row of the per-level rule settings: level * 2 + key (SPEC §11):
    0 normal, 1 normal key, 2 strict, 3 strict key, 4 loose, 5 loose key."""
    return LEVELS.index(subject.level) * 2 + (subject.risk == "key")


STRICT = LEVELS.index("strict")


def covered_offices(registry: Registry, offices) -> set[str]:
    """The offices named and every office below them (a period covers subtrees)."""
    named = set(offices)
    return {code for code in registry.offices
            if named.intersection(registry.office_path(code))}


class SubjectBook:
    """The registry as arrays by subject index, with the schedule built from it."""

    def __init__(self, engine: geofence.VerdictEngine, registry_store: RegistryStore):
        self.engine = engine
        self.registry_store = registry_store
        self.version = -1
        self.registry = Registry()
        self.schedule = AreaSchedule.build(self.registry, engine.area_id)
        self.exclusions_of = np.zeros(0, np.int32)
        self.registered = np.zeros(0, np.bool_)
        self.rule_class = np.zeros(0, np.int8)   # effective: key periods applied
        self.base_class = np.zeros(0, np.int8)   # the subject's own level and key
        self.in_key_period = np.zeros(0, np.bool_)
        self.office_of = np.zeros(0, np.int32)   # the subject's office, by `_office_ids`
        self._office_ids: dict[str, int] = {}
        # by index: the subjects with curfews or night_watch (`alerts.curfews`)
        self.curfew_subjects: dict[int, Subject] = {}
        self.ended_ms = np.zeros(0, np.int64)
        self.subjects: list[Subject | None] = []
        self.index_of: dict[str, int] = {}
        self._next_poll = 0.0
        self._key_now_ms: int | None = None      # the time the clock last told
        self._key_applied: tuple | None = None   # (active period ids, registry version)
        self._case_numbers = CaseNumbers()
        self._groups_of: dict[int, list[int]] = {}   # linked subjects only
        self._links: Links | None = None

    @property
    def size(self) -> int:
        return len(self.subjects)

    def refresh(self, force: bool = False) -> None:
        """Rebuild if the registry changed (checked at most every REGISTRY_POLL_S)."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return
        self._next_poll = now + REGISTRY_POLL_S
        change = self.registry_store.changes_since(self.version)
        if change is None:
            return
        touched = sum(len(change.keys(kind)) for kind in ("subjects", "permits",
                                                          "delegations"))
        if self.version < 0 or change.registry.version < self.version or \
                touched > max(1000, REBUILD_SHARE * self.size):   # a large import, or a
            # restored older file: built afresh
            self._rebuild(change.registry)
        else:
            self._apply(change)

    def _rebuild(self, registry: Registry) -> None:
        schedule = AreaSchedule.build(registry, self.engine.area_id)
        size = schedule.n_subjects
        exclusions_of = np.zeros(size, np.int32)
        rule_class = np.zeros(size, np.int8)
        office_of = np.full(size, -1, np.int32)
        ended_ms = np.full(size, NEVER_MS, np.int64)
        subjects: list[Subject | None] = [None] * size
        for s in registry.subjects.values():
            exclusions_of[s.index] = self.engine.exclusion_set_id(s.exclusions)
            rule_class[s.index] = rule_class_of(s)
            office_of[s.index] = self._office_id(s.office)
            if s.ended_ms is not None:
                ended_ms[s.index] = s.ended_ms
            subjects[s.index] = s
        self.curfew_subjects = {s.index: s for s in registry.subjects.values()
                                if s.curfews or s.night_watch}
        self.schedule, self.exclusions_of, self.subjects = schedule, exclusions_of, subjects
        self.base_class, self.ended_ms, self.office_of = rule_class, ended_ms, office_of
        self.rule_class, self.in_key_period = rule_class.copy(), np.zeros(size, np.bool_)
        self.registered = np.array([s is not None for s in subjects], np.bool_)
        self.index_of = {s.id: s.index for s in registry.subjects.values()}
        self._groups_of = {}
        for s in registry.subjects.values():
            self._link(s)
        self.registry, self.version = registry, registry.version
        self._key_applied = None
        self._key_periods()

    def _apply(self, change: RegistryChange) -> None:
        """Only what the change touched: its subjects, and those whose permits or
        delegations it touched."""
        registry = change.registry
        self.engine.areas.live()   # an area new to this worker now: built sooner, coarser
        self.schedule.update(registry, change.keys("subjects"), change.keys("permits"),
                             change.keys("delegations"))
        size = self.schedule.n_subjects
        if size > len(self.subjects):
            grow = size - len(self.subjects)
            self.exclusions_of = np.concatenate([self.exclusions_of, np.zeros(grow, np.int32)])
            self.rule_class = np.concatenate([self.rule_class, np.zeros(grow, np.int8)])
            self.base_class = np.concatenate([self.base_class, np.zeros(grow, np.int8)])
            self.in_key_period = np.concatenate([self.in_key_period,
                                                 np.zeros(grow, np.bool_)])
            self.office_of = np.concatenate([self.office_of, np.full(grow, -1, np.int32)])
            self.ended_ms = np.concatenate([self.ended_ms, np.full(grow, NEVER_MS, np.int64)])
            self.registered = np.concatenate([self.registered, np.zeros(grow, np.bool_)])
            self.subjects = self.subjects + [None] * grow
        for sid in change.keys("subjects"):
            s = registry.subjects.get(sid)
            if s is None:
                continue
            i = s.index
            self.exclusions_of[i] = self.engine.exclusion_set_id(s.exclusions)
            self.rule_class[i] = self.base_class[i] = rule_class_of(s)
            self.in_key_period[i] = False
            self.office_of[i] = self._office_id(s.office)
            if s.curfews or s.night_watch:
                self.curfew_subjects[i] = s
            else:
                self.curfew_subjects.pop(i, None)
            self.ended_ms[i] = NEVER_MS if s.ended_ms is None else s.ended_ms
            self.registered[i] = True
            self.subjects[i] = s
            self.index_of[sid] = i
            self._link(s)
        self.registry, self.version = registry, registry.version
        self._key_applied = None
        self._key_periods()

    def _office_id(self, code: str) -> int:
        return self._office_ids.setdefault(code, len(self._office_ids))

    def key_periods_at(self, now_ms: int) -> None:
        """The clock's time: apply the key periods in force at `now_ms` (a no-op while
        neither the active periods nor the registry changed)."""
        self._key_now_ms = int(now_ms)
        self._key_periods()

    def _key_periods(self) -> None:
        now = self._key_now_ms
        if now is None:
            return
        active = tuple(sorted(p.id for p in self.registry.key_periods.values()
                              if p.active_at(now)))
        if (active, self.version) == self._key_applied:
            return
        self._key_applied = (active, self.version)
        covered = np.zeros(len(self.base_class), np.bool_)
        for pid in active:
            period = self.registry.key_periods[pid]
            offices = [self._office_id(c) for c in covered_offices(self.registry,
                                                                     period.offices)]
            levels = [LEVELS.index(v) for v in period.levels]
            covered |= np.isin(self.office_of, offices) & np.isin(self.base_class // 2, levels)
        self.in_key_period = covered
        self.rule_class = np.where(covered, STRICT * 2 + self.base_class % 2,
                                   self.base_class).astype(np.int8)

    def _link(self, s: Subject) -> None:
        groups = self._case_numbers.groups(s.cases, s.risk == "key")
        if groups or self._groups_of.pop(s.index, None) is not None:
            self._links = None
        if groups:
            self._groups_of[s.index] = groups

    def links(self) -> Links:
        """Link groups by subject index (a shared case, or both key), for the gathering
        rule; rebuilt from the linked subjects only, after a change that touched them."""
        if self._links is None or self._links.n_subjects != self.size:
            self._links = Links.build(self.size, self._groups_of, self._case_numbers.names)
        return self._links

    def supervised(self, subject: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """Per fix: its subject was under supervision at its time (an ended supervision
        raises nothing from its end on; its fixes are still stored)."""
        known = subject < len(self.ended_ms)
        ended = self.ended_ms[np.where(known, subject, 0)] if len(self.ended_ms) else NEVER_MS
        return ~known | (t_ms < ended)

    def watched(self, now_ms: int) -> np.ndarray:
        """Per subject index: registered and still supervised at `now_ms` (clock rules)."""
        return self.registered & (self.ended_ms > now_ms)

    def areas_at(self, subject: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """Allowed-area ids of fixes; a subject newer than the book forces a rebuild."""
        if len(subject) and subject.max() >= self.size:
            self.refresh(force=True)
        return self.schedule.areas_at(subject, t_ms)

    def root_office(self) -> str:
        """The office at the top of the tree (feed_outage goes there)."""
        return self.registry.root_office()
