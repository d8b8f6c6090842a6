"""`geofence serve`: the engine as one supervised tree of processes.

    supervisor (this process) ── ingest (ROUTER, store writer, metrics)
                              ├─ worker 0..N-1 (verdicts, rules, alarms stored)
                              ├─ dispatcher (alarm store, escalation, PUB, webhooks)
                              ├─ desk (HTTP API, live stream, the page)
                              └─ connect-NAME per [connect.http.NAME] (positioning API ->
                                 the ingest, as a carrier; started once the ingest is up)

"ready" is printed once every child has said it is ready: the workers after their kernels
are compiled or loaded and warmed, so the first fixes meet no compile pause. Programs read
the same from `<storage>/engine.json` (`engine.status`), not from the printed lines.
Children log to stderr, or, given a log file (the demo's), everything they write goes there.

Health: before it starts any child, the supervisor creates the health board
(`engine.health.HealthBoard`: a block of shared memory, one slot per child, never a file in
the data directory, which may be what failed) and passes it to every child it starts or
restarts. Each child reports its storage faults in its own slot; the desk's /healthz, the
ingest's /metrics and the dispatcher's `engine_fault` alarm read them all.

Before any child starts, `service.preflight` checks everything they need (config ranges,
bind addresses, layers, CURVE keys, a writable storage path, undamaged store files); a
problem is one line and a non-zero exit. Children are started with the "spawn" method
(fresh interpreters: no ZeroMQ or SQLite state crosses a fork). A child that dies is
restarted; whatever it had acknowledged or checkpointed is in the store, so nothing is
lost; but a damaged store file heals by no restart: a child that meets one at run time
stops the tree with one line (`engine.store_check`), and so does one that fails the same
way three times in a row before it said ready (`service.startup`). Ctrl-C or SIGTERM stops the children
(each finishes its current group) and then the supervisor. A child whose supervisor
vanished (kill -9) stops by itself.
"""

import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path

from engine.address import parse_host_port
from engine.config import Settings
from engine.database import existing_stores_only
from engine.health import HealthBoard
from engine.paths import EnginePaths
from engine.status import Endpoints, EngineStatus
from engine.store_check import EXIT_STORE_DAMAGED, exits_on_damage, stopped_on_damage
from service.preflight import StartError, preflight
from service.startup import ReadyReporter, StartUpWatch, run_child

log = logging.getLogger("geofence.serve")

RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10)
STOP_GRACE_S = 10.0
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def _child_stop_flag() -> Callable[[], bool]:
    """A should_stop() for a child: SIGTERM, or the supervisor gone."""
    parent = os.getppid()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    return lambda: bool(stopping) or os.getppid() != parent


def _child_start(settings: Settings, name: str) -> None:
    """What every child does first: its pid file, and the rule that it opens the stores
    `serve` created and never creates one (`engine.database.existing_stores_only`)."""
    _write_pid(settings, name)
    existing_stores_only(settings.storage.path)


def _write_pid(settings: Settings, name: str) -> None:
    """<storage>/<name>.pid: which process is which, for operators (and the kill -9 tests).
    Best effort: a process restarted while the disk is full or read-only starts anyway, and
    its store reports the fault."""
    try:
        EnginePaths.create(settings.storage.path).pid_file(name).write_text(f"{os.getpid()}\n")
    except OSError as e:
        log.warning("%s: pid file not written: %s", name, e.strerror or e)


def _logging(log_file: Path | None, level: int = logging.INFO) -> None:
    """Log to stderr; with a log file, send everything this process writes there (log
    lines, warnings, a crash's traceback), so a terminal it shares stays clean."""
    if log_file is not None:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    logging.basicConfig(level=level, format=LOG_FORMAT)


@exits_on_damage
def ingest_main(settings: Settings, workers: int, ready, log_file: Path | None,
                health: HealthBoard | None = None) -> None:
    _logging(log_file)
    should_stop = _child_stop_flag()
    _child_start(settings, "ingest")
    import zmq

    from alerts.registry import RegistryStore
    from ingest.decode import warm_up as warm_decode
    from ingest.devices import warm_up as warm_devices
    from ingest.dedup import warm_up as warm_dedup
    from ingest.metrics import IngestMetrics
    from ingest.server import IngestOptions, IngestServer
    from ingest.store import Store

    paths = EnginePaths.create(settings.storage.path)
    for warm in (warm_decode, warm_devices, warm_dedup):
        warm()
    import geofence.datum
    geofence.datum.warm_up()
    ctx = zmq.Context.instance()
    store = Store(paths.fixes_db, settings.storage.sync)
    registry = RegistryStore(paths.registry_db)
    cache: dict = {}

    def devices_source(since: int):
        """The device table since the ingest's `since` version: whole when it has none (or
        another), else what the change log says changed, person by person."""
        from ingest.server import DevicesUpdate

        change = registry.changes_since(cache.get("version", -1))
        if change is not None:
            held = cache.setdefault("devices_of", {})
            if "version" not in cache:
                touched = set(change.registry.subjects)
            else:
                touched = change.keys("subjects")
            added, subjects, removed = [], [], []
            for sid in touched:
                s = change.registry.subjects.get(sid)
                before = held.get(sid, ())
                now = s.devices if s is not None else ()
                removed += [d for d in before if d not in now]
                added += list(now)
                subjects += [s.index] * len(now)
                held[sid] = now
            cache.update(version=change.registry.version,
                         delta=(cache.get("version", -1), added, subjects, removed))
        version = cache["version"]
        if since == version:
            return DevicesUpdate(version, False, [], [])
        after, added, subjects, removed = cache["delta"]
        if since == after and since >= 0:
            return DevicesUpdate(version, False, added, subjects, removed)
        devices, indices = [], []
        for sid, held_devices in cache["devices_of"].items():
            index = registry.load().subjects[sid].index
            devices += list(held_devices)
            indices += [index] * len(held_devices)
        return DevicesUpdate(version, True, devices, indices)

    metrics = IngestMetrics()
    health = health or HealthBoard.private("ingest")
    from ingest.metrics import StorageFaultCollector
    metrics.registry.register(StorageFaultCollector(health))
    from alerts.alarm_metrics import AlarmMetrics
    metrics.registry.register(AlarmMetrics(paths.alarms_db))
    metrics_port = _start_metrics(settings.ingest.metrics_bind, metrics)
    authenticator, server_keys = _curve(ctx, settings, metrics)
    s = settings.ingest
    options = IngestOptions(s.bind, s.max_fix_age_s * 1000, s.max_backlog_fixes,
                            (s.default_acc_gps_m, s.default_acc_wifi_m, s.default_acc_cell_m,
                             s.default_acc_unknown_m), workers,
                            settings.storage.keep_fixes_days * 24 * 3600 * 1000,
                            str(paths.locate_db), settings.carriers.locate_timeout_s * 1000,
                            settings.carriers.connection_idle_s)
    server = IngestServer(ctx, store, devices_source, options, metrics, paths.notify_endpoint,
                          paths.done_endpoint, authenticator, server_keys,
                          health.reporter("ingest"))
    endpoint = server.bind()
    ready.put(("ingest", endpoint, metrics_port))
    try:
        server.run(should_stop)
    finally:
        server.close()
        if authenticator is not None:
            authenticator.stop()
        store.close()


def _start_metrics(bind: str, metrics) -> int | None:
    if not bind:
        return None
    from prometheus_client import disable_created_metrics, start_http_server

    disable_created_metrics()  # the *_created series only add noise for operators

    host, port = parse_host_port(bind)
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server.server_port


def _curve(ctx, settings: Settings, metrics):
    if not settings.ingest.curve_keys:
        return None, None
    from ingest.auth import CarrierAuthenticator
    from ingest.keys import load_allowed_carriers, load_server_keys

    keys = load_server_keys(settings.ingest.curve_keys)
    allowed = load_allowed_carriers(settings.ingest.curve_carriers)
    auth = CarrierAuthenticator(ctx, allowed,
                                on_refusal=lambda r: metrics.auth_refusals.labels(r).inc())
    auth.start()
    return auth, keys


@exits_on_damage
def worker_main(settings: Settings, index: int, count: int, ready,
                log_file: Path | None, restarts: int = 0,
                health: HealthBoard | None = None) -> None:
    _logging(log_file)
    should_stop = _child_stop_flag()
    _child_start(settings, f"worker-{index}")
    from service.worker import run_worker

    name = f"worker-{index}"
    run_worker(settings, index, count, should_stop,
               on_ready=lambda: ready.put((name,)), restarts=restarts,
               health=(health or HealthBoard.private(name)).reporter(name))


@exits_on_damage
def desk_main(settings: Settings, ready, log_file: Path | None,
              health: HealthBoard | None = None) -> None:
    _logging(log_file)
    should_stop = _child_stop_flag()
    _child_start(settings, "desk")
    from desk.app import run_desk

    run_desk(settings, should_stop, on_ready=lambda url: ready.put(("desk", url)),
             health=health)


@exits_on_damage
def dispatcher_main(settings: Settings, ready, log_file: Path | None,
                    health: HealthBoard | None = None) -> None:
    _logging(log_file)
    should_stop = _child_stop_flag()
    _child_start(settings, "dispatcher")
    import zmq

    from service.dispatcher import Dispatcher

    dispatcher = Dispatcher(EnginePaths.create(settings.storage.path), zmq.Context.instance(),
                            settings, health=health or HealthBoard.private("dispatcher"))
    log.info("alarms published on %s", dispatcher.endpoint)
    ready.put(("dispatcher", dispatcher.endpoint))
    try:
        dispatcher.run(should_stop)
    finally:
        dispatcher.close()


@exits_on_damage
def connector_main(settings: Settings, name: str, ingest_endpoint: str, ready,
                   log_file: Path | None, health: HealthBoard | None = None) -> None:
    _logging(log_file)
    should_stop = _child_stop_flag()
    child = CONNECTOR_PREFIX + name
    _child_start(settings, child)
    from connect.runner import run_connector

    run_connector(settings, name, should_stop, ingest_endpoint=ingest_endpoint,
                  on_ready=lambda: ready.put((child,)))


CONNECTOR_PREFIX = "connect-"


def serve(settings: Settings, workers: int = 1, insecure: bool = False,
          out: Callable[[str], None] = print, should_stop: Callable[[], bool] | None = None,
          log_file: Path | None = None) -> None:
    """Run until Ctrl-C/SIGTERM (or `should_stop()`); prints the endpoints once ready and
    keeps `engine.json` (`engine.status`). `log_file`: where the children log instead of
    stderr."""
    paths = preflight(settings, workers, insecure)
    spawn = mp.get_context("spawn")
    ready = spawn.Queue()
    stopping: list[int] = []
    if should_stop is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.append(1))
        should_stop = lambda: bool(stopping)  # noqa: E731

    watch = StartUpWatch()

    def start(name: str, restarts: int = 0):
        reporter = ReadyReporter(ready)
        if name == "ingest":
            main, args = ingest_main, (settings, workers, reporter, log_file, health)
        elif name == "dispatcher":
            main, args = dispatcher_main, (settings, reporter, log_file, health)
        elif name == "desk":
            main, args = desk_main, (settings, reporter, log_file, health)
        elif name.startswith(CONNECTOR_PREFIX):
            main, args = connector_main, (settings, name.removeprefix(CONNECTOR_PREFIX),
                                          endpoints["ingest"], reporter, log_file, health)
        else:
            k = int(name.split("-")[1])
            main, args = worker_main, (settings, k, workers, reporter, log_file, restarts, health)
        proc = spawn.Process(target=run_child, args=(name, reporter, main, *args), name=name)
        watch.started(name)
        proc.start()
        return proc

    names = [f"worker-{k}" for k in range(workers)] + ["ingest", "dispatcher"]
    if settings.desk.bind:
        names.append("desk")
    connectors = [CONNECTOR_PREFIX + name for name in settings.connect.http]
    names += connectors
    health = HealthBoard.create(spawn, names)   # before any child: each gets it at start
    EngineStatus("starting", os.getpid()).write(paths.status_file)
    endpoints: dict = {}
    procs = {name: start(name) for name in names if name not in connectors}
    restarts = {name: 0 for name in names}
    waiting = set(names)
    announced = False

    def take(message: tuple) -> None:
        nonlocal announced
        if not watch.message(message):   # a start-up failure: judged when the child ends
            return
        waiting.discard(message[0])
        endpoints.update(_endpoints(message))
        _announce(message[0], endpoints, workers, out)
        if not waiting:   # every child ready; rewritten if one binds anew
            EngineStatus("ready", os.getpid(), Endpoints(**endpoints)).write(paths.status_file)
            if not announced:
                out("geofence: ready")
                announced = True

    try:
        while not should_stop():
            for message in _received(ready, timeout=0.2):
                take(message)
            if "ingest" in endpoints:   # connectors connect to the ingest's real endpoint
                for name in connectors:
                    if name not in procs:
                        procs[name] = start(name)
            for name, proc in procs.items():
                if not proc.is_alive() and not should_stop():
                    if proc.exitcode == EXIT_STORE_DAMAGED:   # no restart heals it
                        raise stopped_on_damage(name, paths)
                    for message in _received(ready):   # what it said before it ended
                        take(message)
                    reason = watch.exited(name, proc.exitcode)
                    if reason is not None:
                        log.error("%s; stopping the engine", reason)
                        raise StartError(reason)
                    delay = RESTART_BACKOFF_S[min(restarts[name], len(RESTART_BACKOFF_S) - 1)]
                    log.warning("%s exited with %s; restarting in %.1f s", name, proc.exitcode, delay)
                    time.sleep(delay)
                    restarts[name] += 1
                    procs[name] = start(name, restarts[name])
    finally:
        _stop_all(procs)
        paths.status_file.unlink(missing_ok=True)
        out("geofence: stopped")


def _received(ready, timeout: float = 0.0) -> list[tuple]:
    """Every message waiting on the `ready` queue, waiting up to `timeout` for the first."""
    messages = []
    try:
        messages.append(ready.get(timeout=timeout) if timeout else ready.get_nowait())
        while True:
            messages.append(ready.get_nowait())
    except queue.Empty:
        return messages


def _endpoints(message: tuple) -> dict:
    """The endpoints in a child's ready message, by `Endpoints` field."""
    if message[0] == "ingest":
        _, endpoint, metrics_port = message
        metrics = None if metrics_port is None else f"http://127.0.0.1:{metrics_port}/metrics"
        return {"ingest": endpoint, "metrics": metrics}
    if message[0] == "dispatcher":
        return {"publish": message[1]}
    if message[0] == "desk":
        return {"desk": message[1]}
    return {}


def _announce(child: str, endpoints: dict, workers: int, out: Callable[[str], None]) -> None:
    """One line per endpoint as each child comes up, for people."""
    if child == "ingest":
        out(f"geofence: ingest listening on {endpoints['ingest']}; metrics on "
            f"{endpoints['metrics'] or '(off)'}; {workers} worker(s)")
    elif child == "dispatcher":
        out(f"geofence: alarms published on {endpoints['publish']}")
    elif child == "desk":
        out(f"geofence: desk on {endpoints['desk']}")
    elif child.startswith(CONNECTOR_PREFIX):
        out(f"geofence: connector {child.removeprefix(CONNECTOR_PREFIX)} feeding the ingest")


def _stop_all(procs: dict) -> None:
    for proc in procs.values():
        if proc.is_alive():
            proc.terminate()  # SIGTERM: finish the current group, then exit
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs.values():
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
