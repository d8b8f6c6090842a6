"""The rules end to end (SPEC §2, §5, §6): registry, schedule, verdicts, alarms.

A real Zaozhuang layer, a real registry in SQLite, and the classes a worker runs
(`alerts`: `SubjectBook`, `Evaluation`, `ClockRules`, `Carriers`) fed by hand, one batch at a time; the clock
rules are called with an explicit `now`, as the worker calls them about once a second.
Each test is a case a supervisor would recognise. Times are minutes from T0; the first
clock check of a world (the worker starting to watch) is at T0 unless a test says so.

Places: HOME (inside Shizhong 370402, every subject's home unless said), XUECHENG (inside
370403), TENGZHOU (inside 370481), each at least 2 km from its county's border, and FAR
(115.5, 33.5), outside every jurisdiction.
"""

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import shapely

from alerts.alarms import Alarm
from alerts.clock_rules import Carriers, ClockRules, RulesClock
from alerts.evaluation import Evaluated, Evaluation
from alerts.registry import RegistryStore
from alerts.subject_book import SubjectBook
from engine.config import Rules
from engine.layers import code_checkers
from geofence import Layer, VerdictEngine
from geofence.builtin import zaozhuang_geojson
from ingest.fixes import FixColumns
from ingest.protocol import STATE0, STATES

T0 = 1_700_000_000_000          # 2023-11-14T22:13:20Z
MIN_MS = 60_000
HOUR_MS = 60 * MIN_MS
CITY, SHIZHONG, XUECHENG, TENGZHOU = "3704", "370402", "370403", "370481"
SHIZHONG_OFFICE, XUECHENG_OFFICE, TENGZHOU_OFFICE = "370402001", "370403001", "370481001"
FAR = (115.5, 33.5)
ACC_M = 20.0


def minutes(m: float) -> int:
    return T0 + int(m * MIN_MS)


def rfc3339(t_ms: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(t_ms / 1000, timezone.utc).isoformat()


# --- the world: layer, engine, registry --------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> VerdictEngine:
    layer = Layer.from_geojson(zaozhuang_geojson())
    return VerdictEngine(layer, None, Rules().exit_margin_m)


@pytest.fixture(scope="module")
def places(engine) -> dict[str, tuple[float, float]]:
    layer = engine.jurisdictions

    def inside(code: str) -> tuple[float, float]:
        county = shapely.union_all(layer.geometries[layer.features_under(code)])
        p = county.buffer(-0.02).representative_point()   # ~2 km from the border
        assert layer.locate([p.x], [p.y])[0] in layer.features_under(code)
        return p.x, p.y

    return {"HOME": inside(SHIZHONG), "XUECHENG": inside(XUECHENG),
            "TENGZHOU": inside(TENGZHOU), "FAR": FAR}


def offices() -> list[dict]:
    return [
        {"code": CITY, "name": "枣庄市司法局"},
        {"code": SHIZHONG, "name": "市中区司法局", "parent": CITY},
        {"code": XUECHENG, "name": "薛城区司法局", "parent": CITY},
        {"code": TENGZHOU, "name": "滕州市司法局", "parent": CITY},
        {"code": SHIZHONG_OFFICE, "name": "中心街街道司法所", "parent": SHIZHONG},
        {"code": XUECHENG_OFFICE, "name": "临城街道司法所", "parent": XUECHENG},
        {"code": TENGZHOU_OFFICE, "name": "荆河街道司法所", "parent": TENGZHOU},
    ]


def subject(sid: str, risk: str = "normal", office: str = SHIZHONG_OFFICE,
            home: str = SHIZHONG, level: str | None = None) -> dict:
    doc = {"id": sid, "devices": [f"139{sid}"], "office": office, "home": [home],
           "risk": risk, "category": "probation"}
    return doc if level is None else {**doc, "level": level}


def permit(sid: str, start_ms: int, end_ms: int, to: str = XUECHENG, pid: str = "p1") -> dict:
    return {"id": pid, "subject": sid, "start": rfc3339(start_ms), "end": rfc3339(end_ms),
            "destinations": [to], "office": SHIZHONG}


def register(engine: VerdictEngine, store: RegistryStore, doc: dict) -> None:
    store.import_document(doc, *code_checkers(engine.jurisdictions, None))


@dataclass
class World:
    """One worker (partition 0 of 1) over a registry of its own."""

    engine: VerdictEngine
    places: dict
    store: RegistryStore
    rules: Rules = Rules()
    book: SubjectBook = field(init=False)
    ev: Evaluation = field(init=False)
    clock_rules: ClockRules = field(init=False)
    carriers: Carriers = field(init=False)
    checked_until: int | None = None
    seq: int = 0

    def __post_init__(self):
        self.book = SubjectBook(self.engine, self.store)
        self.book.refresh(force=True)
        self.restart()

    def restart(self) -> None:
        """A fresh Evaluation, ClockRules and Carriers, as after a crash with no snapshot."""
        self.resume(None)
        self.carriers = Carriers([])
        self.checked_until = None

    def resume(self, snapshot: bytes | None) -> None:
        """A worker restarted from `snapshot` (partition 0 of 1)."""
        self.ev = Evaluation(self.engine, self.book, self.rules, snapshot)
        self.clock_rules = ClockRules(self.engine, self.book, self.rules, 0, 1)

    def register(self, doc: dict) -> None:
        register(self.engine, self.store, doc)

    def fixes(self, rows, carrier: str = "cmcc") -> tuple[list[Alarm], int]:
        """One batch: rows of (subject id, t_ms, place name or (lon, lat), or a handset
        state of `protocol.STATES` for a status row as ingest stores it); (alarms, late)."""
        result = self.batch(rows, carrier)
        return result.alarms, result.late

    def batch(self, rows, carrier: str = "cmcc") -> Evaluated:
        status = np.array([isinstance(p, str) and p in STATES for _, _, p in rows], bool)
        xy = [(np.nan, np.nan) if p in STATES else self.places[p] if isinstance(p, str) else p
              for _, _, p in rows]
        index = np.array([self.book.index_of[sid] for sid, _, _ in rows], np.int32)
        cols = FixColumns(device=index.copy(), subject=index,
                          t_ms=np.array([t for _, t, _ in rows], np.int64),
                          lon=np.array([x for x, _ in xy], np.float64),
                          lat=np.array([y for _, y in xy], np.float64),
                          acc_m=np.where(status, np.nan, ACC_M).astype(np.float32),
                          src=np.array([STATE0 + STATES.index(p) if p in STATES else 0
                                        for _, _, p in rows], np.int8))
        cid = self.carriers.id_of(carrier)
        self.carriers.saw(cid, int(cols.t_ms.max()))
        self.seq += 1
        result = self.ev.run(cols, cid, received_ms=int(cols.t_ms.max()) + 1000)
        assert result.verdicts.sum() == len(rows) - status.sum(), "status rows get no verdict"
        assert result.reports == status.sum()
        return result

    def report(self, sid: str, t_ms: int, state: str, carrier: str = "cmcc") -> list[Alarm]:
        """One handset status row (off, suspended, unreachable) in a batch of its own."""
        return self.fixes([(sid, t_ms, state)], carrier)[0]

    def fix(self, sid: str, t_ms: int, place, carrier: str = "cmcc") -> list[Alarm]:
        return self.fixes([(sid, t_ms, place)], carrier)[0]

    def clock(self, now_ms: int) -> list[Alarm]:
        """The clock rules as the worker runs them: each check covers (last check, now]."""
        if self.checked_until is None:
            self.checked_until = now_ms
        self.ev.grow()
        alarms = self.clock_rules.check(self.ev.rules, now_ms, self.checked_until,
                                        self.carriers)
        self.checked_until = max(self.checked_until, now_ms)
        return alarms


@pytest.fixture
def world(engine, places, tmp_path):
    """`world(subjects, permits=(), delegations=(), rules=Rules())` -> a World."""
    stores = []

    def make(subjects, permits=(), delegations=(), rules=Rules()) -> World:
        store = RegistryStore(tmp_path / f"registry-{len(stores)}.sqlite")
        stores.append(store)
        register(engine, store, {"offices": offices(), "subjects": list(subjects),
                                 "permits": list(permits), "delegations": list(delegations)})
        return World(engine, places, store, rules)

    yield make
    for store in stores:
        store.close()


def types(alarms: list[Alarm]) -> list[str]:
    return [a.type for a in alarms]


def only(alarms: list[Alarm], kind: str) -> Alarm:
    assert types(alarms) == [kind], types(alarms)
    return alarms[0]


def where_of(engine, place) -> dict:
    layer = engine.jurisdictions
    i = int(layer.locate([place[0]], [place[1]])[0])
    return {"code": str(layer.codes[i]), "name": str(layer.names[i])}


# --- zone_exit and zone_return ------------------------------------------------------------


@pytest.mark.parametrize("risk, severity, outs_to_exit", [
    ("normal", "high", 2),
    ("key", "critical", 1),
], ids=["two fixes outside, then one inside", "key person: one fix outside is enough"])
def test_two_fixes_outside_then_one_inside(world, engine, places, risk, severity, outs_to_exit):
    w = world([subject("s1", risk)])
    w.clock(T0)
    assert w.fix("s1", minutes(0), "HOME") == []
    raised = []
    for k in range(outs_to_exit):
        raised = w.fix("s1", minutes(1 + k), "XUECHENG")
        assert raised == [] or k == outs_to_exit - 1
    exit_ = only(raised, "zone_exit")
    doc = exit_.to_document()
    t_exit = minutes(outs_to_exit)
    assert (doc["severity"], doc["subject"], doc["office"], doc["t"], doc["status"]) == (
        severity, "s1", SHIZHONG_OFFICE, t_exit, "open")
    x, y = places["XUECHENG"]
    assert doc["fix"] == {"t": t_exit, "lon": x, "lat": y, "acc": ACC_M, "src": "gps"}
    assert doc["where"] == where_of(engine, places["XUECHENG"])
    assert doc["where"]["code"].startswith(XUECHENG)
    assert doc["home"] == [SHIZHONG]
    assert exit_.id == doc["id"] and exit_.severity == severity
    assert w.fix("s1", minutes(10), "HOME") == [], "one fix inside is not yet a return"
    back = only(w.fix("s1", minutes(11), "HOME"), "zone_return")
    assert back.to_document()["severity"] == "info"
    assert back.to_document()["details"]["exit_id"] == exit_.id
    assert back.to_document()["office"] == SHIZHONG_OFFICE


def test_exit_outside_every_jurisdiction_has_no_where(world):
    w = world([subject("s1")])
    w.fix("s1", minutes(0), "FAR")
    exit_ = only(w.fix("s1", minutes(1), "FAR"), "zone_exit")
    assert exit_.to_document()["where"] is None
    assert exit_.to_document()["fix"]["lon"] == FAR[0]


def test_one_fix_outside_between_fixes_inside_raises_nothing(world):
    w = world([subject("s1")])
    story = ["HOME", "FAR", "HOME", "FAR", "HOME"]
    assert [w.fix("s1", minutes(k), p) for k, p in enumerate(story)] == [[]] * len(story)


# --- signal_lost and signal_restored -----------------------------------------------------


def test_phone_silent_for_61_minutes(world, engine, places):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    assert w.clock(minutes(30)) == []
    assert w.clock(minutes(59)) == [], "59 minutes of silence is not yet lost"
    lost = only(w.clock(minutes(61)), "signal_lost")
    doc = lost.to_document()
    assert (doc["severity"], doc["subject"], doc["office"]) == ("high", "s1", SHIZHONG_OFFICE)
    x, y = places["HOME"]
    assert doc["fix"] == {"t": minutes(0), "lon": x, "lat": y, "acc": ACC_M, "src": "gps"}
    assert doc["where"] == where_of(engine, places["HOME"])
    assert doc["t"] == minutes(60)
    assert doc["details"]["silent_for_s"] == 61 * 60   # how long it had been silent when noticed
    assert w.clock(minutes(62)) == []
    assert w.clock(minutes(180)) == [], "checking again later raises nothing new"
    restored = only(w.fix("s1", minutes(190), "HOME"), "signal_restored")
    assert restored.to_document()["severity"] == "info"
    assert restored.to_document()["t"] == minutes(190)
    assert w.fix("s1", minutes(191), "HOME") == []
    assert w.clock(minutes(240)) == []
    again = only(w.clock(minutes(252)), "signal_lost")
    assert again.id != lost.id, "a second silence is a second alarm"


def test_never_reported_is_lost_an_hour_after_first_watched(world):
    w = world([subject("s1")])
    started = minutes(5)
    assert w.clock(started) == []
    assert w.clock(started + HOUR_MS) == []
    lost = only(w.clock(started + HOUR_MS + 1000), "signal_lost")
    assert lost.to_document()["fix"] is None and lost.to_document()["where"] is None
    assert lost.to_document()["office"] == SHIZHONG_OFFICE
    assert w.clock(started + 3 * HOUR_MS) == []
    # the first fix ever restores
    assert types(w.fix("s1", started + 4 * HOUR_MS, "HOME")) == ["signal_restored"]


def test_subject_registered_later_is_watched_from_its_first_check(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    w.register({"subjects": [subject("s2")]})
    w.book.refresh(force=True)
    assert w.clock(minutes(30)) == []           # s2 watched from here
    w.fix("s1", minutes(50), "HOME")
    assert w.clock(minutes(89)) == []
    assert [a.subject for a in w.clock(minutes(91))] == ["s2"]


# --- feed_outage -------------------------------------------------------------------------


def carrier_world(world, n: int = 12, extra=()):
    ids = [f"c{k:02d}" for k in range(n)]
    w = world([subject(s) for s in ids] + list(extra))
    w.clock(T0)
    assert w.fixes([(s, T0, "HOME") for s in ids])[0] == []
    return w, ids


def test_carrier_silent_one_feed_outage_no_signal_lost_flood(world):
    w, ids = carrier_world(world)
    assert w.clock(minutes(15)) == []
    outage = only(w.clock(minutes(16)), "feed_outage")
    doc = outage.to_document()
    assert (doc["severity"], doc["office"], doc["subject"]) == ("critical", CITY, None)
    assert doc["details"]["carrier"] == "cmcc"
    assert doc["details"]["silent_subjects"] == doc["details"]["subjects"] == len(ids)
    for m in (20, 45, 61, 90, 180, 600):
        assert w.clock(minutes(m)) == [], f"nothing more at {m} min"


@pytest.mark.parametrize("resumed", [3, 8], ids=[
    "3 of 12 resume: the 9 others are not a new outage",
    "8 of 12 resume: the 4 others are lost only an hour later"])
def test_carrier_resumes_for_some_the_rest_count_afresh(world, resumed):
    w, ids = carrier_world(world)
    assert types(w.clock(minutes(16))) == ["feed_outage"]
    assert w.clock(minutes(61)) == []
    back, rest = ids[:resumed], ids[resumed:]
    resume = minutes(70)
    assert w.fixes([(s, resume, "HOME") for s in back])[0] == [], "no signal_restored flood"
    assert w.clock(resume + 1000) == [], "the feed coming back raises nothing at once"
    if resumed < len(ids) / 2:
        return    # most of the carrier's subjects are still missing: a new outage may follow
    for k in range(1, 7):   # those back keep reporting every 10 minutes
        now = resume + k * 10 * MIN_MS
        assert w.fixes([(s, now, "HOME") for s in back])[0] == []
        assert w.clock(now + 1000) == [], f"{k * 10} min after the feed resumed"
    assert w.clock(resume + 59 * MIN_MS) == []
    lost = w.clock(resume + 61 * MIN_MS)
    assert types(lost) == ["signal_lost"] * len(rest)
    assert sorted(a.subject for a in lost) == rest


def test_second_carrier_keeps_working_during_the_first_ones_outage(world):
    w, ids = carrier_world(world, extra=[subject("u1"), subject("u2")])
    w.fixes([("u1", T0, "HOME"), ("u2", T0, "HOME")], carrier="cucc")
    raised = []
    for m in range(10, 70, 10):      # u1 keeps reporting on cucc; u2 falls silent
        w.fix("u1", minutes(m), "HOME", carrier="cucc")
        raised += w.clock(minutes(m) + 1000)
    raised += w.clock(minutes(61))
    assert types(raised) == ["feed_outage", "signal_lost"]
    assert raised[0].to_document()["details"]["carrier"] == "cmcc"
    assert raised[1].subject == "u2"


def test_fewer_subjects_than_the_minimum_get_signal_lost_each(world):
    w, ids = carrier_world(world, n=9)
    assert w.clock(minutes(16)) == []
    lost = w.clock(minutes(61))
    assert types(lost) == ["signal_lost"] * 9


# --- permits -----------------------------------------------------------------------------


END = minutes(240)                       # the permit: T0 .. T0 + 4 h to Xuecheng
GRACE_MS = Rules().permit_overstay_after_s * 1000


def permit_world(world, **kw):
    w = world([subject("s1")], [permit("s1", T0, END)], **kw)
    w.clock(minutes(-10))
    assert w.fix("s1", minutes(-10), "HOME") == []
    return w


def test_permit_to_xuecheng_back_two_hours_late(world, engine, places):
    w = permit_world(world)
    for m in (60, 120, 180, 230):
        assert w.fix("s1", minutes(m), "XUECHENG") == [], f"permitted at {m} min"
    assert w.clock(minutes(235)) == []
    assert w.fix("s1", END + 10 * MIN_MS, "XUECHENG") == []
    exit_ = only(w.fix("s1", END + 20 * MIN_MS, "XUECHENG"), "zone_exit")
    assert exit_.to_document()["severity"] == "high"
    assert w.clock(END + GRACE_MS - 1000) == []
    over = only(w.clock(END + GRACE_MS), "permit_overstay")
    doc = over.to_document()
    assert (doc["severity"], doc["subject"], doc["office"]) == ("high", "s1", SHIZHONG_OFFICE)
    assert doc["details"]["permit"] == "p1"
    assert doc["details"]["destinations"] == [XUECHENG]
    assert doc["t"] == END + GRACE_MS
    assert doc["fix"]["t"] == END + 20 * MIN_MS
    assert doc["where"] == where_of(engine, places["XUECHENG"])
    assert w.clock(END + GRACE_MS + 1000) == [], "raised once"
    assert w.clock(END + HOUR_MS) == []
    # checking the same window again (a restart from the checkpoint) gives the same id
    again = w.clock_rules.check(w.ev.rules, END + GRACE_MS, END, w.carriers)
    assert [a.id for a in again] == [over.id]
    w.fix("s1", END + 2 * HOUR_MS, "HOME")
    back = only(w.fix("s1", END + 2 * HOUR_MS + MIN_MS, "HOME"), "zone_return")
    assert back.to_document()["details"]["exit_id"] == exit_.id


@pytest.mark.parametrize("home_at_min", [-10, 10, 29], ids=[
    "home 10 min before the end", "home 10 min after the end", "home 29 min after the end"])
def test_permit_to_xuecheng_back_in_time(world, home_at_min):
    w = permit_world(world)
    w.fix("s1", minutes(120), "XUECHENG")
    w.fix("s1", END + home_at_min * MIN_MS, "HOME")
    assert w.clock(END + GRACE_MS) == []
    assert "permit_overstay" not in types(w.clock(END + 2 * GRACE_MS))


def test_permit_ended_and_never_a_fix_is_an_overstay(world):
    w = world([subject("s1")], [permit("s1", T0, END)])
    w.clock(minutes(220))
    assert types(w.clock(END + GRACE_MS)) == ["permit_overstay"]


def test_permit_extended_no_overstay_while_the_extension_runs(world):
    """续假: a second permit to the same place starts when the first ends. While it is
    active Xuecheng counts as home (SPEC §2), so the first one's end is no overstay."""
    extension = permit("s1", END, END + 24 * HOUR_MS, pid="p2")
    w = world([subject("s1")], [permit("s1", T0, END), extension])
    w.clock(minutes(-10))
    for m in (60, 120, 180, 240, 250, 260):
        assert w.fix("s1", minutes(m), "XUECHENG") == [], f"permitted at {m} min"
    assert w.clock(END + GRACE_MS) == []


# --- delegation --------------------------------------------------------------------------


def delegation(sid: str, start_ms: int) -> dict:
    return {"id": f"d-{sid}", "subject": sid, "start": rfc3339(start_ms),
            "office": TENGZHOU_OFFICE, "home": [TENGZHOU]}


def delegated_world(world):
    return world([subject("d1"), subject("d2")], delegations=[delegation("d1", T0),
                                                               delegation("d2", T0)])


def test_delegated_to_tengzhou(world):
    w = delegated_world(world)
    for m in (0, 10, 20, 30):
        assert w.fix("d1", minutes(m), "TENGZHOU") == [], f"in Tengzhou at {m} min"
    assert w.fix("d1", minutes(40), "HOME") == []
    exit_ = only(w.fix("d1", minutes(50), "HOME"), "zone_exit")
    assert exit_.to_document()["office"] == TENGZHOU_OFFICE
    assert exit_.to_document()["details"]["copy_to"] == [SHIZHONG_OFFICE]


def test_delegated_to_tengzhou_before_the_start_the_origin_office_supervises(world):
    w = delegated_world(world)
    assert w.fix("d2", minutes(-120), "TENGZHOU") == []
    exit_ = only(w.fix("d2", minutes(-110), "TENGZHOU"), "zone_exit")
    assert exit_.to_document()["office"] == SHIZHONG_OFFICE
    assert "copy_to" not in exit_.to_document()["details"]
    # from the start Tengzhou is home: the exit closes, reported to the delegate
    assert w.fix("d2", minutes(0), "TENGZHOU") == []
    back = only(w.fix("d2", minutes(10), "TENGZHOU"), "zone_return")
    assert back.to_document()["office"] == TENGZHOU_OFFICE
    assert back.to_document()["details"]["copy_to"] == [SHIZHONG_OFFICE]


def test_delegated_to_tengzhou_signal_lost_goes_to_the_delegate(world):
    w = delegated_world(world)
    w.clock(T0)
    w.fixes([("d1", minutes(1), "TENGZHOU"), ("d2", minutes(1), "TENGZHOU")])
    lost = w.clock(minutes(62))
    assert types(lost) == ["signal_lost", "signal_lost"]
    for a in lost:
        assert a.to_document()["office"] == TENGZHOU_OFFICE
        assert a.to_document()["details"]["copy_to"] == [SHIZHONG_OFFICE]


def test_delegated_alarm_names_the_home_it_was_judged_against(world):
    """The Tengzhou office reads `home` beside `where`: an exit from Tengzhou found in
    Shizhong must not say home = Shizhong."""
    w = delegated_world(world)
    w.fix("d1", minutes(40), "HOME")
    exit_ = only(w.fix("d1", minutes(50), "HOME"), "zone_exit")
    assert exit_.to_document()["home"] == [TENGZHOU]


# --- late fixes --------------------------------------------------------------------------


def test_late_fix_never_flips_state(world):
    w = world([subject("s1")])
    w.clock(T0)
    assert w.fixes([("s1", minutes(0), "HOME"), ("s1", minutes(10), "HOME")]) == ([], 0)
    assert w.fixes([("s1", minutes(5), "FAR"), ("s1", minutes(6), "FAR"),
                    ("s1", minutes(10), "FAR")]) == ([], 3)
    assert w.fix("s1", minutes(20), "FAR") == [], "late fixes did not count towards an exit"
    assert types(w.fix("s1", minutes(21), "FAR")) == ["zone_exit"]


def test_late_fix_after_signal_lost_does_not_restore(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(30), "HOME")
    assert types(w.clock(minutes(91))) == ["signal_lost"]
    assert w.fixes([("s1", minutes(20), "HOME")]) == ([], 1)
    assert w.clock(minutes(200)) == [], "a late fix does not restart the silence either"
    assert types(w.fix("s1", minutes(201), "HOME")) == ["signal_restored"]


# --- registry changes, restarts ----------------------------------------------------------


def test_registry_change_without_restart(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    version = w.book.version
    w.register({"permits": [permit("s1", minutes(30), minutes(300))]})
    w.book.refresh(force=True)
    assert w.book.version > version
    for m in (60, 70, 80):
        assert w.fix("s1", minutes(m), "XUECHENG") == [], "judged with the new permit"
    # and a subject registered while running is judged too
    w.register({"subjects": [subject("s2")]})
    w.book.refresh(force=True)
    w.fix("s2", minutes(90), "FAR")
    assert [a.subject for a in w.fix("s2", minutes(91), "FAR")] == ["s2"]


def story(w: World) -> list[Alarm]:
    """Exit, return, silence, restore, permit overstay: every kind a subject can raise."""
    alarms = w.clock(minutes(-10))
    for k, place in enumerate(["HOME", "FAR", "FAR", "HOME", "HOME"]):
        alarms += w.fix("s1", minutes(k), place)
    alarms += w.fix("s2", minutes(0), "HOME")
    alarms += w.clock(minutes(65))
    alarms += w.fix("s1", minutes(100), "XUECHENG")
    alarms += w.fix("s1", minutes(230), "XUECHENG")
    alarms += w.clock(END + GRACE_MS)
    return alarms


def test_alarm_ids_are_stable_when_the_same_fixes_are_evaluated_again(world):
    w = world([subject("s1"), subject("s2")], [permit("s1", minutes(60), END)])
    first = story(w)
    assert types(first) == ["zone_exit", "zone_return", "signal_lost", "signal_lost",
                            "signal_restored", "permit_overstay"]
    w.restart()
    second = story(w)
    assert [a.id for a in second] == [a.id for a in first]
    assert len({a.id for a in first}) == len(first)

    def without_raised_at(a: Alarm) -> dict:
        return {k: v for k, v in a.to_document().items() if k != "raised_at"}

    assert [without_raised_at(a) for a in second] == [without_raised_at(a) for a in first]


def test_carriers_remember_names_ids_and_newest_fix():
    carriers = Carriers([])
    cmcc, cucc = carriers.id_of("cmcc"), carriers.id_of("cucc")
    assert (cmcc, cucc) == (0, 1) and carriers.id_of("cmcc") == cmcc
    carriers.saw(cmcc, T0)
    carriers.saw(cmcc, T0 - 1)          # an older batch never moves the newest back
    restored = Carriers(carriers.rows())
    assert restored.newest_by_id()[cmcc] == T0
    assert restored.name_of(cucc) == "cucc" and restored.id_of("ctcc") == 2


def test_a_feed_clock_tells_no_time_before_the_first_fix_then_follows_the_feed():
    clock = RulesClock("feed")
    assert clock.now_ms() is None          # a replay's clock rules wait for its first fix
    clock.observe(1_000_000)
    assert 1_000_000 <= clock.now_ms() < 1_000_000 + 5_000
    clock.observe(500)                     # an older fix does not turn the clock back
    assert clock.now_ms() >= 1_000_000
    wall = RulesClock("wall")
    assert abs(wall.now_ms() - time.time() * 1000) < 5_000


def test_a_restart_soon_after_the_last_check_postpones_no_signal_lost(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    assert w.clock(minutes(50)) == []
    w.resume(w.ev.rules.snapshot())
    w.clock_rules.silence.resume(minutes(50))   # the worker's last clock check, 0 min ago
    assert w.clock(minutes(59)) == []
    assert types(w.clock(minutes(61))) == ["signal_lost"]   # as if nothing had happened


def test_after_a_restart_during_an_outage_a_phone_that_stays_off_is_still_lost(world):
    w, ids = carrier_world(world)
    assert types(w.clock(minutes(16))) == ["feed_outage"]
    snapshot, rows = w.ev.rules.snapshot(), w.carriers.rows()
    w.resume(snapshot)
    w.carriers = Carriers(rows)           # the worker restarted; the feed is still down
    raised = []
    for k in range(30):                   # the feed is back at 25 min, but one phone is off
        now = minutes(25 + 10 * k)
        w.fixes([(s, now, "HOME") for s in ids[:-1]])
        raised += w.clock(now + 1000)
    lost = [a for a in raised if a.type == "signal_lost"]
    assert [a.subject for a in lost] == [ids[-1]]


# --- supervision levels (SPEC §11): each subject judged by its level's settings -----------


def test_strict_subject_is_lost_after_30_minutes_normal_after_an_hour_loose_after_two(world):
    w = world([subject("s1", level="strict"), subject("n1"), subject("l1", level="loose")])
    w.clock(T0)
    assert w.fixes([(s, minutes(0), "HOME") for s in ("s1", "n1", "l1")])[0] == []
    assert w.clock(minutes(29)) == [], "29 minutes of silence is not yet lost, even strict"
    lost = only(w.clock(minutes(31)), "signal_lost")
    assert lost.subject == "s1" and lost.to_document()["t"] == minutes(30)
    assert w.clock(minutes(59)) == []
    assert [(a.subject, a.to_document()["t"]) for a in w.clock(minutes(61))] == [
        ("n1", minutes(60))]
    assert w.clock(minutes(119)) == []
    assert [(a.subject, a.to_document()["t"]) for a in w.clock(minutes(121))] == [
        ("l1", minutes(120))]


def test_level_settings_from_the_config_reach_the_clock_rules(world):
    rules = Rules(strict={"signal_lost_after_s": 600}, loose={"signal_lost_after_s": 1200})
    w = world([subject("s1", level="strict"), subject("l1", level="loose")], rules=rules)
    w.clock(T0)
    w.fixes([("s1", minutes(0), "HOME"), ("l1", minutes(0), "HOME")])
    assert w.clock(minutes(9)) == []
    assert [a.subject for a in w.clock(minutes(11))] == ["s1"]
    assert [a.subject for a in w.clock(minutes(21))] == ["l1"]


def test_permit_overstay_grace_follows_the_level(world):
    """All away in Xuecheng, silent, after their permits end: the strict one's overstay
    comes after 15 minutes, the normal one's after 30, the loose one's after an hour
    (their silence raises signal_lost too, by level: not what this test looks at)."""
    w = world([subject("s1", level="strict"), subject("n1"), subject("l1", level="loose")],
              [permit(s, T0, END, pid=f"p-{s}") for s in ("s1", "n1", "l1")])
    w.clock(minutes(-10))
    assert w.fixes([(s, minutes(230), "XUECHENG") for s in ("s1", "n1", "l1")])[0] == []

    def overstays(now_ms: int) -> list[tuple[str, int, str]]:
        return [(a.subject, a.to_document()["t"], a.to_document()["details"]["permit"])
                for a in w.clock(now_ms) if a.type == "permit_overstay"]

    assert overstays(END + 14 * MIN_MS) == []
    assert overstays(END + 15 * MIN_MS) == [("s1", END + 15 * MIN_MS, "p-s1")]
    assert overstays(END + 29 * MIN_MS) == []
    assert overstays(END + 30 * MIN_MS) == [("n1", END + 30 * MIN_MS, "p-n1")]
    assert overstays(END + 59 * MIN_MS) == []
    assert overstays(END + 61 * MIN_MS) == [("l1", END + 60 * MIN_MS, "p-l1")]
    assert overstays(END + 3 * HOUR_MS) == [], "each raised once"


def test_made_strict_after_the_strict_grace_ran_out_the_overstay_is_raised_at_once(world):
    """20 minutes after the permit's end (normal grace: 30) the person is made strict
    (grace 15): already overdue, raised at the next check, as of the strict grace's end;
    then never again. Made normal again: no second overstay for the same permit."""
    w = world([subject("s1")], [permit("s1", T0, END)])
    w.clock(minutes(-10))
    w.fix("s1", minutes(230), "XUECHENG")
    assert [a for a in w.clock(END + 20 * MIN_MS) if a.type == "permit_overstay"] == []
    w.register({"subjects": [subject("s1", level="strict")]})
    w.book.refresh(force=True)
    over = only([a for a in w.clock(END + 20 * MIN_MS + 1000) if a.type == "permit_overstay"],
                "permit_overstay")
    assert over.to_document()["t"] == END + 15 * MIN_MS
    w.register({"subjects": [subject("s1")]})
    w.book.refresh(force=True)
    later = [a for m in (25, 30, 31, 60) for a in w.clock(END + m * MIN_MS)
             if a.type == "permit_overstay"]
    assert {a.id for a in later} <= {over.id}, "at most the same alarm again (stored once)"


def test_a_level_changed_in_the_registry_changes_the_rules_at_once(world):
    """Made strict while running: the next single fix outside is an exit; made loose,
    two are not."""
    w = world([subject("s1"), subject("s2", level="strict")])
    w.clock(T0)
    assert w.fix("s1", minutes(0), "FAR") == [], "normal: one fix outside is not an exit"
    assert types(w.fix("s2", minutes(0), "FAR")) == ["zone_exit"]
    assert w.fix("s1", minutes(1), "HOME") == []
    w.register({"subjects": [subject("s1", level="strict"), subject("s2", level="loose")]})
    w.book.refresh(force=True)
    exit_ = only(w.fix("s1", minutes(2), "FAR"), "zone_exit")
    assert exit_.to_document()["t"] == minutes(2)
    assert types(w.fix("s2", minutes(2), "HOME")) == []
    assert types(w.fix("s2", minutes(3), "HOME")) == ["zone_return"]
    assert w.fixes([("s2", minutes(4), "FAR")])[0] == []
    assert w.fixes([("s2", minutes(5), "FAR")])[0] == [], "loose: two fixes are not an exit"
    assert types(w.fix("s2", minutes(6), "FAR")) == ["zone_exit"]


# --- handset status (SPEC §14): off 关机, suspended 停机, unreachable 无法接通 ----------------

OFF_AFTER_MS = Rules().phone_off_after_s * 1000


def strict_json(alarm: Alarm) -> dict:
    """The alarm's JSON, refusing NaN and Infinity (a status row's missing position must
    never leak into a document)."""
    def refuse(constant):
        raise AssertionError(f"{constant} in alarm {alarm.type}: {alarm.to_json()}")
    return json.loads(alarm.to_json(), parse_constant=refuse)


def test_phone_reported_off_then_silent_is_phone_off_after_three_hours_not_signal_lost(
        world, engine, places):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    assert w.report("s1", minutes(10), "off") == []
    for m in (61, 120, 189):
        assert w.clock(minutes(m)) == [], f"reported off: not lost at {m} min"
    assert w.clock(minutes(190)) == [], "exactly three hours off is not yet phone_off"
    off = only(w.clock(minutes(191)), "phone_off")
    doc = strict_json(off)
    assert (doc["severity"], doc["subject"], doc["office"], doc["t"]) == (
        "high", "s1", SHIZHONG_OFFICE, minutes(190))
    assert doc["details"] == {"handset": "off", "since": minutes(10), "off_for_s": 181 * 60}
    x, y = places["HOME"]
    assert doc["fix"] == {"t": minutes(0), "lon": x, "lat": y, "acc": ACC_M, "src": "gps"}
    assert doc["where"] == where_of(engine, places["HOME"])
    for m in (192, 300, 24 * 60):
        assert w.clock(minutes(m)) == [], f"raised once, and never a signal_lost ({m} min)"
    assert w.report("s1", minutes(25 * 60), "off") == [], "a repeat of the report: nothing"
    restored = only(w.fix("s1", minutes(26 * 60), "HOME"), "signal_restored")
    assert strict_json(restored)["details"] == {"after": "phone_off"}
    assert w.clock(minutes(26 * 60 + 59)) == []
    lost = only(w.clock(minutes(26 * 60 + 61)), "signal_lost")   # the clock runs again
    assert lost.to_document()["details"]["silent_since"] == minutes(26 * 60)
    assert types(w.fix("s1", minutes(28 * 60), "HOME")) == ["signal_restored"]


def test_suspended_phone_without_any_position_names_no_fix(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.report("s1", minutes(5), "suspended")
    off = only(w.clock(minutes(5) + OFF_AFTER_MS + 1000), "phone_off")
    doc = strict_json(off)
    assert doc["fix"] is None and doc["where"] is None
    assert doc["details"]["handset"] == "suspended"


def test_phone_off_threshold_follows_the_level(world):
    rules = Rules(strict={"phone_off_after_s": 3600}, loose={"phone_off_after_s": 6 * 3600})
    w = world([subject("s1", level="strict"), subject("n1"), subject("l1", level="loose")],
              rules=rules)
    w.clock(T0)
    w.fixes([(s, minutes(0), "off") for s in ("s1", "n1", "l1")])

    def offs(m: float) -> list[tuple[str, int]]:
        return [(a.subject, a.to_document()["t"]) for a in w.clock(minutes(m))]

    assert offs(59) == []
    assert offs(61) == [("s1", minutes(60))]
    assert offs(179) == []
    assert offs(181) == [("n1", minutes(180))]
    assert offs(359) == []
    assert offs(361) == [("l1", minutes(360))]


def test_the_off_clock_starts_with_the_first_report_of_the_state(world):
    """off, off again (the same state: the clock runs on), unreachable, then off: the
    phone_off counts from the last change to off."""
    w = world([subject("s1"), subject("s2")])
    w.clock(T0)
    w.fixes([("s1", minutes(0), "off"), ("s2", minutes(0), "off")])
    w.report("s1", minutes(60), "off")
    w.fixes([("s2", minutes(30), "unreachable"), ("s2", minutes(40), "off")])
    assert [a.subject for a in w.clock(minutes(181))] == ["s1"]
    assert w.clock(minutes(219)) == []
    off = only(w.clock(minutes(221)), "phone_off")
    assert (off.subject, off.to_document()["details"]["since"]) == ("s2", minutes(40))


def test_a_phone_alternating_off_and_suspended_is_one_run_of_the_off_clock(world):
    """Off at 0 h, suspended at 2 h, off at 4 h: nobody can reach the phone the whole time,
    so phone_off comes 3 h after the first report (restarting the clock on each change would
    raise neither phone_off nor signal_lost, ever)."""
    w = world([subject("s1")])
    w.clock(T0)
    w.report("s1", minutes(0), "off")
    w.report("s1", minutes(120), "suspended")
    assert w.clock(minutes(179)) == []
    off = only(w.clock(minutes(181)), "phone_off")
    assert off.to_document()["details"]["since"] == minutes(0)
    assert off.to_document()["details"]["handset"] == "suspended"
    w.report("s1", minutes(240), "off")
    assert w.clock(minutes(480)) == [], "the same run: raised once"


def test_unreachable_changes_no_clock(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    assert w.report("s1", minutes(30), "unreachable") == []
    assert w.clock(minutes(59)) == []
    lost = only(w.clock(minutes(61)), "signal_lost")
    assert lost.to_document()["details"]["silent_since"] == minutes(0)
    assert w.ev.rules.handset[w.book.index_of["s1"]] == STATES.index("unreachable")
    assert w.clock(minutes(5 * 60)) == [], "no phone_off for an unreachable phone"
    restored = only(w.fix("s1", minutes(5 * 60), "HOME"), "signal_restored")
    assert restored.to_document()["details"] == {"after": "signal_lost"}
    assert w.ev.rules.handset[w.book.index_of["s1"]] == -1, "a newer fix ends the state"


def test_off_then_unreachable_lets_the_silence_clock_run_from_the_last_position(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    w.report("s1", minutes(10), "off")
    assert w.clock(minutes(90)) == []
    w.report("s1", minutes(95), "unreachable")
    lost = only(w.clock(minutes(96)), "signal_lost")
    assert lost.to_document()["details"]["silent_since"] == minutes(0)


def test_a_report_older_than_the_newest_position_changes_nothing(world):
    w = world([subject("s1"), subject("s2")])
    w.clock(T0)
    w.fix("s1", minutes(30), "HOME")
    assert w.fixes([("s1", minutes(20), "off")]) == ([], 1), "late: stored, counted"
    # in one batch: an off report, then a position fix of the same phone a minute later
    assert w.fixes([("s2", minutes(31), "HOME"), ("s2", minutes(30), "off")]) == ([], 1)
    # and a report older than the newest report of the same phone
    w.report("s1", minutes(40), "unreachable")
    assert w.fixes([("s1", minutes(35), "off")]) == ([], 1)
    lost = w.clock(minutes(92))
    assert sorted(a.subject for a in lost) == ["s1", "s2"], "both still lose signal as usual"
    assert "phone_off" not in types(w.clock(minutes(24 * 60)))


def test_a_position_newer_than_the_report_ends_it_before_the_threshold(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.report("s1", minutes(0), "off")
    assert w.fix("s1", minutes(100), "HOME") == [], "no alarm was raised: nothing to restore"
    assert w.clock(minutes(159)) == []
    assert types(w.clock(minutes(161))) == ["signal_lost"]
    assert "phone_off" not in types(w.clock(minutes(400)))


def test_a_status_row_never_gets_a_verdict(world):
    """Status rows among fixes: counted apart, no verdict, and they neither count toward
    an exit nor reset one; no NaN in any alarm."""
    w = world([subject("s1"), subject("s2")])
    w.clock(T0)
    result = w.batch([("s1", minutes(0), "FAR"), ("s2", minutes(0), "suspended"),
                      ("s1", minutes(1), "off"), ("s1", minutes(2), "FAR"),
                      ("s2", minutes(1), "unreachable")])
    assert result.verdicts.tolist() == [0, 0, 2] and result.reports == 3 and result.late == 1
    exit_ = only(result.alarms, "zone_exit")
    assert strict_json(exit_)["fix"]["t"] == minutes(2)
    only_reports = w.batch([("s2", minutes(5), "off")])
    assert only_reports.verdicts.tolist() == [0, 0, 0] and only_reports.alarms == []
    raised = w.clock(minutes(5) + OFF_AFTER_MS + 1000)
    assert sorted(types(raised)) == ["phone_off", "signal_lost"]
    for alarm in raised:
        strict_json(alarm)


def test_phone_off_survives_a_restart_with_the_same_id(world):
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    w.report("s1", minutes(10), "off")
    w.clock(minutes(100))
    snapshot = w.ev.rules.snapshot()
    first = only(w.clock(minutes(191)), "phone_off")
    w.resume(snapshot)
    w.clock_rules.silence.resume(minutes(100))
    assert w.clock(minutes(150)) == [], "restored: still reported off, not lost"
    again = only(w.clock(minutes(191)), "phone_off")
    assert again.id == first.id
    assert strict_json(only(w.fix("s1", minutes(200), "HOME"), "signal_restored"))[
        "details"] == {"after": "phone_off"}


def test_status_reports_keep_a_carrier_alive_for_feed_outage(world):
    """The carrier speaks of its subjects (unreachable, every ten minutes) but sends no
    position: not an outage; each is lost on its own an hour after its last position."""
    w, ids = carrier_world(world)
    raised = []
    for m in range(10, 70, 10):
        w.fixes([(s, minutes(m), "unreachable") for s in ids])
        raised += w.clock(minutes(m) + 1000)
    raised += w.clock(minutes(61))
    assert types(raised) == ["signal_lost"] * len(ids)


def test_phones_reported_off_are_no_outage_of_their_carrier(world):
    """7 of 12 phones off: the 5 others keep reporting; no feed_outage, and each of the 7
    raises phone_off three hours after its report."""
    w, ids = carrier_world(world)
    off, on = ids[:7], ids[7:]
    w.fixes([(s, minutes(1), "off") for s in off])
    raised = []
    for m in range(10, 190, 10):
        w.fixes([(s, minutes(m), "HOME") for s in on])
        raised += w.clock(minutes(m) + 1000)
    raised += w.clock(minutes(182))
    assert types(raised) == ["phone_off"] * len(off)
    assert sorted(a.subject for a in raised) == off


def test_lost_then_reported_off_is_phone_off_too(world):
    """Silent an hour (signal_lost), then the carrier says the phone is off: the desk
    learns that as well, three hours on; one signal_restored ends both."""
    w = world([subject("s1")])
    w.clock(T0)
    w.fix("s1", minutes(0), "HOME")
    assert types(w.clock(minutes(61))) == ["signal_lost"]
    w.report("s1", minutes(70), "off")
    assert w.clock(minutes(249)) == []
    assert types(w.clock(minutes(251))) == ["phone_off"]
    restored = only(w.fix("s1", minutes(300), "HOME"), "signal_restored")
    assert restored.to_document()["details"] == {"after": "phone_off"}


def test_after_a_long_stop_phone_off_counts_from_the_restart(world):
    """Off since before a long stop of the worker (no resume): like silence, the clock
    counts from when the restarted worker first watched the subject; the alarm's id and
    `since` still name the report."""
    w = world([subject("s1")])
    w.clock(T0)
    w.report("s1", minutes(0), "off")
    w.clock(minutes(60))
    w.resume(w.ev.rules.snapshot())           # back five hours later
    assert w.clock(minutes(300)) == []
    assert w.clock(minutes(479)) == []
    off = only(w.clock(minutes(481)), "phone_off")
    doc = off.to_document()
    assert (doc["t"], doc["details"]["since"]) == (minutes(480), minutes(0))
    assert doc["details"]["off_for_s"] == 481 * 60
