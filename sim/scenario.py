"""The day `geofence demo` replays: Zaozhuang's supervised people, planted events, the truth.

Built on `sim.population` and `sim.movement`, deterministic from a seed. `build_scenario`
returns:

- the registry (SPEC §3): city 3704 → 6 county bureaus → 66 township offices (the layer's
  real names); 2,032 subjects in the real mix (1,906 probation, 70 parole, 38 medical
  parole, 18 control; scaled for other sizes), 4 % key persons (重点人员), home = their
  county, one phone number each; about 40 permits (外出审批, approved by the county
  bureau) and 15 delegations (异地委托: working in another county, supervised there);
- a zone layer (GeoJSON, SPEC §3): 8 injunction zones (禁止令: schools, a bar street,
  internet cafés, a victim's neighbourhood) inside Zaozhuang, and 3 trip destinations
  outside the city that permits name; about 25 subjects are barred from one or two zones;
- a day of fixes per carrier (cmcc, cucc in GCJ-02, ctcc; subject i goes to carrier
  i % 3), with `sim.movement`'s errors by source, ending at `end_ms`;
- the truth: one row per alarm a planted event should (or, for a permitted trip, should
  not) cause: {event, kind, subject, expect, start_ms, end_ms, ...details}.

Planted events (`sim.planting`: exits, permitted trips, overstays, silences, injunction
breaches, delegated people leaving, a carrier outage; counts per 2,032 subjects, at least a
few of each for small runs) are placed where they are unambiguous. Homes are placed at
least 1 km inside their county, so that alarms nobody planted are the engine's own doing,
not people walking across a border next to their home.
"""

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from sim.carriers import CarrierFeed, split_by_carrier
from sim.fixes import Fixes
from sim.ground import KX_M, KY_M, Ground, to_degrees, to_metres
from sim.movement import DAY_MS, HOUR_MS, MINUTE_MS, fix_errors, make_day
from sim.planting import (REAL_SUBJECTS, Planter, plant_barred, plant_delegation_exits,
                          plant_exits, plant_silences, plant_trips, planted_count)
from sim.population import (CATEGORY_SHARE, COUNTIES, Population, make_population,
                            registry_document)
from sim.zones import place_zones

CARRIERS = ("cmcc", "cucc", "ctcc")
GCJ02_CARRIERS = ("cucc",)
MIN_SUBJECTS = 60
KEY_SHARE = 0.04
HOME_INSIDE_M = 1_000.0            # homes at least this far inside their county
LIVE_INTERVAL_MS = 5 * MINUTE_MS   # the live phase: one fix per subject this often
LIVE_WANDER_M = 150.0
OUTAGE_MS = 35 * MINUTE_MS


@dataclass(frozen=True, eq=False)
class Scenario:
    """The demo's day; see the module docstring. Times are unix ms (UTC)."""

    seed: int
    start_ms: int
    end_ms: int
    carriers: tuple[str, ...]
    gcj02_carriers: tuple[str, ...]
    people: Population          # registry view: origin homes, category, risk
    devices: list[str]
    offices: list[dict]
    subjects: list[dict]        # registry subjects (with exclusions)
    permits: list[dict]         # id, subject, start_ms, end_ms, destinations, office
    delegations: list[dict]     # id, subject, start_ms, end_ms (or None), office, home
    zones: dict                 # GeoJSON FeatureCollection
    truth: list[dict]
    fixes: Fixes
    rest_lon: np.ndarray        # where each subject is at the end of the day (live phase)
    rest_lat: np.ndarray
    planted: dict = field(default_factory=dict)   # kind -> events planted

    @property
    def ids(self) -> list[str]:
        return self.people.ids

    def carrier_of(self, subject: np.ndarray) -> np.ndarray:
        """Index into `carriers` of each subject index."""
        return np.asarray(subject) % len(self.carriers)

    def registry_document(self) -> dict:
        """The registry (SPEC §3) in the import format, times as RFC 3339."""
        permits = [{"id": p["id"], "subject": p["subject"], "start": rfc3339(p["start_ms"]),
                    "end": rfc3339(p["end_ms"]), "destinations": list(p["destinations"]),
                    "office": p["office"]} for p in self.permits]
        delegations = []
        for d in self.delegations:
            doc = {"id": d["id"], "subject": d["subject"], "start": rfc3339(d["start_ms"]),
                   "office": d["office"], "home": list(d["home"])}
            if d["end_ms"] is not None:
                doc["end"] = rfc3339(d["end_ms"])
            delegations.append(doc)
        return {"offices": [dict(o) for o in self.offices],
                "subjects": [dict(s) for s in self.subjects],
                "permits": permits, "delegations": delegations}

    def carrier_feeds(self) -> list[CarrierFeed]:
        """The day's fixes split by carrier, each in its carrier's datum, in time order."""
        return split_by_carrier(self.fixes, self.people.phones, self.carriers,
                                self.gcj02_carriers)

    def live_fixes(self, carrier: int, after_ms: int, upto_ms: int,
                   rng: np.random.Generator) -> CarrierFeed:
        """Carrier `carrier`'s fixes after the day: one per subject every LIVE_INTERVAL_MS
        (at a phase of its own), times in (after_ms, upto_ms], near where each subject
        ended the day."""
        everyone = np.arange(len(self.rest_lon))
        mine = everyone[self.carrier_of(everyone) == carrier]
        phase = (mine.astype(np.int64) * 7_919_000) % LIVE_INTERVAL_MS
        k = (after_ms - self.end_ms - phase) // LIVE_INTERVAL_MS + 1
        subject, t_ms = [], []
        while True:
            t = self.end_ms + phase + k * LIVE_INTERVAL_MS
            due = t <= upto_ms
            if not due.any():
                break
            subject.append(mine[due].astype(np.int32))
            t_ms.append(t[due])
            k = k + 1
        subject = np.concatenate(subject) if subject else np.zeros(0, np.int32)
        t_ms = np.concatenate(t_ms) if t_ms else np.zeros(0, np.int64)
        order = np.argsort(t_ms, kind="stable")
        subject, t_ms = subject[order], t_ms[order]
        true_lon = self.rest_lon[subject] + rng.normal(0, LIVE_WANDER_M, len(subject)) / KX_M
        true_lat = self.rest_lat[subject] + rng.normal(0, LIVE_WANDER_M, len(subject)) / KY_M
        src, acc, east_m, north_m = fix_errors(len(subject), rng)
        live = Fixes(subject, t_ms, true_lon + east_m / KX_M, true_lat + north_m / KY_M, acc,
                     src, true_lon, true_lat, np.zeros(len(subject), bool))
        return split_by_carrier(live, self.people.phones, self.carriers,
                                self.gcj02_carriers)[carrier]


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def build_scenario(subjects: int = REAL_SUBJECTS, seed: int = 7, end_ms: int | None = None,
                   carriers: tuple[str, ...] = CARRIERS,
                   gcj02_carriers: tuple[str, ...] = GCJ02_CARRIERS) -> Scenario:
    """The demo's day for `subjects` people, ending at `end_ms` (default: now)."""
    if subjects < MIN_SUBJECTS:
        raise ValueError(f"the demo needs at least {MIN_SUBJECTS} subjects, not {subjects}")
    if not carriers or len(set(carriers)) != len(carriers):
        raise ValueError("carriers must be distinct names, at least one")
    end_ms = int(time.time() * 1000) if end_ms is None else int(end_ms)
    start_ms = end_ms - DAY_MS
    layer = Layer.from_geojson(zaozhuang_geojson())
    ground = Ground(layer)
    rng = np.random.default_rng(seed)
    people = _settle(make_population(layer, COUNTIES, subjects, rng), layer, ground, rng)
    zones, zone_county = place_zones(ground, rng)
    ids = people.ids
    outage_carrier = int(rng.integers(len(carriers)))
    outage_start = start_ms + int(rng.uniform(9, 15) * HOUR_MS)
    outage = (outage_carrier, outage_start, outage_start + OUTAGE_MS)

    # Delegations first: a delegated person lives and works in the other county all day.
    day_lon, day_lat = people.home_lon.copy(), people.home_lat.copy()
    order = [int(s) for s in rng.permutation(subjects)]
    delegated = order[:planted_count("delegation", subjects)]
    delegations = []
    for n, s in enumerate(delegated, 1):
        origin = str(people.county[s])
        county = str(rng.choice([c for c in COUNTIES if c != origin]))
        x, y = ground.sample_inside(county, rng, 1_500.0)
        day_lon[s], day_lat[s] = to_degrees(x, y)
        office = str(layer.codes[layer.locate(*map(np.atleast_1d, to_degrees(x, y)))[0]])
        begins = start_ms - int(rng.uniform(30, 200)) * 24 * HOUR_MS
        ends = None if n % 2 else end_ms + int(rng.uniform(30, 180)) * 24 * HOUR_MS
        delegations.append({"id": f"D{n:03d}", "subject": ids[s], "start_ms": begins,
                            "end_ms": ends, "office": office, "home": [county],
                            "origin_office": str(people.township[s]), "origin": origin})
    day = make_day(layer, dataclasses.replace(people, home_lon=day_lon, home_lat=day_lat), rng,
                   start_ms, excursion_share=0.0)
    p = Planter(day, subjects, start_ms, len(carriers), outage, rng)
    for s in delegated:
        p.free.remove(s)

    plant_delegation_exits(p, ground, people, delegations, ids)
    exclusions = plant_barred(p, ground, people, zone_county, ids)
    permits = plant_trips(p, ground, people, ids)
    plant_exits(p, ground, people, ids)
    plant_silences(p, ids)
    event = p.event()
    p.keep &= ~((p.subject % len(carriers) == outage_carrier)
                & (p.t_ms >= outage[1]) & (p.t_ms < outage[2]))
    p.row(event, "outage", None, "feed_outage", outage[1], outage[2],
          carrier=carriers[outage_carrier])

    fixes = p.planted_fixes()
    last = np.zeros(subjects, np.int64)
    np.maximum.at(last, fixes.subject, np.arange(len(fixes)))
    registry = registry_document(layer, people)
    for doc in registry["subjects"]:
        if doc["id"] in exclusions:
            doc["exclusions"] = exclusions[doc["id"]]
    planted = {}
    for r in p.truth:
        planted[r["kind"]] = planted.get(r["kind"], set()) | {r["event"]}
    return Scenario(seed, start_ms, end_ms, tuple(carriers), tuple(gcj02_carriers), people,
                    people.devices, registry["offices"], registry["subjects"], permits,
                    [{k: v for k, v in d.items() if k not in ("origin", "origin_office")}
                     for d in delegations],
                    zones, p.truth, fixes, fixes.true_lon[last], fixes.true_lat[last],
                    {kind: len(events) for kind, events in planted.items()})


# -- the people -------------------------------------------------------------------------------

def _exact_mix(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Categories in the real proportions (largest remainder), shuffled; exactly
    round(KEY_SHARE * n) key persons."""
    shares = np.array(list(CATEGORY_SHARE.values()), float)
    quota = shares / shares.sum() * n
    counts = np.floor(quota).astype(int)
    counts[np.argsort(quota - counts)[::-1][:n - counts.sum()]] += 1
    category = rng.permutation(np.repeat(np.array(list(CATEGORY_SHARE)), counts))
    risk = np.full(n, "normal", dtype="<U6")
    risk[rng.choice(n, round(KEY_SHARE * n), replace=False)] = "key"
    return category, risk


def _settle(people: Population, layer, ground: Ground, rng) -> Population:
    """Homes at least HOME_INSIDE_M inside their county; the exact category and risk mix."""
    lon, lat = people.home_lon.copy(), people.home_lat.copy()
    for code in COUNTIES:
        mine = np.flatnonzero(people.county == code)
        x, y = to_metres(lon[mine], lat[mine])
        for s in mine[ground.near_edge(code, x, y, HOME_INSIDE_M)]:
            px, py = ground.sample_inside(code, rng, HOME_INSIDE_M)
            lon[s], lat[s] = to_degrees(px, py)
    township = layer.codes[layer.locate(lon, lat)]
    category, risk = _exact_mix(len(lon), rng)
    return dataclasses.replace(people, home_lon=lon, home_lat=lat, township=township,
                               category=category, risk=risk)
