"""The demo's day (`sim.scenario`): the real mix, a registry the engine accepts, and every
planted event really in the fixes, as the truth describes it."""

from collections import Counter

import numpy as np
import pytest
import shapely

import geofence
from alerts.registry import RegistryStore
from geofence.datum import to_wgs84
from geofence.builtin import zaozhuang_geojson
from sim.ground import Ground, to_metres
from sim.movement import MINUTE_MS
from sim.scenario import CARRIERS, LIVE_INTERVAL_MS, build_scenario
from engine.layers import code_checkers

END_MS = 1_750_000_000_000
DAY_MS = 24 * 3600 * 1000


@pytest.fixture(scope="module")
def scenario():
    return build_scenario(2032, seed=7, end_ms=END_MS)


@pytest.fixture(scope="module")
def layers(scenario):
    jurisdictions = geofence.Layer.from_geojson(zaozhuang_geojson())
    zones = geofence.Layer.from_geojson(scenario.zones)   # -W error: no overlap warnings
    return jurisdictions, zones


@pytest.fixture(scope="module")
def ground(layers, scenario):
    ground = Ground(layers[0])
    for feature in scenario.zones["features"]:
        ring = np.array(feature["geometry"]["coordinates"][0])
        ground.add(feature["properties"]["code"],
                   shapely.Polygon(np.column_stack(to_metres(ring[:, 0], ring[:, 1]))))
    return ground


def fixes_of(scenario, sid: str, start: int = 0, end: int = 2**62):
    s = scenario.ids.index(sid)
    f = scenario.fixes
    mine = (f.subject == s) & (f.t_ms >= start) & (f.t_ms < end)
    return f.true_lon[mine], f.true_lat[mine], f.src[mine], f.t_ms[mine]


def inside(layer, code: str, lon, lat) -> np.ndarray:
    return np.isin(layer.locate(lon, lat), layer.features_under(code))


def subject_doc(scenario, sid: str) -> dict:
    return next(s for s in scenario.subjects if s["id"] == sid)


def rows(scenario, kind: str, expect: str | None = "any") -> list[dict]:
    return [r for r in scenario.truth if r["kind"] == kind
            and (expect == "any" or r["expect"] == expect)]


def test_the_real_mix_of_people_offices_and_devices(scenario, layers):
    subjects = scenario.subjects
    assert len(subjects) == 2032
    assert Counter(s["category"] for s in subjects) == {
        "probation": 1906, "parole": 70, "medical_parole": 38, "control": 18}
    assert Counter(s["risk"] for s in subjects)["key"] == round(0.04 * 2032)
    devices = [d for s in subjects for d in s["devices"]]
    assert len(set(devices)) == 2032
    assert all(len(d) == 11 and d.startswith("1") and d.isdigit() for d in devices)
    offices = {o["code"]: o for o in scenario.offices}
    assert offices["3704"]["parent"] is None
    counties = [c for c, o in offices.items() if o["parent"] == "3704"]
    assert len(counties) == 6 and all(offices[c]["name"].endswith("司法局") for c in counties)
    jurisdictions = layers[0]
    towns = [o for o in offices.values() if o["parent"] in counties]
    assert len(towns) == 66
    names = dict(zip(jurisdictions.codes.tolist(), jurisdictions.names.tolist()))
    assert all(o["name"] == names[o["code"]] + "司法所" for o in towns)
    for s in subjects:   # home is their county, their office a township in it
        assert s["home"] == [offices[s["office"]]["parent"]]


def test_the_registry_imports_into_a_store_with_the_layer_and_zones(scenario, layers,
                                                                      tmp_path):
    store = RegistryStore(tmp_path / "registry.sqlite")
    registry = store.import_document(scenario.registry_document(), *code_checkers(*layers))
    store.close()
    assert len(registry.subjects) == 2032 and len(registry.offices) == 73
    assert 35 <= len(registry.permits) <= 45
    assert len(registry.delegations) == 15
    barred = [s for s in registry.subjects.values() if s.exclusions]
    assert 20 <= len(barred) <= 30
    assert all(1 <= len(s.exclusions) <= 2 for s in barred)
    for p in registry.permits.values():   # approved by the subject's county bureau
        assert p.office == registry.subjects[p.subject].home[0]
        assert p.office not in p.destinations
        assert 3 * 3600_000 <= p.end_ms - p.start_ms <= 7 * 3600_000
    for d in registry.delegations.values():   # to a township office of the new home county
        assert registry.offices[d.office].parent == d.home[0]
        assert d.home[0] != registry.subjects[d.subject].home[0]
        assert d.start_ms < END_MS - DAY_MS and (d.end_ms is None or d.end_ms > END_MS)


def test_the_zone_layer_has_injunction_zones_and_trip_destinations(scenario, layers):
    jurisdictions, zones = layers
    codes = zones.codes.tolist()
    injunction = [c for c in codes if c.startswith("JZ")]
    assert len(injunction) == 8
    names = dict(zip(codes, zones.names.tolist()))
    assert any("学" in names[c] for c in injunction) and any("酒吧街" in names[c] for c in injunction)
    assert any("网吧" in names[c] for c in injunction) and any("被害人" in names[c] for c in injunction)
    for c in injunction:   # small, inside Zaozhuang
        poly = zones.geometries[zones.index_of(c)]
        x0, y0, x1, y1 = poly.bounds
        assert (x1 - x0) * 92_000 < 1000 and (y1 - y0) * 111_000 < 1000
        centre = poly.centroid
        assert jurisdictions.locate(np.array([centre.x]), np.array([centre.y]))[0] >= 0
    for c in codes:
        if not c.startswith("JZ"):   # trip destinations outside the city
            centre = zones.geometries[zones.index_of(c)].centroid
            assert jurisdictions.locate(np.array([centre.x]), np.array([centre.y]))[0] == -1


def test_exits_are_beyond_the_home_border_by_the_planted_distance(scenario, layers, ground):
    jurisdictions = layers[0]
    exits = rows(scenario, "exit", "zone_exit")
    assert len(exits) == 30
    for r in exits:
        home = subject_doc(scenario, r["subject"])["home"]
        assert 15 * MINUTE_MS <= r["end_ms"] - r["start_ms"] <= 6 * 3600_000
        lon, lat, _, _ = fixes_of(scenario, r["subject"], r["start_ms"], r["end_ms"])
        assert len(lon) >= 3
        assert not inside(jurisdictions, home[0], lon, lat).any()
        assert 500 <= r["distance_m"] <= 20_100
        distance = np.median(ground.distance_outside_m(home, lon, lat))
        assert abs(distance - r["distance_m"]) < max(100, 0.1 * r["distance_m"])
        lon, lat, _, _ = fixes_of(scenario, r["subject"], r["end_ms"], r["end_ms"] + 3600_000)
        assert inside(jurisdictions, home[0], lon, lat).all()   # back home: zone_return
        lon, lat, _, _ = fixes_of(scenario, r["subject"], 0, r["start_ms"])
        assert inside(jurisdictions, home[0], lon, lat).all()


def test_trips_go_to_the_permitted_destination_and_overstays_come_back_late(scenario, layers):
    jurisdictions, zones = layers
    permits = {p["id"]: p for p in scenario.permits}
    trips = rows(scenario, "permitted_trip")
    overstays = rows(scenario, "overstay", "zone_exit")
    assert len(trips) + len(overstays) == len(permits) == 40
    assert len(overstays) == 7 and sum(not r["back"] for r in overstays) == 2

    def at_destination(r, lon, lat):
        dest = r["destination"]
        if jurisdictions.hierarchy.is_known(dest):
            return inside(jurisdictions, dest, lon, lat)
        return zones.locate(lon, lat) == zones.index_of(dest)

    for r in trips:
        p = permits[r["permit"]]
        assert p["start_ms"] < r["start_ms"] < r["end_ms"] < p["end_ms"]   # back in time
        lon, lat, _, _ = fixes_of(scenario, r["subject"], r["start_ms"], r["end_ms"])
        assert len(lon) >= 3 and at_destination(r, lon, lat).all()
    for r in overstays:
        home = subject_doc(scenario, r["subject"])["home"][0]
        assert r["start_ms"] == permits[r["permit"]]["end_ms"]
        lon, lat, _, _ = fixes_of(scenario, r["subject"], r["start_ms"], r["end_ms"])
        assert len(lon) >= 3 and at_destination(r, lon, lat).all()
        assert not inside(jurisdictions, home, lon, lat).any()
        if r["back"]:
            assert r["end_ms"] - r["start_ms"] >= 60 * MINUTE_MS
            lon, lat, _, _ = fixes_of(scenario, r["subject"], r["end_ms"])
            assert inside(jurisdictions, home, lon, lat).all()
        else:
            assert r["end_ms"] == END_MS


def test_silences_have_no_fixes_and_the_outage_carrier_sends_nothing(scenario):
    silences = rows(scenario, "silence", "signal_lost")
    assert len(silences) == 12
    for r in silences:
        assert 90 * MINUTE_MS <= r["end_ms"] - r["start_ms"] <= 240 * MINUTE_MS
        assert len(fixes_of(scenario, r["subject"], r["start_ms"], r["end_ms"])[0]) == 0
        before = fixes_of(scenario, r["subject"], r["start_ms"] - 15 * MINUTE_MS, r["start_ms"])
        after = fixes_of(scenario, r["subject"], r["end_ms"], r["end_ms"] + 15 * MINUTE_MS)
        assert len(before[0]) and len(after[0])
    (outage,) = rows(scenario, "outage")
    assert outage["expect"] == "feed_outage" and outage["subject"] is None
    assert 25 * MINUTE_MS <= outage["end_ms"] - outage["start_ms"] <= 40 * MINUTE_MS
    for feed in scenario.carrier_feeds():
        t = feed.fixes.t_ms
        during = ((t >= outage["start_ms"]) & (t < outage["end_ms"])).sum()
        assert (during == 0) == (feed.name == outage["carrier"])
    k = CARRIERS.index(outage["carrier"])
    for r in scenario.truth:   # nothing else planted on that carrier near the outage
        if r["subject"] is not None and scenario.ids.index(r["subject"]) % 3 == k:
            assert (r["end_ms"] < outage["start_ms"] - 20 * MINUTE_MS
                    or r["start_ms"] > outage["end_ms"] + 20 * MINUTE_MS)


def test_breaches_enter_a_zone_the_injunction_names(scenario, layers):
    zones = layers[1]
    breaches = rows(scenario, "breach")
    assert len(breaches) == 5
    for r in breaches:
        assert r["expect"] == "exclusion_entry"
        assert r["zone"] in subject_doc(scenario, r["subject"])["exclusions"]
        assert 20 * MINUTE_MS <= r["end_ms"] - r["start_ms"] <= 60 * MINUTE_MS
        lon, lat, src, _ = fixes_of(scenario, r["subject"], r["start_ms"], r["end_ms"])
        assert (zones.locate(lon, lat) == zones.index_of(r["zone"])).all()
        assert (src != 2).sum() >= 2           # GPS or Wi-Fi: precise enough to tell
    for s in scenario.subjects:   # the barred live far from their zones
        for zone in s.get("exclusions", []):
            lon, lat, _, t = fixes_of(scenario, s["id"])
            planted = [r for r in breaches if r["subject"] == s["id"]]
            away = np.ones(len(t), bool)
            for r in planted:
                away &= (t < r["start_ms"]) | (t >= r["end_ms"])
            assert not (zones.locate(lon[away], lat[away]) == zones.index_of(zone)).any()


def test_delegated_people_live_in_the_new_county_and_some_leave_it(scenario, layers):
    jurisdictions = layers[0]
    delegation_of = {d["subject"]: d for d in scenario.delegations}
    leaving = rows(scenario, "delegation_exit", "zone_exit")
    assert 1 <= len(leaving) <= 2
    for r in leaving:
        d = delegation_of[r["subject"]]
        assert r["office"] == d["office"]
        assert r["copy_to"] == [subject_doc(scenario, r["subject"])["office"]]
        lon, lat, _, _ = fixes_of(scenario, r["subject"], r["start_ms"], r["end_ms"])
        assert len(lon) >= 3 and not inside(jurisdictions, d["home"][0], lon, lat).any()
    for sid, d in delegation_of.items():
        lon, lat, _, t = fixes_of(scenario, sid)
        away = np.zeros(len(t), bool)
        for r in leaving:
            if r["subject"] == sid:
                away |= (t >= r["start_ms"]) & (t < r["end_ms"])
        assert inside(jurisdictions, d["home"][0], lon[~away], lat[~away]).all()


def test_every_fix_belongs_to_the_day_and_carriers_send_in_time_order(scenario):
    f = scenario.fixes
    assert f.t_ms.min() >= END_MS - DAY_MS and f.t_ms.max() <= END_MS + 30_000
    assert (np.diff(f.t_ms) >= 0).all()
    feeds = scenario.carrier_feeds()
    assert [x.name for x in feeds] == list(CARRIERS)
    assert sum(len(x) for x in feeds) == len(f)
    for feed in feeds:
        assert (np.diff(feed.fixes.t_ms) >= 0).all()
        assert set(feed.fixes.src.tolist()) <= {0, 1, 2}   # gps, wifi, cell
    cucc = feeds[1]
    assert cucc.datum == "gcj02" and feeds[0].datum is None
    lon, lat = to_wgs84(cucc.fixes.lon, cucc.fixes.lat, "gcj02")
    mine = scenario.carrier_of(f.subject) == 1
    assert np.abs(lon - f.lon[mine]).max() < 1e-5 and np.abs(lat - f.lat[mine]).max() < 1e-5
    errors = np.hypot((f.lon - f.true_lon) * 92_000, (f.lat - f.true_lat) * 111_000)
    for k, (lo, hi) in enumerate([(0, 100), (0, 250), (0, 7000)]):   # gps, wifi, cell
        assert lo <= np.percentile(errors[f.src == k], 99) <= hi


def test_live_fixes_keep_everyone_reporting_after_the_day(scenario):
    rng = np.random.default_rng(1)
    seen = []
    for k in range(3):
        live = scenario.live_fixes(k, END_MS, END_MS + LIVE_INTERVAL_MS, rng)
        t = live.fixes.t_ms
        assert ((t > END_MS) & (t <= END_MS + LIVE_INTERVAL_MS)).all()
        assert (np.diff(t) >= 0).all()
        seen += live.phones[live.fixes.subject].tolist()
    assert sorted(seen) == sorted(int(d) for d in scenario.devices)   # once each
    again = scenario.live_fixes(0, END_MS + LIVE_INTERVAL_MS, END_MS + LIVE_INTERVAL_MS, rng)
    assert len(again) == 0


def test_the_same_seed_gives_the_same_day_and_another_seed_another():
    a = build_scenario(120, seed=3, end_ms=END_MS)
    b = build_scenario(120, seed=3, end_ms=END_MS)
    c = build_scenario(120, seed=4, end_ms=END_MS)
    assert a.truth == b.truth and a.registry_document() == b.registry_document()
    assert a.zones == b.zones
    for name in ("subject", "t_ms", "lon", "lat", "acc_m", "src"):
        assert np.array_equal(getattr(a.fixes, name), getattr(b.fixes, name))
    assert a.truth != c.truth
    assert not np.array_equal(a.fixes.lon[:100], c.fixes.lon[:100])
    kinds = Counter(r["kind"] for r in a.truth if r["expect"] != "zone_return")
    for kind in ("exit", "permitted_trip", "overstay", "silence", "breach", "delegation_exit",
                 "outage"):
        assert kinds[kind] >= 1, kind


def test_too_few_subjects_is_refused():
    with pytest.raises(ValueError, match="at least"):
        build_scenario(10, seed=1, end_ms=END_MS)
