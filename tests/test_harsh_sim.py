"""The harsh simulation (sim.harsh_errors, sim.harsh_day) and the alarm_trust scoring: each
error behaviour shows its statistical signature on a seeded sample."""

import numpy as np
import pytest
import shapely

from benchmarks import alarm_trust
from benchmarks.trust_rules import Batch, CountRule, NaiveRule, RaisedEvents, World
from geofence import IN, OUT, Layer, VerdictEngine
from geofence.builtin import zaozhuang_geojson
from geofence.datum import to_wgs84
from sim.ground import Ground, to_metres
from sim.harsh_day import PARAMS, in_curfew, make_day, make_people
from sim.harsh_errors import CELL, HARSH, WIFI, heavy_tail, wifi_jumps
from sim.movement import MINUTE_MS
from sim.population import COUNTIES
from tests.heavy import heavy_test

N = 400


@pytest.fixture(scope="module")
def world():
    layer = Layer.from_geojson(zaozhuang_geojson())
    ground = Ground(layer)
    people = make_people(ground, N, np.random.default_rng(5))
    day = make_day(ground, people, 0, np.random.default_rng([5, 0]))
    county_of_feature = np.full(len(layer), -1, np.int32)
    for k, code in enumerate(COUNTIES):
        county_of_feature[layer.features_under(code)] = k
    return layer, ground, people, day, county_of_feature


@pytest.fixture(scope="module")
def evaluated(world):
    """The day as the benchmark scores it: (verdict engine, truth, batch)."""
    layer, _, people, day, cof = world
    engine = VerdictEngine(layer)
    table = np.array([[engine.area_id([h] + ([COUNTIES[d]] if d >= 0 else []))
                       for d in range(-1, len(COUNTIES))] for h in COUNTIES], np.int32)
    truth = alarm_trust._DayTruth(day, people, layer, cof)
    return engine, truth, alarm_trust._evaluate(day, people, engine, table, cof)


def _county(layer, county_of_feature, lon, lat):
    where = layer.locate(lon, lat)
    return np.where(where >= 0, county_of_feature[np.maximum(where, 0)], -1)


def test_heavy_tail_puts_its_share_one_to_three_accuracies_away():
    acc = np.full(200_000, 100.0)
    east, north, tail = heavy_tail(acc, np.random.default_rng(1))
    r = np.hypot(east, north) / acc
    assert tail.mean() == pytest.approx(HARSH.tail_share, abs=0.003)
    assert r[tail].min() >= 1.0 and r[tail].max() <= 3.0
    # a Gaussian of sigma acc/2 per axis puts exp(-8) = 0.03 % beyond 2 acc; the tail half
    assert (r > 2).mean() == pytest.approx(HARSH.tail_share / 2 + np.exp(-8), abs=0.002)


def test_wifi_jumps_only_wifi_fixes_kilometres_away():
    src = np.random.default_rng(2).integers(0, 3, 300_000).astype(np.int8)
    east, north, jump = wifi_jumps(src, np.random.default_rng(3))
    assert (src[jump] == WIFI).all()
    assert jump[src == WIFI].mean() == pytest.approx(HARSH.wifi_jump_share, abs=0.002)
    d = np.hypot(east[jump], north[jump])
    assert d.min() >= HARSH.wifi_jump_m[0] and d.max() <= HARSH.wifi_jump_m[1]
    assert not east[~jump].any() and not north[~jump].any()


def test_a_third_live_within_3_km_of_a_border_the_rest_farther_inside(world):
    _, ground, people, _, _ = world
    assert people.near_border.mean() == pytest.approx(PARAMS.border_share, abs=0.06)
    for k, code in enumerate(COUNTIES):
        mine = people.county == k
        near = ground.near_edge(code, people.home_x[mine], people.home_y[mine], PARAMS.border_m)
        assert (near == people.near_border[mine]).all()
    assert (people.border_m[people.near_border] <= PARAMS.border_m + 1).all()


def test_cell_fixes_of_border_residents_ping_pong_across_the_border(world):
    layer, _, people, day, cof = world
    f = day.fixes
    home = people.county[f.subject]
    measured = _county(layer, cof, f.lon, f.lat)
    cell = f.src == CELL
    pingers = day.marks["pingers"] & (day.event < 0)
    share = day.marks["across"][pingers & cell].mean()
    assert share == pytest.approx(HARSH.ping_pong_share, abs=0.03)
    # the fixes served across the border land outside the home county; the rest far less
    # (an honest cell fix of someone within 1.5 km of a border is out now and then)
    across = day.marks["across"]
    out_across = (measured[across] != home[across]).mean()
    others = pingers & cell & ~across & ~day.marks["tail"] & ~day.marks["indoor"]
    assert out_across > 0.9 and out_across - (measured[others] != home[others]).mean() > 0.6
    # ping-pong: a pinger's consecutive cell fixes switch side often (near 2 p (1 - p))
    switches, pairs = 0, 0
    for s in np.unique(f.subject[pingers & cell])[:60]:
        a = across[(f.subject == s) & cell & pingers]
        switches += int((a[1:] != a[:-1]).sum())
        pairs += max(len(a) - 1, 0)
    p = HARSH.ping_pong_share
    assert switches / pairs == pytest.approx(2 * p * (1 - p), abs=0.05)
    assert not (across & ~cell).any()


def test_indoor_stretches_are_cell_only_hours(world):
    _, _, people, day, _ = world
    f = day.fixes
    indoor = day.marks["indoor"]
    assert (f.src[indoor] == CELL).all()
    who = np.unique(f.subject[indoor])
    assert len(who) / N == pytest.approx(HARSH.indoor_share, abs=0.07)
    for s in who[:40]:
        t = f.t_ms[(f.subject == s) & indoor]
        assert t.max() - t.min() <= HARSH.indoor_hours[1] * 3_600_000
        mine = f.subject == s
        stretch = (f.t_ms >= t.min()) & (f.t_ms <= t.max()) & mine
        assert (f.src[stretch] == CELL).all()


def test_sparse_feeds_report_every_15_minutes_beside_dense_ones(world):
    _, _, people, day, _ = world
    f = day.fixes
    counts = np.bincount(f.subject, minlength=N)
    assert people.sparse.mean() == pytest.approx(PARAMS.sparse_share, abs=0.06)
    assert (counts[people.sparse] == 24 * 60 // 15).all()
    assert (counts[~people.sparse] >= 24 * 60 // 10).all()
    s = int(np.flatnonzero(people.sparse)[0])
    gaps = np.diff(f.t_ms[f.subject == s])
    assert np.abs(gaps - 15 * MINUTE_MS).max() <= 30_000


def test_one_carrier_sends_gcj02_and_converting_it_back_gives_the_fix(world):
    _, _, people, day, _ = world
    f = day.fixes
    gcj = day.gcj02
    assert (gcj == (f.subject % PARAMS.carriers == PARAMS.gcj02_carrier)).all()
    x0, y0 = to_metres(f.lon[gcj], f.lat[gcj])
    x1, y1 = to_metres(day.sent_lon[gcj], day.sent_lat[gcj])
    shift = np.hypot(x1 - x0, y1 - y0)
    assert shift.min() > 100 and shift.max() < 1000      # GCJ-02's offset over Zaozhuang
    assert (day.sent_lon[~gcj] == f.lon[~gcj]).all()
    lon, lat = to_wgs84(day.sent_lon[gcj], day.sent_lat[gcj], "gcj02")
    assert np.abs(lon - f.lon[gcj]).max() < 1e-7 and np.abs(lat - f.lat[gcj]).max() < 1e-7


def test_planted_events_put_people_where_their_truth_says(world):
    layer, ground, people, day, cof = world
    f = day.fixes
    kinds = {r["kind"] for r in day.truth}
    assert kinds == {"excursion", "minor_excursion", "permitted_trip", "curfew_breach",
                     "gathering"}
    true_county = _county(layer, cof, f.true_lon, f.true_lat)
    for e, row in enumerate(day.truth):
        idx = np.flatnonzero(day.event == e)
        assert (f.t_ms[idx] >= row["start_ms"]).all() and (f.t_ms[idx] < row["end_ms"]).all()
        s = row["subjects"][0]
        if row["kind"] == "excursion" and len(idx):
            assert row["distance_m"] >= 1000 and row["end_ms"] - row["start_ms"] >= 20 * MINUTE_MS
            d = shapely.distance(ground.shapes[COUNTIES[people.county[s]]],
                                 shapely.points(*to_metres(f.true_lon[idx], f.true_lat[idx])))
            assert np.median(d) > 500
        if row["kind"] == "permitted_trip":
            dest = COUNTIES.index(row["destination"])
            assert (day.permit_dest[idx] == dest).all() and (true_county[idx] == dest).all()
        if row["kind"] == "curfew_breach":
            assert people.curfew[s] and in_curfew(f.t_ms[idx]).all()
            x, y = to_metres(f.true_lon[idx], f.true_lat[idx])
            assert (np.hypot(x - people.home_x[s], y - people.home_y[s]) > 1000).all()
            assert (true_county[idx] == people.county[s]).all()
        if row["kind"] == "gathering":
            a, b = row["subjects"]
            linked = people.case[a] >= 0 and people.case[a] == people.case[b]
            assert linked or (people.key[a] and people.key[b])
            xa, ya = to_metres(f.true_lon[idx][f.subject[idx] == a],
                               f.true_lat[idx][f.subject[idx] == a])
            xb, yb = to_metres(f.true_lon[idx][f.subject[idx] == b],
                               f.true_lat[idx][f.subject[idx] == b])
            if len(xa) and len(xb):
                assert np.hypot(xa.mean() - xb.mean(), ya.mean() - yb.mean()) < 200
    assert (day.permit_dest[day.event < 0] >= -1).all()
    curfew_nights = people.curfew[f.subject] & in_curfew(f.t_ms) & (day.event < 0)
    x, y = to_metres(f.true_lon, f.true_lat)
    home_d = np.hypot(x - people.home_x[f.subject], y - people.home_y[f.subject])
    assert (home_d[curfew_nights] < PARAMS.curfew_radius_m).mean() > 0.99


def test_co_offenders_and_curfews_are_there_for_the_rules(world):
    _, _, people, _, _ = world
    pairs = people.linked_pairs()
    assert len(pairs) >= N * PARAMS.pair_share / 2 * 0.8
    for members in pairs.values():
        assert len(members) == 2 and people.county[members[0]] == people.county[members[1]]
    orders = people.curfews()
    assert [o["subject"] for o in orders] == np.flatnonzero(people.curfew).tolist()
    assert {o["from_h"] for o in orders} == {PARAMS.curfew_hours[0]}
    assert people.key.mean() == pytest.approx(PARAMS.key_share, abs=0.03)


def _batch(subject, verdict, inside):
    n = len(subject)
    return Batch(np.array(subject, np.int32), np.arange(1, n + 1, dtype=np.int64) * 60_000,
                 np.zeros(n), np.zeros(n), np.full(n, 10.0), np.zeros(n, np.int8),
                 np.zeros(n, np.int32), np.array(verdict, np.int8), np.zeros(n),
                 np.array(inside, bool))


def test_naive_and_count_rules_raise_through_the_interface():
    w = World(2, np.array([False, True]), [], {}, None)
    naive, count = NaiveRule(), CountRule()
    naive.start(w)
    count.start(w)
    b = _batch([0, 0, 0, 0, 1], [OUT, IN, OUT, OUT, OUT], [False, True, False, False, False])
    ev = naive.step(b)
    assert list(ev.type) == ["zone_exit"] * 3 and list(ev.fix) == [0, 2, 4]
    ev = count.step(b)
    exits = ev.fix[ev.type == "zone_exit"]
    assert sorted(exits.tolist()) == [3, 4]   # subject 0 after 2 fixes out, key 1 after 1


class _Oracle:
    """Raises zone_exit on every fix flagged: the scoring must follow the flags."""

    name = "oracle"
    raises = frozenset({"zone_exit"})

    def __init__(self, flags):
        self.flags = flags

    def start(self, world):
        self.lo = 0

    def step(self, batch):
        fix = np.flatnonzero(self.flags[self.lo:self.lo + len(batch)])
        self.lo += len(batch)
        return RaisedEvents(np.full(len(fix), "zone_exit", object), batch.subject[fix], fix)


def test_scoring_counts_true_and_false_alarms_from_the_truth(world, evaluated):
    _, _, people, day, _ = world
    engine, truth, batch = evaluated
    really = truth.really_out | np.isin(truth.kind, ("excursion", "minor_excursion"))
    seen = [r for r in day.truth if r["kind"] == "excursion" and r["fixes"]]
    w = World(N, people.key, people.curfews(), people.linked_pairs(), engine)
    for flags, found in ((really, len(seen)), (~really, 0),
                         (np.ones(len(really), bool), len(seen))):
        rule = _Oracle(flags)
        rule.start(w)
        score = alarm_trust.Score()
        score.add(rule, alarm_trust._raise(rule, batch), batch, truth, people)
        assert score.exits == flags.sum() and score.exits_true == (flags & really).sum()
        assert score.qualifying == len(seen) > 0 and score.found == found
        assert all(0 <= m <= 15 for m in score.latency_min)   # first fix of each excursion
        assert score.other["curfew_breach"]["planted"] > 0
        assert score.other["curfew_breach"]["alarms"] == 0     # the rule raises none


class _Planted:
    """Raises curfew_breach and gathering on the first fix of each planted window, and
    one gathering of two people never together: recall 100 %, one false."""

    name = "planted"
    raises = frozenset({"curfew_breach", "gathering"})

    def __init__(self, day):
        self.day = day

    def start(self, world):
        self.lo = 0

    def step(self, batch):
        idx = np.arange(self.lo, self.lo + len(batch))
        self.lo += len(batch)
        types, subjects, fixes, others = [], [], [], []
        for e, row in enumerate(self.day.truth):
            if row["kind"] in ("curfew_breach", "gathering"):
                mine = np.flatnonzero(self.day.event[idx] == e)
                if len(mine):
                    f = int(mine[0])
                    s = int(batch.subject[f])
                    other = [o for o in row["subjects"] if o != s]
                    types.append(row["kind"])
                    subjects.append(s)
                    fixes.append(f)
                    others.append(other[0] if other else -1)
        if self.lo == len(batch):      # the first batch: a false gathering
            a = int(batch.subject[0])
            far = int(np.flatnonzero(self.day.fixes.subject != a)[0])
            types.append("gathering")
            subjects.append(a)
            fixes.append(0)
            others.append(int(self.day.fixes.subject[far]))
        return RaisedEvents(np.array(types, object), np.array(subjects, np.int32),
                            np.array(fixes, np.int64), np.array(others, np.int64))


def test_scoring_matches_curfew_and_gathering_alarms_to_planted_windows(world, evaluated):
    _, _, people, day, _ = world
    _, truth, batch = evaluated
    rule = _Planted(day)
    rule.start(None)
    score = alarm_trust.Score()
    score.add(rule, alarm_trust._raise(rule, batch), batch, truth, people)
    curfew, gathering = score.other["curfew_breach"], score.other["gathering"]
    assert curfew["planted"] > 0 and curfew["found"] == curfew["planted"]
    assert curfew["true"] == curfew["alarms"]
    assert gathering["planted"] > 0 and gathering["found"] == gathering["planted"]
    assert gathering["alarms"] - gathering["true"] == 1
    assert score.exits == 0


@heavy_test
def test_alarm_trust_quick_run_reports_both_rules():
    rep = alarm_trust.run(quick=True)
    fig = {}
    for f in rep.figures:   # the first of a name: zone_exit's "true share" before possible_exit's
        fig.setdefault((f.group, f.name), f)
    count, naive = "count rule (Rules() defaults)", "naive: any point outside"
    assert fig[("truth", "qualifying excursions (seen by >= 1 fix)")].value > 20
    for rule in (count, naive):
        assert 80 <= fig[(rule, "recall of qualifying excursions")].value <= 100
    assert fig[(count, "recall of qualifying excursions")].target == ">= 99"
    assert (fig[(naive, "  true share")].value < fig[(count, "  true share")].value)
    assert any("gathering n/a" in n for n in rep.notes)
