"""A harsh, life-like day for measuring alarm quality (issue 13), with the truth of every event.

People (`make_people`): Zaozhuang's counties, a third living within 3 km of a county
border (the rest at least 3 km inside), key persons, pairs of co-offenders (同案犯, a
shared case id), a night curfew at home (宵禁) for some. Feeds: dense phones (a fix every
1-10 min) beside sparse ones (one every 15 min); GPS, Wi-Fi and cell fixes with the
harsh errors of `sim.harsh_errors` (heavy tails, Wi-Fi jumps, cell ping-pong across
borders, cell-only stretches indoors); one carrier of three (subject i % 3 == 1) reports
in GCJ-02 (`Day.gcj02`: the engine converts, so must whoever scores).

Planted each day (`make_day`), each subject in at most one event, into the same fixes:

| kind | what happens | truth |
|---|---|---|
| excursion | 1-20 km beyond the home border for 20 min-6 h | `qualifying`: counts for recall |
| minor_excursion | 0.2-1 km beyond for 10-60 min, or 1-5 km for 5-19 min | alarms on it are true; not in recall |
| permitted_trip | to another county with a permit (外出审批) for 2-6 h | must not alarm (`Day.permit_dest`) |
| curfew_breach | a curfew subject 1.5-5 km from home (inside the county) for 40-100 min before midnight or 40-150 min after | curfew_breach |
| gathering | two co-offenders, or two key persons, within 60 m for 30-120 min | gathering to both |

Truth rows are dicts {event, kind, subjects, start_ms, end_ms, ...}: the windows are the
planted ones (the person is there from start to end), `subjects` a list (two for a
gathering). Times are ms from the epoch of the day's local midnight (day d starts at
d * DAY_MS); curfew hours are on that clock.
"""

from dataclasses import dataclass, field

import numpy as np
import shapely

from geofence.datum import from_wgs84
from sim.fixes import Fixes
from sim.ground import Ground, to_degrees, to_metres
from sim.harsh_errors import HARSH, HarshErrors, across_tower, heavy_tail, indoor_stretches
from sim.harsh_errors import ping_pong, wifi_jumps
from sim.movement import ACCURACY_RANGE_M, DAY_MS, HOUR_MS, MINUTE_MS, SOURCE_SHARE
from ingest.protocol import SOURCES
from sim.population import COUNTIES


@dataclass(frozen=True)
class HarshDayParams:
    """Who lives where, how often phones report, and how many events are planted a day."""

    border_share: float = 1 / 3          # of subjects: home within border_m of a county border
    border_m: float = 3_000.0
    key_share: float = 0.05
    pair_share: float = 0.10             # of subjects: in a co-offender pair (one case id)
    curfew_share: float = 0.10           # of subjects: a night curfew at home
    curfew_hours: tuple[int, int] = (22, 6)    # local, from .. to (over midnight)
    curfew_radius_m: float = 300.0       # "at home": within this of the home point
    sparse_share: float = 0.25           # of subjects: one fix per 15 min
    sparse_interval_ms: int = 15 * MINUTE_MS
    dense_interval_min: tuple[float, float] = (1.0, 10.0)
    wander_m: float = 250.0              # per-axis sigma around home by day
    night_wander_m: float = 20.0         # ... at night for curfew subjects
    gcj02_carrier: int = 1               # subject i's carrier is i % carriers
    carriers: int = 3
    excursion_share: float = 0.02        # of subjects a day
    minor_share: float = 0.01
    permit_share: float = 0.015
    curfew_breach_share: float = 0.05    # of curfew subjects a day
    gathering_share: float = 0.004       # pairs met per subject a day
    meet_within_m: float = 60.0          # spread of each person around a meeting point


PARAMS = HarshDayParams()


@dataclass(frozen=True, eq=False)
class People:
    """Subjects of the harsh days: home county (index into COUNTIES) and point, key flag,
    case id (-1 none), curfew flag, sparse-feed flag, nearest border point and the tower
    across it (metres, NaN for people living inside)."""

    county: np.ndarray
    home_x: np.ndarray
    home_y: np.ndarray
    key: np.ndarray
    case: np.ndarray
    curfew: np.ndarray
    sparse: np.ndarray
    near_border: np.ndarray
    border_m: np.ndarray       # distance from home to the county border (NaN: not near)
    tower_x: np.ndarray
    tower_y: np.ndarray

    def __len__(self) -> int:
        return len(self.county)

    def curfews(self, params: HarshDayParams = PARAMS) -> list[dict]:
        """The curfew orders, as a curfew rule takes them: be within radius_m of home
        from from_h to to_h (local hours)."""
        lon, lat = to_degrees(self.home_x, self.home_y)
        return [{"subject": int(s), "home_lon": float(lon[s]), "home_lat": float(lat[s]),
                 "radius_m": params.curfew_radius_m, "from_h": params.curfew_hours[0],
                 "to_h": params.curfew_hours[1]} for s in np.flatnonzero(self.curfew)]

    def linked_pairs(self) -> dict[str, list[int]]:
        """Case id -> its co-offenders (a gathering rule also watches any two key persons)."""
        return {f"C{c:04d}": np.flatnonzero(self.case == c).tolist()
                for c in np.unique(self.case[self.case >= 0])}


@dataclass(frozen=True, eq=False)
class Day:
    """One day's fixes (WGS-84 as carriers measured them, time order) and its truth.
    `gcj02` marks fixes as sent (lon, lat converted to GCJ-02); `permit_dest` is the county
    index a permit allows beside home at that fix (-1 none); `event` the truth row index of
    the planted event the fix lies in (-1 none)."""

    fixes: Fixes
    sent_lon: np.ndarray
    sent_lat: np.ndarray
    gcj02: np.ndarray
    permit_dest: np.ndarray
    event: np.ndarray
    truth: list[dict] = field(default_factory=list)
    marks: dict = field(default_factory=dict)   # error behaviour masks, for tests


def make_people(ground: Ground, n: int, rng, params: HarshDayParams = PARAMS) -> People:
    """`n` subjects over the counties (in proportion to their townships); see the module."""
    layer = ground.layer
    weights = np.array([len(layer.features_under(c)) for c in COUNTIES], float)
    county = rng.choice(len(COUNTIES), size=n, p=weights / weights.sum())
    near = rng.random(n) < params.border_share
    x, y = np.empty(n), np.empty(n)
    for k, code in enumerate(COUNTIES):
        for want_near in (True, False):
            mine = np.flatnonzero((county == k) & (near == want_near))
            x[mine], y[mine] = _sample_homes(ground, code, len(mine), want_near,
                                             params.border_m, rng)
    tower_x, tower_y, border = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for k, code in enumerate(COUNTIES):
        mine = np.flatnonzero(near & (county == k))
        lines = shapely.shortest_line(shapely.points(x[mine], y[mine]),
                                      ground.shapes[code].boundary)
        ends = shapely.get_coordinates(shapely.get_point(lines, 1))
        border[mine] = shapely.length(lines)
        tower_x[mine], tower_y[mine] = across_tower(x[mine], y[mine], ends[:, 0], ends[:, 1],
                                                    rng)
    key = rng.random(n) < params.key_share
    case = np.full(n, -1, np.int32)
    n_pairs = int(round(n * params.pair_share / 2))
    for c in range(n_pairs):   # co-offenders live in one county
        free = np.flatnonzero(case < 0)
        a = int(rng.choice(free))
        mates = free[(county[free] == county[a]) & (free != a)]
        if len(mates):
            case[[a, int(rng.choice(mates))]] = c
    curfew = rng.random(n) < params.curfew_share
    sparse = rng.random(n) < params.sparse_share
    return People(county, x, y, key, case, curfew, sparse, near, border, tower_x, tower_y)


def _sample_homes(ground: Ground, code: str, k: int, near: bool, border_m: float,
                  rng) -> tuple[np.ndarray, np.ndarray]:
    """k points inside `code`: within `border_m` of its border (near) or farther inside;
    rejection sampling in bulk."""
    poly = ground.shapes[code]
    x0, y0, x1, y1 = poly.bounds
    xs, ys = [], []
    while sum(map(len, xs)) < k:
        x, y = rng.uniform(x0, x1, 4096), rng.uniform(y0, y1, 4096)
        ok = shapely.contains_xy(poly, x, y)
        ok[ok] = ground.near_edge(code, x[ok], y[ok], border_m) == near
        xs.append(x[ok])
        ys.append(y[ok])
    return np.concatenate(xs)[:k], np.concatenate(ys)[:k]


def local_hour(t_ms) -> np.ndarray:
    """Hour of the local day (0..24) of times on the days' clock."""
    return (np.asarray(t_ms) % DAY_MS) / HOUR_MS


def in_curfew(t_ms, params: HarshDayParams = PARAMS) -> np.ndarray:
    h = local_hour(t_ms)
    start, end = params.curfew_hours
    return (h >= start) | (h < end) if start > end else (h >= start) & (h < end)


def make_day(ground: Ground, people: People, day: int, rng,
             params: HarshDayParams = PARAMS, errors: HarshErrors = HARSH) -> Day:
    """Day `day` of fixes for every subject, with planted events; see the module."""
    n = len(people)
    start_ms = day * DAY_MS
    interval = np.where(people.sparse, params.sparse_interval_ms,
                        rng.uniform(*params.dense_interval_min, n) * MINUTE_MS)
    counts = (DAY_MS // interval).astype(np.int64)
    subject = np.repeat(np.arange(n, dtype=np.int32), counts)
    step = np.arange(len(subject)) - np.repeat(np.cumsum(counts) - counts, counts)
    phase = rng.uniform(0, 1, n) * interval
    t_ms = (start_ms + phase[subject] + step * interval[subject]
            + rng.uniform(0, 30_000, len(subject))).astype(np.int64)
    t_ms = np.minimum(t_ms, start_ms + DAY_MS - 1)

    night = people.curfew[subject] & in_curfew(t_ms, params)
    wander = np.where(night, params.night_wander_m, params.wander_m)
    x = people.home_x[subject] + rng.normal(0, 1, len(subject)) * wander
    y = people.home_y[subject] + rng.normal(0, 1, len(subject)) * wander
    p = _Plant(subject, t_ms, x, y, n, start_ms, rng)
    _plant(p, ground, people, params)

    src = rng.choice(len(SOURCES), size=len(subject), p=SOURCE_SHARE).astype(np.int8)
    indoor = indoor_stretches(subject, t_ms, n, start_ms, DAY_MS, rng, errors)
    src[indoor] = SOURCES.index("cell")
    lo = np.array([ACCURACY_RANGE_M[s][0] for s in SOURCES])[src]
    hi = np.array([ACCURACY_RANGE_M[s][1] for s in SOURCES])[src]
    acc = rng.uniform(lo, hi)
    east, north, tail = heavy_tail(acc, rng, errors)
    jx, jy, jump = wifi_jumps(src, rng, errors)
    at_home = np.hypot(p.x - people.home_x[subject], p.y - people.home_y[subject]) < 1_000
    pingers = (people.border_m <= errors.ping_pong_within_m)[subject] & at_home
    mx, my, across = ping_pong(p.x + east + jx, p.y + north + jy, src, pingers,
                               people.tower_x[subject], people.tower_y[subject], rng, errors)
    lon, lat = to_degrees(mx, my)
    true_lon, true_lat = to_degrees(p.x, p.y)
    gcj = subject % params.carriers == params.gcj02_carrier
    sent_lon, sent_lat = lon.copy(), lat.copy()
    if gcj.any():
        sent_lon[gcj], sent_lat[gcj] = from_wgs84(lon[gcj], lat[gcj], "gcj02")
    order = np.argsort(t_ms, kind="stable")
    fixes = Fixes(subject[order], t_ms[order], lon[order], lat[order], acc[order],
                  src[order], true_lon[order], true_lat[order], (p.event >= 0)[order])
    marks = {"tail": tail[order], "jump": jump[order], "across": across[order],
             "pingers": pingers[order], "indoor": indoor[order]}
    return Day(fixes, sent_lon[order], sent_lat[order], gcj[order], p.permit_dest[order],
               p.event[order], p.truth, marks)


class _Plant:
    """The day's true positions (metres) while events are planted into them."""

    def __init__(self, subject, t_ms, x, y, n, start_ms, rng):
        self.subject, self.t_ms, self.x, self.y = subject, t_ms, x, y
        self.start_ms, self.rng = start_ms, rng
        self.event = np.full(len(subject), -1, np.int32)
        self.permit_dest = np.full(len(subject), -1, np.int16)
        order = np.argsort(subject, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(subject, minlength=n))])
        self.mine = [order[bounds[s]:bounds[s + 1]] for s in range(n)]
        self.free = np.ones(n, bool)
        self.truth: list[dict] = []

    def take(self, candidates: np.ndarray, k: int) -> list[int]:
        """Up to k free subjects of `candidates` (bool per subject), at random."""
        pool = np.flatnonzero(candidates & self.free)
        chosen = self.rng.permutation(pool)[:k].tolist()
        self.free[chosen] = False
        return chosen

    def fixes_in(self, s: int, start: float, end: float) -> np.ndarray:
        mine = self.mine[s]
        t = self.t_ms[mine]
        return mine[(t >= start) & (t < end)]

    def window(self, lo_min: float, hi_min: float, earliest_h: float = 1.0,
               latest_h: float = 23.0) -> tuple[int, int]:
        length = self.rng.uniform(lo_min, hi_min) * MINUTE_MS
        begin = self.start_ms + self.rng.uniform(earliest_h * HOUR_MS,
                                                 latest_h * HOUR_MS - length)
        return int(begin), int(begin + length)

    def move(self, s: int, start: int, end: int, x: float, y: float, wander_m: float,
             row: dict) -> np.ndarray:
        """Subject s is around (x, y) from start to end, for truth row `row` (added)."""
        idx = self.fixes_in(s, start, end)
        self.x[idx] = x + self.rng.normal(0, wander_m, len(idx))
        self.y[idx] = y + self.rng.normal(0, wander_m, len(idx))
        self.event[idx] = len(self.truth)
        self.truth.append({"event": len(self.truth), "start_ms": start, "end_ms": end,
                           "fixes": len(idx), **row})
        return idx


def _plant(p: _Plant, ground: Ground, people: People, params: HarshDayParams) -> None:
    n = len(people)
    everyone = np.ones(n, bool)
    rng = p.rng
    for s in p.take(everyone, int(round(n * params.excursion_share))):
        start, end = p.window(20, 360, latest_h=23.5)
        _excursion(p, ground, people, s, start, end, rng.uniform(1_000, 20_000), True)
    for s in p.take(everyone, int(round(n * params.minor_share))):
        if rng.random() < 0.5:
            start, end = p.window(10, 60)
            beyond = rng.uniform(200, 1_000)
        else:
            start, end = p.window(5, 19)
            beyond = rng.uniform(1_000, 5_000)
        _excursion(p, ground, people, s, start, end, beyond, False)
    for s in p.take(everyone, int(round(n * params.permit_share))):
        home = COUNTIES[people.county[s]]
        dest = int(rng.choice([k for k, c in enumerate(COUNTIES) if c != home]))
        x, y = ground.sample_inside(COUNTIES[dest], rng, 2_000.0, ground.shapes[home], 2_000.0)
        start, end = p.window(120, 360, earliest_h=2, latest_h=22)
        permit = (start - 30 * MINUTE_MS, end + 30 * MINUTE_MS)
        p.move(s, start, end, x, y, 150.0,
               {"kind": "permitted_trip", "subjects": [s], "destination": COUNTIES[dest],
                "permit_start_ms": permit[0], "permit_end_ms": permit[1]})
        p.permit_dest[p.fixes_in(s, *permit)] = dest
    breaches = int(round(people.curfew.sum() * params.curfew_breach_share))
    for s in p.take(people.curfew, max(breaches, 1 if people.curfew.any() else 0)):
        if rng.random() < 0.5:
            start, end = p.window(40, 100, earliest_h=22.1, latest_h=23.99)
        else:
            start, end = p.window(40, 150, earliest_h=0.2, latest_h=5.9)
        x, y = _nearby_inside(ground, people, s, rng, 1_500.0, 5_000.0)
        p.move(s, start, end, x, y, 100.0,
               {"kind": "curfew_breach", "subjects": [s], "radius_m": params.curfew_radius_m})
    _gatherings(p, ground, people, params)


def _excursion(p: _Plant, ground, people, s, start, end, beyond_m, qualifying) -> None:
    code = COUNTIES[people.county[s]]
    x, y, distance = ground.beyond(code, people.home_x[s], people.home_y[s], beyond_m, p.rng)
    p.move(s, start, end, x, y, min(150.0, distance / 5),
           {"kind": "excursion" if qualifying else "minor_excursion", "subjects": [s],
            "distance_m": round(distance), "qualifying": qualifying})


def _nearby_inside(ground, people, s, rng, lo_m, hi_m) -> tuple[float, float]:
    """A point lo..hi m from subject s's home, at least 500 m inside the home county (or,
    failing that, home itself moved lo_m towards the county's centre)."""
    code = COUNTIES[people.county[s]]
    poly = ground.shapes[code]
    for _ in range(50):
        r, b = rng.uniform(lo_m, hi_m), rng.uniform(0, 2 * np.pi)
        x, y = people.home_x[s] + r * np.cos(b), people.home_y[s] + r * np.sin(b)
        if shapely.contains_xy(poly, x, y) and not ground.near_edge(code, [x], [y], 500.0)[0]:
            return float(x), float(y)
    cx, cy = poly.centroid.coords[0]
    d = max(np.hypot(cx - people.home_x[s], cy - people.home_y[s]), 1.0)
    return (float(people.home_x[s] + (cx - people.home_x[s]) / d * lo_m),
            float(people.home_y[s] + (cy - people.home_y[s]) / d * lo_m))


def _gatherings(p: _Plant, ground, people, params) -> None:
    """Co-offender pairs, or two key persons of one county, meet for 30-120 min."""
    rng = p.rng
    wanted = int(round(len(people) * params.gathering_share))
    pairs = [list(v) for v in people.linked_pairs().values() if len(v) == 2]
    rng.shuffle(pairs)
    keys = np.flatnonzero(people.key)
    done = 0
    for k in range(wanted * 4):
        if done == wanted:
            break
        if k % 2 == 0 and pairs:
            a, b = pairs.pop()
            link = "case"
        else:
            a = int(rng.choice(keys)) if len(keys) else -1
            mates = keys[(people.county[keys] == people.county[a]) & (keys != a)] if a >= 0 else []
            if not len(mates):
                continue
            b, link = int(rng.choice(mates)), "key"
        if not (p.free[a] and p.free[b]):
            continue
        p.free[[a, b]] = False
        start, end = p.window(30, 120, earliest_h=7, latest_h=21)
        x, y = _nearby_inside(ground, people, a, rng, 500.0, 3_000.0)
        row = {"kind": "gathering", "subjects": [int(a), int(b)], "link": link}
        p.move(a, start, end, x, y, params.meet_within_m / 2, row)
        event = len(p.truth) - 1
        idx = p.fixes_in(b, start, end)
        p.x[idx] = x + rng.normal(0, params.meet_within_m / 2, len(idx))
        p.y[idx] = y + rng.normal(0, params.meet_within_m / 2, len(idx))
        p.event[idx] = event
        p.truth[event]["fixes"] += len(idx)
        done += 1


def true_metres(fixes: Fixes) -> tuple[np.ndarray, np.ndarray]:
    return to_metres(fixes.true_lon, fixes.true_lat)

