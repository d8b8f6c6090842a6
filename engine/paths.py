"""Where an engine keeps its files: everything under `[storage] path`."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnginePaths:
    root: Path

    @classmethod
    def create(cls, root: str) -> "EnginePaths":
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

    @property
    def alarms_db(self) -> Path:
        return self.root / "alarms.sqlite"

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
