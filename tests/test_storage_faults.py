"""Storage faults noticed by the store owners and reported on the health board, with
real files: a store moved away and back, replaced, a tmpfs that fills up, an ext4 file
system the kernel turns read-only (`engine.health`, `ingest.store`)."""

import logging
import multiprocessing
import os
import sqlite3

import pytest

from engine.health import HealthBoard, fault, fault_of
from ingest.store import Store, StoreFaultError, StoreReader
from tests.filesystems import ext4_image, fill, small_tmpfs, turn_read_only
from tests.test_store import record

WAL_FILES = ("", "-wal", "-shm")


def move(src, dst) -> None:
    for suffix in WAL_FILES:
        if os.path.exists(f"{src}{suffix}"):
            os.rename(f"{src}{suffix}", f"{dst}{suffix}")


def stored_batches(path) -> list[int]:
    with StoreReader(path) as reader:
        return [row[0] for row in reader._conn().execute("SELECT batch FROM batches")]


# --- the store ----------------------------------------------------------------------------

def test_a_store_moved_away_takes_no_write_until_it_is_back(tmp_path):
    path = tmp_path / "fixes.sqlite"
    with Store(path) as store:
        store.commit([record(1)])
        move(path, tmp_path / "elsewhere")
        with pytest.raises(StoreFaultError) as caught:
            store.commit([record(2)])
        assert caught.value.fault.kind == "missing"
        assert "put it back" in caught.value.fault.reason
        with pytest.raises(StoreFaultError):
            store.probe()
        assert not path.exists()      # never a new empty store in its place
        move(tmp_path / "elsewhere", path)
        store.probe()
        store.commit([record(3)])
    assert stored_batches(path) == [1, 3]


def test_a_wal_moved_away_alone_is_noticed(tmp_path):
    path = tmp_path / "fixes.sqlite"
    with Store(path) as store:
        store.commit([record(1)])
        os.rename(f"{path}-wal", tmp_path / "wal")
        with pytest.raises(StoreFaultError, match="removed or moved"):
            store.commit([record(2)])
        os.rename(tmp_path / "wal", f"{path}-wal")
        store.commit([record(3)])
    assert stored_batches(path) == [1, 3]


def test_a_store_replaced_by_a_copy_is_refused(tmp_path):
    path = tmp_path / "fixes.sqlite"
    with Store(path) as store:
        store.commit([record(1)])
        copy = tmp_path / "copy.sqlite"
        copy.write_bytes(path.read_bytes())
        os.replace(copy, path)
        with pytest.raises(StoreFaultError) as caught:
            store.commit([record(2)])
        assert caught.value.fault.kind == "replaced"


def test_a_full_file_system_refuses_commits_until_space_is_freed(tmp_path):
    mount = tmp_path / "small"
    with small_tmpfs(mount, 2048):
        path = mount / "fixes.sqlite"
        with Store(path) as store:
            store.commit([record(0)])
            ballast = fill(mount)
            stored, refused = [0], None
            for k in range(1, 200):   # the WAL's free room first, then the disk is full
                try:
                    store.commit([record(k)])
                    stored.append(k)
                except StoreFaultError as e:
                    refused = e.fault
                    break
            assert refused is not None and refused.kind == "disk_full"
            assert "free space" in refused.reason
            with pytest.raises(StoreFaultError):
                store.probe()
            ballast.unlink()
            store.probe()
            store.commit([record(1000)])
            assert stored_batches(path) == stored + [1000]


def test_a_file_system_turned_read_only_refuses_commits(tmp_path):
    mount = tmp_path / "ext4"
    with ext4_image(mount, tmp_path / "fs.img"):
        path = mount / "fixes.sqlite"
        with Store(path) as store:
            store.commit([record(1)])
            turn_read_only(mount)
            with pytest.raises(StoreFaultError) as caught:
                store.commit([record(2)])
            assert caught.value.fault.kind in ("read_only", "io_error")
            with pytest.raises(StoreFaultError):
                store.probe()


class _FailingCommits:
    """The store's connection, with COMMIT failing as SQLite reports a fault."""

    def __init__(self, db, message):
        self._db, self.message = db, message

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.message:
            raise sqlite3.OperationalError(self.message)
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


@pytest.mark.parametrize("message, kind", [("attempt to write a readonly database", "read_only"),
                                           ("disk I/O error", "io_error"),
                                           ("database or disk is full", "disk_full")])
def test_a_failed_commit_stores_nothing_and_the_store_recovers(tmp_path, message, kind):
    """Where the machine cannot make the fault for real (a read-only remount is refused
    while SQLite holds the file open for writing), the same error at the same call."""
    path = tmp_path / "fixes.sqlite"
    with Store(path) as store:
        real = store._db
        store._db = _FailingCommits(real, message)
        try:
            with pytest.raises(StoreFaultError) as caught:
                store.commit([record(1)])
            assert caught.value.fault.kind == kind
            store._db.message = None
            store.probe()
            store.commit([record(2)])
        finally:
            store._db = real
    assert stored_batches(path) == [2]


def test_os_errors_are_named_by_kind(tmp_path):
    assert fault_of(OSError(28, "No space left on device"), tmp_path).kind == "disk_full"
    assert fault_of(OSError(30, "Read-only file system"), tmp_path).kind == "read_only"
    assert fault_of(OSError(5, "Input/output error"), tmp_path).kind == "io_error"
    assert fault_of(sqlite3.OperationalError("no such table: x"), tmp_path).kind == "other"


# --- the health board ---------------------------------------------------------------------

def test_a_fault_is_logged_once_counted_and_cleared(caplog):
    board = HealthBoard.private("ingest")
    watch = board.reporter("ingest").watch("fixes")
    with caplog.at_level(logging.INFO, logger="geofence.health"):
        for _ in range(5):
            watch.failed(fault("disk_full", "/data/fixes.sqlite"))
        [shown] = board.faults()
        assert (shown.process, shown.store, shown.kind) == ("ingest", "fixes", "disk_full")
        watch.ok()
        watch.ok()
    assert board.faults() == []
    assert board.counts() == {("ingest", "fixes", "disk_full"): 1}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(errors) == 1 and "free space" in errors[0].getMessage()
    assert len(infos) == 1 and "works again" in infos[0].getMessage()


def test_a_fault_keeps_its_start_across_a_restart_and_a_new_process_clears_it():
    board = HealthBoard.create(multiprocessing.get_context("spawn"), ["ingest", "worker-0"])
    board.reporter("worker-0").watch("evaluation").failed(fault("missing", "/d/e.sqlite"))
    [first] = board.faults()
    again = board.reporter("worker-0").watch("evaluation")   # the restarted process
    assert again.active
    again.failed(fault("missing", "/d/e.sqlite"))
    assert board.faults() == [first]                            # same occurrence
    assert board.counts() == {("worker-0", "evaluation", "missing"): 1}
    again.ok()
    assert board.faults() == []


def _report_from_child(board: HealthBoard) -> None:
    board.reporter("worker-0").watch("evaluation").failed(fault("io_error", "/d/e.sqlite"))


def test_a_child_reports_on_the_board_it_was_given():
    spawn = multiprocessing.get_context("spawn")
    board = HealthBoard.create(spawn, ["ingest", "worker-0"])
    child = spawn.Process(target=_report_from_child, args=(board,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    [seen] = board.faults()
    assert (seen.process, seen.store, seen.kind) == ("worker-0", "evaluation", "io_error")


def test_a_writer_killed_mid_write_blocks_no_reader_and_its_successor_writes_again():
    board = HealthBoard.private("ingest")
    board.reporter("ingest").watch("fixes").failed(fault("io_error", "/d/fixes.sqlite"))
    board._block[0:8] = (3).to_bytes(8, "little")        # odd: a write that never ended
    board._block[20:40] = b"\xff" * 20                   # and what it left half-written
    assert board.faults() == []                          # answers, and shows no garbage
    successor = board.reporter("ingest").watch("fixes")
    successor.failed(fault("disk_full", "/d/fixes.sqlite"))
    [shown] = board.faults()
    assert shown.kind == "disk_full" and board._version(0) % 2 == 0


def test_damage_found_at_run_time_is_not_a_fault_to_wait_out(tmp_path):
    """A damaged page is no disk fault: retrying heals nothing, so it must stop the engine
    (engine.store_check), not flap between "store fault" and "works again"."""
    from engine.database import is_damage
    from engine.health import is_storage_error
    from ingest.fixes import FixColumns
    from ingest.store import StoreError

    path = tmp_path / "fixes.sqlite"
    with Store(path) as store:
        store.commit([record(b, fixes=FixColumns.empty(), carrier=f"c{b:05d}",
                             status="rejected") for b in range(5000)])
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages, = db.execute("PRAGMA page_count").fetchone()
    db.close()
    with open(path, "r+b") as f:          # garbage in the middle pages (the ack index)
        for page in range(pages // 2, pages // 2 + 5):
            f.seek(page * 4096 + 8)
            f.write(b"\xff" * 200)
    errors = []
    with Store(path) as store:
        for b in range(0, 5000, 50):
            try:
                store.lookup_ack(f"c{b:05d}", b)
            except StoreError as e:
                errors.append(e)
    assert errors, "the damaged pages were never read"
    assert all(is_damage(e) and not is_storage_error(e.__cause__ or e) for e in errors)
