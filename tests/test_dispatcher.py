"""The dispatcher imports every alarm workers store, exactly once, across restarts and
across a change of the worker count (when evaluation files are retired and replaced)."""

import zmq

from alerts.alarms import new_alarm
from alerts.schedule import Route
from alerts.registry import Subject
from engine.config import Alerts, Settings, Storage
from service.dispatcher import Dispatcher
from service.evaluation_store import EvaluationStore
from engine.paths import EnginePaths
from tests.engine_harness import free_port


def alarm(n: int):
    subject = Subject(f"S{n}", (f"139{n:08d}",), "370402001", ("370402",), index=n)
    return new_alarm("zone_exit", subject=subject, route=Route("370402001", (), ("370402",)),
                     t_ms=1_000 + n, trigger_t_ms=1_000 + n, fix=None, where=None,
                     raised_at_ms=0)


def test_every_stored_alarm_is_imported_once_even_when_a_worker_file_is_replaced(tmp_path):
    paths = EnginePaths.create(str(tmp_path / "data"))
    settings = Settings(storage=Storage(path=str(paths.root)),
                        alerts=Alerts(publish=f"tcp://127.0.0.1:{free_port()}"))
    ctx = zmq.Context()

    def dispatch() -> set[str]:
        d = Dispatcher(paths, ctx, settings)
        try:
            d.step()
            return set(d.alarms.raised_ids())
        finally:
            d.close()

    worker = EvaluationStore(paths.worker_db(0, 1))
    worker.commit(1, [alarm(1), alarm(2)])
    worker.close()
    assert dispatch() == {alarm(1).id, alarm(2).id}
    assert dispatch() == {alarm(1).id, alarm(2).id}        # a restart imports nothing twice
    worker = EvaluationStore(paths.worker_db(0, 1))        # its last moments, then retired
    worker.commit(2, [alarm(4)])
    worker.close()
    paths.worker_db(0, 1).rename(paths.retired(paths.worker_db(0, 1)))
    worker = EvaluationStore(paths.worker_db(0, 1))        # a new file at the same path
    worker.commit(2, [alarm(3)])
    worker.close()
    assert dispatch() == {alarm(1).id, alarm(2).id, alarm(3).id, alarm(4).id}
    ctx.term()
