"""Registry change: what one desk write costs a worker on a national registry.

An approval on the desk (a leave becomes a permit), a new exclusion zone or a new level
must reach every worker within a second. A registry of 700,000 subjects (China's
community corrections population; quick: 20,000) on the built-in Zaozhuang layer, each
with a phone and a home county, 2 % with an imported permit, is written once. Then
CHANGES single-entity writes go through `RegistryStore.import_document`, as the desk
makes them: a third approved leaves (a permit to another county), a third homes
moved to the next county (a new allowed area), a third level changes. After each, the worker's `SubjectBook.refresh` runs
and is timed (the change log read, the touched rows parsed, the schedule and arrays
patched); the desk-side write is timed too.

A change whose allowed area (home ∪ destinations) no worker has needed before also
builds that area's distance grid once (about a second for a county-sized union on
this machine, independent of the registry's size): those changes are counted and shown
apart, the target is for the registry's part.

Baseline, same run: what a worker did before the change log, a full rebuild of the book
from the file (`SubjectBook` on a fresh `RegistryStore`: every row read and parsed, the
schedule built for every subject). Target (issue 11): applying one change <= 200 ms in
the workers at 700,000 subjects.
"""

import time

import numpy as np

import geofence
from alerts.registry import RegistryStore
from alerts.subject_book import SubjectBook
from benchmarks.common import Report, log
from engine.config import Settings
from engine.layers import code_checkers, load_layers

SEED = 20261203
FULL = {"subjects": 700_000, "changes": 60}
QUICK = {"subjects": 20_000, "changes": 15}
PERMIT_SHARE = 0.02
DAY_MS = 86_400_000
T0 = 1_788_000_000_000


def run(quick: bool, tmp_dir: str | None = None) -> Report:
    import tempfile

    sizes = QUICK if quick else FULL
    n = sizes["subjects"]
    rep = Report("registry_change", {"seed": SEED, **sizes, "permit_share": PERMIT_SHARE,
                                     "layer": "built-in Zaozhuang"})
    jurisdictions, zones = load_layers(Settings())
    engine = geofence.VerdictEngine(jurisdictions, zones)
    is_place, is_zone = code_checkers(jurisdictions, zones)
    counties = sorted({str(p) for p in jurisdictions.parents if p})
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        path = f"{tmp}/registry.sqlite"
        writer = RegistryStore(path)
        log(f"registry_change: writing {n:,} subjects")
        started = time.perf_counter()
        writer.import_document(national_registry(n, counties), is_place, is_zone)
        rep.add("setup", "initial import", time.perf_counter() - started, "s")

        started = time.perf_counter()
        book = SubjectBook(engine, RegistryStore(path))
        book.refresh(force=True)
        rebuild_s = time.perf_counter() - started
        rep.add("baseline", "full rebuild of a worker's book", rebuild_s * 1e3, "ms")

        rng = np.random.default_rng(SEED)
        apply_ms, write_ms, new_area = [], [], []
        for k in range(sizes["changes"]):
            doc = one_change(k, rng, n, counties)
            started = time.perf_counter()
            writer.import_document(doc, is_place, is_zone)
            write_ms.append((time.perf_counter() - started) * 1e3)
            areas = len(engine.areas)
            started = time.perf_counter()
            book.refresh(force=True)
            apply_ms.append((time.perf_counter() - started) * 1e3)
            new_area.append(len(engine.areas) > areas)
            assert book.version == writer.version()
        check_applied(book, doc)
        group = f"one change, {n:,} subjects"
        known = [ms for ms, new in zip(apply_ms, new_area) if not new]
        p50, p99 = np.percentile(known, 50), np.percentile(known, 99)
        rep.add(group, "worker applies it, p50", p50, "ms")
        rep.add(group, "worker applies it, p99", p99, "ms", at_most=200)
        built = [ms for ms, new in zip(apply_ms, new_area) if new]
        rep.add(group, "changes that needed a new allowed area", len(built), "changes")
        if built:
            rep.add(group, "  those: worker applies it, max", max(built), "ms")
        rep.add(group, "  speed-up over a full rebuild (p50)", rebuild_s * 1e3 / p50, "x")
        rep.add(group, "desk write (import_document), p50", np.percentile(write_ms, 50), "ms")
        rep.add(group, "desk write, p99", np.percentile(write_ms, 99), "ms")
    return rep


def national_registry(n: int, counties: list[str]) -> dict:
    rng = np.random.default_rng(SEED)
    home = rng.integers(0, len(counties), n)
    offices = [{"code": "3704", "name": "枣庄市"}] + [
        {"code": c, "name": c, "parent": "3704"} for c in counties]
    subjects = [{"id": f"S{i:07d}", "devices": [str(13_000_000_000 + i)],
                 "office": counties[h], "home": [counties[h]]}
                for i, h in enumerate(home.tolist())]
    permits = [{"id": f"P{i:07d}", "subject": f"S{i:07d}",
                "start": _iso(T0), "end": _iso(T0 + 3 * DAY_MS),
                "destinations": [counties[(home[i] + 1) % len(counties)]],
                "office": counties[home[i]]}
               for i in np.flatnonzero(rng.random(n) < PERMIT_SHARE).tolist()]
    return {"offices": offices, "subjects": subjects, "permits": permits}


def one_change(k: int, rng, n: int, counties: list[str]) -> dict:
    """A desk write: an approved leave, a moved home, or a new level, by turns."""
    i = int(rng.integers(0, n))
    sid = f"S{i:07d}"
    home = counties[i % len(counties)]
    subject = {"id": sid, "devices": [str(13_000_000_000 + i)], "office": home,
               "home": [home]}
    if k % 3 == 0:
        start = T0 + int(rng.integers(0, 30)) * DAY_MS
        return {"permits": [{"id": f"leave-{k}", "subject": sid, "start": _iso(start),
                             "end": _iso(start + 5 * DAY_MS), "source": f"leave:{k}",
                             "destinations": [counties[(i + 1) % len(counties)]],
                             "office": home}]}
    if k % 3 == 1:
        return {"subjects": [{**subject, "home": [counties[(i + 2) % len(counties)]]}]}
    return {"subjects": [{**subject, "level": "strict"}]}


def check_applied(book: SubjectBook, doc: dict) -> None:
    """The last change is what the book now says (a benchmark of a no-op proves nothing)."""
    for s in doc.get("subjects", []):
        held = book.subjects[book.index_of[s["id"]]]
        assert (held.level, list(held.home)) == (s.get("level", "normal"), s["home"])
    for p in doc.get("permits", []):
        assert p["id"] in book.schedule._permit


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()
