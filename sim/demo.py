"""`geofence demo`: the whole engine on built-in data (SPEC §9).

    geofence demo [--subjects N] [--seed S] [--speed X] [--data DIR] [--desk-bind HOST:PORT]
                  [--keep] [--duration SECONDS]

1. DIR (default ./geofence-demo) gets a config, the zone layer, the registry and the
   planted truth (`sim.demo_setup`, from `sim.scenario`).
2. The registry is imported; desk users `demo` (the city's patrol desk, office 3704),
   `demo-clerk` (files leaves, office 3704) and `demo-<township>` (one township office)
   get fresh random passwords. Half of the day's planted trips are not imported: once the
   engine is up, demo-clerk files them as leaves on the desk and demo approves them
   (`sim.demo_leaves`), before the replay reaches them.
3. The engine starts (`service.serve.serve` in a thread: ingest, 2 workers, dispatcher,
   desk); its `engine.json` (`engine.status`) says when it is ready and where its
   endpoints are. Every process of it, and this one, logs to DIR/data/engine.log.
4. Three carriers (cmcc, cucc in GCJ-02, ctcc: `sim.replay`) replay the last 24 h
   in time order across carriers, `speed` times faster than real time (600: the day in
   2 min 24 s), the day ending as the replay ends; then they keep sending a live fix per
   person every 5 minutes, so nobody falls silent.
5. A progress line every 10 s; once the engine has evaluated the whole day, the planted
   events against the alarms it raised (`sim.scorecard`: per kind, found / planted), and
   the alarms nobody planted.

Ctrl-C (or SIGTERM, or `--duration` seconds after the summary) stops the carriers and the
engine. DIR is cleared at the start of each run (only if it holds a previous demo) unless
--keep: then the last run's data stays (alarms, notes, tracks) and the demo goes straight
to the live feed, with new passwords. Output is counts, endpoints and the login only.
"""

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.paths import EnginePaths
from engine.status import Endpoints, EngineStatus
from sim.demo_screen import banner, duration, progress
from sim.demo_setup import (DemoError, check_resumable, fresh_directory, prepare,
                            write_config)
from sim.movement import DAY_MS

DEFAULT_DATA = "geofence-demo"
DEFAULT_SPEED = 600.0
DEFAULT_DESK_BIND = "127.0.0.1:8080"
WORKERS = 2
PROGRESS_EVERY_S = 10.0
READY_TIMEOUT_S = 300.0         # a first run compiles every kernel
CATCH_UP_TIMEOUT_S = 180.0
SETTLE_S = 3.0                  # after the workers caught up: last clock check, dispatcher
LIVE_SEED_SALT = 0x11FE
LOCATE_DELAY_S = 1.5            # the carriers' own time to position a phone on request

log = logging.getLogger("geofence.demo")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `geofence demo`; `run_demo(**options)` takes them 1:1."""
    parser.add_argument("--subjects", type=int, default=2032,
                        help="supervised people (default 2032, Zaozhuang's number; at least 60)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulated day (default 7)")
    parser.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                        help=f"replay speed, times real time (default {DEFAULT_SPEED:g}: the "
                        "day in 2.4 min)")
    parser.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                        help=f"working directory (default ./{DEFAULT_DATA}), cleared at start "
                        "unless --keep")
    parser.add_argument("--desk-bind", default=DEFAULT_DESK_BIND, metavar="HOST:PORT",
                        help=f"the patrol desk's address (default {DEFAULT_DESK_BIND}; port 0: "
                        "any free port)")
    parser.add_argument("--keep", action="store_true",
                        help="keep DIR's data from the last run and go straight to the live feed")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop this long after the replay's summary (with --keep: after "
                        "the start; default: at Ctrl-C)")
    parser.add_argument("--locate-delay", type=float, default=LOCATE_DELAY_S, metavar="SECONDS",
                        help="how long the simulated carriers take to answer a locate request "
                        f"(default {LOCATE_DELAY_S:g})")


def demo_options(args: argparse.Namespace) -> dict:
    """`run_demo` keyword arguments from parsed `add_demo_arguments` options."""
    return {name: getattr(args, name) for name in
            ("subjects", "seed", "speed", "data", "desk_bind", "keep", "duration",
             "locate_delay")}


def run_demo(subjects: int = 2032, seed: int = 7, speed: float = DEFAULT_SPEED,
             data: str = DEFAULT_DATA, desk_bind: str = DEFAULT_DESK_BIND, keep: bool = False,
             duration: float | None = None, locate_delay: float = LOCATE_DELAY_S, *,
             workers: int = WORKERS,
             out: Callable[[str], None] = print,
             should_stop: Callable[[], bool] | None = None) -> dict:
    """Run the demo until Ctrl-C, SIGTERM, `should_stop()` or `duration` seconds after the
    summary; returns the summary (empty if the replay did not finish or was skipped)."""
    from sim.scenario import MIN_SUBJECTS, build_scenario

    if subjects < MIN_SUBJECTS:
        raise DemoError(f"--subjects must be at least {MIN_SUBJECTS}, not {subjects}")
    if not speed >= 1:
        raise DemoError(f"--speed must be at least 1 (real time), not {speed}")
    if duration is not None and duration < 0:
        raise DemoError(f"--duration must be >= 0 seconds, not {duration}")
    if not 0 <= locate_delay < float("inf"):
        raise DemoError(f"--locate-delay must be >= 0 seconds, not {locate_delay}")
    root = Path(data).absolute()
    resume = keep and check_resumable(root, subjects, seed)
    if not resume:
        fresh_directory(root)
    # The day ends as the replay will (or now, when there is no replay): its fixes are
    # never in the engine's future, and the alarms look current.
    day_end_ms = _wall_ms() + (0 if resume else int(DAY_MS / speed))
    scenario = build_scenario(subjects, seed, end_ms=day_end_ms)
    settings = write_config(root, desk_bind, scenario)
    logins = prepare(root, settings, scenario, resume)

    stop = threading.Event()
    engine = _Engine(settings, workers, stop)
    restore = _on_sigterm(stop)
    feeder = None
    summary: dict = {}
    with _logging_to(engine.paths.log_file):
        try:
            engine.start()
            if not engine.wait_ready(READY_TIMEOUT_S, should_stop):
                return summary
            banner(out, root, scenario, logins, engine.endpoints, engine.paths.log_file,
                   resume, speed)
            if not resume:
                _leaves_on_desk(out, engine.endpoints.desk, logins, scenario)
            feeder = _carriers(scenario, engine.endpoints.ingest, speed, stop,
                               replay=not resume, locate_delay_s=locate_delay)
            feeder.start()
            summary = _follow(out, feeder, engine, scenario, resume, duration, should_stop,
                              lambda: _locates_on_desk(out, engine.endpoints.desk, logins))
            if engine.error is not None:   # serve ended on its own: say why
                raise engine.error
        except KeyboardInterrupt:
            out("demo: stopping (Ctrl-C)")
            raise
        finally:
            stop.set()
            if feeder is not None:
                feeder.join()
            engine.join()
            out("demo: engine stopped")
            restore()
            if feeder is not None and feeder.error is not None:
                out(f"demo: a carrier stopped: {feeder.error}")
            out(f"demo: stopped; the data stays in {root} (run with --keep to continue "
                "from it)")
    return summary


def _leaves_on_desk(out, desk_url: str | None, logins, scenario) -> None:
    """Half of the day's trips as leaves filed and approved on the desk (`sim.demo_leaves`)
    before the replay reaches them."""
    from sim.demo_leaves import desk_trips, file_leaves
    from sim.demo_setup import CITY_USER, CLERK_USER

    if not desk_url:
        return
    users = {user: (user, password) for user, password, _ in logins}
    approved, pending, refused = file_leaves(desk_url, users[CLERK_USER], users[CITY_USER],
                                             desk_trips(scenario.permits), _wall_ms())
    out(f"demo: {approved} leaves filed by {CLERK_USER} and approved by {CITY_USER} on the "
        f"desk; {pending} more waits for approval (外出请假 on the page)")
    for reason in refused:
        out(f"demo: the desk refused a leave: {reason}")


def _locates_on_desk(out, desk_url: str | None, logins) -> None:
    """A few locate requests from the patrol desk, and what the carriers answered
    (`sim.demo_locates`)."""
    from sim.demo_locates import ask_locates
    from sim.demo_setup import CITY_USER

    if desk_url:
        users = {user: (user, password) for user, password, _ in logins}
        for line in ask_locates(desk_url, users[CITY_USER]):
            out(line)


@contextlib.contextmanager
def _logging_to(path: Path):
    """This process's log lines (the engine's supervisor, the carriers) go to the engine's
    log file, as its children's do, while the demo runs."""
    from service.serve import LOG_FORMAT

    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


class _Engine:
    """`service.serve.serve` in a thread of this process (its children are processes);
    ready, and its endpoints known, when its `engine.json` says so."""

    def __init__(self, settings, workers: int, stop: threading.Event):
        self.settings, self.workers, self.stop = settings, workers, stop
        self.paths = EnginePaths.create(settings.storage.path)
        self.endpoints: Endpoints | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="geofence-demo-serve",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from service.serve import serve

        try:   # serve's lines for people go to the log; the banner says the same
            serve(self.settings, workers=self.workers, out=log.info,
                  should_stop=self.stop.is_set, log_file=self.paths.log_file)
        except BaseException as e:  # handed to the main thread
            self.error = e

    def wait_ready(self, timeout_s: float, should_stop) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            status = EngineStatus.read(self.paths.status_file)
            if status is not None and status.pid == os.getpid() and status.state == "ready":
                self.endpoints = status.endpoints
                return True
            if self.error is not None:
                raise self.error
            if not self._thread.is_alive() or self.stop.is_set() or _asked(should_stop):
                return False
            if time.monotonic() > deadline:
                raise DemoError(f"the engine was not ready in {timeout_s:.0f} s")
            time.sleep(0.2)

    def join(self) -> None:
        """Stop the engine and wait for every process of it to end."""
        self.stop.set()
        self._thread.join()


def _on_sigterm(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM stops the demo like Ctrl-C (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return lambda: signal.signal(signal.SIGTERM, previous)


def _carriers(scenario, endpoint: str, speed: float, stop: threading.Event, replay: bool,
              locate_delay_s: float = LOCATE_DELAY_S):
    """The carriers: the scenario's day (unless resuming), then its live fixes; they answer
    locate requests after `locate_delay_s`."""
    import numpy as np

    from sim.replay import Replay

    feeds = scenario.carrier_feeds()
    if not replay:
        feeds = [dataclasses.replace(f, fixes=f.fixes.take(slice(0, 0))) for f in feeds]
    rngs = [np.random.default_rng([scenario.seed, k, LIVE_SEED_SALT]) for k in range(len(feeds))]

    def live(k: int, after_ms: int, upto_ms: int):   # each carrier's thread: its own rng
        return scenario.live_fixes(k, after_ms, upto_ms, rngs[k])

    return Replay(feeds, endpoint, scenario.start_ms, scenario.end_ms, speed, stop, live,
                  seed=scenario.seed, locate_delay_s=locate_delay_s)


def _follow(out, feeder, engine: _Engine, scenario, resume: bool, duration_s: float | None,
            should_stop, after_summary: Callable[[], None]) -> dict:
    """Progress lines until the end; the summary once the day is evaluated, then
    `after_summary()`."""
    from alerts.alarm_store import AlarmStore
    from sim.scorecard import alarm_table, score, summary_lines

    alarms = AlarmStore(engine.paths.alarms_db)
    summary: dict = {}
    next_report = time.monotonic() + PROGRESS_EVERY_S
    ends_at = None if duration_s is None or not resume else time.monotonic() + duration_s
    try:
        while not feeder.stop.is_set() and not _asked(should_stop):
            if ends_at is not None and time.monotonic() >= ends_at:
                break
            if time.monotonic() >= next_report:
                out(progress(feeder, alarms))
                next_report += PROGRESS_EVERY_S
            if not resume and not summary and feeder.replay_done:
                out(f"demo: the day replayed in {duration(feeder.replayed_s)}; waiting for "
                    "the engine to evaluate it")
                _catch_up(engine.paths, engine.workers, feeder, should_stop)
                if feeder.stop.is_set() or _asked(should_stop):
                    break
                summary = score(scenario, alarms.raised_ids(), alarm_table(alarms))
                accepted, rejected = feeder.replay_acked
                out(f"demo: the day's {feeder.total:,} fixes from {len(feeder.feeds)} "
                    f"carriers: {accepted:,} accepted, {rejected:,} rejected")
                for line in summary_lines(summary):
                    out(line)
                after_summary()
                if duration_s is not None:
                    ends_at = time.monotonic() + duration_s
            time.sleep(0.1)
    finally:
        alarms.close()
    return summary


def _catch_up(paths: EnginePaths, workers: int, feeder, should_stop) -> None:
    """Wait until every worker has evaluated every batch stored so far, then SETTLE_S."""
    from ingest.store import StoreReader
    from service.evaluation_store import EvaluationReader

    reader = StoreReader(paths.fixes_db)
    target = reader.last_seq()
    reader.close()
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline and not feeder.stop.is_set() and not _asked(should_stop):
        done = []
        for k in range(workers):
            store = EvaluationReader(paths.worker_db(k, workers))
            done.append(store.checkpoint())
            store.close()
        if min(done) >= target:
            break
        time.sleep(0.2)
    time.sleep(SETTLE_S)


def _asked(should_stop) -> bool:
    return should_stop is not None and should_stop()


def _wall_ms() -> int:
    return int(time.time() * 1000)
