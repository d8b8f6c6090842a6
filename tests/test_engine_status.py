"""`engine.json` (`engine.status`): what serve tells other programs, written whole or not
at all, read back exactly; anything else is refused with a clear error."""

import pytest

from engine.status import Endpoints, EngineStatus


def test_a_status_round_trips_through_its_file(tmp_path):
    path = tmp_path / "engine.json"
    assert EngineStatus.read(path) is None                 # no engine has written one
    EngineStatus("starting", 42).write(path)
    assert EngineStatus.read(path) == EngineStatus("starting", 42)
    ready = EngineStatus("ready", 42, Endpoints("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556",
                                                None, "http://127.0.0.1:9105/metrics"))
    ready.write(path)
    assert EngineStatus.read(path) == ready
    assert [p.name for p in tmp_path.iterdir()] == ["engine.json"]   # nothing left aside


@pytest.mark.parametrize("text", [
    "", "[]", '{"state": "ready"}', '{"state": "ready", "pid": 1, "endpoints": {"x": 1}}',
    '{"state": "running", "pid": 1, "endpoints": null}'])
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError, match="engine"):
        EngineStatus.from_json(text)
