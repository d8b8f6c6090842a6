"""The rules `benchmarks.alarm_trust` measures, behind one small interface.

A rule under test implements `AlarmRule`: `start(world)` once per simulated population,
then `step(batch)` for each batch of fixes in time order (one seeded day after another),
returning the events the batch raised. A batch carries each fix's measured position
(WGS-84, converted from the carrier's datum as the engine does), accuracy, source, the
engine's verdict against the subject's allowed area (home county, plus a permit's
destination while it runs) and its distance from it: what the engine's rules stage sees.
The world carries what a rule may need besides: key persons, curfew orders, co-offender
cases, the verdict engine and the area ids.

Two rules are here: `CountRule`, today's consecutive-count rules (`alerts.rules.RuleState`
with `engine.config.Rules()` defaults, key persons their own class), and `NaiveRule`, an
alarm each time a measured point lies outside the allowed area after one inside it. An
evidence model plugs in by implementing the same two methods; `raises` says which event
types it can raise, and the benchmark prints "n/a" for the others.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from alerts.rules import EVENT_TYPES, RuleState
from engine.config import Rules
from geofence.verdict import OUT


@dataclass(frozen=True, eq=False)
class World:
    """What a rule may know of the population besides the fixes."""

    n_subjects: int
    key: np.ndarray            # bool per subject: key person (重点人员)
    curfews: list[dict]        # {subject, home_lon, home_lat, radius_m, from_h, to_h}
    cases: dict                # case id -> co-offender subject indices
    engine: object             # the `geofence.VerdictEngine` the verdicts came from


@dataclass(frozen=True, eq=False)
class Batch:
    """Fixes in time order, each with its verdict against the subject's allowed area."""

    subject: np.ndarray        # int32
    t_ms: np.ndarray           # int64, days' clock (day d starts at local midnight d * 24 h)
    lon: np.ndarray            # WGS-84
    lat: np.ndarray
    acc_m: np.ndarray
    src: np.ndarray            # index into ingest.protocol.SOURCES
    area: np.ndarray           # int32 allowed-area id (engine.area_id) per fix
    verdict: np.ndarray        # IN / UNSURE / OUT (geofence.verdict)
    distance_m: np.ndarray     # from the allowed area (0 inside; `Verdicts.distance_m`)
    point_inside: np.ndarray   # bool: the measured point itself lies in the allowed area

    def __len__(self) -> int:
        return len(self.subject)


@dataclass(frozen=True, eq=False)
class RaisedEvents:
    """Events of one batch: type name (alerts.rules.EVENT_TYPES, or curfew_breach,
    gathering), subject, index of the triggering fix in the batch, and for a gathering
    the other subject (-1 otherwise)."""

    type: np.ndarray           # str (object array)
    subject: np.ndarray
    fix: np.ndarray
    other: np.ndarray | None = None

    @staticmethod
    def none() -> "RaisedEvents":
        return RaisedEvents(np.zeros(0, object), np.zeros(0, np.int32), np.zeros(0, np.int64))


class AlarmRule(Protocol):
    name: str
    raises: frozenset           # event type names it can raise

    def start(self, world: World) -> None: ...

    def step(self, batch: Batch) -> RaisedEvents: ...


class CountRule:
    """Today's rules: `RuleState` with `Rules()` defaults (or those given), no exclusion
    zones; key persons in their own rule class."""

    raises = frozenset({"zone_exit", "zone_return", "possible_exit"})

    def __init__(self, rules: Rules | None = None, name: str = "count rule (Rules() defaults)"):
        self.rules = rules or Rules()
        self.name = name

    def start(self, world: World) -> None:
        self.state = RuleState(world.n_subjects, self.rules)
        self.key = world.key

    def step(self, batch: Batch) -> RaisedEvents:
        n = len(batch)
        ev = self.state.apply(batch.subject, batch.t_ms, batch.verdict, np.full(n, OUT, np.int8),
                              np.full(n, -1, np.int32), self.key)
        if ev.n_late:
            raise ValueError(f"{ev.n_late} late fixes: batches must come in time order")
        return RaisedEvents(np.array(EVENT_TYPES, object)[ev.type], ev.subject,
                            ev.fix.astype(np.int64))


class NaiveRule:
    """An alarm each time a subject's measured point lies outside the allowed area after
    one inside it (subjects start inside): what a plain point-in-polygon system raises."""

    name = "naive: any point outside"
    raises = frozenset({"zone_exit"})

    def start(self, world: World) -> None:
        self.prev_inside = np.ones(world.n_subjects, bool)

    def step(self, batch: Batch) -> RaisedEvents:
        order = np.argsort(batch.subject, kind="stable")   # per subject, still time order
        s, ins = batch.subject[order], batch.point_inside[order]
        first = np.r_[True, s[1:] != s[:-1]]
        before = np.where(first, self.prev_inside[s], np.r_[True, ins[:-1]])
        fix = np.sort(order[~ins & before])
        last = np.r_[s[1:] != s[:-1], True]
        self.prev_inside[s[last]] = ins[last]
        return RaisedEvents(np.full(len(fix), "zone_exit", object), batch.subject[fix], fix)
