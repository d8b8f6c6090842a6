"""`engine.json`: how a running `geofence serve` tells other programs it is up, and where.

    {"state": "ready", "pid": 4242,
     "endpoints": {"ingest": "tcp://127.0.0.1:5555", "publish": "tcp://127.0.0.1:5556",
                   "desk": "http://127.0.0.1:8080",
                   "metrics": "http://127.0.0.1:9105/metrics"}}

`serve` keeps it in its storage directory (`EnginePaths.status_file`): state "starting"
(no endpoints) as it starts its processes, "ready" once every one of them is ready (the
workers' kernels warm), with the endpoints they bound (the ports the system chose, for
port 0 in the config; `desk` and `metrics` null when not configured), rewritten if a
restarted process binds anew; and removes it when it stops. Every write replaces the
file whole, so a reader never sees half of one. `pid` is the supervisor's: a file left
behind by a killed engine names a process that is not the one the reader started.
People read the same from the lines `serve` prints.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATES = ("starting", "ready")


@dataclass(frozen=True)
class Endpoints:
    ingest: str                  # carriers connect here (ZeroMQ)
    publish: str                 # alarms are published here (ZeroMQ PUB)
    desk: str | None = None      # the desk's URL
    metrics: str | None = None   # the ingest's /metrics URL


@dataclass(frozen=True)
class EngineStatus:
    state: str                   # one of STATES
    pid: int                     # the supervisor's process id
    endpoints: Endpoints | None = None   # once ready

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EngineStatus":
        """Raises ValueError for anything but a document `to_json` wrote."""
        try:
            doc = json.loads(text)
            endpoints = doc["endpoints"]
            status = cls(doc["state"], int(doc["pid"]),
                         None if endpoints is None else Endpoints(**endpoints))
        except (TypeError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"not an engine status document: {e}") from e
        if status.state not in STATES:
            raise ValueError(f"engine state {status.state!r} is not one of {STATES}")
        return status

    def write(self, path: Path) -> None:
        """Replace `path` with this status in one step (write aside, then rename)."""
        part = path.with_name(f".{path.name}.{os.getpid()}")
        part.write_text(self.to_json())
        part.replace(path)

    @classmethod
    def read(cls, path: Path) -> "EngineStatus | None":
        """The status at `path`; None when no engine has written one."""
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            return None
