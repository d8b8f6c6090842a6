"""Planting the demo's events into a simulated day, and the truth of each.

Each subject takes part in at most one planted event, and no planted event of a subject
of the outage carrier comes near the outage. Windows are chosen so that the subject's
phone reports during them (at least 3 fixes; a breach has at least 2 GPS or Wi-Fi fixes,
since a cell fix cannot put anyone inside a 400 m zone). A planted event moves the
person's true position (each fix keeps its error) or removes fixes, and adds one truth
row per alarm it should cause: {event, kind, subject, expect, start_ms, end_ms, ...}.

| kind | what happens | expect |
|---|---|---|
| exit | 0.5-20 km beyond the home border for 15 min-6 h, then home | zone_exit, zone_return |
| permitted_trip | to another county or city for a few hours, back in time | nothing |
| overstay | back 60-150 min after the permit ended, or not within the day | permit_overstay, zone_exit, zone_return if back |
| silence | phone off 1.5-4 h: no fixes | signal_lost, signal_restored |
| breach | 20-60 min inside a zone their injunction names | exclusion_entry |
| delegation_exit | a delegated person goes back to their home county for 1-5 h | zone_exit (to the delegate office, copy to the origin), zone_return |
| outage | one carrier sends nothing for 35 min | feed_outage (and no signal_lost flood) |
"""

import numpy as np
import shapely

from sim.fixes import Fixes
from sim.ground import KX_M, KY_M, to_degrees, to_metres
from sim.movement import DAY_MS, HOUR_MS, MINUTE_MS
from sim.population import COUNTIES
from sim.zones import TRIP_ZONES

REAL_SUBJECTS = 2032
# kind: (count per REAL_SUBJECTS subjects, minimum)
PLANTED = {"exit": (30, 4), "permit": (40, 6), "overstay": (5, 1), "never_back": (2, 1),
           "delegation": (15, 3), "delegation_exit": (2, 1), "barred": (25, 4),
           "breach": (5, 2), "silence": (12, 2)}
EXCLUDED_HOME_FROM_ZONE_M = 6_000.0  # barred subjects live this far from their zones
AWAY_WANDER_M = 150.0              # spread of a person around a trip's destination
ZONE_WANDER_M = 15.0               # ... around the spot inside a zone they entered
OUTAGE_CLEAR_MS = 90 * MINUTE_MS   # no planted event of the outage carrier this near it
EVENTS_FROM_MS = 1 * HOUR_MS       # planted windows lie in [start + 1 h, end - 2 h]
EVENTS_UNTIL_MS = DAY_MS - 2 * HOUR_MS


def planted_count(kind: str, subjects: int) -> int:
    per_real, least = PLANTED[kind]
    return max(least, round(per_real * subjects / REAL_SUBJECTS))


class Planter:
    """The day's arrays while events are planted into it; subjects taken one role each."""

    def __init__(self, day: Fixes, n: int, start_ms: int, carriers: int,
                 outage: tuple[int, int, int], rng):
        self.rng = rng
        self.start_ms = start_ms
        self.subject, self.t_ms, self.src = day.subject, day.t_ms, day.src
        self.true_lon, self.true_lat = day.true_lon.copy(), day.true_lat.copy()
        self.away = day.away.copy()
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
        self.true_lat[idx] = lat + self.rng.normal(0, wander_m, len(idx)) / KY_M
        self.away[idx] = True

    def event(self) -> str:
        self._events += 1
        return f"E{self._events:03d}"

    def row(self, event: str, kind: str, subject: str | None, expect: str | None,
            start: int, end: int, **details) -> None:
        self.truth.append({"event": event, "kind": kind, "subject": subject, "expect": expect,
                           "start_ms": int(start), "end_ms": int(end), **details})

    def planted_fixes(self) -> Fixes:
        """The day as planted: the fixes kept, each with its original error around where
        the person now is."""
        k = self.keep
        return Fixes(self.subject[k], self.t_ms[k], (self.true_lon + self.noise_lon)[k],
                     (self.true_lat + self.noise_lat)[k], self.acc[k], self.src[k],
                     self.true_lon[k], self.true_lat[k], self.away[k])


def plant_delegation_exits(p: Planter, ground, people, delegations, ids) -> None:
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


def plant_barred(p: Planter, ground, people, zone_county, ids) -> dict[str, list[str]]:
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


def plant_trips(p: Planter, ground, people, ids) -> list[dict]:
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
            p_start, p_end = (t // 1000 * 1000 for t in permit)   # whole seconds, as the
                                                                  # desk keeps a leave's times
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


def plant_exits(p: Planter, ground, people, ids) -> None:
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


def plant_silences(p: Planter, ids) -> None:
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
