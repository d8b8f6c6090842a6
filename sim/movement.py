"""Where simulated people go in a day, and what their phones report.

Subjects live around a home point in their county. Every 1-10 minutes their phone
reports a fix whose error matches its source, as carriers' fixes do: GPS 5-50 m,
Wi-Fi 20-100 m, cell towers 200-3,000 m (the reported accuracy is the radius, the
error per axis about half of it). A few subjects make a planted excursion: 0.5-20 km
beyond their county's border for 15 minutes to 6 hours. The truth of every fix (where
the person really was) is kept beside it, so alarm quality can be measured. Metres and
degrees convert with the engine's own scale (`geofence.metric`).
"""

import numpy as np

from geofence.metric import metres_per_degree_at
from ingest.protocol import SOURCES
from sim.fixes import Fixes
from sim.population import Population

SOURCE_SHARE = (0.4, 0.2, 0.4)    # of SOURCES
ACCURACY_RANGE_M = {"gps": (5.0, 50.0), "wifi": (20.0, 100.0), "cell": (200.0, 3000.0)}
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WANDER_M = 250.0  # how far a person at home strays from the home point (per axis sigma)
TRIP_WANDER_M = 200.0  # ... and around an excursion's destination


def fix_errors(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                          np.ndarray, np.ndarray]:
    """Source (int8 index into SOURCES), accuracy (m) and error (east, north metres) of
    n fixes."""
    src = rng.choice(len(SOURCES), size=n, p=SOURCE_SHARE).astype(np.int8)
    lo = np.array([ACCURACY_RANGE_M[s][0] for s in SOURCES])[src]
    hi = np.array([ACCURACY_RANGE_M[s][1] for s in SOURCES])[src]
    acc = rng.uniform(lo, hi)
    return src, acc, rng.normal(0, acc / 2), rng.normal(0, acc / 2)


def make_day(layer, people: Population, rng: np.random.Generator, start_ms: int = 0,
             excursion_share: float = 0.02) -> Fixes:
    """One day of fixes for every subject, in time order, with planted excursions."""
    n = len(people.county)
    interval_ms = rng.uniform(60_000, 600_000, n)
    counts = (DAY_MS // interval_ms).astype(np.int64)
    subject = np.repeat(np.arange(n, dtype=np.int32), counts)
    step = np.arange(len(subject)) - np.repeat(np.cumsum(counts) - counts, counts)
    t_ms = (start_ms + step * interval_ms[subject]
            + rng.uniform(0, 30_000, len(subject))).astype(np.int64)

    kx, ky = metres_per_degree_at(people.home_lat)
    true_lon = people.home_lon[subject] + rng.normal(0, WANDER_M, len(subject)) / kx[subject]
    true_lat = people.home_lat[subject] + rng.normal(0, WANDER_M, len(subject)) / ky[subject]
    away = np.zeros(len(subject), bool)
    travellers = rng.choice(n, size=int(round(n * excursion_share)), replace=False)
    for s in travellers:  # per traveller, not per fix: a few dozen a day
        dest_lon, dest_lat = _beyond_border(layer, people, s, kx[s], ky[s], rng)
        start = start_ms + rng.uniform(0, DAY_MS - 6 * 3600_000)
        length = rng.uniform(15, 360) * 60_000
        on_trip = (subject == s) & (t_ms >= start) & (t_ms < start + length)
        away |= on_trip
        true_lon[on_trip] = dest_lon + rng.normal(0, TRIP_WANDER_M, on_trip.sum()) / kx[s]
        true_lat[on_trip] = dest_lat + rng.normal(0, TRIP_WANDER_M, on_trip.sum()) / ky[s]

    src, acc, east_m, north_m = fix_errors(len(subject), rng)
    lon = true_lon + east_m / kx[subject]
    lat = true_lat + north_m / ky[subject]
    order = np.argsort(t_ms, kind="stable")
    return Fixes(subject[order], t_ms[order], lon[order], lat[order], acc[order], src[order],
                 true_lon[order], true_lat[order], away[order])


def _beyond_border(layer, people: Population, s: int, kx: float, ky: float,
                   rng) -> tuple[float, float]:
    """A point 0.5-20 km beyond the subject's county border, straight out from home."""
    home = layer.features_under(people.county[s])
    bearing = rng.uniform(0, 2 * np.pi)
    dist = np.arange(0, 120_000, 100.0)
    lon = people.home_lon[s] + np.cos(bearing) * dist / kx
    lat = people.home_lat[s] + np.sin(bearing) * dist / ky
    outside = ~np.isin(layer.locate(lon, lat), home)
    first_out = dist[np.argmax(outside)]
    beyond = first_out + rng.uniform(500, 20_000)
    return (people.home_lon[s] + np.cos(bearing) * beyond / kx,
            people.home_lat[s] + np.sin(bearing) * beyond / ky)
