"""Where an engine keeps its files: everything under `[storage] path`.

The only place that spells a file name. Each SQLite file has one owning module that
opens it (`engine.database` says how), and is written by:

    fixes.sqlite               ingest.store              ingest
    evaluation-K-of-N.sqlite   service.evaluation_store  worker K of N (`.retired` once
                                                         the worker count changed)
    alarms.sqlite              alerts.alarm_store        dispatcher, desk, webhook sender
                               (with alerts.outbox)
    registry.sqlite            alerts.registry           `geofence registry import`
    desk.sqlite                desk.users                desk, `geofence user add`
    locate.sqlite              carriers.locate_store     desk (requests), ingest (sent,
                                                         answered, timed out)
"""

import re
from dataclasses import dataclass
from pathlib import Path

_EVALUATION = re.compile(r"evaluation-(\d+)-of-(\d+)\.(sqlite|retired)")
_SINGLE_STORES = ("alarms.sqlite", "fixes.sqlite", "registry.sqlite", "desk.sqlite",
                  "locate.sqlite")


def is_store_name(name: str) -> bool:
    """Whether `name` is the name of one of an engine's SQLite files (no directory part)."""
    return name in _SINGLE_STORES or _EVALUATION.fullmatch(name) is not None


@dataclass(frozen=True)
class EvaluationFile:
    """One worker's evaluation file: worker `index` of `count`, retired when the worker
    count changed (kept until the dispatcher has read its last alarms)."""

    path: Path
    index: int
    count: int
    retired: bool


@dataclass(frozen=True)
class EnginePaths:
    root: Path

    @classmethod
    def create(cls, root: str | Path) -> "EnginePaths":
        path = Path(root).absolute()
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def fixes_db(self) -> Path:
        return self.root / "fixes.sqlite"

    @property
    def registry_db(self) -> Path:
        return self.root / "registry.sqlite"

    def worker_db(self, index: int, count: int) -> Path:
        return self.root / f"evaluation-{index}-of-{count}.sqlite"

    def evaluation_files(self, *, retired: bool = True) -> list[EvaluationFile]:
        """The workers' evaluation files present, in name order; retired ones too unless
        `retired=False`."""
        found = []
        for path in sorted(self.root.glob("evaluation-*-of-*.*")):
            match = _EVALUATION.fullmatch(path.name)
            if match and (retired or match[3] == "sqlite"):
                found.append(EvaluationFile(path, int(match[1]), int(match[2]),
                                            match[3] == "retired"))
        return found

    @staticmethod
    def retired(path: Path) -> Path:
        """The name an evaluation file takes when the worker count changes."""
        return path.with_suffix(".retired")

    @property
    def alarms_db(self) -> Path:
        return self.root / "alarms.sqlite"

    @property
    def desk_db(self) -> Path:
        """Desk users, sessions, failed logins."""
        return self.root / "desk.sqlite"

    @property
    def locate_db(self) -> Path:
        """Locate requests to carriers and their answers (`carriers.locate_store`)."""
        return self.root / "locate.sqlite"

    def store_files(self) -> list[Path]:
        """Every SQLite file present, downstream first: alarms, the evaluation files
        (retired ones too), fixes, registry, desk, locate requests: the order
        `engine.backup` copies them in (its docstring says why)."""
        files = [self.alarms_db] + [e.path for e in self.evaluation_files()]
        files += [self.fixes_db, self.registry_db, self.desk_db, self.locate_db]
        return [path for path in files if path.exists()]

    def pid_file(self, process: str) -> Path:
        """`<name>.pid`: which process is which, for operators (and the kill -9 tests)."""
        return self.root / f"{process}.pid"

    @property
    def alarms_endpoint(self) -> str:
        return f"ipc://{self.root / 'alarms.sock'}"

    @property
    def notify_endpoint(self) -> str:
        return f"ipc://{self.root / 'seq.sock'}"

    @property
    def done_endpoint(self) -> str:
        return f"ipc://{self.root / 'done.sock'}"

    @property
    def status_file(self) -> Path:
        """A running serve's state and endpoints (`engine.status`)."""
        return self.root / "engine.json"

    @property
    def log_file(self) -> Path:
        """Every engine process's log, when serve is asked to log to a file (the demo)."""
        return self.root / "engine.log"
