"""The leave store on a real registry.sqlite: the schema step that adds it, and a step and
its permit committing together or not at all."""

import sqlite3
from contextlib import closing
from dataclasses import replace

import pytest

from alerts import registry as registry_module
from alerts.registry import RegistryError, RegistryStore
from engine.database import Schema, connect, schema_version
from supervision.leave import Leave, permit_id
from supervision.leave_rules import DAY_MS, Limits
from supervision.leave_store import LeaveRefusedError, LeaveStateError, LeaveStore
from tests.test_desk_api import C402, C403, REGISTRY, T1, code_checkers

NOW = 1_900_000_000_000   # 2030-03-17: ahead of any real clock for years


def pending(start=NOW + DAY_MS, days=2) -> Leave:
    return Leave("", "S1", T1, (C403,), start, start + days * DAY_MS, "探亲", None,
                 "pending", T1, "town1", NOW)


@pytest.fixture
def store(tmp_path):
    registry = RegistryStore(tmp_path / "registry.sqlite")
    registry.import_document(REGISTRY, *code_checkers())
    yield registry
    registry.close()


def test_a_registry_of_version_2_gains_the_leave_tables_and_keeps_its_entities(tmp_path):
    path = tmp_path / "registry.sqlite"
    v2 = Schema("registry", "registry", registry_module.SCHEMA.steps[:2])
    with closing(connect(path, v2)) as db:
        db.execute("INSERT INTO registry VALUES ('offices', 'X', "
                   "'{\"code\": \"X\", \"name\": \"X office\", \"parent\": null}')")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('version', 1)")
    registry = RegistryStore(path)
    try:
        with closing(sqlite3.connect(path)) as db:
            assert schema_version(db) == registry_module.SCHEMA.version == 3
        assert registry.load().offices["X"].name == "X office"
        leaves = LeaveStore(registry)
        assert leaves.query() == []
        registry.import_document(REGISTRY, *code_checkers())
        filed = leaves.request(pending(), "town1", T1, NOW)
        assert (filed.id, filed.status) == ("1", "pending")
    finally:
        registry.close()


def test_an_approval_the_registry_refuses_leaves_the_leave_pending(store):
    leaves = LeaveStore(store)
    unknown = replace(pending(), destinations=("999999",))   # no such jurisdiction or zone
    filed = leaves.request(unknown, "town1", T1, NOW)
    version = store.version()
    with pytest.raises(RegistryError, match="'999999'"):
        leaves.approve(filed.id, "boss", C402, "", NOW, code_checkers(), Limits())
    assert store.version() == version and permit_id(filed.id) not in store.load().permits
    assert leaves.get(filed.id).status == "pending"
    assert [h["action"] for h in leaves.history(filed.id)] == ["request"]


def test_a_cap_checked_inside_the_transaction_undoes_the_permit(store):
    leaves = LeaveStore(store)
    first = leaves.request(pending(), "town1", T1, NOW)
    second = leaves.request(pending(start=NOW + 2 * DAY_MS), "town1", T1, NOW)
    leaves.approve(first.id, "town1b", T1, "ok", NOW, code_checkers(), Limits())
    version = store.version()
    with pytest.raises(LeaveRefusedError) as refused:
        leaves.approve(second.id, "town1b", T1, "ok", NOW, code_checkers(), Limits())
    assert "overlaps" in refused.value.problems[0]
    assert store.version() == version and permit_id(second.id) not in store.load().permits
    assert leaves.get(second.id).status == "pending"


def test_steps_follow_the_states(store):
    leaves = LeaveStore(store)
    leave = leaves.request(pending(), "town1", T1, NOW)
    leaves.reject(leave.id, "town1b", T1, "no", NOW)
    for step in (lambda: leaves.approve(leave.id, "b", T1, "", NOW, code_checkers(), Limits()),
                 lambda: leaves.reject(leave.id, "b", T1, "", NOW),
                 lambda: leaves.cancel(leave.id, "b", T1, "", NOW, code_checkers()),
                 lambda: leaves.close_leave(leave.id, "b", T1, "", NOW, code_checkers())):
        with pytest.raises(LeaveStateError):
            step()
    over = leaves.request(replace(pending(), end_ms=NOW + DAY_MS), "town1", T1, NOW)
    with pytest.raises(LeaveRefusedError, match="over"):
        leaves.approve(over.id, "b", T1, "", NOW + DAY_MS, code_checkers(), Limits())


def test_a_cancelled_approval_allows_nothing_in_the_schedule_built_or_updated(store):
    import numpy as np

    from alerts.schedule import AreaSchedule

    areas: dict[tuple[str, ...], int] = {}

    def area_id(codes) -> int:
        return areas.setdefault(tuple(codes), len(areas))

    leaves = LeaveStore(store)
    leave = leaves.request(pending(), "town1", T1, NOW)
    leaves.approve(leave.id, "town1b", T1, "", NOW, code_checkers(), Limits())
    approved = store.load()
    updated = AreaSchedule.build(approved, area_id)
    s1 = approved.subjects["S1"].index
    during = np.array([leave.start_ms, leave.start_ms + DAY_MS], np.int64)
    index = np.full(2, s1, np.int32)
    home = area_id((C402,))
    assert (updated.areas_at(index, during) != home).all()        # approved: allowed away

    leaves.cancel(leave.id, "town1", T1, "", NOW, code_checkers())
    cancelled = store.load()
    updated.update(cancelled, permits=[permit_id(leave.id)])
    for schedule in (updated, AreaSchedule.build(cancelled, area_id)):
        assert (schedule.areas_at(index, during) == home).all()
        assert schedule.permits_ending(NOW - DAY_MS, NOW + 10 * DAY_MS) == []
