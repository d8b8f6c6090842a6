"""The durable store: fix blobs, group commit, acks, readers beside the writer, kill -9.

Every test uses a real SQLite file in tmp_path; the durability test kills a real writer
process with SIGKILL in the middle of its commits and checks what it had reported.
"""

import inspect
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ingest.fixes import BYTES_PER_FIX, FixBlobError, FixColumns
from engine.database import DatabaseError, NotReadyError, SyncModeError
from ingest.store import SCHEMA, BatchRecord, Committed, Store, StoreError, StoreReader

ROOT = Path(__file__).resolve().parents[1]
COLUMN_DTYPES = {"device": np.int32, "subject": np.int32, "t_ms": np.int64, "lon": np.float64,
                 "lat": np.float64, "acc_m": np.float32, "src": np.int8}


def make_fixes(k: int) -> FixColumns:
    """Batch k's fixes: deterministic, so a process that never saw them can check them."""
    rng = np.random.default_rng(k)
    n = 200 + (k * 37) % 300
    return FixColumns(
        device=rng.integers(0, 10**6, n, dtype=np.int32),
        subject=rng.integers(0, 10**4, n, dtype=np.int32),
        t_ms=1_700_000_000_000 + rng.integers(0, 86_400_000, n),
        lon=rng.uniform(116.0, 118.0, n),
        lat=rng.uniform(34.0, 35.0, n),
        acc_m=rng.uniform(5.0, 3000.0, n).astype(np.float32),
        src=rng.integers(-1, 3, n).astype(np.int8),
    )


def record(batch, fixes=None, carrier="cmcc", received_ms=1_000, status="ok", rejected=()):
    fixes = make_fixes(batch) if fixes is None else fixes
    return BatchRecord(carrier, batch, received_ms, fixes, status, rejected)


# --- FixColumns -------------------------------------------------------------------------

@st.composite
def fix_columns(draw):
    n = draw(st.integers(0, 40))
    return FixColumns(**{name: draw(hnp.arrays(dt, n)) for name, dt in COLUMN_DTYPES.items()})


@given(fix_columns())
def test_blob_round_trip_is_bit_exact(fixes):
    blob = fixes.to_bytes()
    assert len(blob) == 16 + len(fixes) * BYTES_PER_FIX
    back = FixColumns.from_bytes(blob)
    assert len(back) == len(fixes)
    for name in COLUMN_DTYPES:   # bytes, not values: NaN payloads and -0.0 survive too
        assert getattr(back, name).tobytes() == getattr(fixes, name).tobytes()
        assert getattr(back, name).dtype == COLUMN_DTYPES[name]


def test_from_bytes_makes_read_only_views_without_copying():
    blob = make_fixes(1).to_bytes()
    back = FixColumns.from_bytes(blob)
    whole = np.frombuffer(blob, np.uint8)
    for name in COLUMN_DTYPES:
        col = getattr(back, name)
        assert np.shares_memory(col, whole) and not col.flags.writeable
        assert col.ctypes.data % col.itemsize == 0   # aligned: wide columns come first
    assert back.equals(make_fixes(1))


def test_damaged_blobs_raise_a_clear_error():
    blob = make_fixes(2).to_bytes()
    for cut in [0, 3, 15, 16, 17, len(blob) // 2, len(blob) - 1]:
        with pytest.raises(FixBlobError, match="truncated"):
            FixColumns.from_bytes(blob[:cut])
    with pytest.raises(FixBlobError, match="trailing"):
        FixColumns.from_bytes(blob + b"\0")
    with pytest.raises(FixBlobError, match="not a fix blob"):
        FixColumns.from_bytes(b"XXXX" + blob[4:])
    with pytest.raises(FixBlobError, match="version 9"):
        FixColumns.from_bytes(blob[:4] + b"\x09\x00" + blob[6:])
    assert issubclass(FixBlobError, ValueError)


def test_take_and_concat():
    fixes = make_fixes(3)
    mask = fixes.src == 0
    assert fixes.take(mask).equals(FixColumns.concat([fixes]).take(np.flatnonzero(mask)))
    assert FixColumns.concat([fixes.take(np.arange(0, 10)), fixes.take(np.arange(10, len(fixes)))]
                             ).equals(fixes)
    assert len(FixColumns.concat([])) == 0 and FixColumns.empty().equals(fixes.take(mask & ~mask))


def test_columns_are_checked_not_converted():
    good = {name: np.zeros(3, dt) for name, dt in COLUMN_DTYPES.items()}
    with pytest.raises(ValueError, match="acc_m must be a 1-d float32"):
        FixColumns(**{**good, "acc_m": np.zeros(3)})
    with pytest.raises(ValueError, match="differ in length: src"):
        FixColumns(**{**good, "src": np.zeros(2, np.int8)})


# --- Store: commit, acks, duplicates ----------------------------------------------------

def test_commit_then_lookup(tmp_path):
    with Store(tmp_path / "s.db") as store:
        done = store.commit([
            record(1),
            record(2, fixes=make_fixes(2).take(np.arange(5)), status="partial",
                   rejected=[(np.int64(7), "lon"), (9, "duplicate")]),
            record(3, fixes=FixColumns.empty(), status="rejected", rejected=[(0, "time")]),
        ])
        assert [c.seq for c in done] == [1, 2, None] and not any(c.duplicate for c in done)
        ack = store.lookup_ack("cmcc", 2)
        assert (ack.status, ack.accepted, ack.rejected, ack.at_ms) == (
            "partial", 5, ((7, "lon"), (9, "duplicate")), 1_000)
        assert store.lookup_ack("cmcc", 3).rejected == ((0, "time"),)
        assert store.lookup_ack("cmcc", 4) is None and store.lookup_ack("other", 1) is None
        got = store.read_batches(0, 10)
        assert [seq for seq, _ in got] == [1, 2]      # no row for a batch with no fix
        assert got[0][1].equals(make_fixes(1)) and len(got[1][1]) == 5
        assert store.stats()["acks"] == 3 and store.last_seq() == 2


def test_a_taken_key_keeps_its_first_answer(tmp_path):
    with Store(tmp_path / "s.db") as store:
        store.commit([record(1, status="partial", rejected=[(3, "lat")])])
        done = store.commit([
            record(1, fixes=make_fixes(99)),   # resend that raced past lookup_ack
            record(2),
            record(2, fixes=make_fixes(98)),   # the same key twice in one group
        ])
        assert done[0] == Committed(None, store.lookup_ack("cmcc", 1))
        assert done[0].first.rejected == ((3, "lat"),) and done[0].first.status == "partial"
        assert not done[1].duplicate and done[1].seq == 2
        assert done[2].duplicate and done[2].first.accepted == len(make_fixes(2))
        got = dict(store.read_batches(0, 10))
        assert sorted(got) == [1, 2]
        assert got[1].equals(make_fixes(1)) and got[2].equals(make_fixes(2))


def test_two_writers_racing_on_one_key(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as a, Store(path) as b:
        assert a.lookup_ack("cmcc", 5) is None and b.lookup_ack("cmcc", 5) is None
        first = a.commit([record(5)])
        second = b.commit([record(5, fixes=make_fixes(6))])
        assert not first[0].duplicate and second[0].duplicate
        assert second[0].first.accepted == len(make_fixes(5))
        assert [seq for seq, _ in a.read_batches(0, 10)] == [first[0].seq]


def test_an_invalid_record_stores_nothing_of_its_group(tmp_path):
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(ValueError, match="ok, partial, rejected"):
            store.commit([record(1), record(2, status="duplicate")])
        with pytest.raises(ValueError, match="2\\^63"):
            store.commit([record(1), record(2**63)])
        assert store.lookup_ack("cmcc", 1) is None and store.read_batches(0, 10) == []
        store.commit([record(1)])                       # the connection is still usable
        assert store.last_seq() == 1


# --- Store: configuration, reopening, purging -------------------------------------------

def test_bad_sync_value_lists_the_allowed_ones(tmp_path):
    with pytest.raises(SyncModeError, match="normal, full; got 'fsync'") as err:
        Store(tmp_path / "s.db", sync="fsync")
    assert isinstance(err.value, ValueError) and not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("sync, level", [("normal", 1), ("full", 2)])
def test_wal_mode_and_sync_level(tmp_path, sync, level):
    with Store(tmp_path / "s.db", sync=sync) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == level
        assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_reopen_after_close_keeps_everything(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.commit([record(k) for k in range(5)])
        store.commit([record(5, fixes=FixColumns.empty(), status="rejected",
                             rejected=[(0, "lon")])])
    with Store(path, sync="full") as store:
        assert store.last_seq() == 5
        assert all(f.equals(make_fixes(seq - 1)) for seq, f in store.read_batches(0, 100))
        assert store.lookup_ack("cmcc", 5).rejected == ((0, "lon"),)
        assert store.commit([record(6)])[0].seq == 6
    with StoreReader(path) as reader:
        assert reader.stats()["batches"] == 6 and reader.stats()["acks"] == 7


def test_purge(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        for k in range(6):
            store.commit([record(k, received_ms=1_000 * k)])
        assert store.purge_batches(up_to_seq=4) == 4
        assert [seq for seq, _ in store.read_batches(0, 10)] == [5, 6]
        assert store.purge_acks(older_than_ms=2_000) == 2      # at_ms 0 and 1000
        assert store.lookup_ack("cmcc", 1) is None and store.lookup_ack("cmcc", 2) is not None
        assert store.purge_batches(up_to_seq=100) == 2
        stats = store.stats()
        assert (stats["batches"], stats["fixes"], stats["acks"], stats["last_seq"]) == (0, 0, 4, 6)
        assert stats["file_bytes"] > 0
    with Store(path) as store:   # seqs are never handed out again, even after a reopen
        assert store.commit([record(10)])[0].seq == 7


def test_retention_purges_only_old_batches_every_worker_evaluated(tmp_path):
    with Store(tmp_path / "s.db") as store:
        for k in range(6):
            store.commit([record(k, received_ms=1_000 * k)])       # seqs 1..6
        assert store.purge_batches_before(3_500, up_to_seq=2, limit=100) == 2  # not evaluated: kept
        assert store.purge_batches_before(3_500, up_to_seq=6, limit=1) == 1    # a pass's limit
        assert store.purge_batches_before(3_500, up_to_seq=6, limit=100) == 1  # seq 4 is old enough
        assert [r.seq for r in store.read_records(0, 10)] == [5, 6]
        assert [r.received_ms for r in store.read_records(0, 10)] == [4_000, 5_000]


# --- Readers beside the writer ----------------------------------------------------------

def test_reader_sees_whole_commits_in_order_while_the_writer_writes(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    groups, per_group = 40, 3
    errors = []

    def write():
        try:
            with Store(path) as writer:   # its own connection, in its own thread
                for g in range(groups):
                    writer.commit([record(g * per_group + j) for j in range(per_group)])
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=write)
    seen = []
    with StoreReader(path) as reader:
        thread.start()
        deadline = time.monotonic() + 60
        while len(seen) < groups * per_group and time.monotonic() < deadline:
            got = reader.read_batches(seen[-1][0] if seen else 0, 7)
            assert len(reader.read_batches(0, 10**6)) % per_group == 0   # whole groups only
            seen.extend(got)
        thread.join(timeout=60)
    assert not errors and not thread.is_alive()
    assert [seq for seq, _ in seen] == list(range(1, groups * per_group + 1))
    assert all(f.equals(make_fixes(seq - 1)) for seq, f in seen)


def test_what_is_not_a_store_is_refused_and_left_alone(tmp_path):
    with pytest.raises(NotReadyError, match="does not exist"):
        StoreReader(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE t (x)")
    for opener in (StoreReader, Store):
        with pytest.raises(DatabaseError, match="not a geofence fixes store"):
            opener(other)
    with closing(sqlite3.connect(other)) as db:   # untouched: no table of ours, no WAL
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 1000)
    with pytest.raises(DatabaseError, match="junk.db: open failed"):
        Store(tmp_path / "junk.db")
    with Store(tmp_path / "new.db") as store:
        store._db.execute("PRAGMA user_version = 99")
    for opener in (StoreReader, Store):
        with pytest.raises(DatabaseError, match="schema version 99; this code (reads|knows up "
                                                f"to) version {SCHEMA.version}"):
            opener(tmp_path / "new.db")


def test_a_reader_cannot_write(tmp_path):
    Store(tmp_path / "s.db").close()
    with StoreReader(tmp_path / "s.db") as reader:
        assert not hasattr(reader, "commit")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._db.execute("DELETE FROM acks")


def test_a_store_is_not_used_from_another_process(tmp_path):
    store = Store(tmp_path / "s.db")
    store._pid = -1   # as if this object had been inherited through fork()
    with pytest.raises(StoreError, match="open a new one in this process"):
        store.lookup_ack("cmcc", 1)
    store._pid = os.getpid()
    store.close()


def test_a_corrupt_blob_is_reported_not_returned(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.commit([record(1)])
        store._db.execute("UPDATE batches SET fixes = substr(fixes, 1, 100)")
        with pytest.raises(FixBlobError, match="truncated"):
            store.read_batches(0, 10)


# --- Durability: a real kill -9 ---------------------------------------------------------

WRITER = r"""
import sys, time
import numpy as np
from ingest.fixes import FixColumns
from ingest.store import BatchRecord, Store
{make_fixes}
path, sync, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(path, sync=sync)
deadline = time.monotonic() + 30          # stop by itself if nobody kills it
k = first
while time.monotonic() < deadline:
    done = store.commit([BatchRecord("kill", k + j, k + j, make_fixes(k + j), "ok")
                         for j in range(4)])
    for j, c in enumerate(done):          # reported only once commit() has returned
        sys.stdout.write(f"{{k + j}} {{c.seq}}\n")
        sys.stdout.flush()
    k += 4
"""


def run_writer_and_kill(path, sync, first, kill_after_lines):
    """Start the writer, read its reports and the store meanwhile, SIGKILL it.

    Returns {batch: seq} as reported by the writer and {seq: fixes} read while it ran.
    """
    code = WRITER.format(make_fixes=inspect.getsource(make_fixes))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lines: queue.Queue = queue.Queue()
    reported, live, reader = {}, {}, None
    with subprocess.Popen([sys.executable, "-c", code, str(path), sync, str(first)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=env) as child:
        pump = threading.Thread(target=pump_lines, args=(child.stdout, lines), daemon=True)
        pump.start()
        try:
            deadline = time.monotonic() + 60
            while len(reported) < kill_after_lines and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=1)
                except queue.Empty:
                    continue
                if line is None:   # the writer died on its own: its stderr says why
                    break
                take_report(line, reported)
                if reader is None:
                    reader = StoreReader(path)   # another process's file, read while it writes
                live.update(reader.read_batches(max(live, default=0), 50))
        finally:
            child.send_signal(signal.SIGKILL)    # mid-stream: it is committing in a loop
            child.wait(timeout=30)
            pump.join(timeout=30)
            if reader is not None:
                reader.close()
        errors = child.stderr.read()
    while not lines.empty() and (line := lines.get_nowait()) is not None:
        take_report(line, reported)   # printed before the kill landed
    assert len(reported) >= kill_after_lines and child.returncode == -signal.SIGKILL, errors
    return reported, live


def take_report(line: str, reported: dict[int, int]) -> None:
    """Record "batch seq"; a line the kill cut short (no newline) reports nothing."""
    if line.endswith("\n"):
        batch, seq = map(int, line.split())
        reported[batch] = seq


def pump_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_every_reported_commit_survives_kill_9(tmp_path, sync):
    path = tmp_path / "s.db"
    everything = {}
    for round_, kill_after in enumerate([1, 9, 40]):    # early, soon, mid-stream
        reported, live = run_writer_and_kill(path, sync, 10**6 * round_, kill_after)
        everything.update(reported)
        with Store(path, sync=sync) as store:             # opens cleanly after the kill
            assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = dict(store._db.execute("SELECT seq, batch FROM batches").fetchall())
            stored = dict(store.read_batches(0, 10**6))
            for batch, seq in everything.items():         # everything reported is there
                assert rows[seq] == batch
                assert stored[seq].equals(make_fixes(batch))
                assert store.lookup_ack("kill", batch).accepted == len(make_fixes(batch))
            for seq, batch in rows.items():               # and nothing is half there
                assert stored[seq].equals(make_fixes(batch))
                assert store.lookup_ack("kill", batch) is not None
            for seq, fixes in live.items():               # what a reader saw mid-stream
                assert fixes.equals(make_fixes(rows[seq]))
            assert store.stats()["acks"] == len(rows)
            assert store.last_seq() == max(rows)


def test_device_ids_are_recorded_by_index_and_only_in_order(tmp_path):
    with Store(tmp_path / "s.db") as store:
        assert store.device_ids() == []
        store.add_device_ids(0, ["a", "b"])
        store.add_device_ids(2, ["c"])
        with pytest.raises(ValueError, match="does not follow"):
            store.add_device_ids(5, ["d"])
        with pytest.raises(ValueError, match="recorded already"):
            store.add_device_ids(3, ["d", "a"])
    with StoreReader(tmp_path / "s.db") as reader:
        assert reader.device_ids() == ["a", "b", "c"]
