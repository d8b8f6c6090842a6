"""Start a real `geofence serve` (real processes, sockets, SQLite files) for tests."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from engine.paths import EnginePaths
from engine.status import EngineStatus
from ingest.protocol import decode_ack

READY_TIMEOUT_S = 180


PORT_BAND = (20_000, 32_768)   # below Linux's ephemeral ports (32768-60999)


def free_port() -> int:
    """A loopback TCP port free now, for a config that must name one (an engine process
    restarted by its supervisor binds the same port again).

    The engine binds it seconds later, so the port must not be handed to anyone else
    meanwhile. Hence not the system's choice (bind to port 0: any process may be given the
    same port next, and outgoing connections and ZeroMQ's random ports use that range too)
    but a random port of PORT_BAND, which nothing assigns by itself, in a slice of its own
    per pytest-xdist worker: two workers never pick the same port."""
    low, high = PORT_BAND
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (high - low) // max(workers, 1)
    low += size * (worker % max(workers, 1))
    for _ in range(200):
        port = random.randrange(low, low + size)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue   # in use (or in TIME_WAIT): another one
            return port
    raise RuntimeError(f"no free port in {low}..{low + size - 1}")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid still exists (for "everything stopped" checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_config(root: Path, webhooks: dict | None = None, rules: dict | None = None,
                 desk: bool = False, alerts: dict | None = None, storage: dict | None = None,
                 carriers: dict | None = None, **ingest) -> Path:
    """A config on free loopback ports in `root`; the desk only when asked (port 0)."""
    port = ingest.pop("port", free_port())
    lines = ["[storage]", f'path = "{root / "data"}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in (storage or {}).items()]
    lines += ["[ingest]", f'bind = "tcp://127.0.0.1:{port}"', 'metrics_bind = "127.0.0.1:0"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in ingest.items()]
    lines += ["[alerts]", f'publish = "tcp://127.0.0.1:{free_port()}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in (alerts or {}).items()]
    for office, hook in (webhooks or {}).items():
        lines += [f'[alerts.webhooks."{office}"]'] + [f"{k} = {json.dumps(v)}"
                                                        for k, v in hook.items()]
    lines += ["[desk]", f'bind = "{"127.0.0.1:0" if desk else ""}"']
    if rules:
        lines += ["[rules]"] + [f"{k} = {json.dumps(v)}" for k, v in rules.items()]
    if carriers:
        lines += ["[carriers]"] + [f"{k} = {json.dumps(v)}" for k, v in carriers.items()]
    path = root / "geofence.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def import_registry(config: Path, document: dict) -> None:
    """`geofence registry import` of `document` into the engine configured by `config`."""
    from service.cli import main as cli

    registry = config.parent / "registry.json"
    registry.write_text(json.dumps(document, ensure_ascii=False))
    if cli(["--config", str(config), "registry", "import", str(registry)]):
        raise RuntimeError("registry import failed")


def population_document(n: int, seed: int = 1) -> dict:
    from sim.population import builtin_population, registry_document

    layer, people, _ = builtin_population(n, seed)
    return registry_document(layer, people)


class Engine:
    """`geofence serve` in a subprocess; `status` (its engine.json) and `endpoint` once
    every process is ready; always stopped by `stop()`."""

    def __init__(self, config: Path, workers: int = 1):
        self.config = config
        self.root = config.parent / "data"
        self.paths = EnginePaths(self.root)
        self.workers = workers
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--config", str(config), "serve",
             "--workers", str(workers)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.status = self._wait_ready()
        self.endpoint = self.status.endpoints.ingest

    def _wait_ready(self, timeout: float = READY_TIMEOUT_S) -> EngineStatus:
        """This engine's engine.json (the supervisor is our subprocess) once ready."""
        path = EnginePaths(self.root).status_file
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = EngineStatus.read(path)
            if status is not None and status.pid == self.proc.pid and status.state == "ready":
                return status
            if self.proc.poll() is not None:
                raise RuntimeError("engine exited:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)
        raise TimeoutError("engine not ready:\n" + "\n".join(self.lines[-30:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, after: int = 0, timeout: float = READY_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None:
                raise RuntimeError("engine exited:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)
        raise TimeoutError(f"no {prefix!r} in:\n" + "\n".join(self.lines[-30:]))

    @property
    def metrics_url(self) -> str:
        return self.status.endpoints.metrics

    def metrics(self) -> dict[str, float]:
        """The engine's /metrics as {series: value} (labels kept in the series name)."""
        import urllib.request

        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        values = {}
        for row in text.splitlines():
            if row and not row.startswith("#"):
                series, _, value = row.rpartition(" ")
                values[series] = float(value)
        return values

    def pid(self, name: str) -> int:
        return int(self.paths.pid_file(name).read_text())

    def kill9(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGKILL)

    def kill_tree(self) -> None:
        """kill -9 of every engine process at once (they share a process group)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)
        self.proc.stdout.close()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(10)
        self.proc.stdout.close()

    def alarm_store(self):
        from alerts.alarm_store import AlarmStore

        return AlarmStore(self.paths.alarms_db)

    def evaluated_fixes(self) -> int:
        """Stored fixes that every worker has evaluated: those of the batches up to the
        lowest checkpoint of this engine's evaluation files (0 before each has one)."""
        from engine.database import NotReadyError
        from ingest.store import StoreReader
        from service.evaluation_store import EvaluationReader

        checkpoints = []
        try:
            for k in range(self.workers):
                with EvaluationReader(self.paths.worker_db(k, self.workers)) as reader:
                    checkpoints.append(reader.checkpoint())
            with StoreReader(self.paths.fixes_db) as store:
                return store.stats()["fixes"] - store.fixes_after(min(checkpoints))
        except NotReadyError:   # a file not created yet
            return 0


class Carrier:
    """A minimal DEALER carrier for tests: send a frame, wait for its ack (or None)."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.endpoint = endpoint
        self._open()

    def _open(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    def request(self, frame: bytes, timeout_ms: int = 5000) -> dict | None:
        self.sock.send(frame)
        if self.sock.poll(timeout_ms):
            return decode_ack(self.sock.recv())
        self.sock.close()  # Lazy Pirate: a fresh socket before the resend
        self._open()
        return None

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
