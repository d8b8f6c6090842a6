"""engine/database.py: the one opener, transaction and migration of every SQLite file, and
each owner's first migration step on the files the unversioned engine wrote
(tests/data/engine-data-v0, see its README)."""

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from alerts import alarm_store, registry
from alerts.alarm_metrics import AlarmMetrics
from desk import users
from engine.database import (DatabaseError, NotReadyError, Schema, connect, migrate,
                             schema_version, transaction)
from ingest import store
from service import evaluation_store

OLD = Path(__file__).parent / "data" / "engine-data-v0"


def _table_t(db):
    db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")


def _column_y(db):
    db.execute("ALTER TABLE t ADD COLUMN y TEXT DEFAULT 'new'")


TWO_STEPS = Schema("test file", marker="t", steps=(_table_t, _column_y))


def tables(db) -> set[str]:
    return {name for name, in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_fresh_file_gets_every_step_wal_and_the_sync_level(tmp_path):
    with closing(connect(tmp_path / "f.sqlite", TWO_STEPS, sync="full")) as db:
        assert schema_version(db) == 2
        assert [row[1] for row in db.execute("PRAGMA table_info(t)")] == ["x", "y"]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_an_older_file_gets_the_missing_steps_only_and_keeps_its_rows(tmp_path):
    path = tmp_path / "f.sqlite"
    with closing(sqlite3.connect(path)) as db:   # as the unversioned code wrote it
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("INSERT INTO t VALUES (7)")
        db.commit()
    with closing(connect(path, TWO_STEPS)) as db:
        assert schema_version(db) == 2
        assert db.execute("SELECT x, y FROM t").fetchall() == [(7, "new")]
    with closing(connect(path, TWO_STEPS)) as db:   # nothing left to do
        assert schema_version(db) == 2


def test_a_failing_step_leaves_the_file_at_the_last_whole_version(tmp_path):
    def broken(db):
        db.execute("CREATE TABLE half (x)")
        raise RuntimeError("disk full")

    path = tmp_path / "f.sqlite"
    with pytest.raises(RuntimeError, match="disk full"):
        connect(path, Schema("test file", "t", (_table_t, broken)))
    with closing(connect(path, Schema("test file", "t", (_table_t,)))) as db:
        assert schema_version(db) == 1 and "half" not in tables(db)


def test_a_file_newer_than_the_code_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "f.sqlite"
    with closing(connect(path, TWO_STEPS)) as db:
        db.execute("PRAGMA user_version = 3")
    for read_only in (False, True):
        with pytest.raises(DatabaseError, match=r"test file .*f\.sqlite has schema version 3; "
                                                r"this code (knows up to|reads) version 2"):
            connect(path, TWO_STEPS, read_only=read_only)
    with closing(sqlite3.connect(path)) as db:
        assert schema_version(db) == 3
        assert [row[1] for row in db.execute("PRAGMA table_info(t)")] == ["x", "y"]
    with closing(sqlite3.connect(path)) as db, pytest.raises(DatabaseError, match="version 3"):
        migrate(db, TWO_STEPS)


def test_a_reader_never_creates_nor_upgrades_and_waits_for_the_writer(tmp_path):
    path = tmp_path / "f.sqlite"
    with pytest.raises(NotReadyError, match="does not exist"):
        connect(path, TWO_STEPS, read_only=True)
    assert not path.exists()
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(NotReadyError, match="schema version 0; its writer has not yet"):
        connect(path, TWO_STEPS, read_only=True)
    with closing(sqlite3.connect(path)) as db:
        assert schema_version(db) == 0
    connect(path, TWO_STEPS).close()
    with closing(connect(path, TWO_STEPS, read_only=True)) as db:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("INSERT INTO t VALUES (1, 'x')")


def test_another_programs_file_is_refused_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE mine (x)")
    for read_only in (False, True):
        with pytest.raises(DatabaseError, match="is not a geofence test file .*tables mine"):
            connect(path, TWO_STEPS, read_only=read_only)
    with closing(sqlite3.connect(path)) as db:
        assert tables(db) == {"mine"} and schema_version(db) == 0
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_transaction_commits_rolls_back_and_nested_joins_the_outer(tmp_path):
    with closing(connect(tmp_path / "f.sqlite", TWO_STEPS)) as db:
        with transaction(db):
            db.execute("INSERT INTO t (x) VALUES (1)")
        with pytest.raises(ValueError), transaction(db):
            db.execute("INSERT INTO t (x) VALUES (2)")
            raise ValueError("no")
        with pytest.raises(ValueError), transaction(db):
            db.execute("INSERT INTO t (x) VALUES (3)")
            with transaction(db):               # joins: the outer failure undoes it too
                db.execute("INSERT INTO t (x) VALUES (4)")
            raise ValueError("no")
        assert not db.in_transaction
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]


# -- every owner's step 1 on what the unversioned engine wrote ----------------------------

@pytest.fixture
def old(tmp_path) -> Path:
    shutil.copytree(OLD, tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize("name, schema, open_writer", [
    ("fixes.sqlite", store.SCHEMA, store.Store),
    ("evaluation-0-of-1.sqlite", evaluation_store.SCHEMA, evaluation_store.EvaluationStore),
    ("alarms.sqlite", alarm_store.SCHEMA, alarm_store.AlarmStore),
    ("registry.sqlite", registry.SCHEMA, registry.RegistryStore),
    ("desk.sqlite", users.SCHEMA, users.UserStore),
])
def test_each_file_of_the_unversioned_engine_is_upgraded_by_its_owner(old, name, schema,
                                                                      open_writer):
    path = old / name
    with closing(sqlite3.connect(path)) as db:
        assert schema_version(db) == 0
        rows_before = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in tables(db)}
    open_writer(path).close()
    with closing(sqlite3.connect(path)) as db:
        assert schema_version(db) == schema.version
        for table in tables(db) & set(rows_before):   # every row kept (a step may add its
            count = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]   # own meta)
            assert count == rows_before[table] or (table == "meta" and count > rows_before[table])


def test_the_evaluation_file_loses_what_nobody_read_and_keeps_reading_positions(old):
    path = old / "evaluation-0-of-1.sqlite"
    with closing(sqlite3.connect(path)) as db:
        before = db.execute("SELECT rowid, id, received_ms, doc FROM alarms ORDER BY rowid"
                            ).fetchall()
        file_id = db.execute("SELECT value FROM meta WHERE key = 'file_id'").fetchone()[0]
        checkpoint = db.execute("SELECT seq FROM checkpoint").fetchone()[0]
    with evaluation_store.EvaluationStore(path) as writer:
        assert writer.checkpoint() == checkpoint > 0
        assert writer.rule_snapshot()[1] is not None
    with closing(sqlite3.connect(path)) as db:
        assert "evaluated" not in tables(db)
        assert [row[1] for row in db.execute("PRAGMA table_info(alarms)")] == [
            "id", "received_ms", "doc"]
    with evaluation_store.EvaluationReader(path) as reader:
        assert reader.file_id() == file_id   # the dispatcher's positions stay valid
        assert [(a.rowid, a.received_ms, a.json_text) for a in reader.alarms_after(0, 10)] == [
            (rowid, received, doc) for rowid, _, received, doc in before]
        assert [a.rowid for a in reader.alarms_after(before[0][0], 10)] == [
            row[0] for row in before[1:]]


def test_the_fixes_store_keeps_its_batches_acks_and_seqs(old):
    path = old / "fixes.sqlite"
    with store.Store(path) as writer:
        assert writer.last_seq() == 9 and len(writer.read_batches(0, 100)) == 9
        assert writer.lookup_ack("cmcc", 0).status == "ok"
    with closing(sqlite3.connect(path)) as db:
        assert "meta" not in tables(db)   # its version is user_version now


def test_the_metrics_scrape_never_creates_nor_upgrades_the_alarm_store(old, tmp_path):
    missing = AlarmMetrics(tmp_path / "absent.sqlite")
    assert list(missing.collect()) == [] and not (tmp_path / "absent.sqlite").exists()
    metrics = AlarmMetrics(old / "alarms.sqlite")
    assert list(metrics.collect()) == []                 # older version: skipped
    with closing(sqlite3.connect(old / "alarms.sqlite")) as db:
        assert schema_version(db) == 0
    alarm_store.AlarmStore(old / "alarms.sqlite").close()   # the dispatcher upgrades it
    registry_ = CollectorRegistry()
    registry_.register(metrics)
    assert registry_.get_sample_value("geofence_alarms_raised_total",
                                      {"type": "zone_exit", "severity": "high"}) == 2
