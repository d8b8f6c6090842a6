"""`geofence demo`: the whole engine on built-in data (SPEC §9).

    geofence demo [--subjects N] [--seed S] [--speed X] [--data DIR] [--desk-bind HOST:PORT]
                  [--keep] [--duration SECONDS]

1. DIR (default ./geofence-demo) gets a config (`geofence.toml`: storage in DIR/data,
   the zone layer, `[rules] clock = "feed"` so the clock rules run in the replayed day's
   time, the desk on --desk-bind, ingest and PUB on their default ports if free), the
   zone layer, the registry and the planted truth (`ingest.scenario`) as JSON.
2. The registry is imported; desk users `demo` (the city's patrol desk, office 3704)
   and `demo-<township>` (one township office) get fresh random passwords.
3. The engine starts (`service.serve.serve`: ingest, 2 workers, dispatcher, desk).
4. Three carriers (cmcc, cucc in GCJ-02, ctcc: `ingest.replay`) replay the last 24 h
   in time order across carriers, `speed` times faster than real time (600: the day in
   2 min 24 s), the day ending as the replay ends; then they keep sending a live fix per
   person every 5 minutes, so nobody falls silent.
5. A progress line every 10 s; once the engine has evaluated the whole day, the planted
   events against the alarms it raised (`service.demo_truth`: per kind, found /
   planted), and the alarms nobody planted.

Ctrl-C (or SIGTERM, or `--duration` seconds after the summary) stops the carriers and the
engine. DIR is cleared at the start of each run (only if it holds a previous demo) unless
--keep: then the last run's data stays (alarms, notes, tracks) and the demo goes straight
to the live feed, with new passwords. Output is counts, endpoints and the login only.
"""

import argparse
import dataclasses
import json
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

DEFAULT_DATA = "geofence-demo"
DEFAULT_SPEED = 600.0
DEFAULT_DESK_BIND = "127.0.0.1:8080"
DEFAULT_INGEST_PORT, DEFAULT_PUBLISH_PORT, DEFAULT_METRICS_PORT = 5555, 5556, 9105
WORKERS = 2
MARKER = "demo.json"            # what makes DIR a demo directory the next run may clear
CITY_USER = "demo"
CITY_OFFICE = "3704"
PROGRESS_EVERY_S = 10.0
READY_TIMEOUT_S = 300.0         # a first run compiles every kernel
CATCH_UP_TIMEOUT_S = 180.0
SETTLE_S = 3.0                  # after the workers caught up: last clock check, dispatcher
CHECK_EVERY_S = 0.1             # the clock rules' period: 1 min of a day replayed at 600x
LIVE_SEED_SALT = 0x11FE
MINUTE_MS = 60_000


class DemoError(ValueError):
    """The demo cannot start as asked (a busy port, a directory that is not a demo's); the
    message says what to change."""


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


def demo_options(args: argparse.Namespace) -> dict:
    """`run_demo` keyword arguments from parsed `add_demo_arguments` options."""
    return {name: getattr(args, name) for name in
            ("subjects", "seed", "speed", "data", "desk_bind", "keep", "duration")}


def run_demo(subjects: int = 2032, seed: int = 7, speed: float = DEFAULT_SPEED,
             data: str = DEFAULT_DATA, desk_bind: str = DEFAULT_DESK_BIND, keep: bool = False,
             duration: float | None = None, *, workers: int = WORKERS,
             out: Callable[[str], None] = print,
             should_stop: Callable[[], bool] | None = None) -> dict:
    """Run the demo until Ctrl-C, SIGTERM, `should_stop()` or `duration` seconds after the
    summary; returns the summary (empty if the replay did not finish or was skipped)."""
    from ingest.scenario import MIN_SUBJECTS, build_scenario

    if subjects < MIN_SUBJECTS:
        raise DemoError(f"--subjects must be at least {MIN_SUBJECTS}, not {subjects}")
    if not speed >= 1:
        raise DemoError(f"--speed must be at least 1 (real time), not {speed}")
    if duration is not None and duration < 0:
        raise DemoError(f"--duration must be >= 0 seconds, not {duration}")
    root = Path(data).absolute()
    resume = keep and (root / MARKER).is_file()
    if resume:
        previous = json.loads((root / MARKER).read_text())
        if (previous.get("subjects"), previous.get("seed")) != (subjects, seed):
            raise DemoError(f"{root} holds a demo of {previous.get('subjects')} subjects, seed "
                            f"{previous.get('seed')}: pass those, or drop --keep to start afresh")
    else:
        _fresh_directory(root)
    # The day ends as the replay will (or now, when there is no replay): its fixes are
    # never in the engine's future, and the alarms look current.
    day_end_ms = _wall_ms() + (0 if resume else int(86_400_000 / speed))
    scenario = build_scenario(subjects, seed, end_ms=day_end_ms)
    settings = _write_config(root, desk_bind, scenario)
    logins = _prepare(root, settings, scenario, resume)

    stop = threading.Event()
    engine = _Engine(settings, workers, stop)
    restore = _on_sigterm(stop)
    feeder = None
    summary: dict = {}
    try:
        engine.start()
        if not engine.wait_ready(READY_TIMEOUT_S, should_stop):
            return summary
        _banner(out, root, scenario, logins, engine, resume, speed)
        feeder = _carriers(scenario, engine.ingest, speed, stop, replay=not resume)
        feeder.start()
        summary = _follow(out, feeder, engine, scenario, resume, duration, should_stop)
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
        for line in engine.lines():
            out(line)
        restore()
        if feeder is not None and feeder.error is not None:
            out(f"demo: a carrier stopped: {feeder.error}")
        out(f"demo: stopped; the data stays in {root} (run with --keep to continue from it)")
    return summary


# -- the working directory ------------------------------------------------------------------

def _fresh_directory(root: Path) -> None:
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise DemoError(f"{root} is not empty and holds no earlier demo ({MARKER}): "
                            "choose another --data directory")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def _port(default: int) -> int:
    """`default` if it is free on loopback, else any free port."""
    for port in (default, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise DemoError("no free loopback port")


def _check_desk_bind(bind: str) -> None:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise DemoError(f"--desk-bind must be HOST:PORT, not {bind!r}")
    if int(port) == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError as e:
            raise DemoError(f"the desk cannot listen on {bind} ({e.strerror}): pass "
                            "--desk-bind with another port, or port 0 for any") from e


def _write_config(root: Path, desk_bind: str, scenario):
    from engine.config import load

    _check_desk_bind(desk_bind)
    (root / "zones.geojson").write_text(json.dumps(scenario.zones, ensure_ascii=False))
    lines = ["# written by `geofence demo`: the engine on built-in Zaozhuang data",
             "[storage]", f"path = {json.dumps(str(root / 'data'))}",
             "[layers]", f"zones = {json.dumps(str(root / 'zones.geojson'))}",
             "[ingest]", f'bind = "tcp://127.0.0.1:{_port(DEFAULT_INGEST_PORT)}"',
             f'metrics_bind = "127.0.0.1:{_port(DEFAULT_METRICS_PORT)}"',
             "[alerts]", f'publish = "tcp://127.0.0.1:{_port(DEFAULT_PUBLISH_PORT)}"',
             "[desk]", f"bind = {json.dumps(desk_bind)}",
             "[rules]", 'clock = "feed"   # the clock rules run in the replayed day\'s time',
             f"check_every_s = {CHECK_EVERY_S}"]
    (root / "geofence.toml").write_text("\n".join(lines) + "\n")
    return load(str(root / "geofence.toml"))


def _prepare(root: Path, settings, scenario, resume: bool) -> list[tuple[str, str, str]]:
    """Import the registry (unless resuming), write the truth, set the desk users' fresh
    passwords; the logins as (user, password, office)."""
    from alerts.registry import RegistryStore
    from desk.stores import desk_db
    from desk.users import UserStore
    from engine.layers import code_checkers, load_layers
    from engine.paths import EnginePaths

    paths = EnginePaths.create(settings.storage.path)
    if not resume:
        document = scenario.registry_document()
        (root / "registry.json").write_text(json.dumps(document, ensure_ascii=False, indent=1))
        (root / "truth.json").write_text(json.dumps(scenario.truth, ensure_ascii=False, indent=1))
        registry = RegistryStore(paths.registry_db)
        try:
            registry.import_document(document, *code_checkers(*load_layers(settings)))
        finally:
            registry.close()
        (root / MARKER).write_text(json.dumps({"subjects": len(scenario.ids),
                                               "seed": scenario.seed,
                                               "day_end_ms": scenario.end_ms}))
    town = next(r["subject"] for r in scenario.truth if r["kind"] == "exit")
    town_office = next(s["office"] for s in scenario.subjects if s["id"] == town)
    logins = [(CITY_USER, secrets.token_urlsafe(9), CITY_OFFICE),
              (f"demo-{town_office}", secrets.token_urlsafe(9), town_office)]
    with UserStore(desk_db(paths)) as users:
        for name, password, office in logins:
            users.add(name, office, password, replace=True)
    return logins


# -- the engine -----------------------------------------------------------------------------

class _Engine:
    """`service.serve.serve` in a thread of this process (its children are processes);
    its announcements are parsed for the endpoints."""

    def __init__(self, settings, workers: int, stop: threading.Event):
        self.settings, self.workers, self.stop = settings, workers, stop
        self.ingest = self.metrics = self.publish = self.desk = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="geofence-demo-serve",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from service.serve import serve

        try:
            serve(self.settings, workers=self.workers, out=self._out, should_stop=self.stop.is_set)
        except BaseException as e:  # handed to the main thread
            self.error = e

    def _out(self, line: str) -> None:
        if line.startswith("geofence: ingest listening on "):
            self.ingest = line.split()[4].rstrip(";")
            self.metrics = line.split("metrics on ")[1].split(";")[0]
        elif line.startswith("geofence: alarms published on "):
            self.publish = line.split()[-1]
        elif line.startswith("geofence: desk on "):
            self.desk = line.split()[-1]
        elif line == "geofence: ready":
            self.ready.set()
        else:
            with self._lock:
                self._lines.append(line)

    def lines(self) -> list[str]:
        """Other lines serve printed since the last call (restarts, "stopped")."""
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    def wait_ready(self, timeout_s: float, should_stop) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.2):
            if self.error is not None:
                raise self.error
            if not self._thread.is_alive() or self.stop.is_set() or _asked(should_stop):
                return False
            if time.monotonic() > deadline:
                raise DemoError(f"the engine was not ready in {timeout_s:.0f} s")
        return True

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


def _carriers(scenario, endpoint: str, speed: float, stop: threading.Event, replay: bool):
    """The carriers: the scenario's day (unless resuming), then its live fixes."""
    import numpy as np

    from ingest.replay import Replay

    feeds = scenario.carrier_feeds()
    if not replay:
        feeds = [dataclasses.replace(f, t_ms=f.t_ms[:0]) for f in feeds]
    rngs = [np.random.default_rng([scenario.seed, k, LIVE_SEED_SALT]) for k in range(len(feeds))]

    def live(k: int, after_ms: int, upto_ms: int):   # each carrier's thread: its own rng
        return scenario.live_fixes(k, after_ms, upto_ms, rngs[k])

    return Replay(feeds, endpoint, scenario.start_ms, scenario.end_ms, speed, stop, live,
                  seed=scenario.seed)


# -- what the user sees ---------------------------------------------------------------------

def _banner(out, root: Path, scenario, logins, engine: _Engine, resume: bool,
            speed: float) -> None:
    offices = {o["code"]: o["name"] for o in scenario.offices}
    planted = scenario.planted
    permits = len(scenario.permits)
    overstays = sum(1 for r in scenario.truth if r["expect"] == "permit_overstay")
    never = sum(1 for r in scenario.truth if r["expect"] == "permit_overstay" and not r["back"])
    barred = sum(1 for s in scenario.subjects if s.get("exclusions"))
    outage = next(r for r in scenario.truth if r["kind"] == "outage")
    out(f"geofence demo: {len(scenario.ids):,} supervised people in Zaozhuang (6 counties, "
        f"66 townships), seed {scenario.seed}; files in {root}")
    out(f"  desk:     {engine.desk or '(not configured)'}")
    for user, password, office in logins:
        out(f"            log in as {user} / {password}  ({office} {offices.get(office, '')})")
    out(f"  alarms:   ZeroMQ PUB on {engine.publish} (topics are office paths: 3704/370402/...)")
    out(f"  carriers: {engine.ingest} (3 simulated: cmcc, cucc in GCJ-02, ctcc)")
    out(f"  metrics:  {engine.metrics}")
    if resume:
        out("  kept the last run's data: no replay, straight to the live feed; Ctrl-C stops")
        return
    out(f"  planted:  {planted.get('exit', 0)} exits; {permits} permits "
        f"({overstays} overstay, {never} of them not back); {len(scenario.delegations)} "
        f"delegations ({planted.get('delegation_exit', 0)} leave); {barred} under injunction "
        f"({planted.get('breach', 0)} breaches); {planted.get('silence', 0)} silences; "
        f"{outage['carrier']} down {(outage['end_ms'] - outage['start_ms']) // MINUTE_MS} min")
    out(f"  replaying the last 24 h at {speed:g}x ({_duration(86_400 / speed)}), then a live "
        "feed; Ctrl-C stops")


def _follow(out, feeder, engine: _Engine, scenario, resume: bool, duration: float | None,
            should_stop) -> dict:
    """Progress lines until the end; the summary once the day is evaluated."""
    from alerts.alarm_store import AlarmStore
    from service.demo_truth import alarm_table, score, summary_lines
    from engine.paths import EnginePaths

    paths = EnginePaths.create(engine.settings.storage.path)
    alarms = AlarmStore(paths.alarms_db)
    summary: dict = {}
    next_report = time.monotonic() + PROGRESS_EVERY_S
    ends_at = None if duration is None or not resume else time.monotonic() + duration
    try:
        while not feeder.stop.is_set() and not _asked(should_stop):
            if ends_at is not None and time.monotonic() >= ends_at:
                break
            for line in engine.lines():
                out(line)
            if time.monotonic() >= next_report:
                out(_progress(feeder, alarms))
                next_report += PROGRESS_EVERY_S
            if not resume and not summary and feeder.replay_done:
                out(f"demo: the day replayed in {_duration(feeder.replayed_s)}; waiting for "
                    "the engine to evaluate it")
                _catch_up(paths, engine.workers, feeder, should_stop)
                if feeder.stop.is_set() or _asked(should_stop):
                    break
                summary = score(scenario, alarms.raised_ids(), alarm_table(alarms))
                accepted, rejected = feeder.replay_acked
                out(f"demo: the day's {feeder.total:,} fixes from {len(feeder.feeds)} "
                    f"carriers: {accepted:,} accepted, {rejected:,} rejected")
                for line in summary_lines(summary):
                    out(line)
                if duration is not None:
                    ends_at = time.monotonic() + duration
            time.sleep(0.1)
    finally:
        alarms.close()
    return summary


def _progress(feeder, alarms) -> str:
    counts = Counter()
    for (kind, _severity), n in alarms.raised_counts().items():
        counts[kind] += n
    raised = ", ".join(f"{kind} {n:,}" for kind, n in counts.most_common()) or "none yet"
    if not feeder.replay_done:
        at = time.localtime(feeder.feed_now_ms() / 1000)
        day = "" if at.tm_yday == time.localtime().tm_yday else " yesterday"
        sent = sum(feeder.sent)
        where = (f"replay at {time.strftime('%H:%M', at)}{day} "
                 f"({sent / max(feeder.total, 1):.0%}), {sent:,} fixes sent")
    else:
        where = f"live feed, {sum(feeder.live_sent):,} fixes sent"
    return f"demo: {where}; alarms raised: {raised}"


def _catch_up(paths, workers: int, feeder, should_stop) -> None:
    """Wait until every worker has evaluated every batch stored so far, then SETTLE_S."""
    from ingest.store import StoreReader
    from service.evaluation_store import EvaluationStore

    reader = StoreReader(paths.fixes_db)
    target = reader.last_seq()
    reader.close()
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline and not feeder.stop.is_set() and not _asked(should_stop):
        done = []
        for k in range(workers):
            store = EvaluationStore(paths.worker_db(k, workers))
            done.append(store.checkpoint())
            store.close()
        if min(done) >= target:
            break
        time.sleep(0.2)
    time.sleep(SETTLE_S)


# -- helpers ------------------------------------------------------------------------------------

def _asked(should_stop) -> bool:
    return should_stop is not None and should_stop()


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def main(argv: list[str] | None = None) -> int:
    """`python -m service.demo`: the demo without the `geofence` command."""
    parser = argparse.ArgumentParser(prog="python -m service.demo",
                                     description=__doc__.splitlines()[0])
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_demo(**demo_options(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
