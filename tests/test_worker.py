"""The worker's loop, one named step at a time, without a process: stored batches in,
verdicts, alarms and the checkpoint committed, the dispatcher nudged, progress reported."""

import time

import numpy as np
import pytest
import zmq

from alerts.alarms import Alarm
from alerts.registry import RegistryStore
from engine.config import Settings, Storage
from engine.layers import code_checkers, load_layers
from engine.messages import ALARMS_STORED, WorkerReport
from engine.paths import EnginePaths
from ingest.fixes import FixColumns
from ingest.protocol import STATE0, STATES
from ingest.store import BatchRecord, Store
from service.worker import Worker

T0 = int(time.time() * 1000) - 10 * 60_000   # recent: no one is silent (clock = "wall")
FAR = (115.5, 33.5)   # outside every jurisdiction


@pytest.fixture
def data(tmp_path):
    settings = Settings(storage=Storage(path=str(tmp_path / "data")))
    paths = EnginePaths.create(settings.storage.path)
    registry = RegistryStore(paths.registry_db)
    registry.import_document({
        "offices": [{"code": "370402001", "name": "中心街街道司法所"}],
        "subjects": [{"id": "S1", "devices": ["13900000001"], "office": "370402001",
                      "home": ["370402"], "risk": "normal", "category": "probation"}]},
        *code_checkers(*load_layers(settings)))
    registry.close()
    return settings, paths


def store_batch(paths: EnginePaths, batch: int, t_ms: list[int]) -> None:
    n = len(t_ms)
    fixes = FixColumns(device=np.zeros(n, np.int32), subject=np.zeros(n, np.int32),
                       t_ms=np.array(t_ms, np.int64), lon=np.full(n, FAR[0]),
                       lat=np.full(n, FAR[1]), acc_m=np.full(n, 20.0, np.float32),
                       src=np.zeros(n, np.int8))
    with Store(paths.fixes_db) as store:
        store.commit([BatchRecord("cmcc", batch, t_ms[-1] + 500, fixes, "ok")])


def store_rows(paths: EnginePaths, batch: int, rows: list[tuple[int, int]]) -> None:
    """One stored batch of S1's rows (t_ms, src): a src of STATE0 and up is a handset
    status row, stored as ingest stores it (no position: lon, lat, acc NaN)."""
    t_ms, src = (np.array(c, dt) for c, dt in zip(zip(*rows), (np.int64, np.int8)))
    status = src >= STATE0
    n = len(rows)
    fixes = FixColumns(device=np.zeros(n, np.int32), subject=np.zeros(n, np.int32),
                       t_ms=t_ms, lon=np.where(status, np.nan, FAR[0]),
                       lat=np.where(status, np.nan, FAR[1]),
                       acc_m=np.where(status, np.nan, 20.0).astype(np.float32), src=src)
    with Store(paths.fixes_db) as store:
        store.commit([BatchRecord("cmcc", batch, int(t_ms.max()) + 500, fixes, "ok")])


def stored_alarms(worker: Worker) -> list[Alarm]:
    return [Alarm.from_json(a.json_text) for a in worker.results.alarms_after(0, 100)]


def test_one_step_evaluates_commits_nudges_and_reports(data):
    settings, paths = data
    ctx = zmq.Context()
    reports, nudges = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
    reports.bind(paths.done_endpoint)
    nudges.bind(paths.alarms_endpoint)
    store_batch(paths, 1, [T0, T0 + 60_000])       # two fixes far out: a zone_exit
    worker = Worker(settings, 0, 1, restarts=2)
    try:
        worker.open_store(lambda: False)
        worker.connect(ctx)
        assert WorkerReport.decode(reports.recv()) == WorkerReport(0, 0, restarts=2)

        assert worker.step() is True
        assert worker.results.checkpoint() == worker.position == 1
        [alarm] = stored_alarms(worker)
        assert (alarm.type, alarm.subject, alarm.t_ms) == ("zone_exit", "S1", T0 + 60_000)
        assert nudges.recv() == ALARMS_STORED
        report = WorkerReport.decode(reports.recv())
        assert (report.seq, report.verdicts, report.restarts) == (1, (0, 0, 2), 2)

        assert worker.step() is False               # nothing new: nothing committed
        assert worker.results.checkpoint() == 1 and len(stored_alarms(worker)) == 1
        assert reports.poll(100) == 0
    finally:
        worker.close()
        reports.close(0)
        nudges.close(0)
        ctx.term()


def test_a_restarted_worker_resumes_after_its_checkpoint_and_raises_nothing_twice(data):
    settings, paths = data
    store_batch(paths, 1, [T0, T0 + 60_000])
    first = Worker(settings, 0, 1)
    ctx = zmq.Context()
    try:
        first.open_store(lambda: False)
        first.connect(ctx)
        first.step()
    finally:
        first.close()
    store_batch(paths, 2, [T0 + 120_000])
    again = Worker(settings, 0, 1, restarts=1)
    try:
        again.open_store(lambda: False)
        again.connect(ctx)
        assert again.done == 1
        again.step()
        assert again.results.checkpoint() == 2
        assert [a.type for a in stored_alarms(again)] == ["zone_exit"]
    finally:
        again.close()
        ctx.destroy(0)


def test_status_rows_are_not_counted_among_the_verdicts_reported(data):
    """A batch of two fixes far out and two handset status rows: the exit is raised by the
    fixes alone, the report to ingest counts two verdicts, and the stored alarm holds no
    NaN; a batch of status rows only reports no verdict and moves the checkpoint."""
    settings, paths = data
    ctx = zmq.Context()
    reports = ctx.socket(zmq.PULL)
    reports.bind(paths.done_endpoint)
    off = STATE0 + STATES.index("off")
    store_rows(paths, 1, [(T0, 0), (T0 + 30_000, off), (T0 + 60_000, 0),
                          (T0 + 90_000, STATE0 + STATES.index("unreachable"))])
    worker = Worker(settings, 0, 1)
    try:
        worker.open_store(lambda: False)
        worker.connect(ctx)
        WorkerReport.decode(reports.recv())
        assert worker.step() is True
        report = WorkerReport.decode(reports.recv())
        assert (report.seq, report.verdicts) == (1, (0, 0, 2))
        [alarm] = stored_alarms(worker)
        assert (alarm.type, alarm.t_ms) == ("zone_exit", T0 + 60_000)
        assert "NaN" not in alarm.to_json()
        assert worker.evaluation.rules.handset[0] == STATES.index("unreachable")

        store_rows(paths, 2, [(T0 + 120_000, off)])
        assert worker.step() is True
        report = WorkerReport.decode(reports.recv())
        assert (report.seq, report.verdicts, report.late) == (2, (0, 0, 0), 0)
        assert worker.evaluation.rules.handset[0] == STATES.index("off")
    finally:
        worker.close()
        reports.close(0)
        ctx.term()
