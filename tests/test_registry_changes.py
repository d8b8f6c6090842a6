"""Registry changes reach readers incrementally, and give what a fresh load gives.

A worker holds the registry's arrays and schedule; a desk write (an approved leave, a
new exclusion) must reach it within a second on a registry of any size, so the store keeps
a change log and the book applies only what a change touched. The property that matters:
after any sequence of writes, the incrementally kept book answers exactly as a book built
from scratch on the final registry. Standing permits (weekly windows, local time) are
checked against the calendar directly.
"""

from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.registry import RegistryStore
from alerts.schedule import AreaSchedule, recurring_windows
from alerts.subject_book import NEVER_MS, SubjectBook

CHINA = timezone(timedelta(hours=8))
PLACES = ("370402", "370403", "370481", "370406", "3704")
ZONES = ("Z1", "Z2")


def is_place(code: str) -> bool:
    return code in PLACES


def is_zone(code: str) -> bool:
    return code in ZONES


class CodeSets:
    """The verdict engine's id functions, as dicts: equal code sets share an id."""

    def __init__(self):
        self.area_sets: dict[frozenset, int] = {}
        self.exclusions: dict[frozenset, int] = {frozenset(): 0}
        self.areas = self   # the book tells the area set when changes go live

    def live(self) -> None:
        pass

    def area_id(self, codes) -> int:
        return self.area_sets.setdefault(frozenset(codes), len(self.area_sets))

    def exclusion_set_id(self, codes) -> int:
        return self.exclusions.setdefault(frozenset(codes), len(self.exclusions))


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


OFFICES = [{"code": "3704", "name": "枣庄市"},
           {"code": "370402", "name": "市中区", "parent": "3704"},
           {"code": "370481", "name": "滕州市", "parent": "3704"}]
T0 = 1_767_225_600_000   # 2026-01-01T00:00Z


def subject_doc(n: int, home: str, level: str, exclusions: list[str], ended: int | None):
    doc = {"id": f"S{n}", "devices": [f"d{n}"], "office": "370402", "home": [home],
           "level": level, "exclusions": exclusions}
    if ended is not None:
        doc["ended"] = rfc3339(ended)
    return doc


subjects = st.builds(subject_doc, st.integers(0, 5), st.sampled_from(PLACES[:4]),
                     st.sampled_from(["normal", "strict", "loose"]),
                     st.lists(st.sampled_from(ZONES), max_size=2, unique=True),
                     st.one_of(st.none(), st.integers(T0, T0 + 10 * 86_400_000)))


@st.composite
def permits(draw):
    start = draw(st.integers(T0, T0 + 20 * 86_400_000))
    doc = {"id": f"P{draw(st.integers(0, 4))}", "subject": f"S{draw(st.integers(0, 5))}",
           "start": rfc3339(start),
           "end": rfc3339(start + draw(st.integers(3_600_000, 15 * 86_400_000))),
           "destinations": draw(st.lists(st.sampled_from(PLACES), min_size=1, max_size=2,
                                         unique=True)),
           "office": "370402"}
    if draw(st.booleans()):
        doc["recurring"] = {"days": draw(st.lists(st.integers(1, 7), min_size=1, max_size=7,
                                                  unique=True)),
                            "from": "08:00", "to": "19:00"}
    return doc


@st.composite
def delegations(draw):
    start = draw(st.integers(T0, T0 + 20 * 86_400_000))
    doc = {"id": f"D{draw(st.integers(0, 2))}", "subject": f"S{draw(st.integers(0, 5))}",
           "start": rfc3339(start), "office": "370481",
           "home": [draw(st.sampled_from(PLACES[:4]))]}
    if draw(st.booleans()):
        doc["end"] = rfc3339(start + draw(st.integers(3_600_000, 10 * 86_400_000)))
    return doc


changes = st.lists(st.fixed_dictionaries({}, optional={
    "subjects": st.lists(subjects, max_size=3, unique_by=lambda d: d["id"]),
    "permits": st.lists(permits(), max_size=2, unique_by=lambda d: d["id"]),
    "delegations": st.lists(delegations(), max_size=1)}), min_size=1, max_size=8)


def book_on(store: RegistryStore) -> SubjectBook:
    book = SubjectBook(CodeSets(), store)
    book.refresh(force=True)
    return book


def answers(book: SubjectBook, engine: CodeSets) -> dict:
    """Everything a worker asks of the book, over a grid of subjects and times, in terms
    of code sets (ids differ between books)."""
    areas = {v: k for k, v in engine.area_sets.items()}
    exclusions = {v: k for k, v in engine.exclusions.items()}
    n = book.size
    subject = np.repeat(np.arange(n, dtype=np.int32), 60)
    t = np.tile(T0 + np.arange(60, dtype=np.int64) * 13 * 3_600_000 // 2, n)
    registered = book.registered[:n]
    keep = registered[subject]
    subject, t = subject[keep], t[keep]
    return {
        "areas": [areas[a] for a in book.areas_at(subject, t).tolist()],
        "home": [areas[a] for a in book.schedule.home_areas_at(subject, t).tolist()],
        "routes": [book.schedule.routing_at(book.subjects[s].id, int(x))
                   for s, x in zip(subject.tolist()[::7], t.tolist()[::7])],
        "exclusions": [exclusions[e] for e in book.exclusions_of[:n][registered].tolist()],
        "rule_class": book.rule_class[:n][registered].tolist(),
        "ended": book.ended_ms[:n][registered].tolist(),
        "supervised": book.supervised(subject, t).tolist(),
        "ending": [(p.id, p.end_ms) for p in
                   book.schedule.permits_ending(T0, T0 + 40 * 86_400_000)],
        "index_of": book.index_of,
    }


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=changes)
def test_a_book_kept_by_changes_answers_as_one_built_afresh(tmp_path_factory, steps):
    path = tmp_path_factory.mktemp("reg") / "registry.sqlite"
    writer, reader = RegistryStore(path), RegistryStore(path)
    writer.import_document({"offices": OFFICES, "subjects": [
        subject_doc(n, "370402", "normal", [], None) for n in range(6)]}, is_place, is_zone)
    kept = book_on(reader)
    for step in steps:
        try:
            writer.import_document(step, is_place, is_zone)
        except ValueError:
            continue   # refused (a permit of an unknown subject...): nothing changed
        kept.refresh(force=True)
    fresh = book_on(RegistryStore(path))
    assert kept.version == fresh.version
    assert answers(kept, kept.engine) == answers(fresh, fresh.engine)


def test_a_reader_reads_only_what_changed(tmp_path):
    path = tmp_path / "registry.sqlite"
    writer, reader = RegistryStore(path), RegistryStore(path)
    writer.import_document({"offices": OFFICES, "subjects": [
        subject_doc(n, "370402", "normal", [], None) for n in range(3)]}, is_place, is_zone)
    first = reader.changes_since(-1)
    assert first.keys("subjects") == {"S0", "S1", "S2"}
    assert reader.changes_since(first.registry.version) is None
    writer.import_document({"subjects": [subject_doc(1, "370403", "strict", ["Z1"], None)]},
                           is_place, is_zone)
    change = reader.changes_since(first.registry.version)
    assert change.touched == {"offices": set(), "subjects": {"S1"}, "permits": set(),
                              "delegations": set(), "key_periods": set()}
    assert change.registry.subjects["S1"].level == "strict"
    assert change.registry.subjects["S0"] is first.registry.subjects["S0"]   # not re-read


def test_a_refused_write_changes_nothing_and_logs_nothing(tmp_path):
    path = tmp_path / "registry.sqlite"
    writer = RegistryStore(path)
    writer.import_document({"offices": OFFICES, "subjects": [
        subject_doc(n, "370402", "normal", [], None) for n in range(2)]}, is_place, is_zone)
    before = writer.version()
    bad = {"subjects": [{**subject_doc(1, "370402", "normal", [], None), "devices": ["d0"]}]}
    try:
        writer.import_document(bad, is_place, is_zone)
    except ValueError as e:
        assert "device 'd0' is claimed by subjects S0 and S1" in str(e)
    else:
        raise AssertionError("a device claimed twice was accepted")
    assert writer.version() == before
    assert RegistryStore(path).changes_since(before) is None


def test_the_also_hook_commits_with_the_change_or_undoes_it(tmp_path):
    path = tmp_path / "registry.sqlite"
    store = RegistryStore(path)
    store.import_document({"offices": OFFICES}, is_place, is_zone)

    def fail(db, registry):
        raise RuntimeError("the leave could not be written")

    try:
        store.import_document({"subjects": [subject_doc(0, "370402", "normal", [], None)]},
                              is_place, is_zone, also=fail)
    except RuntimeError:
        pass
    assert "S0" not in RegistryStore(path).load().subjects
    assert "S0" not in store.load().subjects


def local_ms(*args) -> int:
    return int(datetime(*args, tzinfo=CHINA).timestamp() * 1000)


def test_a_standing_permit_allows_its_weekly_hours_only():
    path_registry = {"offices": OFFICES, "subjects": [subject_doc(0, "370402", "normal", [],
                                                                  None)],
                     "permits": [{"id": "work", "subject": "S0",
                                  "start": "2026-03-02T00:00:00+08:00",      # a Monday
                                  "end": "2026-03-16T00:00:00+08:00",
                                  "destinations": ["370481"], "office": "3704",
                                  "recurring": {"days": [1, 2, 3, 4, 5],
                                                "from": "08:00", "to": "19:00"}}]}
    from alerts.registry import Registry, parse_document
    registry = parse_document(path_registry, Registry(), is_place, is_zone)
    engine = CodeSets()
    schedule = AreaSchedule.build(registry, engine.area_id)
    names = {v: k for k, v in engine.area_sets.items()}

    def allowed(*when) -> frozenset:
        t = np.array([local_ms(*when)], np.int64)
        return names[int(schedule.areas_at(np.zeros(1, np.int32), t)[0])]

    work, home = frozenset({"370402", "370481"}), frozenset({"370402"})
    assert allowed(2026, 3, 3, 10, 0) == work        # Tuesday 10:00
    assert allowed(2026, 3, 3, 7, 59) == home        # before the hours
    assert allowed(2026, 3, 3, 19, 0) == home        # the window is half-open
    assert allowed(2026, 3, 7, 10, 0) == home        # Saturday
    assert allowed(2026, 3, 13, 18, 59) == work      # the second Friday
    assert allowed(2026, 3, 16, 10, 0) == home       # after the permit's end
    windows = recurring_windows(registry.permits["work"], 0, 2**62)
    assert len(windows) == 10
    ends = [p.end_ms for lo in range(local_ms(2026, 3, 1), local_ms(2026, 3, 17), 3_600_000)
            for p in schedule.permits_ending(lo, lo + 3_600_000)]
    assert ends == [end for _, end in windows]       # each window's end once, in order
    assert ends[0] == local_ms(2026, 3, 2, 19, 0)


def test_ended_supervision_is_known_per_fix(tmp_path):
    store = RegistryStore(tmp_path / "registry.sqlite")
    end = T0 + 86_400_000
    store.import_document({"offices": OFFICES, "subjects": [
        subject_doc(0, "370402", "normal", [], end),
        subject_doc(1, "370402", "normal", [], None)]}, is_place, is_zone)
    book = book_on(store)
    i0, i1 = book.index_of["S0"], book.index_of["S1"]
    subject = np.array([i0, i0, i1], np.int32)
    t = np.array([end - 1, end, end + 10], np.int64)
    assert book.supervised(subject, t).tolist() == [True, False, True]
    assert book.watched(end)[[i0, i1]].tolist() == [False, True]
    assert book.ended_ms[i1] == NEVER_MS
