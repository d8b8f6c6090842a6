"""Alarm latency: from a carrier's send of a fix to the alarm on the PUB socket, at
50,000 fixes/s through the wire protocol.

Everything runs against the real engine: `geofence serve` started by
`tests.engine_harness.Engine` (supervisor, ingest, 1 worker and the dispatcher, ZeroMQ on
loopback TCP, SQLite files in a temp dir, `[storage] sync` the default `normal`), stopped
in `finally`. Its registry is the seeded Zaozhuang population of `subjects` subjects
(`sim.population.builtin_population`, imported with `geofence registry import`, one device each)
with `KEY_SHARE` of them made `risk: "key"` (a key subject raises zone_exit on ONE fix
outside its county, `[rules] exit_fixes_key`).

Feed: one carrier (`ingest.carrier.CarrierClient`, a DEALER with a window of `WINDOW`
batches, in this process's main thread) sends batches of `BATCH_FIXES` fixes on a fixed
schedule of `BATCHES_PER_S` a second (50,000 fixes/s) for `seconds`, frames encoded before
any timing (`encode_cols(binary=True)`). Each batch holds the next `BATCH_FIXES` subjects
round robin, every fix at the subject's home point (inside its county, GPS, accuracy
`ACC_M`), except the planted exits: from batch `WARM_BATCHES` on (0.5 s: connection
set-up, every subject has been seen at home), `PLANTED_PER_BATCH` key subjects of the
batch, each used once in the run, get their fix at `FAR` instead (100+ km away). Fix
times follow the wall clock: batch k carries `start + k * 20 ms` (+ up to 19 ms inside the
batch), `start` = `FIX_LAG_MS` before the frames were encoded (before the engine starts),
so fixes are some seconds old when sent (the engine's start-up), strictly increasing per
subject, never in the future. (Times an hour old
would make the clock rules, which run on wall time, see every subject silent for longer
than `feed_outage_silence_s` and raise feed_outage: not what is measured here.)

Measured per planted alarm (id = `alerts.alarms.alarm_id(subject, "zone_exit", t)`):
`time.perf_counter()` just before its batch is handed to `CarrierClient.send` (the
frame goes to zmq there; if the window were full the wait would count too) and when the
PUB message (topic = office path, msgpack alarm) with that id reaches a SUB socket
subscribed to "3704/" (the whole city; connected 0.5 s before the first send, PUB is
live only) in a receiver thread. Latency = receive - send; p50, p99 and max over all
planted alarms, every one of which must arrive (waiting up to `WAIT_ALARMS_S` after the
last send). Same run: the carrier's ack latency (send to ack, warm-up batches left out),
the achieved send rate, CPU of each engine process during the load.

Where the time goes: each planted alarm is followed through the engine's own wall-clock
stamps (milliseconds, same machine clock), read from its SQLite files after the run:
send (this process, `time.time()`) -> ingest arrival (`received_ms`, stored with the
alarm in the worker's file) -> raised by the worker (`raised_at` in the alarm) -> stored
by the dispatcher (`raised_at_ms` in alarms.sqlite) -> PUB message received here. Also
the engine's own histogram `geofence_fix_to_alarm_seconds` (ingest arrival -> alarm
stored by the dispatcher) scraped from the ingest's /metrics: count, mean, the bucket
holding its p99; and the ingest's store commits (`geofence_store_commit_seconds`).
Stamps are whole milliseconds, so a stage can show -1..+1 ms. "Arrival" is when the
ingest loop took the frame from its socket (a frame waiting behind a slow group commit
waits before it), and the batch reaches the worker only after its group's commit.

SQLite checkpoints: in WAL mode only a checkpoint writes a database file itself, so a
thread stats the main files of fixes.sqlite (ingest), evaluation-0-of-1.sqlite (worker)
and alarms.sqlite (dispatcher) every 2 ms; each burst of mtime changes is one
checkpoint. Alarms over 50 ms are listed with the checkpoints that overlapped them (from
50 ms before their send to their receipt), and the machine's whole CPU use and the time
each engine loop waited for a CPU (/proc/<pid>/schedstat) are reported, because the
machine may be shared.
"""

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import zmq

from alerts.alarm_store import AlarmStore
from alerts.alarms import alarm_id
from benchmarks.common import Report, log
from engine.messages import decode_alarm_frames
from ingest.carrier import CarrierClient
from ingest.protocol import encode_cols
from service.cli import main as cli
from service.evaluation_store import EvaluationReader
from engine.config import load as load_settings
from engine.paths import EnginePaths
from sim.population import builtin_population, registry_document
from tests.engine_harness import Engine, write_config

SEED = 1
CARRIER = "cmcc"
BATCH_FIXES = 1_000
BATCHES_PER_S = 50
BATCH_INTERVAL_MS = 1000 // BATCHES_PER_S
WARM_BATCHES = 25            # 0.5 s: no planted exits, no ack latencies counted
PLANTED_PER_BATCH = 2        # 100 planted alarms a second
KEY_SHARE = 0.25             # enough key subjects to plant each exit on a fresh one
FAR = (115.5, 33.5)          # 100+ km from Zaozhuang
ACC_M = 20.0
FIX_LAG_MS = 1_000           # fixes are this much older than the encoding of the frames
WINDOW = 8
ACK_TIMEOUT_MS = 10_000
TOPIC = b"3704/"             # Zaozhuang: every office's alarms
SUBSCRIBE_SETTLE_S = 0.5     # PUB is live only: let the subscription reach it
WAIT_ALARMS_S = 10.0
READY_TIMEOUT_S = 180
CHECKPOINT_POLL_S = 0.002
CHECKPOINT_GAP_S = 0.05
CHECKPOINT_NEAR_S = 0.05     # a checkpoint this soon before a send can still hold it up
TARGET_P99_MS = 50.0

FULL = {"subjects": 20_000, "seconds": 30}
QUICK = {"subjects": 5_000, "seconds": 5}


# ----------------------------------------------------------------------------- the feed

@dataclass
class Feed:
    registry: dict
    frames: list[tuple[int, bytes]]                 # (batch number, frame)
    planted: dict[int, list[str]]                   # batch index -> alarm ids planted in it
    key_subjects: int = 0


def make_feed(subjects: int, seconds: float, start_ms: int, batch_base: int) -> Feed:
    """The registry and every frame of the run, planted exits included."""
    if subjects < 2 * BATCH_FIXES:
        raise ValueError(f"need at least {2 * BATCH_FIXES} subjects (one fix each per batch, "
                         "strictly increasing times)")
    layer, people, _ = builtin_population(subjects, SEED)
    rng = np.random.default_rng([SEED, 0xA1A])
    people = replace(people, risk=np.where(rng.random(subjects) < KEY_SHARE, "key", "normal"))
    ids = people.ids
    devices = people.phones
    key = people.risk == "key"
    used = np.zeros(subjects, bool)
    n_batches = WARM_BATCHES + round(seconds * BATCHES_PER_S)
    offset_ms = np.arange(BATCH_FIXES) * BATCH_INTERVAL_MS // BATCH_FIXES
    acc, src = np.full(BATCH_FIXES, ACC_M), np.zeros(BATCH_FIXES, np.int8)   # src 0: gps
    frames, planted = [], {}
    for k in range(n_batches):
        subject = (k * BATCH_FIXES + np.arange(BATCH_FIXES)) % subjects
        t_ms = start_ms + k * BATCH_INTERVAL_MS + offset_ms
        lon, lat = people.home_lon[subject].copy(), people.home_lat[subject].copy()
        if k >= WARM_BATCHES:
            fresh = np.flatnonzero(key[subject] & ~used[subject])
            if len(fresh) < PLANTED_PER_BATCH:
                raise RuntimeError(f"batch {k}: too few unused key subjects; raise KEY_SHARE")
            chosen = np.sort(rng.choice(fresh, PLANTED_PER_BATCH, replace=False))
            lon[chosen], lat[chosen] = FAR
            used[subject[chosen]] = True
            planted[k] = [alarm_id(ids[subject[i]], "zone_exit", int(t_ms[i])) for i in chosen]
        frames.append((batch_base + k, encode_cols(CARRIER, batch_base + k, devices[subject],
                                                   t_ms, lon, lat, acc, src, binary=True)))
    return Feed(registry_document(layer, people), frames, planted, int(key.sum()))


# --------------------------------------------------------------------------- the engine

class Running:
    """A fresh engine with the registry imported, every worker and the dispatcher ready."""

    def __init__(self, root: Path, registry: dict):
        config = write_config(root)          # [storage] sync: the default, normal
        settings = load_settings(str(config))
        self.publish = settings.alerts.publish
        path = root / "registry.json"
        path.write_text(json.dumps(registry, ensure_ascii=False))
        with contextlib.redirect_stdout(sys.stderr):   # stdout holds only the tables
            if cli(["--config", str(config), "registry", "import", str(path)]):
                raise RuntimeError("registry import failed")
        self.engine = Engine(config, 1)
        try:
            self._wait_line(" ready, resuming after seq")
            self._wait_line("alarms published on ")
            self.metrics_url = next(re.search(r"metrics on (\S+);", line).group(1)
                                    for line in self.engine.lines if "metrics on " in line)
            self.pids = {name: self.engine.pid(name)
                         for name in ("ingest", "worker-0", "dispatcher")}
        except BaseException:
            self.engine.stop()
            raise

    def _wait_line(self, text: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not any(text in line for line in self.engine.lines):
            if time.monotonic() > deadline or self.engine.proc.poll() is not None:
                raise RuntimeError(f"engine not ready ({text.strip()!r}):\n"
                                   + "\n".join(self.engine.lines[-30:]))
            time.sleep(0.05)

    def metrics(self) -> dict[str, float]:
        return self.engine.metrics()

    def cpu_s(self) -> dict[str, float]:
        return {name: _cpu_s(pid) for name, pid in self.pids.items()}

    def wait_s(self) -> dict[str, float]:
        """Seconds each engine process's main thread (its loop) has spent runnable but
        waiting for a CPU: /proc/<pid>/schedstat (NaN on a kernel without schedstats)."""
        out = {}
        for name, pid in self.pids.items():
            try:
                with open(f"/proc/{pid}/schedstat") as f:
                    out[name] = int(f.read().split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                out[name] = float("nan")
        return out

    def stop(self) -> None:
        self.engine.stop()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------- the receiver

@dataclass
class Subscriber:
    """A SUB socket in a thread of its own: when each alarm id first arrived."""

    ctx: zmq.Context
    endpoint: str
    arrived: dict[str, tuple[float, float]] = field(default_factory=dict)  # perf, wall s
    types: Counter = field(default_factory=Counter)   # first arrivals by alarm type
    messages: int = 0
    error: BaseException | None = None

    def __post_init__(self):
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-alarm-sub", daemon=True)
        self._thread.start()
        if not self._connected.wait(10):
            raise RuntimeError("the subscriber thread did not start")

    def _run(self) -> None:
        sock = self.ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 1_000_000)
            sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
            sock.connect(self.endpoint)
            self._connected.set()
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    at, wall = time.perf_counter(), time.time()
                    _, doc = decode_alarm_frames(frames)
                    self.messages += 1
                    if doc["id"] not in self.arrived:
                        self.arrived[doc["id"]] = (at, wall)
                        self.types[doc["type"]] += 1
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
        finally:
            sock.close(linger=0)

    def wait_for(self, ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not ids <= self.arrived.keys():
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ checkpoint detector

class CheckpointWatch:
    """When each engine SQLite file's main database was written: in WAL mode only a
    checkpoint (copying the WAL back) writes it, so a change of its mtime marks one.
    A thread stats the files every `CHECKPOINT_POLL_S`; changes less than
    `CHECKPOINT_GAP_S` apart are one checkpoint. `seen`: [first, last] perf_counter and
    the file's name, per checkpoint."""

    def __init__(self, paths: dict[str, Path]):
        self.paths = paths
        self.seen: list[list] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = {name: self._mtime(p) for name, p in self.paths.items()}
        current: dict[str, list] = {}
        while not self._stop.wait(CHECKPOINT_POLL_S):
            for name, path in self.paths.items():
                mtime = self._mtime(path)
                if mtime == last[name]:
                    continue
                last[name], now = mtime, time.perf_counter()
                if name in current and now - current[name][1] <= CHECKPOINT_GAP_S:
                    current[name][1] = now
                else:
                    current[name] = [now, now, name]
                    self.seen.append(current[name])

    @staticmethod
    def _mtime(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------------------ the run

def measure(feed: Feed, root: Path) -> dict:
    run = Running(root, feed.registry)
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    sub = watch = None
    try:
        paths = run.engine.paths
        watch = CheckpointWatch({"fixes": paths.fixes_db, "alarms": paths.alarms_db,
                                 "worker": paths.worker_db(0, 1)})
        sub = Subscriber(ctx, run.publish)
        time.sleep(SUBSCRIBE_SETTLE_S)
        sent_at = np.zeros(len(feed.frames))        # perf_counter before the send
        sent_wall = np.zeros(len(feed.frames))      # time.time(), for the engine's stamps
        call_s = np.zeros(len(feed.frames))         # how long send() held the caller
        cpu0, wait0, own0, busy0 = run.cpu_s(), run.wait_s(), _own_cpu_s(), _machine_busy_s()
        with CarrierClient(ctx, run.engine.endpoint, CARRIER, window=WINDOW,
                           timeout_ms=ACK_TIMEOUT_MS) as client:
            t0 = time.perf_counter()
            for k, (batch_no, frame) in enumerate(feed.frames):
                wait_s = t0 + k / BATCHES_PER_S - time.perf_counter()
                if wait_s > 0:
                    client.idle(wait_s)
                sent_at[k], sent_wall[k] = time.perf_counter(), time.time()
                client.send(frame, batch_no)
                call_s[k] = time.perf_counter() - sent_at[k]
            last_send = time.perf_counter()
            cpu1, wait1, own1, busy1 = (run.cpu_s(), run.wait_s(), _own_cpu_s(),
                                        _machine_busy_s())
            client.drain()
            stats = client.stats
        expected = {a for ids in feed.planted.values() for a in ids}
        sub.wait_for(expected, max(0.0, last_send + WAIT_ALARMS_S - time.perf_counter()))
        time.sleep(0.3)   # the dispatcher's counters are in the same transaction as the store
        metrics = run.metrics()
    finally:
        if watch is not None:
            watch.close()
        if sub is not None:
            sub.close()
        ctx.destroy(linger=0)
        run.stop()
    load_s = last_send - t0
    latencies, stages, slow, slow_at = [], {name: [] for name in STAGES}, [], []
    stamps = _engine_stamps(run.engine.paths)
    for k, ids in feed.planted.items():
        for a in ids:
            if a not in sub.arrived:
                continue
            at, wall = sub.arrived[a]
            latencies.append((at - sent_at[k]) * 1000)
            received_ms, raised_ms, stored_ms = stamps.get(a, (None, None, None))
            if None not in (received_ms, raised_ms, stored_ms):
                send_ms, got_ms = sent_wall[k] * 1000, wall * 1000
                parts = (received_ms - send_ms, raised_ms - received_ms,
                         stored_ms - raised_ms, got_ms - stored_ms)
                for name, value in zip(STAGES, parts):
                    stages[name].append(value)
                if latencies[-1] > TARGET_P99_MS:
                    slow.append(parts)
                    during = sorted({name for first, last, name in watch.seen
                                     if first <= at and last >= sent_at[k] - CHECKPOINT_NEAR_S})
                    slow_at.append((k, sent_at[k] - t0, latencies[-1], during))
    acks = list(stats.latency_ms)[WARM_BATCHES:]
    return {
        "planted": len(expected), "received": len(expected & sub.arrived.keys()),
        "latency_ms": np.array(latencies), "stages": {k: np.array(v) for k, v in stages.items()},
        "sent_fixes": len(feed.frames) * BATCH_FIXES, "accepted": stats.fixes_accepted,
        "rate": len(feed.frames) * BATCH_FIXES / (load_s + 1 / BATCHES_PER_S),
        "ack_ms": np.array(acks), "acks": dict(stats.acks), "timeouts": stats.timeouts,
        "send_call_max_ms": float(call_s.max() * 1000),
        "late_sends": int((sent_at - (t0 + np.arange(len(sent_at)) / BATCHES_PER_S)
                           > 1 / BATCHES_PER_S).sum()),
        "cores": {name: (cpu1[name] - cpu0[name]) / load_s for name in cpu0}
        | {"bench (carrier + subscriber)": (own1 - own0) / load_s},
        "waiting": {name: (wait1[name] - wait0[name]) / load_s for name in wait0},
        "machine_busy": (busy1 - busy0) / load_s, "cpus": os.cpu_count(),
        "slow_stages": np.array(slow).reshape(-1, len(STAGES)), "slow_at": slow_at,
        "checkpoints": Counter(name for first, _, name in watch.seen if t0 <= first <= last_send),
        "commits": metrics.get("geofence_store_commit_seconds_count", 0.0),
        "commit_sum": metrics.get("geofence_store_commit_seconds_sum", 0.0),
        "commit_buckets": _buckets(metrics, "geofence_store_commit_seconds"),
        "types": dict(sub.types), "messages": sub.messages,
        "metric_count": metrics.get("geofence_fix_to_alarm_seconds_count", 0.0),
        "metric_sum": metrics.get("geofence_fix_to_alarm_seconds_sum", 0.0),
        "metric_buckets": _buckets(metrics, "geofence_fix_to_alarm_seconds"),
    }


def _buckets(metrics: dict[str, float], name: str) -> dict[float, float]:
    """A histogram's cumulative buckets from the scraped series: {le (s): count}."""
    pattern = re.escape(name) + r'_bucket\{le="([^"]+)"\}'
    return {float(m.group(1)): v for s, v in metrics.items() if (m := re.fullmatch(pattern, s))}


STAGES = ("send -> ingest arrival", "arrival -> raised by the worker",
          "raised -> stored by the dispatcher", "stored -> PUB message received")


def _engine_stamps(paths: EnginePaths) -> dict[str, tuple]:
    """alarm id -> (ingest arrival, raised by the worker, stored by the dispatcher), wall ms,
    read from the engine's files once it has stopped."""
    raised = {}
    for evaluation in paths.evaluation_files():
        with EvaluationReader(evaluation.path) as reader:
            for alarm in reader.alarms_after(0, 1 << 62):
                doc = json.loads(alarm.json_text)
                raised[doc["id"]] = (alarm.received_ms, doc.get("raised_at"))
    store = AlarmStore(paths.alarms_db, read_only=True)
    try:
        return {a: (*raised.get(a, (None, None)), stored_ms)
                for a, stored_ms in store.stored_at_ms().items()}
    finally:
        store.close()


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (everyone's work), /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")   # all but idle, iowait


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _pct(values: np.ndarray, q: float) -> float:
    """Nearest-rank percentile (as `CarrierStats.latency_percentile`); NaN when empty."""
    if not len(values):
        return float("nan")
    return float(np.percentile(values, q, method="inverted_cdf"))


def _bucket_bound(buckets: dict[float, float], q: float) -> float:
    """The smallest histogram bound holding the q-th percentile of the engine's histogram."""
    total = buckets.get(float("inf"), 0.0)
    for le in sorted(buckets):
        if total and buckets[le] >= q / 100 * total:
            return le
    return float("nan")


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    rep = Report("alarm_latency", {
        **sizes, "workers": 1, "sync": "normal", "carrier": CARRIER,
        "feed": {"batch": BATCH_FIXES, "per_s": BATCHES_PER_S, "window": WINDOW,
                 "warm_batches": WARM_BATCHES, "planted_per_batch": PLANTED_PER_BATCH,
                 "key_share": KEY_SHARE, "acc_m": ACC_M, "fix_lag_ms": FIX_LAG_MS}})
    with tempfile.TemporaryDirectory(prefix="bench-alarm-latency-") as tmp:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        feed = make_feed(sizes["subjects"], sizes["seconds"], now_ms - FIX_LAG_MS,
                         now_ms * 1000)
        log(f"alarm_latency: {len(feed.frames):,} frames, {feed.key_subjects:,} key subjects of "
            f"{sizes['subjects']:,}, {sum(map(len, feed.planted.values())):,} planted exits, "
            f"made in {time.perf_counter() - started:.1f} s")
        r = measure(feed, Path(tmp))

    g = (f"load: {BATCHES_PER_S} batches/s of {BATCH_FIXES:,} fixes, window {WINDOW}, "
         "1 worker, sync=normal")
    rep.add(g, "send rate achieved", r["rate"], "fixes/s", fmt=",.0f")
    rep.add(g, "sends later than one batch interval behind schedule", r["late_sends"], "batches")
    rep.add(g, "longest send() call (window wait included)", r["send_call_max_ms"], "ms",
            fmt=".2f")
    rep.add(g, "fixes sent - accepted", r["sent_fixes"] - r["accepted"], "fixes", at_most=0)
    rep.add(g, "ack latency p50", _pct(r["ack_ms"], 50), "ms", fmt=".2f")
    rep.add(g, "ack latency p99", _pct(r["ack_ms"], 99), "ms", fmt=".2f")
    for name, cores in r["cores"].items():
        rep.add(g, f"CPU: {name}", cores, "cores", fmt=".2f")
    for name, share in r["waiting"].items():
        rep.add(g, f"{name} loop: share of time waiting for a CPU", share, "", fmt=".1%")
    rep.add(g, f"CPU busy, whole machine ({r['cpus']} CPUs, every process)", r["machine_busy"],
            "cores", fmt=".2f")

    g = "fix-to-alarm, carrier's send -> PUB message"
    lat = r["latency_ms"]
    rep.add(g, "planted exits (key subjects, one fix out)", r["planted"], "alarms")
    rep.add(g, "received on PUB", r["received"], "alarms")
    rep.add(g, "missing", r["planted"] - r["received"], "alarms", at_most=0)
    rep.add(g, "latency p50", _pct(lat, 50), "ms", fmt=".1f")
    p99 = rep.add(g, "latency p99", _pct(lat, 99), "ms", at_most=TARGET_P99_MS, fmt=".1f")
    rep.add(g, "latency max", float(lat.max()) if len(lat) else float("nan"), "ms", fmt=".1f")
    rep.add(g, f"p99 / {TARGET_P99_MS:g} ms target", p99 / TARGET_P99_MS, "x", fmt=".2f")
    rep.add(g, f"alarms over {TARGET_P99_MS:g} ms", int((lat > TARGET_P99_MS).sum()), "alarms")

    g = "where the time goes (engine wall-clock stamps, ms resolution)"
    for name, values in r["stages"].items():
        rep.add(g, f"{name}: p50", _pct(values, 50), "ms", fmt=".1f")
        rep.add(g, f"{name}: p99", _pct(values, 99), "ms", fmt=".1f")
    slow = r["slow_stages"]
    for k, name in enumerate(STAGES):
        rep.add(g, f"alarms over {TARGET_P99_MS:g} ms: mean of {name}",
                float(slow[:, k].mean()) if len(slow) else float("nan"), "ms", fmt=".1f")
    commits, buckets = r["commits"], r["commit_buckets"]
    rep.add(g, "ingest store commits (groups)", commits, "commits", fmt=".0f")
    rep.add(g, "ingest store commit: mean", 1000 * r["commit_sum"] / commits if commits
            else float("nan"), "ms", fmt=".2f")
    for le in (0.02, 0.05):
        rep.add(g, f"ingest store commits over {1000 * le:g} ms (WAL checkpoints, I/O)",
                commits - buckets.get(le, commits), "commits", fmt=".0f")
    for name in ("fixes", "worker", "alarms"):
        rep.add(g, f"WAL checkpoints during the load: {name}", r["checkpoints"].get(name, 0),
                "checkpoints")
    near = sum(bool(during) for *_, during in r["slow_at"])
    rep.add(g, f"alarms over {TARGET_P99_MS:g} ms with a checkpoint in their window", near,
            "alarms")
    if r["slow_at"]:
        batches: dict[int, list] = {}
        for k, at, ms, during in r["slow_at"]:
            b = batches.setdefault(k, [at, 0, 0.0, set()])
            b[1], b[2] = b[1] + 1, max(b[2], ms)
            b[3].update(during)
        rep.notes.append(f"alarms over {TARGET_P99_MS:g} ms by batch (s into the load: alarms, "
                         f"worst ms, checkpoints from {1000 * CHECKPOINT_NEAR_S:g} ms before the "
                         "send to the receipt): " + ", ".join(
                             f"{at:.2f}: {n} x {ms:.0f} {'+'.join(sorted(cps)) or '-'}"
                             for at, n, ms, cps in batches.values()))
    count = r["metric_count"]
    rep.add(g, "geofence_fix_to_alarm_seconds: count (all alarms)", count, "alarms", fmt=".0f")
    rep.add(g, "geofence_fix_to_alarm_seconds: mean", 1000 * r["metric_sum"] / count
            if count else float("nan"), "ms", fmt=".1f")
    rep.add(g, "geofence_fix_to_alarm_seconds: p99 bucket bound",
            1000 * _bucket_bound(r["metric_buckets"], 99), "ms", fmt=".0f")
    rep.notes.append(f"alarms first received on PUB, by type: {r['types']} "
                     f"({r['messages']} messages); acks by status {r['acks']}, "
                     f"ack timeouts {r['timeouts']}")
    rep.notes.append("stage figures are per planted alarm, p50/p99 of each stage separately "
                     "(they do not add up to the end-to-end percentiles)")
    return rep
