"""A worker's evaluation file: alarms, checkpoint and rules state committed together, and
read back by the dispatcher through a read-only reader."""

import json

import pytest

from engine.database import NotReadyError
from service.evaluation_store import EvaluationReader, EvaluationStore


class Raised:
    """Stands for `alerts.alarms.Alarm`: what the store keeps of an alarm."""

    def __init__(self, alarm_id: str, received_ms: int | None = None):
        self.id, self.received_ms = alarm_id, received_ms

    def to_json(self) -> str:
        return json.dumps({"id": self.id})


def test_alarms_checkpoint_and_snapshot_in_one_commit_and_each_alarm_once(tmp_path):
    path = tmp_path / "evaluation-0-of-1.sqlite"
    with pytest.raises(NotReadyError):
        EvaluationReader(path)
    with EvaluationStore(path) as store:
        assert store.checkpoint() == 0 and store.rule_snapshot() == (0, None, None)
        store.commit(3, [Raised("a", 1_000), Raised("b")], b"state", [("cmcc", 0, 5)], 7_000)
        assert store.rule_snapshot() == (3, b"state", 7_000)
        store.commit(2, [Raised("a", 9_999)])          # a replay: nothing new, no step back
        store.commit(None, [Raised("c")], b"later", position=3)   # clock rules, no batch
        assert store.checkpoint() == 3 and store.rule_snapshot() == (3, b"later", None)
        assert store.carriers() == [("cmcc", 0, 5)]
    with EvaluationReader(path) as reader:
        assert reader.checkpoint() == 3 and len(reader.file_id()) == 32
        stored = reader.alarms_after(0, 10)
        assert [(json.loads(a.json_text)["id"], a.received_ms) for a in stored] == [
            ("a", 1_000), ("b", None), ("c", None)]
        assert reader.alarms_after(stored[0].rowid, 1) == [stored[1]]
        assert not hasattr(reader, "commit")


def test_a_new_partition_starts_after_a_seq_with_fresh_rules_state(tmp_path):
    path = tmp_path / "evaluation-1-of-2.sqlite"
    with EvaluationStore(path) as store:
        store.commit(4, [], b"old state")
        store.start_after(10)
        assert store.checkpoint() == 10 and store.rule_snapshot() == (10, None, None)
        file_id = store.file_id()
    with EvaluationStore(path) as again:                 # reopening keeps the file's id ...
        assert again.file_id() == file_id
    path.unlink()
    with EvaluationStore(path) as successor:             # ... a new file at the path has its own
        assert successor.file_id() != file_id
