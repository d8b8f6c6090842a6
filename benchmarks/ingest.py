"""Ingest: fixes/s accepted, stored and evaluated by a running `geofence serve`; ack
latency at 50,000 fixes/s; behaviour under overload.

Everything runs against the real engine: `geofence serve` started by
`tests.engine_harness.Engine` (supervisor, ingest and worker processes, ZeroMQ on loopback
TCP, SQLite files in a temp dir), a fresh engine for every run, stopped in `finally`. Its
config: `[storage] sync` as stated per group (`normal`, the default: an acked fix survives
kill -9 of any engine process; `full`: every group commit is also fsynced),
`[ingest] max_fix_age_s` and `[storage] keep_fixes_days` = 30 days (the feed replays several
days, oldest first, like a carrier's backfill; the defaults are 7 days; duplicates are refused
exactly over the shorter of the two), `max_backlog_fixes` the default 2,000,000 except in
the overload run.

Feed: the seeded Zaozhuang population of `SUBJECTS` subjects (`sim.population.builtin_population`,
imported with `geofence registry import`, one device each) and `sim.movement.make_day` for
`days` consecutive days, each day with its own generator (distinct times, positions and
sources), split over `CARRIERS` by subject as `geofence simulate` does; `cucc` sends
GCJ-02, which the engine converts. No spoiled fixes: every fix is valid, accepted = sent.
Frames are encoded before any timing (`encode_cols(binary=True)`: int64 device numbers,
little-endian bins, `src` strings, 45 B/fix; `encode_rows`: 54 B/fix), `BATCH_FIXES` fixes
each. Carriers are threads of this process, one `ingest.carrier.CarrierClient` each (a
DEALER with a window of batches in flight). The machine may be shared: the figures include
"waiting for a CPU" (/proc/<pid>/schedstat of the ingest loop's thread) so that contention
from other processes is visible.

1. Throughput: every carrier sends its frames as fast as its window (`WINDOW`) allows. The
   clock starts before the first send; "acked" stops at the last ack, "end to end" when the
   workers' evaluation totals (read-only queries of their SQLite files every 20 ms) reach
   the accepted count: the figure the target is about. Best of `repeat` runs (fresh engine
   each) with 1 worker and `sync=normal`, rows and cols; full mode adds one cols run with 2
   workers and one with `sync=full`. Per run: CPU used by ingest, workers and carriers
   (/proc/<pid>/stat, `os.times`), the ingest loop's time on a CPU and waiting for one,
   store commits and the duplicate filter's size from the engine's /metrics, peak RSS
   (VmHWM) of ingest and worker.
2. Ack latency: one carrier, batches of 1,000 fixes on a fixed schedule of 50 a second
   (50,000 fixes/s), window 8, for `latency_s`; p50/p99/max of the client's latency (send
   to ack, `CarrierStats.latency_ms`). The first 25 batches (0.5 s: connection set-up) are
   not counted.
3. Overload: the engine (supervisor, ingest, workers: every thread) pinned to the first
   CPU with `os.sched_setaffinity`, the carriers (this thread, the senders' threads and
   their ZeroMQ I/O thread) to the others; `max_backlog_fixes` = 100,000 and 1 worker, so
   that `busy` comes early. For `overload_s`, 4 carriers with windows of `overload_window`
   batches of 10,000 fixes resend a `busy` batch after 1-8 ms (the production client waits
   50 ms doubling to 5 s: these carriers are deliberately aggressive). Offered = frames put
   on the wire per second (first sends and resends after `busy`); capacity = fixes
   evaluated per second in the same interval. Every 0.5 s: VmRSS of ingest and worker and
   the backlog gauge; "flat" = the RSS peak of the load's second half is within `FLAT_MIB`
   of the first half's. Then the load stops, every window drains (busy batches are resent
   until taken), and the evaluation totals must reach the sum of `accepted` over all acks,
   which the store must hold exactly. If a carrier runs out of frames, the load stops
   there (and a note says so).
4. The duplicate filter, in process before the engine runs (`benchmarks/ingest_dedup.py`):
   the exact set against the ring of 16 it replaced on the same feed, and its refill from
   the store at start (`dedup_days` days of a fix a minute per subject).
"""

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import zmq

from benchmarks.common import Report, log
from benchmarks.ingest_dedup import compare as compare_dedup
from ingest.carrier import CarrierClient, CarrierStats
from engine.database import NotReadyError
from ingest.store import StoreReader
from service.cli import main as cli
from service.evaluation_store import EvaluationReader
from sim.carriers import CarrierFeed, split_by_carrier
from sim.fixes import Fixes
from sim.movement import DAY_MS, make_day
from sim.population import builtin_population, registry_document
from tests.engine_harness import Engine, free_port

SEED = 1
SUBJECTS = 2032
CARRIERS = ("cmcc", "cucc", "ctcc", "cbn")
GCJ02_CARRIERS = ("cucc",)
BATCH_FIXES = 10_000
WINDOW = 8
MAX_FIX_AGE_S = 30 * 24 * 3600
END_BEFORE_NOW_MS = 60_000
TARGET_COLS_MPS = 1.0
TARGET_ROWS_MPS = 0.3
LATENCY_BATCH, LATENCY_PER_S, LATENCY_WARM_BATCHES, TARGET_P99_MS = 1_000, 50, 25, 20.0
OVERLOAD_BACKLOG = 100_000
OVERLOAD_BACKOFF_MS = (1.0, 8.0)
SAMPLE_S = 0.5
FLAT_MIB = 32          # "flat": the RSS peak of the load's 2nd half within this of the 1st's
POLL_S = 0.02
WAIT_EVALUATED_S = 180
JOIN_S = 300

FULL = {"subjects": SUBJECTS, "days": 18, "cols_fixes": 6_000_000, "rows_fixes": 3_000_000,
        "repeat": 3, "latency_s": 10, "overload_s": 10, "overload_window": 64,
        "extra_runs": True, "dedup_days": 7}
QUICK = {"subjects": SUBJECTS, "days": 5, "cols_fixes": 1_000_000, "rows_fixes": 300_000,
         "repeat": 1, "latency_s": 3, "overload_s": 3, "overload_window": 16,
         "extra_runs": False, "dedup_days": 1}


# ----------------------------------------------------------------------------- the feed

@dataclass
class Data:
    registry: Path                       # the registry JSON document
    streams: list[CarrierFeed]           # per carrier, every day in time order
    cols: dict[str, list] = field(default_factory=dict)   # carrier -> [(batch, frame, n)]
    rows: dict[str, list] = field(default_factory=dict)


def make_data(sizes: dict, workdir: Path) -> Data:
    """The registry file and each carrier's stream of `days` days, oldest first."""
    layer, people, _ = builtin_population(sizes["subjects"], SEED)
    registry = workdir / "registry.json"
    registry.write_text(json.dumps(registry_document(layer, people), ensure_ascii=False))
    days = sizes["days"]
    end_ms = int(time.time() * 1000) - END_BEFORE_NOW_MS
    parts = [make_day(layer, people, np.random.default_rng([SEED, d]),
                      end_ms - (days - d) * DAY_MS) for d in range(days)]
    streams = split_by_carrier(Fixes.concat(parts), people.phones, CARRIERS, GCJ02_CARRIERS)
    return Data(registry, streams)


def encode(streams: list[CarrierFeed], form: str, total_fixes: int, batch_fixes: int,
           base: int) -> dict[str, list]:
    """Pre-encoded frames, the first total_fixes / len(streams) fixes of each stream."""
    each = -(-total_fixes // len(streams))
    out = {}
    for s in streams:
        part = replace(s, fixes=s.fixes.take(slice(0, each)))
        out[s.name] = list(part.batches(form, batch_fixes, base))
    return out


# --------------------------------------------------------------------------- the engine

class Running:
    """A fresh engine in a temp dir, registry imported, every worker ready."""

    def __init__(self, data: Data, workdir: Path, workers: int = 1, sync: str = "normal",
                 **ingest):
        self.workers = workers
        self.root = Path(tempfile.mkdtemp(prefix="engine-", dir=workdir))
        ingest = {"bind": f"tcp://127.0.0.1:{free_port()}", "metrics_bind": "127.0.0.1:0",
                  "max_fix_age_s": MAX_FIX_AGE_S, **ingest}
        lines = ["[storage]", f'path = "{self.root / "data"}"', f'sync = "{sync}"',
                 f"keep_fixes_days = {MAX_FIX_AGE_S // 86400}", "[ingest]"]
        lines += [f"{k} = {_toml(v)}" for k, v in ingest.items()]
        config = self.root / "geofence.toml"
        config.write_text("\n".join(lines) + "\n")
        with contextlib.redirect_stdout(sys.stderr):   # stdout holds only the tables
            if cli(["--config", str(config), "registry", "import", str(data.registry)]):
                raise RuntimeError("registry import failed")
        self.engine = Engine(config, workers)
        try:
            self._wait_workers()
            self.metrics_url = next(re.search(r"metrics on (\S+);", line).group(1)
                                    for line in self.engine.lines if "metrics on " in line)
            self.pids = {name: self.engine.pid(name) for name in self.names}
            self._readers: list[EvaluationReader] = []
            self._store: StoreReader | None = None
            self._done_seq = self._done_fixes = 0
        except BaseException:
            self.engine.stop()
            raise

    @property
    def names(self) -> list[str]:
        return ["ingest"] + [f"worker-{k}" for k in range(self.workers)]

    def _wait_workers(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(" ready, resuming after seq" in x for x in self.engine.lines) < self.workers:
            if time.monotonic() > deadline or self.engine.proc.poll() is not None:
                raise RuntimeError("workers not ready:\n" + "\n".join(self.engine.lines[-30:]))
            time.sleep(0.05)

    def evaluated(self) -> int:
        """Fixes every worker has evaluated so far: the stored fixes up to the lowest
        checkpoint. Read-only, and counted on from the last call (each call reads only the
        batches after the checkpoint it saw last)."""
        if self._store is None:
            try:
                self._store = StoreReader(self.engine.paths.fixes_db)
                self._readers = [EvaluationReader(self.engine.paths.worker_db(k, self.workers))
                                 for k in range(self.workers)]
            except NotReadyError:
                self.close_readers()
                return 0
        done = min(reader.checkpoint() for reader in self._readers)
        if done > self._done_seq:
            store = self._store
            self._done_fixes += store.fixes_after(self._done_seq) - store.fixes_after(done)
            self._done_seq = done
        return self._done_fixes

    def wait_evaluated(self, fixes: int, timeout_s: float = WAIT_EVALUATED_S) -> tuple[int, float]:
        """(evaluated, perf_counter when it reached `fixes` or the timeout ran out)."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.evaluated()
            if done >= fixes or time.monotonic() > deadline:
                return done, time.perf_counter()
            time.sleep(POLL_S)

    def cpu_s(self) -> dict[str, float]:
        return {name: _cpu_s(pid) for name, pid in self.pids.items()}

    def schedstat(self) -> dict[str, tuple[float, float]]:
        """(seconds on a CPU, seconds runnable but waiting for one) of each engine
        process's main thread (the ingest loop, a worker's loop): /proc/<pid>/schedstat."""
        out = {}
        for name, pid in self.pids.items():
            try:
                with open(f"/proc/{pid}/schedstat") as f:
                    run_ns, wait_ns, _ = f.read().split()
                out[name] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
            except (OSError, ValueError):   # a kernel without schedstats
                out[name] = (float("nan"), float("nan"))
        return out

    def status(self, key: str) -> dict[str, int]:
        """A /proc/<pid>/status field (VmRSS, VmHWM) of each engine process, in bytes."""
        return {name: _status_kib(pid, key) * 1024 for name, pid in self.pids.items()}

    def metrics(self) -> dict[str, float]:
        return self.engine.metrics()

    def close_readers(self) -> None:
        for reader in [*self._readers, self._store]:
            if reader is not None:
                reader.close()
        self._readers, self._store = [], None

    def close(self) -> None:
        self.close_readers()
        self.engine.stop()


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _cpu_busy() -> dict[int, float]:
    """Busy seconds of each CPU since boot (everyone's work, not only ours), /proc/stat."""
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [int(x) for x in values]
                out[int(name[3:])] = (sum(v[:8]) - v[3] - v[4]) / tick   # all but idle, iowait
    return out


def _descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc/<pid>/task/<tid>/children."""
    out = [pid]
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:   # it has just exited
        return out
    for tid in tids:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            out += _descendants(int(child))
    return out


def pin_tree(pid: int, cpus: set[int]) -> tuple[int, int]:
    """Pin every thread of `pid` and its descendants to `cpus`: (processes, threads)."""
    procs = _descendants(pid)
    threads = 0
    for p in procs:
        with contextlib.suppress(FileNotFoundError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), cpus)
                    threads += 1
    return len(procs), threads


# ------------------------------------------------------------------------- the carriers

@dataclass
class Sender:
    name: str
    frames: list
    options: dict
    client: CarrierClient | None = None
    done_at: float = 0.0              # perf_counter when its window was drained
    exhausted_at: float = 0.0         # perf_counter when it had sent its last frame
    error: BaseException | None = None
    thread: threading.Thread | None = None


def _send(sender: Sender, ctx: zmq.Context, endpoint: str, stop: threading.Event,
          schedule_s: float = 0.0, started: float = 0.0) -> None:
    """One carrier's thread: send every frame (on a schedule if given) until done or
    stopped, then drain the window. Failures are kept for the main thread."""
    try:
        with CarrierClient(ctx, endpoint, sender.name, **sender.options) as client:
            sender.client = client
            for k, (batch_no, frame, _) in enumerate(sender.frames):
                if stop.is_set():
                    break
                if schedule_s:
                    wait_s = started + k * schedule_s - time.perf_counter()
                    if wait_s > 0:
                        client.idle(wait_s)
                client.send(frame, batch_no)
            else:
                sender.exhausted_at = time.perf_counter()
            client.drain()
            sender.done_at = time.perf_counter()
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        sender.error = e
        stop.set()


def start_senders(senders: list[Sender], endpoint: str, stop: threading.Event,
                  schedule_s: float = 0.0) -> tuple[zmq.Context, float]:
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    t0 = time.perf_counter()
    for s in senders:
        s.thread = threading.Thread(target=_send, name=f"bench-ingest-{s.name}", daemon=True,
                                    args=(s, ctx, endpoint, stop, schedule_s, t0))
        s.thread.start()
    return ctx, t0


def join_senders(senders: list[Sender], ctx: zmq.Context, stop: threading.Event,
                 timeout_s: float = JOIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    for s in senders:
        s.thread.join(max(0.0, deadline - time.monotonic()))
    alive = [s.name for s in senders if s.thread.is_alive()]
    if alive:
        stop.set()
        ctx.destroy(linger=0)   # threads still in a socket call get ETERM and end
        raise RuntimeError(f"carriers {alive} did not finish in {timeout_s} s")
    ctx.term()
    errors = [s.error for s in senders if s.error is not None]
    if errors:
        raise errors[0]


def combined(senders: list[Sender]) -> CarrierStats:
    return CarrierStats.combined(s.client.stats for s in senders if s.client is not None)


# ------------------------------------------------------------------------ 1. throughput

def throughput(data: Data, workdir: Path, form: str, workers: int = 1,
               sync: str = "normal") -> dict:
    frames = data.cols if form == "cols" else data.rows
    sent = sum(n for f in frames.values() for *_, n in f)
    run = Running(data, workdir, workers, sync)
    try:
        senders = [Sender(name, f, {"window": WINDOW, "timeout_ms": 10_000, "seed": k})
                   for k, (name, f) in enumerate(frames.items())]
        stop = threading.Event()
        cpu0, own0, sched0 = run.cpu_s(), _own_cpu_s(), run.schedstat()
        ctx, t0 = start_senders(senders, run.engine.endpoint, stop)
        join_senders(senders, ctx, stop)
        stats = combined(senders)
        acked_at = max(s.done_at for s in senders)
        own1, sched_acked = _own_cpu_s(), run.schedstat()
        evaluated, evaluated_at = run.wait_evaluated(stats.fixes_accepted)
        cpu1 = run.cpu_s()
        metrics = run.metrics()
        hwm = run.status("VmHWM")
    finally:
        run.close()
    wall = evaluated_at - t0
    workers_cpu = sum(cpu1[n] - cpu0[n] for n in cpu1 if n.startswith("worker"))
    return {
        "form": form, "workers": workers, "sync": sync, "sent": sent,
        "accepted": stats.fixes_accepted, "evaluated": evaluated,
        "ack_mps": stats.fixes_accepted / (acked_at - t0) / 1e6,
        "evaluated_mps": (stats.fixes_accepted / wall / 1e6
                          if evaluated >= stats.fixes_accepted else 0.0),
        "wall_s": wall, "acks": dict(stats.acks), "timeouts": stats.timeouts,
        "ingest_cores": (cpu1["ingest"] - cpu0["ingest"]) / wall,
        "workers_cores": workers_cpu / wall, "carriers_cores": (own1 - own0) / (acked_at - t0),
        "commit_ms": _mean_ms(metrics, "geofence_store_commit_seconds"),
        "commits": metrics.get("geofence_store_commit_seconds_count", 0),
        "kernel_s": metrics.get("geofence_check_kernel_seconds_sum", 0.0),
        "ack_engine_ms": _mean_ms(metrics, "geofence_ack_seconds"),
        "dedup_bytes": metrics.get("geofence_duplicate_filter_bytes", 0.0),
        "dedup_fixes": metrics.get("geofence_duplicate_filter_fixes", 0.0),
        "hwm_ingest": hwm["ingest"], "hwm_workers": max(v for n, v in hwm.items() if n != "ingest"),
        # the ingest loop until the last ack: running, waiting for a CPU, asleep (I/O, idle)
        "loop_run": (sched_acked["ingest"][0] - sched0["ingest"][0]) / (acked_at - t0),
        "loop_wait": (sched_acked["ingest"][1] - sched0["ingest"][1]) / (acked_at - t0),
    }


def _percentile(samples, q: float) -> float:
    return float(np.percentile(np.asarray(samples, float), q)) if len(samples) else float("nan")


def _mean_ms(metrics: dict, name: str) -> float:
    count = metrics.get(f"{name}_count", 0)
    return 1000 * metrics.get(f"{name}_sum", 0.0) / count if count else 0.0


def report_throughput(rep: Report, runs: list[dict], target: float | None) -> None:
    best = max(runs, key=lambda r: (r["evaluated_mps"], r["ack_mps"]))
    group = (f"{best['form']}, batches of {BATCH_FIXES:,}, {best['workers']} worker"
             f"{'s' if best['workers'] > 1 else ''}, sync={best['sync']}")
    rep.add(group, f"fixes sent (best of {len(runs)} runs)", best["sent"], "fixes")
    rep.add(group, "acked: accepted / time to last ack", best["ack_mps"], "M fixes/s", fmt=".3f")
    rep.add(group, "end to end: accepted / time to all evaluated", best["evaluated_mps"],
            "M fixes/s", at_least=target, fmt=".3f")
    rep.add(group, "  accepted - evaluated", best["accepted"] - best["evaluated"], "fixes",
            at_most=0)
    rep.add(group, "  busy answers", best["acks"].get("busy", 0), "batches")
    rep.add(group, "  CPU: ingest", best["ingest_cores"], "cores", fmt=".2f")
    rep.add(group, "  CPU: worker(s)", best["workers_cores"], "cores", fmt=".2f")
    rep.add(group, "  CPU: carriers (bench process)", best["carriers_cores"], "cores", fmt=".2f")
    rep.add(group, "  ingest loop: share of time on a CPU", best["loop_run"], "", fmt=".0%")
    rep.add(group, "  ingest loop: share waiting for a CPU", best["loop_wait"], "", fmt=".0%")
    rep.add(group, "  accepted per CPU-second of the ingest loop",
            best["ack_mps"] / max(best["loop_run"], 1e-9), "M fixes/s", fmt=".3f")
    rep.add(group, "  store commits (groups)", best["commits"], "commits", fmt=".0f")
    rep.add(group, "  store commit, mean per group", best["commit_ms"], "ms", fmt=".2f")
    rep.add(group, "  verdict kernel, total wall time in the worker(s)", best["kernel_s"], "s",
            fmt=".2f")
    rep.add(group, "  duplicate filter: fixes remembered", best["dedup_fixes"], "fixes",
            fmt=",.0f")
    rep.add(group, "  duplicate filter: table", best["dedup_bytes"] / 2**20, "MiB", fmt=".1f")
    rep.add(group, "  peak RSS ingest (VmHWM)", best["hwm_ingest"] / 2**20, "MiB", fmt=".0f")
    rep.add(group, "  peak RSS worker (VmHWM)", best["hwm_workers"] / 2**20, "MiB", fmt=".0f")
    rep.notes.append(f"{group}: runs (acked / end to end, M fixes/s): " + "; ".join(
        f"{r['ack_mps']:.3f} / {r['evaluated_mps']:.3f}" for r in runs))


# ----------------------------------------------------------------------- 2. ack latency

def latency(data: Data, workdir: Path, seconds: float) -> dict:
    n_batches = LATENCY_WARM_BATCHES + round(seconds * LATENCY_PER_S)
    stream = data.streams[0]
    frames = encode([stream], "cols", n_batches * LATENCY_BATCH, LATENCY_BATCH,
                    int(time.time() * 1000) * 1000)[stream.name][:n_batches]
    run = Running(data, workdir)
    try:
        warm = Sender(stream.name, frames[:LATENCY_WARM_BATCHES], {"window": WINDOW})
        timed = Sender(stream.name, frames[LATENCY_WARM_BATCHES:],
                       {"window": WINDOW, "timeout_ms": 10_000})
        for sender in (warm, timed):
            stop = threading.Event()
            ctx, t0 = start_senders([sender], run.engine.endpoint, stop, 1 / LATENCY_PER_S)
            join_senders([sender], ctx, stop)
        stats = sender.client.stats
        wall = sender.done_at - t0
        evaluated, _ = run.wait_evaluated(stats.fixes_accepted + warm.client.stats.fixes_accepted)
    finally:
        run.close()
    samples = np.array(stats.latency_ms)
    return {"batches": len(samples), "rate": stats.fixes_accepted / wall,
            "p50": stats.latency_percentile(50), "p99": stats.latency_percentile(99),
            "max": float(samples.max()), "over_target": int((samples > TARGET_P99_MS).sum()),
            "acks": dict(stats.acks), "seconds": wall}


# --------------------------------------------------------------------------- 3. overload

def overload(data: Data, workdir: Path, seconds: float, window: int) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError("the overload run needs 2 CPUs (engine on one, carriers on the rest)")
    engine_cpus, load_cpus = {cpus[0]}, set(cpus[1:])
    main_affinity = os.sched_getaffinity(0)
    run = Running(data, workdir, max_backlog_fixes=OVERLOAD_BACKLOG)
    try:
        pinned = pin_tree(run.engine.proc.pid, engine_cpus)
        os.sched_setaffinity(0, load_cpus)   # this thread; the carriers' threads inherit it
        low, high = OVERLOAD_BACKOFF_MS
        senders = [Sender(name, f, {"window": window, "timeout_ms": 10_000,
                                    "retries": 5, "backoff_ms": low, "backoff_max_ms": high,
                                    "seed": k})
                   for k, (name, f) in enumerate(data.cols.items())]
        stop = threading.Event()
        samples = []
        evaluated0, cpu0, own0, busy0 = run.evaluated(), run.cpu_s(), _own_cpu_s(), _cpu_busy()
        sched0 = run.schedstat()
        ctx, t0 = start_senders(senders, run.engine.endpoint, stop)
        while (time.perf_counter() - t0 < seconds and not stop.is_set()
               and not any(s.exhausted_at for s in senders)):
            samples.append(_sample(run, t0))
            time.sleep(max(0.0, t0 + len(samples) * SAMPLE_S - time.perf_counter()))
        stop.set()
        t1 = time.perf_counter()
        evaluated1, cpu1, own1, busy1 = run.evaluated(), run.cpu_s(), _own_cpu_s(), _cpu_busy()
        sched1 = run.schedstat()
        latencies = combined(senders).latency_ms   # busy answers included
        samples.append(_sample(run, t0))
        sends = sum(s.client.stats.sends for s in senders if s.client is not None)
        exhausted = [s.name for s in senders if s.exhausted_at]
        join_senders(senders, ctx, stop)
        drained_at = time.perf_counter()
        stats = combined(senders)
        evaluated, _ = run.wait_evaluated(stats.fixes_accepted)
        time.sleep(0.5)  # anything evaluated twice would show up now
        after = _sample(run, t0)
        with StoreReader(run.engine.paths.fixes_db) as store:
            stored = store.stats()["fixes"]
        metrics = run.metrics()
    finally:
        os.sched_setaffinity(0, main_affinity)
        run.close()
    duration = t1 - t0
    sizes = {n for f in data.cols.values() for *_, n in f}
    return {
        "duration": duration, "window": window, "pinned": pinned,
        "engine_cpus": sorted(engine_cpus),
        "load_cpus": sorted(load_cpus), "exhausted": exhausted,
        "offered_frames": sends / duration, "offered_mps": sends * BATCH_FIXES / duration / 1e6,
        "capacity_mps": (evaluated1 - evaluated0) / duration / 1e6,
        "ingest_cores": (cpu1["ingest"] - cpu0["ingest"]) / duration,
        "worker_cores": (cpu1["worker-0"] - cpu0["worker-0"]) / duration,
        "carriers_cores": (own1 - own0) / duration,
        "loop_run": (sched1["ingest"][0] - sched0["ingest"][0]) / duration,
        "loop_wait": (sched1["ingest"][1] - sched0["ingest"][1]) / duration,
        "latency_p50": _percentile(latencies, 50), "latency_p99": _percentile(latencies, 99),
        "cpu_busy": {c: (busy1[c] - busy0[c]) / duration for c in sorted(busy1)},
        "busy": stats.acks.get("busy", 0), "acks": dict(stats.acks), "timeouts": stats.timeouts,
        "accepted": stats.fixes_accepted, "stored": stored,
        "evaluated": metrics.get("geofence_fixes_evaluated_total", 0),
        "drain_s": drained_at - t1, "samples": samples, "after": after,
        "busy_metric": metrics.get('geofence_batches_total{status="busy"}', 0),
        "commits": metrics.get("geofence_store_commit_seconds_count", 0),
        "commit_ms": _mean_ms(metrics, "geofence_store_commit_seconds"),
        "ack_engine_ms": _mean_ms(metrics, "geofence_ack_seconds"),
        "frame_sizes": sorted(sizes)[:3],
    }


def _sample(run: Running, t0: float) -> dict:
    rss = run.status("VmRSS")
    try:
        metrics = run.metrics()
    except OSError:
        metrics = {}
    return {"t": time.perf_counter() - t0, "ingest": rss["ingest"], "worker": rss["worker-0"],
            "backlog": metrics.get("geofence_backlog_fixes", -1),
            # the duplicate filter holds every accepted fix of the window by design: the
            # ingest's memory is judged without it (its growth is printed on its own)
            "filter": metrics.get("geofence_duplicate_filter_bytes", 0)}


def report_overload(rep: Report, r: dict) -> None:
    g = f"overload, {len(CARRIERS)} carriers x window {r['window']}"
    rep.add(g, "duration of the load", r["duration"], "s", fmt=".1f")
    rep.add(g, "offered (sends incl. resends after busy)", r["offered_frames"], "frames/s",
            fmt=".0f")
    rep.add(g, "offered", r["offered_mps"], "M fixes/s", fmt=".3f")
    rep.add(g, "capacity: evaluated during the load", r["capacity_mps"], "M fixes/s", fmt=".3f")
    rep.add(g, "offered / capacity", r["offered_mps"] / max(r["capacity_mps"], 1e-9), "x",
            at_least=10, fmt=".1f")
    rep.add(g, "busy answers", r["busy"], "acks", at_least=1)
    rep.add(g, "CPU on the engine's core: ingest", r["ingest_cores"], "cores", fmt=".2f")
    rep.add(g, "CPU on the engine's core: worker", r["worker_cores"], "cores", fmt=".2f")
    rep.add(g, "ingest loop: share of time on a CPU", r["loop_run"], "", fmt=".0%")
    rep.add(g, "ingest loop: share waiting for a CPU", r["loop_wait"], "", fmt=".0%")
    rep.add(g, "CPU of the carriers (bench process)", r["carriers_cores"], "cores", fmt=".2f")
    rep.add(g, "carriers' ack latency p50 (busy included)", r["latency_p50"], "ms", fmt=".1f")
    rep.add(g, "carriers' ack latency p99 (busy included)", r["latency_p99"], "ms", fmt=".1f")
    for cpu, busy in r["cpu_busy"].items():
        rep.add(g, f"CPU {cpu} busy (all processes on the machine)", busy, "cores", fmt=".2f")
    samples = r["samples"]
    for proc in ("ingest", "worker"):
        values = [s[proc] / 2**20 for s in samples]
        half = max(1, len(values) // 2)
        rep.add(g, f"RSS {proc}: start", values[0], "MiB", fmt=".0f")
        rep.add(g, f"RSS {proc}: peak", max(values), "MiB", fmt=".0f")
        rep.add(g, f"RSS {proc}: end of load", values[-1], "MiB", fmt=".0f")
        rep.add(g, f"RSS {proc}: after the drain", r["after"][proc] / 2**20, "MiB", fmt=".0f")
        if proc == "ingest":
            filters = [s["filter"] / 2**20 for s in samples]
            rep.add(g, "duplicate filter: start -> end of load", filters[-1] - filters[0], "MiB",
                    fmt=".0f")
            values = [v - f for v, f in zip(values, filters)]
            proc = "ingest less its duplicate filter"
        rep.add(g, f"RSS {proc}: peak 2nd half - peak 1st half",
                max(values[half:]) - max(values[:half]), "MiB", at_most=FLAT_MIB, fmt=".0f")
    backlogs = [s["backlog"] for s in samples if s["backlog"] >= 0]
    if backlogs:
        rep.add(g, f"backlog gauge: peak of samples (limit {OVERLOAD_BACKLOG:,})", max(backlogs),
                "fixes")
    rep.add(g, "drain after the load stopped", r["drain_s"], "s", fmt=".1f")
    rep.add(g, "accepted (sum over acks)", r["accepted"], "fixes")
    rep.add(g, "stored in fixes.sqlite", r["stored"], "fixes")
    rep.add(g, "evaluated (workers' reports: twice counts twice)", r["evaluated"], "fixes")
    rep.add(g, "acknowledged but not evaluated", max(0, r["accepted"] - r["evaluated"]),
            "fixes", at_most=0)
    rep.add(g, "evaluated - stored (twice or unacked)", r["evaluated"] - r["stored"], "fixes",
            at_most=0)
    rep.notes.append(
        f"overload: engine ({r['pinned'][0]} processes, {r['pinned'][1]} threads) pinned to "
        f"CPU {r['engine_cpus']}, carriers on CPU {r['load_cpus']}; acks by status "
        f"{r['acks']}; ack timeouts {r['timeouts']}; metrics busy "
        f"{r['busy_metric']:.0f}; store commits {r['commits']:.0f} (mean {r['commit_ms']:.1f} ms) "
        f"for {r['acks'].get('ok', 0)} accepted batches; mean arrival-to-ack in the ingest "
        f"{r['ack_engine_ms']:.1f} ms; RSS samples (s: ingest/worker MiB, backlog) " + ", ".join(
            f"{s['t']:.1f}: {s['ingest'] / 2**20:.0f}/{s['worker'] / 2**20:.0f} "
            f"{s['backlog']:.0f}" for s in r["samples"][::max(1, len(r['samples']) // 12)]))
    if r["exhausted"]:
        rep.notes.append(f"overload: carriers {r['exhausted']} ran out of frames: the load "
                         f"stopped after {r['duration']:.1f} s instead of the planned time")


# --------------------------------------------------------------------------------- run

def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    rep = Report("ingest", {
        **sizes, "carriers": list(CARRIERS), "gcj02": list(GCJ02_CARRIERS),
        "batch_fixes": BATCH_FIXES, "window": WINDOW, "sync": "normal (unless stated)",
        "latency": {"batch": LATENCY_BATCH, "per_s": LATENCY_PER_S, "window": WINDOW},
        "overload": {"max_backlog_fixes": OVERLOAD_BACKLOG,
                     "backoff_ms": list(OVERLOAD_BACKOFF_MS)}})
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        data = make_data(sizes, workdir)
        base = int(time.time() * 1000) * 1000
        pool = max(sizes["cols_fixes"], sum(len(s) for s in data.streams))
        data.cols = encode(data.streams, "cols", pool, BATCH_FIXES, base)
        data.rows = encode(data.streams, "rows", sizes["rows_fixes"], BATCH_FIXES, base)
        log(f"ingest: feed of {sum(len(s) for s in data.streams):,} fixes over "
            f"{sizes['days']} days encoded in {time.perf_counter() - started:.1f} s")

        compare_dedup(rep, sizes["subjects"], sizes["dedup_days"], BATCH_FIXES, workdir)
        full_cols = data.cols
        data.cols = _first(full_cols, sizes["cols_fixes"])
        for form, target in (("cols", TARGET_COLS_MPS), ("rows", TARGET_ROWS_MPS)):
            runs = []
            for k in range(sizes["repeat"]):
                runs.append(throughput(data, workdir, form))
                log(f"ingest: {form} run {k + 1}: {_brief(runs[-1])}")
            report_throughput(rep, runs, target)
        if sizes["extra_runs"]:
            for workers, sync in ((2, "normal"), (1, "full")):
                r = throughput(data, workdir, "cols", workers, sync)
                log(f"ingest: cols {workers} workers sync={sync}: {_brief(r)}")
                report_throughput(rep, [r], None)

        lat = latency(data, workdir, sizes["latency_s"])
        g = f"ack latency, {LATENCY_PER_S} batches/s of {LATENCY_BATCH:,}, window {WINDOW}"
        rep.add(g, "rate achieved", lat["rate"], "fixes/s", fmt=",.0f")
        rep.add(g, "batches timed", lat["batches"], "batches")
        rep.add(g, "ack latency p50", lat["p50"], "ms", fmt=".2f")
        rep.add(g, "ack latency p99", lat["p99"], "ms", at_most=TARGET_P99_MS, fmt=".2f")
        rep.add(g, "ack latency max", lat["max"], "ms", fmt=".2f")
        rep.add(g, f"batches over {TARGET_P99_MS:g} ms", lat["over_target"], "batches")

        data.cols = full_cols
        report_overload(rep, overload(data, workdir, sizes["overload_s"], sizes["overload_window"]))
    return rep


def _first(frames: dict[str, list], total: int) -> dict[str, list]:
    """Each carrier's first frames, up to total / carriers fixes each."""
    each = -(-total // len(frames))
    out = {}
    for name, f in frames.items():
        taken, n = [], 0
        for item in f:
            if n >= each:
                break
            taken.append(item)
            n += item[2]
        out[name] = taken
    return out


def _brief(r: dict) -> str:
    return (f"acked {r['ack_mps']:.3f}, end to end {r['evaluated_mps']:.3f} M fixes/s, "
            f"acks {r['acks']}, CPU ingest {r['ingest_cores']:.2f} worker(s) "
            f"{r['workers_cores']:.2f} carriers {r['carriers_cores']:.2f}; ingest loop on CPU "
            f"{r['loop_run']:.0%}, waiting for a CPU {r['loop_wait']:.0%}; {r['commits']:.0f} "
            f"commits of {r['commit_ms']:.1f} ms")
