"""The day `geofence demo` replays: Zaozhuang's supervised people, planted events, the truth.

Built on `ingest.feed` and deterministic from a seed. `build_scenario` returns:

- the registry (SPEC §3): city 3704 → 6 county bureaus → 66 township offices (the layer's
  real names); 2,032 subjects in the real mix (1,906 probation, 70 parole, 38 medical
  parole, 18 control; scaled for other sizes), 4 % key persons (重点人员), home = their
  county, one phone number each; about 40 permits (外出审批, approved by the county
  bureau) and 15 delegations (异地委托: working in another county, supervised there);
- a zone layer (GeoJSON, SPEC §3): 8 injunction zones (禁止令: schools, a bar street,
  internet cafés, a victim's neighbourhood) inside Zaozhuang, and 3 trip destinations
  outside the city that permits name; about 25 subjects are barred from one or two zones;
- a day of fixes per carrier (cmcc, cucc in GCJ-02, ctcc; subject i goes to carrier
  i % 3), with `ingest.feed`'s errors by source, ending at `end_ms`;
- the truth: one row per alarm a planted event should (or, for a permitted trip, should
  not) cause: {event, kind, subject, expect, start_ms, end_ms, ...details}.

Planted events (counts per 2,032 subjects; at least a few of each for small runs):

| kind | what happens | expect |
|---|---|---|
| exit | 0.5-20 km beyond the home border for 15 min-6 h, then home | zone_exit, zone_return |
| permitted_trip | to another county or city for a few hours, back in time | nothing |
| overstay | back 60-150 min after the permit ended, or not within the day | permit_overstay, zone_exit, zone_return if back |
| silence | phone off 1.5-4 h: no fixes | signal_lost, signal_restored |
| breach | 20-60 min inside a zone their injunction names | exclusion_entry |
| delegation_exit | a delegated person goes back to their home county for 1-5 h | zone_exit (to the delegate office, copy to the origin), zone_return |
| outage | one carrier sends nothing for 35 min | feed_outage (and no signal_lost flood) |

Each subject takes part in at most one planted event, and no planted event of a subject
of the outage carrier comes near the outage. Windows are chosen so that the subject's
phone reports during them (at least 3 fixes; a breach has at least 2 GPS or Wi-Fi fixes,
since a cell fix cannot put anyone inside a 400 m zone). Homes are placed at least 1 km
inside their county, so that alarms nobody planted are the engine's own doing, not people
walking across a border next to their home.
"""

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import shapely

import geofence
from geofence.builtin import zaozhuang_geojson
from sim.zaozhuang import ZAOZHUANG_COUNTIES
from ingest.feed import (ACCURACY_RANGE_M, CATEGORY_SHARE, DAY_MS, M_PER_DEG_LAT, SOURCE_SHARE,
                         SOURCES, Population, make_day, make_population, registry_document)
from ingest.simulate import CarrierFeed

COUNTIES = list(ZAOZHUANG_COUNTIES)
CARRIERS = ("cmcc", "cucc", "ctcc")
GCJ02_CARRIERS = ("cucc",)
REAL_SUBJECTS = 2032
MIN_SUBJECTS = 60
KEY_SHARE = 0.04
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
LON0, LAT0 = 117.3, 34.85          # the local metric projection's origin (city centre)
KX_M = M_PER_DEG_LAT * float(np.cos(np.radians(LAT0)))   # metres per degree of lon
HOME_INSIDE_M = 1_000.0            # homes at least this far inside their county
EXCLUDED_HOME_FROM_ZONE_M = 6_000.0  # barred subjects live this far from their zones
AWAY_WANDER_M = 150.0              # spread of a person around a trip's destination
ZONE_WANDER_M = 15.0               # ... around the spot inside a zone they entered
LIVE_INTERVAL_MS = 5 * MINUTE_MS   # the live phase: one fix per subject this often
LIVE_WANDER_M = 150.0
OUTAGE_MS = 35 * MINUTE_MS
OUTAGE_CLEAR_MS = 90 * MINUTE_MS   # no planted event of the outage carrier this near it
EVENTS_FROM_MS = 1 * HOUR_MS       # planted windows lie in [start + 1 h, end - 2 h]
EVENTS_UNTIL_MS = DAY_MS - 2 * HOUR_MS

# kind: (count per REAL_SUBJECTS subjects, minimum)
PLANTED = {"exit": (30, 4), "permit": (40, 6), "overstay": (5, 1), "never_back": (2, 1),
           "delegation": (15, 3), "delegation_exit": (2, 1), "barred": (25, 4),
           "breach": (5, 2), "silence": (12, 2)}

# county, kind, name, width and height in metres
INJUNCTION_ZONES = (
    ("370402", "school", "市中区青檀路小学", 440, 380),
    ("370402", "victim", "市中区文化路小区（被害人住所）", 600, 500),
    ("370403", "bar_street", "薛城区临城酒吧街", 640, 320),
    ("370404", "internet_cafe", "峄城区坛山路网吧", 380, 380),
    ("370405", "school", "台儿庄区运河中学", 460, 400),
    ("370406", "school", "山亭区城头小学", 420, 380),
    ("370481", "school", "滕州市善国中学", 500, 420),
    ("370481", "internet_cafe", "滕州市荆河路网吧", 380, 380),
)
# code, name, centre (lon, lat), width and height in metres: cities a permit may name
TRIP_ZONES = (
    ("WC-320300", "徐州市区（外出目的地）", (117.18, 34.26), 24_000, 20_000),
    ("WC-370800", "济宁市区（外出目的地）", (116.59, 35.41), 22_000, 18_000),
    ("WC-371300", "临沂市区（外出目的地）", (118.35, 35.05), 24_000, 20_000),
)


@dataclass(frozen=True, eq=False)
class Fixes:
    """The day's fixes in time order (WGS-84), with the truth of where each person was."""

    subject: np.ndarray   # int32 subject index
    t_ms: np.ndarray      # int64
    lon: np.ndarray
    lat: np.ndarray
    acc_m: np.ndarray
    src: np.ndarray       # int8 index into SOURCES
    true_lon: np.ndarray
    true_lat: np.ndarray

    def __len__(self) -> int:
        return len(self.t_ms)


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
        return self._feeds(self.fixes.subject, self.fixes.t_ms, self.fixes.lon, self.fixes.lat,
                           self.fixes.acc_m, self.fixes.src)

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
        true_lat = (self.rest_lat[subject]
                    + rng.normal(0, LIVE_WANDER_M, len(subject)) / M_PER_DEG_LAT)
        src, acc, dx, dy = _errors(len(subject), rng)
        return self._feeds(subject, t_ms, true_lon + dx / KX_M, true_lat + dy / M_PER_DEG_LAT,
                           acc, src)[carrier]

    def _feeds(self, subject, t_ms, lon, lat, acc, src) -> list[CarrierFeed]:
        from geofence.datum import from_wgs84

        device = np.array([int(d) for d in self.devices], np.int64)
        carrier = self.carrier_of(subject)
        feeds = []
        for k, name in enumerate(self.carriers):
            mine = carrier == k
            x, y = lon[mine], lat[mine]
            datum = "gcj02" if name in self.gcj02_carriers else None
            if datum is not None and len(x):
                x, y = from_wgs84(x, y, datum)
            feeds.append(CarrierFeed(name, datum, device[subject[mine]], t_ms[mine], x, y,
                                     acc[mine], np.array(SOURCES, object)[src[mine]]))
        return feeds


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def planted_count(kind: str, subjects: int) -> int:
    per_real, least = PLANTED[kind]
    return max(least, round(per_real * subjects / REAL_SUBJECTS))


# -- the ground: the layer in metres --------------------------------------------------------

def to_metres(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """A local equirectangular projection around the city (error < 0.6 % within it)."""
    return ((np.asarray(lon) - LON0) * KX_M, (np.asarray(lat) - LAT0) * M_PER_DEG_LAT)


def to_degrees(x, y) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x) / KX_M + LON0, np.asarray(y) / M_PER_DEG_LAT + LAT0


def _geometry_to_metres(geom):
    return shapely.transform(geom, lambda c: np.column_stack(to_metres(c[:, 0], c[:, 1])))


class Ground:
    """Counties and zones as shapely polygons in metres, by code, for planting and checks.

    Threshold tests use `dwithin` on prepared geometry (indexed: fast on the counties'
    thousands of vertices); exact distances are computed only for the few points kept."""

    def __init__(self, layer: geofence.Layer):
        self.layer = layer
        self.shapes: dict[str, shapely.Geometry] = {}
        self._edges: dict[str, shapely.Geometry] = {}
        for code in COUNTIES:
            self.add(code, _geometry_to_metres(
                shapely.union_all(layer.geometries[layer.features_under(code)])))

    def add(self, code: str, poly) -> None:
        shapely.prepare(poly)
        edge = poly.boundary
        shapely.prepare(edge)
        self.shapes[code], self._edges[code] = poly, edge

    def area(self, codes) -> shapely.Geometry:
        """The union of the counties and zones named by `codes`, in metres."""
        parts = [self.shapes[c] for c in codes]
        return parts[0] if len(parts) == 1 else shapely.union_all(parts)

    def distance_outside_m(self, codes, lon, lat) -> np.ndarray:
        """Distance (m) of each point from the area of `codes`; 0 inside it."""
        x, y = to_metres(lon, lat)
        return shapely.distance(self.area(codes), shapely.points(x, y))

    def near_edge(self, code: str, x, y, within_m: float) -> np.ndarray:
        """Whether each point (metres) is within `within_m` of the border of `code`."""
        return shapely.dwithin(self._edges[code], shapely.points(x, y), within_m)

    def sample_inside(self, code: str, rng, inside_m: float = 0.0, away_from=None,
                      away_m: float = 0.0) -> tuple[float, float]:
        """A point (x, y metres) at least `inside_m` inside `code`'s shape and more than
        `away_m` from `away_from` (a geometry in metres, or None)."""
        poly = self.shapes[code]
        x0, y0, x1, y1 = poly.bounds
        for _ in range(100):
            x = rng.uniform(x0, x1, 256)
            y = rng.uniform(y0, y1, 256)
            ok = shapely.contains_xy(poly, x, y)
            ok[ok] = ~self.near_edge(code, x[ok], y[ok], inside_m)
            if away_from is not None:
                ok[ok] = ~shapely.dwithin(away_from, shapely.points(x[ok], y[ok]), away_m)
            if ok.any():
                k = int(np.argmax(ok))
                return float(x[k]), float(y[k])
        raise RuntimeError("no room for a point there")   # a bug in the constants, not data

    def beyond(self, code: str, x0: float, y0: float, distance_m: float,
               rng) -> tuple[float, float, float]:
        """A point straight out from (x0, y0) more than `distance_m` outside `code`'s shape,
        and its distance from it: walking a random bearing until that far from the border."""
        steps = np.arange(0.0, 150_000.0, 100.0)
        poly = self.shapes[code]
        while True:
            bearing = rng.uniform(0, 2 * np.pi)
            x = x0 + np.cos(bearing) * steps
            y = y0 + np.sin(bearing) * steps
            far = np.flatnonzero(~shapely.dwithin(poly, shapely.points(x, y), distance_m))
            if len(far):
                k = far[0]
                return float(x[k]), float(y[k]), float(shapely.distance(poly, shapely.Point(x[k], y[k])))


def _rectangle(cx: float, cy: float, width: float, height: float, angle: float):
    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * (width / 2, height / 2)
    return shapely.Polygon(np.column_stack([cx + corners[:, 0] * c - corners[:, 1] * s,
                                            cy + corners[:, 0] * s + corners[:, 1] * c]))


def _zone_feature(code: str, name: str, poly) -> dict:
    x, y = np.asarray(poly.exterior.coords).T
    lon, lat = to_degrees(x, y)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat)]
    if not shapely.Polygon(ring).exterior.is_ccw:
        ring = ring[::-1]
    return {"type": "Feature", "properties": {"code": code, "name": name},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def _place_zones(ground: Ground, rng) -> tuple[dict, dict[str, str]]:
    """The zone layer (GeoJSON) and each injunction zone's county; adds the zones to `ground`."""
    features, county_of = [], {}
    for n, (county, _kind, name, w, h) in enumerate(INJUNCTION_ZONES, 1):
        code = f"JZ{n:02d}"
        placed = ground.area(county_of) if county_of else None
        cx, cy = ground.sample_inside(county, rng, 1_500.0, placed, 3_000.0)
        poly = _rectangle(cx, cy, w, h, rng.uniform(0, np.pi))
        ground.add(code, poly)
        county_of[code] = county
        features.append(_zone_feature(code, name, poly))
    for code, name, (lon, lat), w, h in TRIP_ZONES:
        cx, cy = to_metres(lon, lat)
        poly = _rectangle(float(cx), float(cy), w, h, 0.0)
        ground.add(code, poly)
        features.append(_zone_feature(code, name, poly))
    return {"type": "FeatureCollection", "features": features}, county_of


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


# -- planting -----------------------------------------------------------------------------------

class _Planter:
    """The day's arrays while events are planted into it; subjects taken one role each."""

    def __init__(self, day, n: int, start_ms: int, carriers: int, outage: tuple[int, int, int],
                 rng):
        self.rng = rng
        self.start_ms = start_ms
        self.subject, self.t_ms, self.src = day.subject, day.t_ms, day.src
        self.true_lon, self.true_lat = day.true_lon.copy(), day.true_lat.copy()
        self.noise_lon = day.lon - day.true_lon          # the fix's error, kept as it was
        self.noise_lat = day.lat - day.true_lat
        self.acc = day.acc_m
        self.keep = np.ones(len(day.t_ms), bool)
        order = np.argsort(day.subject, kind="stable")   # per subject, still in time order
        bounds = np.concatenate([[0], np.cumsum(np.bincount(day.subject, minlength=n))])
        self._mine = [order[bounds[s]:bounds[s + 1]] for s in range(n)]
        self.n_carriers = carriers
        self.outage = outage                             # (carrier, start, end)
        self.free = [int(s) for s in rng.permutation(n)]
        self.truth: list[dict] = []
        self._events = 0

    def take(self, accept=lambda s: True) -> int | None:
        for k, s in enumerate(self.free):
            if accept(s):
                return self.free.pop(k)
        return None

    def fixes_in(self, s: int, start: int, end: int) -> np.ndarray:
        mine = self._mine[s]
        t = self.t_ms[mine]
        return mine[(t >= start) & (t < end)]

    def window(self, s: int, lo_min: float, hi_min: float, min_fixes: int = 3,
               min_precise: int = 0, earliest: int = EVENTS_FROM_MS,
               latest: int = EVENTS_UNTIL_MS) -> tuple[int, int] | None:
        """A window of lo..hi minutes in [start + earliest, start + latest] in which the
        subject's phone reports at least `min_fixes` times (`min_precise` of them GPS or
        Wi-Fi), clear of the outage if the subject is on that carrier."""
        for _ in range(40):
            length = self.rng.uniform(lo_min, hi_min) * MINUTE_MS
            begin = self.start_ms + self.rng.uniform(earliest, latest - length)
            start, end = int(begin), int(begin + length)
            if not self.clear_of_outage(s, start, end):
                continue
            inside = self.fixes_in(s, start, end)
            if len(inside) >= min_fixes and (self.src[inside] != 2).sum() >= min_precise:
                return start, end
        return None

    def clear_of_outage(self, s: int, start: int, end: int) -> bool:
        """Whether [start, end) keeps OUTAGE_CLEAR_MS from the outage, or s is on another
        carrier."""
        carrier, o_start, o_end = self.outage
        return (s % self.n_carriers != carrier or end <= o_start - OUTAGE_CLEAR_MS
                or start >= o_end + OUTAGE_CLEAR_MS)

    def move(self, s: int, start: int, end: int | None, lon: float, lat: float,
             wander_m: float) -> None:
        """The subject is near (lon, lat) from start until end (None: the day's end)."""
        idx = self.fixes_in(s, start, end if end is not None else np.iinfo(np.int64).max)
        self.true_lon[idx] = lon + self.rng.normal(0, wander_m, len(idx)) / KX_M
        self.true_lat[idx] = lat + self.rng.normal(0, wander_m, len(idx)) / M_PER_DEG_LAT

    def event(self) -> str:
        self._events += 1
        return f"E{self._events:03d}"

    def row(self, event: str, kind: str, subject: str | None, expect: str | None,
            start: int, end: int, **details) -> None:
        self.truth.append({"event": event, "kind": kind, "subject": subject, "expect": expect,
                           "start_ms": int(start), "end_ms": int(end), **details})


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
    layer = geofence.Layer.from_geojson(zaozhuang_geojson())
    ground = Ground(layer)
    rng = np.random.default_rng(seed)
    people = _settle(make_population(layer, COUNTIES, subjects, rng), layer, ground, rng)
    zones, zone_county = _place_zones(ground, rng)
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
    p = _Planter(day, subjects, start_ms, len(carriers), outage, rng)
    for s in delegated:
        p.free.remove(s)

    _plant_delegation_exits(p, ground, people, delegations, ids)
    exclusions = _plant_barred(p, ground, people, zone_county, ids)
    permits = _plant_trips(p, ground, people, ids)
    _plant_exits(p, ground, people, ids)
    _plant_silences(p, ids)
    event = p.event()
    p.keep &= ~((p.subject % len(carriers) == outage_carrier)
                & (p.t_ms >= outage[1]) & (p.t_ms < outage[2]))
    p.row(event, "outage", None, "feed_outage", outage[1], outage[2],
          carrier=carriers[outage_carrier])

    k = p.keep
    fixes = Fixes(p.subject[k], p.t_ms[k], (p.true_lon + p.noise_lon)[k],
                  (p.true_lat + p.noise_lat)[k], p.acc[k], p.src[k], p.true_lon[k],
                  p.true_lat[k])
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


def _plant_delegation_exits(p: _Planter, ground, people, delegations, ids) -> None:
    """A delegated person or two goes back to their home county for a few hours."""
    leaving = delegations[:planted_count("delegation_exit", len(people.county))]
    for d in leaving:
        s = ids.index(d["subject"])
        window = p.window(s, 60, 300)
        if window is None:
            continue
        x, y = ground.sample_inside(d["origin"], p.rng, 1_000.0,
                                    ground.shapes[d["home"][0]], 1_500.0)
        lon, lat = to_degrees(x, y)
        p.move(s, *window, float(lon), float(lat), AWAY_WANDER_M)
        event = p.event()
        distance = float(ground.distance_outside_m(d["home"], lon, lat))
        p.row(event, "delegation_exit", d["subject"], "zone_exit", *window,
              office=d["office"], copy_to=[d["origin_office"]], distance_m=round(distance))
        p.row(event, "delegation_exit", d["subject"], "zone_return", window[1],
              window[1] + HOUR_MS, office=d["office"], copy_to=[d["origin_office"]])


def _plant_barred(p: _Planter, ground, people, zone_county, ids) -> dict[str, list[str]]:
    """Injunctions: subjects barred from one or two zones of their county, living at least
    EXCLUDED_HOME_FROM_ZONE_M from them; a few of them go in."""
    n = len(people.county)
    x, y = to_metres(people.home_lon, people.home_lat)
    homes = shapely.points(x, y)
    codes = list(zone_county)
    exclusions: dict[str, list[str]] = {}
    for k in range(planted_count("barred", n)):
        zone = codes[k % len(codes)]
        county = zone_county[zone]
        barred = [zone]
        others = [c for c in codes if zone_county[c] == county and c != zone]
        if others and p.rng.random() < 0.3:
            barred.append(others[0])
        far = ~shapely.dwithin(ground.area(barred), homes, EXCLUDED_HOME_FROM_ZONE_M)

        def fits(s, county=county, far=far):
            return people.county[s] == county and far[s]

        s = p.take(fits)
        if s is None:
            s = p.take(lambda s, far=far: far[s])
        if s is not None:
            exclusions[ids[s]] = barred
    barred_subjects = [ids.index(sid) for sid in exclusions]
    breaches = 0
    for s in barred_subjects:
        if breaches == planted_count("breach", n):
            break
        window = p.window(s, 20, 60, min_fixes=3, min_precise=2)
        if window is None:
            continue
        zone = exclusions[ids[s]][0]
        cx, cy = ground.shapes[zone].centroid.coords[0]
        lon, lat = to_degrees(cx, cy)
        p.move(s, *window, float(lon), float(lat), ZONE_WANDER_M)
        p.row(p.event(), "breach", ids[s], "exclusion_entry", *window, zone=zone)
        breaches += 1
    return exclusions


def _plant_trips(p: _Planter, ground, people, ids) -> list[dict]:
    """Permits (外出审批) to another county or city for a few hours: most come back in
    time, some late, a couple not within the day."""
    n = len(people.county)
    total = planted_count("permit", n)
    late = planted_count("overstay", n)
    never = planted_count("never_back", n)
    fates = ["never"] * never + ["late"] * late + ["on_time"] * (total - late - never)
    trip_zones = [code for code, *_ in TRIP_ZONES]
    permits = []
    for fate in fates:
        for _ in range(20):   # a subject whose phone reports during the trip
            s = p.take()
            if s is None:
                return permits
            home = str(people.county[s])
            latest = DAY_MS - 3 * HOUR_MS if fate == "never" else EVENTS_UNTIL_MS - 3 * HOUR_MS
            permit = p.window(s, 180, 420, min_fixes=6, earliest=2 * HOUR_MS, latest=latest)
            if permit is None:
                continue
            p_start, p_end = permit
            leave = p_start + int(p.rng.uniform(5, 40) * MINUTE_MS)
            back = {"on_time": p_end - int(p.rng.uniform(15, 60) * MINUTE_MS),
                    "late": p_end + int(p.rng.uniform(60, 150) * MINUTE_MS),
                    "never": None}[fate]
            until = back if back is not None else p.start_ms + DAY_MS
            if fate != "on_time" and (len(p.fixes_in(s, p_end, until)) < 3
                                      or not p.clear_of_outage(s, p_start, until)):
                continue
            break
        else:
            continue
        if p.rng.random() < 0.6:
            dest = str(p.rng.choice([c for c in COUNTIES if c != home]))
            x, y = ground.sample_inside(dest, p.rng, 2_000.0, ground.shapes[home], 2_000.0)
        else:
            dest = str(p.rng.choice(trip_zones))
            x, y = ground.sample_inside(dest, p.rng, 2_000.0)
        lon, lat = to_degrees(x, y)
        p.move(s, leave, back, float(lon), float(lat), AWAY_WANDER_M)
        pid = f"P{len(permits) + 1:03d}"
        permits.append({"id": pid, "subject": ids[s], "start_ms": p_start, "end_ms": p_end,
                        "destinations": [dest], "office": home})
        event = p.event()
        details = {"permit": pid, "destination": dest, "permit_end_ms": p_end}
        if fate == "on_time":
            p.row(event, "permitted_trip", ids[s], None, leave, back, **details)
            continue
        day_end = p.start_ms + DAY_MS
        p.row(event, "overstay", ids[s], "permit_overstay", p_end + 30 * MINUTE_MS,
              p_end + 30 * MINUTE_MS, back=back is not None, **details)
        p.row(event, "overstay", ids[s], "zone_exit", p_end, back or day_end,
              back=back is not None, **details)
        if back is not None:
            p.row(event, "overstay", ids[s], "zone_return", back, back + HOUR_MS, back=True,
                  **details)
    return permits


def _plant_exits(p: _Planter, ground, people, ids) -> None:
    """Unpermitted exits: 0.5-20 km beyond the home border for 15 min to 6 h, then home."""
    for _ in range(planted_count("exit", len(people.county))):
        for _ in range(20):
            s = p.take()
            if s is None:
                return
            window = p.window(s, 15, 360)
            if window is not None:
                break
        else:
            continue
        home = str(people.county[s])
        x0, y0 = to_metres(people.home_lon[s], people.home_lat[s])
        x, y, distance = ground.beyond(home, float(x0), float(y0),
                                       p.rng.uniform(500, 20_000), p.rng)
        lon, lat = to_degrees(x, y)
        p.move(s, *window, float(lon), float(lat), min(AWAY_WANDER_M, distance / 5))
        event = p.event()
        p.row(event, "exit", ids[s], "zone_exit", *window, distance_m=round(distance))
        p.row(event, "exit", ids[s], "zone_return", window[1], window[1] + HOUR_MS,
              distance_m=round(distance))


def _plant_silences(p: _Planter, ids) -> None:
    """Phones switched off for 1.5-4 h: no fixes at all."""
    for _ in range(planted_count("silence", len(ids))):
        s = p.take()
        window = p.window(s, 90, 240) if s is not None else None
        if window is None:
            continue
        p.keep[p.fixes_in(s, *window)] = False
        event = p.event()
        p.row(event, "silence", ids[s], "signal_lost", *window)
        p.row(event, "silence", ids[s], "signal_restored", window[1],
              window[1] + 15 * MINUTE_MS)


def _errors(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source, accuracy and error (east, north metres) of n fixes, as `ingest.feed` draws."""
    src = rng.choice(len(SOURCES), size=n, p=SOURCE_SHARE).astype(np.int8)
    lo = np.array([ACCURACY_RANGE_M[s][0] for s in SOURCES])[src]
    hi = np.array([ACCURACY_RANGE_M[s][1] for s in SOURCES])[src]
    acc = rng.uniform(lo, hi)
    return src, acc, rng.normal(0, acc / 2), rng.normal(0, acc / 2)
