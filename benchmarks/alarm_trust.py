"""Alarm trust: today's rules and the naive rule on harsh, life-like days (issue 13's figures).

Several seeded populations (`sim.harsh_day.make_people` on the Zaozhuang counties: a third
living within 3 km of a county border, 5 % key persons, co-offender pairs, night
curfews), several seeded days each (`sim.harsh_day.make_day`: dense and sparse feeds,
heavy tails, Wi-Fi jumps, cell ping-pong across borders, cell-only stretches indoors, one
carrier in GCJ-02, permits, and planted excursions, curfew breaches and gatherings). The
fixes are converted to WGS-84 as the engine does (`geofence.datum.to_wgs84`), get the
verdict of their subject's allowed area (home county, plus the permit's destination while
a permit runs: `VerdictEngine.verdicts`), and go in time order, in batches of `BATCH`,
through every rule under test (`benchmarks.trust_rules`: `AlarmRule`; the count rule and
the naive rule here, the evidence model next).

What is true (per fix the alarm was raised on):
- a `zone_exit` or `possible_exit` is *true* when its fix lies in a planted excursion
  (minor ones too) of its subject, or the person was really outside the allowed area
  then (true position, `layer.locate`): a walk across the border near home is real;
  otherwise false, counted per 1,000 person-days;
- recall: share of qualifying excursions (planted >= 1 km beyond the border for >= 20 min,
  with at least one fix during them) with a `zone_exit` on one of their fixes; the time
  to alarm runs from the planted start to that alarm's fix;
- a `curfew_breach` is true when it lies in a planted breach window of its subject, or the
  subject was really more than the curfew radius from home during curfew hours; a
  `gathering` when it lies in a planted gathering of its subject (and the other named, if
  any), or the two really were within 200 m then (an unplanted meeting). Planted windows
  take alarms up to 15 min after their end. Rules that do not raise them print n/a.
"""

import time

import numpy as np

from benchmarks.common import Report, log
from benchmarks.trust_rules import Batch, CountRule, NaiveRule, World
from geofence import Layer, VerdictEngine
from geofence.builtin import zaozhuang_geojson
from geofence.datum import to_wgs84
from sim.ground import Ground, to_metres
from sim.harsh_day import PARAMS, in_curfew, make_day, make_people
from sim.harsh_errors import HARSH
from sim.population import COUNTIES

SEEDS = (20261203, 20261204, 20261205)
BATCH = 10_000
FULL = {"subjects": 2032, "days": 3, "seeds": 3}
QUICK = {"subjects": 600, "days": 1, "seeds": 2}
TARGETS = {"recall": 99.0, "true_exit": 98.0, "false_exit": 2.0, "false_possible": 20.0,
           "recall_other": 99.0, "false_other": 1.0}
# False zone_exit by what the triggering fix suffered (first that applies): mark in Day.marks
CAUSES = {"of which: cell across a border (ping-pong)": "across",
          "of which: Wi-Fi jump": "jump", "of which: heavy tail": "tail",
          "of which: otherwise": None}
TOGETHER_M = 200.0             # an unplanted gathering alarm is true if the two really were
TOGETHER_WITHIN_MS = 10 * 60_000   # this near, at fixes this close in time
MATCH_GRACE_MS = 15 * 60_000   # a curfew or gathering alarm this long after its window counts


def default_rules() -> list:
    return [CountRule(), NaiveRule()]


def run(quick: bool, rules: list | None = None) -> Report:
    sizes = QUICK if quick else FULL
    rules = rules or default_rules()
    rep = Report("alarm_trust", {**sizes, "seeds used": list(SEEDS[:sizes["seeds"]]),
                                 "batch": BATCH, "errors": HARSH.__dict__,
                                 "day": PARAMS.__dict__})
    layer = Layer.from_geojson(zaozhuang_geojson())
    ground = Ground(layer)
    engine = VerdictEngine(layer)
    county_of_feature = np.full(len(layer), -1, np.int32)
    for k, code in enumerate(COUNTIES):
        county_of_feature[layer.features_under(code)] = k
    area_table = np.array([[engine.area_id([home] + ([COUNTIES[d]] if d >= 0 else []))
                            for d in range(-1, len(COUNTIES))] for home in COUNTIES], np.int32)
    scores = {r.name: Score() for r in rules}
    person_days, n_fixes, planted = 0, 0, {}
    for seed in SEEDS[:sizes["seeds"]]:
        people = make_people(ground, sizes["subjects"], np.random.default_rng(seed))
        world = World(len(people), people.key, people.curfews(), people.linked_pairs(), engine)
        for r in rules:
            r.start(world)
        for d in range(sizes["days"]):
            start = time.perf_counter()
            day = make_day(ground, people, d, np.random.default_rng([seed, d]))
            truth = _DayTruth(day, people, layer, county_of_feature)
            batch = _evaluate(day, people, engine, area_table, county_of_feature)
            for r in rules:
                scores[r.name].add(r, _raise(r, batch), batch, truth, people)
            for row in day.truth:
                planted[row["kind"]] = planted.get(row["kind"], 0) + 1
            person_days += len(people)
            n_fixes += len(day.fixes)
            log(f"alarm_trust: seed {seed} day {d + 1}: {len(day.fixes):,} fixes, "
                f"{len(day.truth)} planted events, {time.perf_counter() - start:.1f} s")
    rep.add("feed", "person-days", person_days, "person-days")
    rep.add("feed", "fixes", n_fixes, "fixes")
    for kind, count in sorted(planted.items()):
        rep.add("truth", f"planted {kind}", count, "events")
    first = next(iter(scores.values()))
    rep.add("truth", "qualifying excursions (seen by >= 1 fix)", first.qualifying, "excursions")
    for r in rules:
        scores[r.name].report(rep, r, person_days, targets=isinstance(r, CountRule)
                              or getattr(r, "targets", False))
    rep.notes.append("targets (issue 13) are printed beside the count rule and any rule "
                     "with targets = True; the naive rule is shown for scale")
    return rep


class _DayTruth:
    """Per fix of one day: really outside the allowed area, in which planted event, really
    breaching a curfew; and the day's truth rows."""

    def __init__(self, day, people, layer, county_of_feature):
        f = day.fixes
        home = people.county[f.subject]
        true_county = county_of_feature[np.maximum(layer.locate(f.true_lon, f.true_lat), 0)]
        true_county[layer.locate(f.true_lon, f.true_lat) < 0] = -1
        self.really_out = (true_county != home) & (true_county != day.permit_dest)
        self.event = day.event
        self.marks = day.marks
        self.rows = day.truth
        kinds = np.array([r["kind"] for r in day.truth] + [""], object)
        self.kind = kinds[day.event]                       # "" for no event (index -1)
        x, y = to_metres(f.true_lon, f.true_lat)
        away = np.hypot(x - people.home_x[f.subject], y - people.home_y[f.subject])
        self.breaching = (people.curfew[f.subject] & in_curfew(f.t_ms)
                          & (away > PARAMS.curfew_radius_m))
        self.x, self.y, self.t_ms = x, y, f.t_ms
        self.by_subject = np.argsort(f.subject, kind="stable")   # per subject, time order
        self.bounds = np.r_[0, np.cumsum(np.bincount(f.subject, minlength=len(people)))]

    def together(self, fix: int, other: int) -> bool:
        """Whether subject `other` really was within TOGETHER_M of the person of `fix`
        at one of its own fixes within TOGETHER_WITHIN_MS of it."""
        if other < 0:
            return False
        theirs = self.by_subject[self.bounds[other]:self.bounds[other + 1]]
        near = theirs[np.abs(self.t_ms[theirs] - self.t_ms[fix]) <= TOGETHER_WITHIN_MS]
        d = np.hypot(self.x[near] - self.x[fix], self.y[near] - self.y[fix])
        return bool((d <= TOGETHER_M).any())


def _evaluate(day, people, engine, area_table, county_of_feature) -> Batch:
    """The day's fixes as the engine sees them: WGS-84, verdicts against allowed areas."""
    f = day.fixes
    lon, lat = day.sent_lon.copy(), day.sent_lat.copy()
    if day.gcj02.any():
        lon[day.gcj02], lat[day.gcj02] = to_wgs84(lon[day.gcj02], lat[day.gcj02], "gcj02")
    home = people.county[f.subject]
    area = area_table[home, day.permit_dest + 1]
    v = engine.verdicts(lon, lat, f.acc_m, area)
    where = np.where(v.where >= 0, county_of_feature[np.maximum(v.where, 0)], -2)
    point_inside = (where == home) | (where == day.permit_dest)
    return Batch(f.subject, f.t_ms, lon, lat, f.acc_m, f.src, area, v.verdict, v.distance_m,
                 point_inside)


def _raise(rule, day: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(type, subject, fix index in the day, other) of everything `rule` raised."""
    types, subjects, fixes, others = [], [], [], []
    for lo in range(0, len(day), BATCH):
        part = Batch(*(getattr(day, k)[lo:lo + BATCH] for k in Batch.__dataclass_fields__))
        ev = rule.step(part)
        types.append(ev.type)
        subjects.append(np.asarray(ev.subject, np.int64))
        fixes.append(np.asarray(ev.fix, np.int64) + lo)
        others.append(np.full(len(ev.type), -1, np.int64) if ev.other is None
                      else np.asarray(ev.other, np.int64))
    return tuple(np.concatenate(x) if x else np.zeros(0) for x in (types, subjects, fixes, others))


class Score:
    """Counts of one rule over every day."""

    def __init__(self):
        self.exits = self.exits_true = self.possible = self.possible_true = 0
        self.qualifying = self.found = 0
        self.false_cause = dict.fromkeys(CAUSES, 0)
        self.missed: list[str] = []
        self.latency_min, self.latency_key_min = [], []
        self.other = {k: {"alarms": 0, "true": 0, "planted": 0, "found": 0}
                      for k in ("curfew_breach", "gathering")}

    def add(self, rule, raised, day: Batch, truth: _DayTruth, people) -> None:
        types, subjects, fixes, others = raised
        excursion = np.isin(truth.kind, ("excursion", "minor_excursion"))
        exit_true = truth.really_out | excursion
        is_exit, is_possible = types == "zone_exit", types == "possible_exit"
        self.exits += int(is_exit.sum())
        self.exits_true += int(exit_true[fixes[is_exit]].sum())
        self.possible += int(is_possible.sum())
        self.possible_true += int(exit_true[fixes[is_possible]].sum())
        false = fixes[is_exit][~exit_true[fixes[is_exit]]]
        left = np.ones(len(false), bool)
        for cause, mark in CAUSES.items():
            hit = left & truth.marks[mark][false] if mark else left
            self.false_cause[cause] += int(hit.sum())
            left &= ~hit
        first_alarm = {}
        for f in fixes[is_exit]:    # alarms, not fixes: a few hundred a day
            e = int(truth.event[f])
            if e >= 0 and e not in first_alarm:
                first_alarm[e] = int(day.t_ms[f])
        for e, row in enumerate(truth.rows):
            if row["kind"] != "excursion" or row["fixes"] == 0:
                continue
            self.qualifying += 1
            if e in first_alarm:
                self.found += 1
                minutes = (first_alarm[e] - row["start_ms"]) / 60_000
                self.latency_min.append(minutes)
                if people.key[row["subjects"][0]]:
                    self.latency_key_min.append(minutes)
            else:
                s = row["subjects"][0]
                self.missed.append(
                    f"subject {s} ({'sparse' if people.sparse[s] else 'dense'} feed"
                    f"{', key' if people.key[s] else ''}): "
                    f"{(row['end_ms'] - row['start_ms']) / 60_000:.0f} min, "
                    f"{row['distance_m']:,} m beyond, {row['fixes']} fixes")
        for kind, extra_true in (("curfew_breach", truth.breaching), ("gathering", None)):
            rows = [r for r in truth.rows if r["kind"] == kind and r["fixes"] > 0]
            o = self.other[kind]
            o["planted"] += len(rows)
            if kind not in rule.raises:
                continue
            mine = np.flatnonzero(types == kind)
            hit = set()
            for j in mine:
                s, t = int(subjects[j]), int(day.t_ms[fixes[j]])
                match = [k for k, r in enumerate(rows) if s in r["subjects"]
                         and (others[j] < 0 or int(others[j]) in r["subjects"])
                         and r["start_ms"] <= t <= r["end_ms"] + MATCH_GRACE_MS]
                hit.update(match)
                o["alarms"] += 1
                really = (truth.together(int(fixes[j]), int(others[j]))
                          if extra_true is None else bool(extra_true[fixes[j]]))
                o["true"] += bool(match) or really
            o["found"] += len(hit)

    def report(self, rep: Report, rule, person_days: int, targets: bool) -> None:
        g, per = rule.name, 1000 / max(person_days, 1)
        t = TARGETS if targets else {}
        rep.add(g, "recall of qualifying excursions", 100 * self.found / max(self.qualifying, 1),
                "%", at_least=t.get("recall"))
        rep.add(g, "zone_exit alarms", self.exits, "alarms")
        rep.add(g, "  true share", 100 * self.exits_true / max(self.exits, 1), "%",
                at_least=t.get("true_exit"))
        rep.add(g, "  false per 1,000 person-days", (self.exits - self.exits_true) * per,
                "alarms", at_most=t.get("false_exit"))
        for cause, count in self.false_cause.items():
            rep.add(g, f"    {cause}", count * per, "alarms")
        if "possible_exit" in rule.raises:
            rep.add(g, "possible_exit alarms", self.possible, "alarms")
            rep.add(g, "  true share", 100 * self.possible_true / max(self.possible, 1), "%")
            rep.add(g, "  false per 1,000 person-days",
                    (self.possible - self.possible_true) * per, "alarms",
                    at_most=t.get("false_possible"))
        else:
            rep.notes.append(f"{g}: possible_exit n/a (the rule does not raise it)")
        for name, values in (("time to alarm", self.latency_min),
                             ("time to alarm, key persons", self.latency_key_min)):
            if values:
                rep.add(g, f"{name}: median", float(np.median(values)), "min")
                rep.add(g, f"{name}: p90", float(np.percentile(values, 90)), "min")
        rep.notes += [f"{g}: missed {m}" for m in self.missed[:10]]
        for kind, o in self.other.items():
            if kind not in rule.raises:
                rep.notes.append(f"{g}: {kind} n/a (the rule does not raise it; "
                                 f"{o['planted']} planted)")
                continue
            rep.add(g, f"{kind} recall", 100 * o["found"] / max(o["planted"], 1), "%",
                    at_least=t.get("recall_other"))
            rep.add(g, f"{kind} false per 1,000 person-days", (o["alarms"] - o["true"]) * per,
                    "alarms", at_most=t.get("false_other"))
