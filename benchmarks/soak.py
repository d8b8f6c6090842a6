"""Soak: the real engine under a steady feed for a compressed week of event time.

`geofence serve` (`tests.engine_harness.Engine`: supervisor, ingest, 2 workers,
dispatcher, desk; real sockets and SQLite files in a temp dir) with `[rules] clock =
"feed"` and `[storage] keep_fixes_days` one day more than the run, fed by the demo's three carriers
(`sim.replay.Replay`) with `days` days of the demo's scenario (`sim.scenario`: the same
seeded people every day, each day's planted exits, permitted and overstayed trips,
silences, injunction breaches, delegated exits and a carrier outage, shifted by one day
each; permits renamed per day), replayed in `replay_s` seconds. The week ends when the
replay does, so no fix is ever in the engine's future; the first day's fixes are a week
old when sent, so `[ingest] max_fix_age_s` and the retention (which also bounds the
age of a fix ingest accepts) are one day more than the run.

The whole time, a user of the city office (3704: sees everything) logged in to the desk
polls /api/alarms, /api/subjects and one planted subject's track every POLL_S, and
follows /api/events (SSE), reconnecting with Last-Event-ID if the stream ends.

Every SAMPLE_S: VmRSS of every engine process (/proc/<pid>/status; pids from
`<storage>/<name>.pid`, the supervisor is the serve subprocess) and the size of every
`*.sqlite` and `*-wal` in the storage path, against the replay's feed clock. After the
replay, once every worker has evaluated every stored batch (and SETTLE_S for the
dispatcher), the planted events are scored (`sim.scorecard.score`) against the alarms.

Checks (`problems`; the --slow test asserts there are none, the benchmark prints them):
- RSS of each process at the end and at its peak after the warm-up share of the run is
  within RSS_GROWTH of its RSS at the end of the warm-up (the ingest's less its duplicate
  filter, `geofence_duplicate_filter_bytes`, which holds every fix of the acceptance
  window: here the whole run; reported beside it);
- each store file stays within FILE_GROWTH + FILE_SLACK_BYTES of its size after the
  warm-up (a WAL may also fill up to WAL_BYTES, SQLite's auto-checkpoint size), except
  the fixes store, which keeps every fix of the run (see below): its bytes per stored fix
  stay within FILE_GROWTH, and its WAL within the store's journal size limit;
- no ERROR line and no Traceback in the engine's log (its processes' stderr), and no
  engine process restarted (its pid file changed);
- every planted event that should raise an alarm raised exactly one: the alarm ids raised
  for the fixes that could trigger it all went to one stored alarm (a repeat folds into
  the open alarm of the same subject and type: one alarm at the desk), and no permitted
  trip raised any;
- every stored alarm reached the SSE stream, and every desk request answered 200.

Retention and a compressed week: ingest accepts fixes no older than `max_fix_age_s` and
`keep_fixes_days` (whichever is shorter), nor 5 min ahead, of wall time, and purges
evaluated batches by wall-clock receive time (older than `keep_fixes_days`, one pass
every 600 s). So the week's event times must lie within the retention, and the run's
fixes are all received within its few minutes: no run shorter than `keep_fixes_days` of
wall time ever purges a fix, whatever the feed clock says. fixes.sqlite therefore grows
with every fix here, as the retention says it must; that it holds nothing else is
checked per fix. The purge itself is not exercised.
"""

import asyncio
import dataclasses
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import Report, log
from sim.movement import DAY_MS

POLL_S = 1.0
SAMPLE_S = 2.0
SETTLE_S = 3.0
CATCH_UP_TIMEOUT_S = 300.0
RSS_GROWTH = 0.10
FILE_GROWTH = 0.10
FILE_SLACK_BYTES = 1 << 20      # page-level noise of small files (alarms, desk sessions)
WAL_BYTES = 4 << 20             # a WAL fills to SQLite's auto-checkpoint (1,000 pages), reused
CHECK_EVERY_S = 0.1             # clock rules: a few minutes of feed time at ~1,700x
MIB = 1 << 20
FIXES_DB = "fixes.sqlite"


@dataclass(frozen=True)
class Size:
    subjects: int
    days: int
    replay_s: float
    warm_up_share: float = 0.25
    seed: int = 7
    workers: int = 2

    @property
    def keep_fixes_days(self) -> int:
        """The retention, and the oldest fix ingest accepts: the run and a day to spare."""
        return self.days + 1

    @property
    def speed(self) -> float:
        return self.days * DAY_MS / 1000 / self.replay_s


FULL = Size(subjects=1000, days=7, replay_s=360.0)   # the --slow test: ~6.5 min on 2 cores
QUICK = Size(subjects=100, days=3, replay_s=90.0, warm_up_share=0.5)   # CI smoke: ~2.5 min


# -- the week ---------------------------------------------------------------------------

def week_scenario(size: Size, end_ms: int):
    """`size.days` copies of the demo's day ending at `end_ms`, each shifted by a day.

    Planted events, truth rows and permits repeat per day under new names; the day's
    delegations last months either side, so the first day's hold for the week. Fixes a
    day's jitter pushes past its end are dropped, so every subject's fixes stay in
    time order across the days."""
    from sim.fixes import Fixes
    from sim.scenario import build_scenario

    start_ms = end_ms - size.days * DAY_MS
    day = build_scenario(size.subjects, size.seed, end_ms=start_ms + DAY_MS)
    own = day.fixes.take((day.fixes.t_ms >= day.start_ms) & (day.fixes.t_ms < day.end_ms))
    fixes, truth, permits = [], [], []
    for d in range(size.days):
        shift = d * DAY_MS
        fixes.append(dataclasses.replace(own, t_ms=own.t_ms + shift))
        for p in day.permits:
            permits.append({**p, "id": f"{p['id']}-{d}", "start_ms": p["start_ms"] + shift,
                            "end_ms": p["end_ms"] + shift})
        for r in day.truth:
            row = {**r, "event": f"{r['event']}-{d}", "start_ms": r["start_ms"] + shift,
                   "end_ms": r["end_ms"] + shift, "day": d}
            if "permit" in r:
                row.update(permit=f"{r['permit']}-{d}", permit_end_ms=r["permit_end_ms"] + shift)
            truth.append(row)
    return dataclasses.replace(day, start_ms=start_ms, end_ms=end_ms, truth=truth,
                               permits=permits, fixes=Fixes.concat(fixes),
                               planted={k: n * size.days for k, n in day.planted.items()})


def write_config(root: Path, size: Size) -> Path:
    """The engine's config: loopback ports, desk on, feed clock, the week accepted."""
    from tests.engine_harness import free_port

    lines = ["[storage]", f"path = {json.dumps(str(root / 'data'))}",
             f"keep_fixes_days = {size.keep_fixes_days}",
             "[layers]", f"zones = {json.dumps(str(root / 'zones.geojson'))}",
             "[ingest]", f'bind = "tcp://127.0.0.1:{free_port()}"', 'metrics_bind = "127.0.0.1:0"',
             f"max_fix_age_s = {size.keep_fixes_days * 24 * 3600}",
             "[alerts]", f'publish = "tcp://127.0.0.1:{free_port()}"',
             "[desk]", 'bind = "127.0.0.1:0"',
             "[rules]", 'clock = "feed"', f"check_every_s = {CHECK_EVERY_S}"]
    path = root / "geofence.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- the desk user ----------------------------------------------------------------------

POLLED = ("alarms", "subjects", "track")

@dataclass
class DeskUser:
    """A logged-in desk user in a thread of its own: polls and follows the event stream
    until `stop`. Counters are plain ints, read by the main thread without a lock."""

    url: str
    user: str
    password: str
    track_of: str
    stop: threading.Event = field(default_factory=threading.Event)
    polls: int = 0
    bad_answers: dict = field(default_factory=dict)   # "GET route -> status": count
    streamed: set = field(default_factory=set)        # alarm ids seen on /api/events
    stream_opens: int = 0
    timings: list = field(default_factory=list)       # (route, seconds) of every poll
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="soak-desk", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            asyncio.run(self._session())
        except BaseException as e:   # handed to the main thread
            self.error = e

    async def _session(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(f"{self.url}/api/login",
                                 json={"user": self.user, "password": self.password}) as r:
                if r.status != 200:
                    raise RuntimeError(f"desk login answered {r.status}")
            stream = asyncio.create_task(self._follow(http))
            try:
                await self._poll(http)
            finally:
                stream.cancel()
                await asyncio.gather(stream, return_exceptions=True)

    async def _poll(self, http) -> None:
        routes = ["/api/alarms?limit=100", "/api/subjects", f"/api/subjects/{self.track_of}/track"]
        while not self.stop.is_set():
            for n, route in enumerate(routes):
                started = time.perf_counter()
                async with http.get(self.url + route) as r:
                    await r.read()
                    self.timings.append((POLLED[n], time.perf_counter() - started))
                    if r.status != 200:
                        key = f"GET {route.split('?')[0].replace(self.track_of, '{id}')} {r.status}"
                        self.bad_answers[key] = self.bad_answers.get(key, 0) + 1
            self.polls += 1
            await asyncio.sleep(POLL_S)

    async def _follow(self, http) -> None:
        import aiohttp

        last = None
        while True:
            self.stream_opens += 1
            headers = {"Last-Event-ID": last} if last else {}
            try:
                async with http.get(f"{self.url}/api/events", headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=None)) as r:
                    if r.status != 200:
                        key = f"GET /api/events {r.status}"
                        self.bad_answers[key] = self.bad_answers.get(key, 0) + 1
                    async for raw in r.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("id: "):
                            last = line[4:]
                        elif line.startswith("data: "):
                            self.streamed.add(json.loads(line[6:])["id"])
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(POLL_S)


# -- sampling ---------------------------------------------------------------------------

PROCESSES = ("ingest", "dispatcher", "desk")


def engine_pids(engine) -> dict[str, int]:
    """Every engine process by name: the supervisor and its children's pid files."""
    names = [*PROCESSES, *(f"worker-{k}" for k in range(engine.workers))]
    return {"supervisor": engine.proc.pid, **{n: engine.pid(n) for n in names}}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def store_files(root: Path) -> dict[str, int]:
    """Size of every SQLite file and WAL in the storage path (0 while absent)."""
    sizes = {}
    for path in sorted([*root.glob("*.sqlite"), *root.glob("*.sqlite-wal")]):
        try:
            sizes[path.name] = path.stat().st_size
        except FileNotFoundError:
            sizes[path.name] = 0
    return sizes


@dataclass
class Sample:
    wall_s: float        # since the replay started
    feed_days: float     # feed clock, days since the week's start
    sent: int
    rss: dict
    files: dict
    filter_bytes: int    # ingest's duplicate filter table (its /metrics), part of its RSS


# -- the run ----------------------------------------------------------------------------

def soak(size: Size, root: Path) -> dict:
    """Run the soak in `root` (an empty directory); everything measured, as a dict."""
    from alerts.alarm_store import AlarmStore
    from engine.config import load
    from sim.demo_setup import prepare
    from sim.replay import Replay
    from sim.scorecard import alarm_table, score
    from tests.engine_harness import Engine

    started = time.monotonic()
    scenario = week_scenario(size, int(time.time() * 1000) + int(size.replay_s * 1000))
    config = write_config(root, size)
    (root / "zones.geojson").write_text(json.dumps(scenario.zones, ensure_ascii=False))
    settings = load(str(config))
    (user, password, _), *_ = prepare(root, settings, scenario, resume=False)
    track_of = next(r["subject"] for r in scenario.truth if r["kind"] == "exit")
    log(f"soak: {size.subjects:,} subjects, {size.days} days, {len(scenario.fixes):,} fixes "
        f"built in {time.monotonic() - started:.0f} s; starting the engine")
    engine = Engine(config, workers=size.workers)
    stop = threading.Event()
    desk = DeskUser(engine.status.endpoints.desk.rstrip("/"), user, password, track_of)
    replay = None
    samples: list[Sample] = []
    pids_seen: dict[str, set] = {}
    try:
        desk_thread = desk.start()
        replay = Replay(scenario.carrier_feeds(), engine.endpoint, scenario.start_ms,
                        scenario.end_ms, size.speed, stop, seed=size.seed)
        replay.start()
        replay_started = time.monotonic()

        def sample() -> None:
            rss = {}
            for name, pid in engine_pids(engine).items():
                pids_seen.setdefault(name, set()).add(pid)
                try:
                    rss[name] = rss_bytes(pid)
                except FileNotFoundError:   # restarting: its pid file is not rewritten yet
                    pass
            samples.append(Sample(
                time.monotonic() - replay_started,
                (replay.feed_now_ms() - scenario.start_ms) / DAY_MS, sum(replay.sent),
                rss, store_files(engine.paths.root),
                int(engine.metrics().get("geofence_duplicate_filter_bytes", 0))))

        next_sample = time.monotonic()
        while not replay.replay_done:
            if replay.error is not None or desk.error is not None:
                raise replay.error or desk.error
            if engine.proc.poll() is not None:
                raise RuntimeError("the engine stopped:\n" + "\n".join(engine.lines[-30:]))
            if time.monotonic() >= next_sample:
                sample()
                next_sample += SAMPLE_S
            time.sleep(0.05)
        replayed_s = time.monotonic() - replay_started
        accepted, rejected = replay.replay_acked
        log(f"soak: replayed {accepted:,} fixes in {replayed_s:.0f} s; waiting for the "
            "workers")
        caught_up_s = _catch_up(engine)
        time.sleep(SETTLE_S)
        sample()
        desk.stop.set()
        desk_thread.join(30)
        alarms = AlarmStore(engine.paths.alarms_db)
        try:
            stored, raised = alarm_table(alarms), alarms.raised_ids()
            summary = score(scenario, raised, stored)
        finally:
            alarms.close()
    finally:
        stop.set()
        if replay is not None:
            replay.join()
        desk.stop.set()
        engine.stop()
    log_problems = [line for line in engine.lines if " ERROR " in line or "Traceback" in line]
    return {"size": size, "samples": samples, "replayed_s": replayed_s,
            "catch_up_s": caught_up_s, "accepted": accepted, "rejected": rejected,
            "summary": summary, "raised": raised, "alarms": len(stored), "streamed": len(desk.streamed),
            "unstreamed": len(set(stored) - desk.streamed), "desk_polls": desk.polls,
            "desk_bad_answers": dict(desk.bad_answers), "stream_opens": desk.stream_opens,
            "desk_timings": desk.timings,
            "log_lines": len(engine.lines), "log_problems": log_problems,
            "restarts": {name: len(pids) - 1 for name, pids in pids_seen.items()},
            "fixes": len(scenario.fixes), "planted": scenario.planted,
            "run_s": time.monotonic() - started}


def _catch_up(engine) -> float:
    """Wait until every worker has evaluated every stored batch; how long that took."""
    from ingest.store import StoreReader
    from service.evaluation_store import EvaluationReader

    with StoreReader(engine.paths.fixes_db) as store:
        target = store.last_seq()
    started = time.monotonic()
    while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
        done = []
        for k in range(engine.workers):
            with EvaluationReader(engine.paths.worker_db(k, engine.workers)) as reader:
                done.append(reader.checkpoint())
        if min(done) >= target:
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"the workers did not evaluate every batch in {CATCH_UP_TIMEOUT_S:.0f} s")


# -- what it found ----------------------------------------------------------------------

def rss_growth(result: dict) -> dict[str, tuple[int, int, int]]:
    """Per process: (RSS at the end of the warm-up, peak after it, at the end), bytes;
    the ingest's less its duplicate filter, which remembers every fix of the acceptance
    window (here: the whole run) by design."""
    after = after_warm_up(result)
    out = {}
    for name in result["samples"][-1].rss:
        mine = [s.rss[name] - (s.filter_bytes if name == "ingest" else 0)
                for s in after if name in s.rss]
        out[name] = (mine[0], max(mine), mine[-1])
    return out


def after_warm_up(result: dict) -> list[Sample]:
    """The samples from the end of the warm-up on (the last one at least)."""
    warm_s = result["size"].warm_up_share * result["replayed_s"]
    return [s for s in result["samples"] if s.wall_s >= warm_s] or result["samples"][-1:]


def file_growth(result: dict) -> dict[str, tuple[int, int]]:
    """Per store file: (size after the warm-up, size at the end)."""
    base = after_warm_up(result)[0].files
    return {name: (base.get(name, 0), size)
            for name, size in result["samples"][-1].files.items()}


def bytes_per_fix(result: dict) -> tuple[float, float]:
    """fixes.sqlite's bytes per fix sent so far, after the warm-up and at the end."""
    first, last = after_warm_up(result)[0], result["samples"][-1]
    return (first.files.get(FIXES_DB, 0) / max(first.sent, 1),
            last.files.get(FIXES_DB, 0) / max(last.sent, 1))


def misalarmed(result: dict) -> list[dict]:
    """Truth rows not alarmed exactly once: an expected alarm none of whose candidate ids
    was raised, or whose raised ids went to more than one stored alarm (a raise that
    folded into the open alarm of the same subject and type is the same alarm to the
    desk); a permitted trip that raised anything."""
    raised = result["raised"]
    wrong = []
    for row in result["summary"]["rows"]:
        stored = {raised[h] for h in row["alarms"]}
        if len(stored) != (0 if row["expect"] is None else 1):
            wrong.append({**row, "stored": sorted(stored)})
    return wrong


def raised_again(result: dict) -> list[dict]:
    """Truth rows alarmed once whose alarm was raised more than once (folded)."""
    return [row for row in result["summary"]["rows"] if row["expect"] is not None
            and len(row["alarms"]) > 1 and len({result["raised"][h] for h in row["alarms"]}) == 1]


def rss_problems(result: dict) -> list[str]:
    out = []
    for name, (warm, peak, end) in rss_growth(result).items():
        if max(peak, end) > warm * (1 + RSS_GROWTH):
            name += " (less its duplicate filter)" if name == "ingest" else ""
            out.append(f"RSS of {name} grew from {warm / MIB:.1f} MiB after the warm-up to "
                       f"{end / MIB:.1f} MiB (peak {peak / MIB:.1f})")
    return out


def file_problems(result: dict) -> list[str]:
    """Store files that grew after the warm-up; the fixes store: per fix stored."""
    out = []
    for name, (base, end) in file_growth(result).items():
        if name != FIXES_DB and end > file_bound(name, base):
            out.append(f"{name} grew from {base / MIB:.1f} MiB after the warm-up to "
                       f"{end / MIB:.1f} MiB at the end")
    warm, end = bytes_per_fix(result)
    if end > warm * (1 + FILE_GROWTH):
        out.append(f"{FIXES_DB} grew from {warm:.1f} bytes per stored fix after the warm-up "
                   f"to {end:.1f} at the end")
    return out


def file_bound(name: str, base: int) -> float:
    """The most a store file other than fixes.sqlite may reach, from `base` bytes after
    the warm-up."""
    from ingest.store import JOURNAL_SIZE_LIMIT_BYTES

    if name == FIXES_DB + "-wal":
        return JOURNAL_SIZE_LIMIT_BYTES
    floor = WAL_BYTES if name.endswith("-wal") else 0
    return max(base * (1 + FILE_GROWTH), floor) + FILE_SLACK_BYTES


def log_problems(result: dict) -> list[str]:
    """ERROR and Traceback lines of the engine's log (the first 5), and restarts."""
    return ([f"engine log: {line}" for line in result["log_problems"][:5]]
            + [f"engine: {name} was restarted {n} times" for name, n in
               result["restarts"].items() if n])


def alarm_problems(result: dict) -> list[str]:
    return [f"planted {row['kind']} {row['event']} (day {row['day']}): expected "
            f"{row['expect'] or 'no alarm'} once, got {len(row['stored'])} alarms "
            f"({len(row['alarms'])} raised)" for row in misalarmed(result)]


def desk_problems(result: dict) -> list[str]:
    out = [f"desk: {route} answered {n} times" for route, n in
           result["desk_bad_answers"].items()]
    if result["unstreamed"]:
        out.append(f"{result['unstreamed']} of {result['alarms']} stored alarms never reached "
                   "/api/events")
    return out


def problems(result: dict) -> list[str]:
    """Every check that failed, one line each (see the module docstring)."""
    return (rss_problems(result) + file_problems(result) + log_problems(result)
            + alarm_problems(result) + desk_problems(result))


# -- the benchmark ----------------------------------------------------------------------

def run(quick: bool) -> Report:
    size = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="geofence-soak-") as tmp:
        result = soak(size, Path(tmp))
    return report(result)


def report(result: dict) -> Report:
    size = result["size"]
    r = Report("soak", {"size": {"subjects": size.subjects, "days": size.days,
                                 "replay_s": size.replay_s, "speed": round(size.speed),
                                 "workers": size.workers, "warm_up_share": size.warm_up_share},
                        "feed": {"fixes": result["fixes"], "carriers": 3,
                                 "planted events": sum(result["planted"].values())},
                        "engine": {"clock": "feed", "keep_fixes_days": size.keep_fixes_days,
                                   "check_every_s": CHECK_EVERY_S},
                        "desk": {"poll_s": POLL_S, "routes": "alarms, subjects, a track, events"}})
    r.add("feed", "fixes accepted", result["accepted"], "fixes")
    r.add("feed", "fixes rejected", result["rejected"], "fixes")
    r.add("feed", "sustained rate", result["accepted"] / result["replayed_s"], "fixes/s")
    r.add("feed", "replay", result["replayed_s"], "s")
    r.add("feed", "catch-up after the replay", result["catch_up_s"], "s")
    first, last = after_warm_up(result)[0], result["samples"][-1]
    r.add("RSS ingest", "whole, after warm-up", first.rss["ingest"] / MIB, "MiB")
    r.add("RSS ingest", "whole, at the end", last.rss["ingest"] / MIB, "MiB")
    r.add("RSS ingest", "its duplicate filter, after warm-up", first.filter_bytes / MIB, "MiB")
    r.add("RSS ingest", "its duplicate filter, at the end", last.filter_bytes / MIB, "MiB")
    for name, (warm, peak, end) in rss_growth(result).items():
        name = "ingest less the filter" if name == "ingest" else name
        r.add(f"RSS {name}", "after warm-up", warm / MIB, "MiB")
        r.add(f"RSS {name}", "at the end", end / MIB, "MiB")
        r.add(f"RSS {name}", "growth (peak)", 100 * (max(peak, end) / warm - 1), "%",
              at_most=100 * RSS_GROWTH)
    for name, (base, end) in file_growth(result).items():
        r.add(f"file {name}", "after warm-up", base / MIB, "MiB")
        bound = None if name == FIXES_DB else round(file_bound(name, base) / MIB, 1)
        r.add(f"file {name}", "at the end", end / MIB, "MiB", at_most=bound)
    warm, end = bytes_per_fix(result)
    r.add(f"file {FIXES_DB}", "bytes per fix, after warm-up", warm, "B/fix")
    r.add(f"file {FIXES_DB}", "bytes per fix, at the end", end, "B/fix",
          at_most=round(warm * (1 + FILE_GROWTH), 1))
    rows = result["summary"]["rows"]
    expected = [row for row in rows if row["expect"] is not None]
    r.add("alarms", "planted alarms", len(expected), "alarms")
    wrong = {row["event"] + row["expect"] for row in misalarmed(result) if row["expect"]}
    r.add("alarms", "alarmed exactly once", len(expected) - len(wrong), "alarms",
          at_least=len(expected))
    r.add("alarms", "of them raised again, folded", len(raised_again(result)), "alarms")
    trips = [row for row in rows if row["expect"] is None]
    r.add("alarms", "permitted trips without an alarm", sum(not row["alarms"] for row in trips),
          "trips", at_least=len(trips))
    r.add("alarms", "not planted", sum(result["summary"]["others"].values()), "alarms")
    r.add("alarms", "stored", result["alarms"], "alarms")
    r.add("alarms", "stored, not streamed", result["unstreamed"], "alarms", at_most=0)
    r.add("desk", "poll rounds", result["desk_polls"], "rounds")
    for route, (first, last) in desk_times(result).items():
        r.add("desk", f"{route} p50, first tenth", first * 1000, "ms")
        r.add("desk", f"{route} p50, last tenth", last * 1000, "ms")
    r.add("desk", "answers other than 200", sum(result["desk_bad_answers"].values()),
          "answers", at_most=0)
    r.add("desk", "event stream opened", result["stream_opens"], "times")
    r.add("log", "ERROR or Traceback lines", len(result["log_problems"]), "lines", at_most=0)
    others = result["summary"]["others"]
    r.notes.append("alarms nobody planted: " + (", ".join(
        f"{kind} {n}" for kind, n in sorted(others.items(), key=lambda x: -x[1])) or "none"))
    r.notes.append("stores (each .sqlite with its -wal) over the feed clock, MiB: " + "; ".join(
        f"{label}: " + ", ".join(f"{store} {size / MIB:.1f}" for store, size in
                                  _by_store(s.files).items())
        for label, s in _daily(result["samples"])))
    r.notes += problems(result)
    return r


def desk_times(result: dict) -> dict[str, tuple[float, float]]:
    """Per polled route: median answer time over the first and the last tenth of polls."""
    out = {}
    for route in POLLED:
        times = [t for r, t in result["desk_timings"] if r == route]
        tenth = max(1, len(times) // 10)
        out[route] = (float(np.median(times[:tenth])), float(np.median(times[-tenth:])))
    return out


def _daily(samples: list[Sample]) -> list[tuple[str, Sample]]:
    """The first sample of each feed day, and the last one (after the catch-up)."""
    picked, day = [], -1
    for s in samples[:-1]:
        if int(s.feed_days) > day:
            picked.append((f"day {s.feed_days:.1f}", s))
            day = int(s.feed_days)
    return picked + [("end", samples[-1])]


def _by_store(files: dict[str, int]) -> dict[str, int]:
    """File sizes summed per store: fixes, evaluation (every worker's), alarms, ..."""
    out: dict[str, int] = {}
    for name, size in files.items():
        store = name.split(".")[0].split("-")[0]
        out[store] = out.get(store, 0) + size
    return out
