"""A synthetic day of carrier fixes: the data behind `geofence demo` and the simulator.

Subjects live around a home point in their county. Every 1-10 minutes their phone
reports a fix whose error matches its source, as carriers' fixes do: GPS 5-50 m,
Wi-Fi 20-100 m, cell towers 200-3,000 m (the reported accuracy is the radius, the
error per axis about half of it). A few subjects make a planted excursion: 0.5-20 km
beyond their county's border for 15 minutes to 6 hours. The truth of every fix (where
the person really was) is kept beside it, so alarm quality can be measured.
"""

from dataclasses import dataclass

import numpy as np

SOURCES = ("gps", "wifi", "cell")
SOURCE_SHARE = (0.4, 0.2, 0.4)
ACCURACY_RANGE_M = {"gps": (5.0, 50.0), "wifi": (20.0, 100.0), "cell": (200.0, 3000.0)}
DAY_MS = 24 * 3600 * 1000
WANDER_M = 250.0  # how far a person at home strays from the home point (per axis sigma)
M_PER_DEG_LAT = 110_900.0


CATEGORY_SHARE = {"probation": 1906, "parole": 70, "medical_parole": 38, "control": 18}
KEY_SHARE = 0.05  # key persons (重点人员)


@dataclass(frozen=True)
class Population:
    """Subjects: id, phone, home county and township, home point, risk and category."""

    county: np.ndarray    # str code per subject
    home_lon: np.ndarray
    home_lat: np.ndarray
    township: np.ndarray  # str code of the township holding the home point
    risk: np.ndarray      # "normal" | "key"
    category: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [f"S{i:05d}" for i in range(len(self.county))]

    @property
    def devices(self) -> list[str]:
        """One phone number per subject, the same for the same index on every run."""
        return [f"139{i:08d}" for i in range(len(self.county))]


@dataclass(frozen=True)
class Feed:
    """Fixes in time order, with the truth behind each."""

    subject: np.ndarray   # int32
    t_ms: np.ndarray      # int64
    lon: np.ndarray
    lat: np.ndarray
    acc_m: np.ndarray
    src: np.ndarray       # int8 index into SOURCES
    true_lon: np.ndarray
    true_lat: np.ndarray
    away: np.ndarray      # bool: during a planted excursion
    excursions: np.ndarray  # subject ids with a planted excursion

    def __len__(self) -> int:
        return len(self.t_ms)


def make_population(layer, counties: list[str], n: int, rng: np.random.Generator) -> Population:
    """`n` subjects spread over the counties in proportion to their townships."""
    weights = np.array([len(layer.features_under(c)) for c in counties], float)
    county_of = rng.choice(len(counties), size=n, p=weights / weights.sum())
    lon = np.empty(n)
    lat = np.empty(n)
    x0, y0, x1, y1 = layer.bounds
    todo = np.arange(n)
    while len(todo):  # rejection sampling: a home point inside the subject's county
        cx = rng.uniform(x0, x1, len(todo))
        cy = rng.uniform(y0, y1, len(todo))
        where = layer.locate(cx, cy)
        ok = np.zeros(len(todo), bool)
        for k, code in enumerate(counties):
            mine = county_of[todo] == k
            ok[mine] = np.isin(where[mine], layer.features_under(code))
        lon[todo[ok]], lat[todo[ok]] = cx[ok], cy[ok]
        todo = todo[~ok]
    township = layer.codes[layer.locate(lon, lat)]
    shares = np.array(list(CATEGORY_SHARE.values()), float)
    category = rng.choice(list(CATEGORY_SHARE), size=n, p=shares / shares.sum())
    risk = np.where(rng.random(n) < KEY_SHARE, "key", "normal")
    return Population(np.array(counties)[county_of], lon, lat, township, risk, category)


def registry_document(layer, people: Population) -> dict:
    """The registry (SPEC §3) for a population: one office per township, county and city,
    each subject supervised by the office of the township they live in, home = county."""
    offices = []
    for unit in layer.units:
        suffix = "司法局"
        offices.append({"code": unit.code, "name": unit.name + suffix, "parent": unit.parent})
    for code, name, parent in zip(layer.codes, layer.names, layer.parents):
        offices.append({"code": str(code), "name": name + "司法所", "parent": parent})
    subjects = [{"id": sid, "devices": [dev], "office": str(town), "home": [str(county)],
                 "risk": str(risk), "category": str(cat)}
                for sid, dev, town, county, risk, cat in zip(
                    people.ids, people.devices, people.township, people.county,
                    people.risk, people.category)]
    return {"offices": offices, "subjects": subjects, "permits": [], "delegations": []}


def make_day(layer, people: Population, rng: np.random.Generator, start_ms: int = 0,
             excursion_share: float = 0.02) -> Feed:
    """One day of fixes for every subject, with planted excursions."""
    n = len(people.county)
    interval_ms = rng.uniform(60_000, 600_000, n)
    counts = (DAY_MS // interval_ms).astype(np.int64)
    subject = np.repeat(np.arange(n, dtype=np.int32), counts)
    step = np.arange(len(subject)) - np.repeat(np.cumsum(counts) - counts, counts)
    t_ms = (start_ms + step * interval_ms[subject]
            + rng.uniform(0, 30_000, len(subject))).astype(np.int64)

    kx = M_PER_DEG_LAT * np.cos(np.radians(people.home_lat))
    true_lon = people.home_lon[subject] + rng.normal(0, WANDER_M, len(subject)) / kx[subject]
    true_lat = people.home_lat[subject] + rng.normal(0, WANDER_M, len(subject)) / M_PER_DEG_LAT
    away = np.zeros(len(subject), bool)
    travellers = rng.choice(n, size=int(round(n * excursion_share)), replace=False)
    for s in travellers:  # per traveller, not per fix: a few dozen a day
        dest_lon, dest_lat = _beyond_border(layer, people, s, rng)
        start = start_ms + rng.uniform(0, DAY_MS - 6 * 3600_000)
        length = rng.uniform(15, 360) * 60_000
        on_trip = (subject == s) & (t_ms >= start) & (t_ms < start + length)
        away |= on_trip
        true_lon[on_trip] = dest_lon + rng.normal(0, 200, on_trip.sum()) / kx[s]
        true_lat[on_trip] = dest_lat + rng.normal(0, 200, on_trip.sum()) / M_PER_DEG_LAT

    src = rng.choice(len(SOURCES), size=len(subject), p=SOURCE_SHARE).astype(np.int8)
    lo = np.array([ACCURACY_RANGE_M[s][0] for s in SOURCES])[src]
    hi = np.array([ACCURACY_RANGE_M[s][1] for s in SOURCES])[src]
    acc = rng.uniform(lo, hi)
    lon = true_lon + rng.normal(0, acc / 2) / kx[subject]
    lat = true_lat + rng.normal(0, acc / 2) / M_PER_DEG_LAT
    order = np.argsort(t_ms, kind="stable")
    return Feed(subject[order], t_ms[order], lon[order], lat[order], acc[order], src[order],
                true_lon[order], true_lat[order], away[order], np.sort(travellers))


def _beyond_border(layer, people: Population, s: int, rng) -> tuple[float, float]:
    """A point 0.5-20 km beyond the subject's county border, straight out from home."""
    home = layer.features_under(people.county[s])
    bearing = rng.uniform(0, 2 * np.pi)
    kx = M_PER_DEG_LAT * np.cos(np.radians(people.home_lat[s]))
    dist = np.arange(0, 120_000, 100.0)
    lon = people.home_lon[s] + np.cos(bearing) * dist / kx
    lat = people.home_lat[s] + np.sin(bearing) * dist / M_PER_DEG_LAT
    outside = ~np.isin(layer.locate(lon, lat), home)
    first_out = dist[np.argmax(outside)]
    beyond = first_out + rng.uniform(500, 20_000)
    return (people.home_lon[s] + np.cos(bearing) * beyond / kx,
            people.home_lat[s] + np.sin(bearing) * beyond / M_PER_DEG_LAT)
