"""The pull connector's loop (SPEC §14): ask a positioning API, feed the engine.

    registry ──> PollSchedule ──> jobs (locate requests first) ──> `concurrency` askers
                                     ^                                 │ aiohttp
    engine ── locate requests ── EngineFeed <── rows (positions, handset states) ──┘

Named steps, each testable alone: `plan` (due devices from the schedule, the registry
re-read when its version changed), `ask` (one HTTP request and its `Answer`), `settle`
(what the answer means for the feed, the schedule, the back-off and the metrics).

Locate requests from the engine jump the queue (priority 0) and are retried up to
LOCATE_TRIES times on a transient failure; scheduled polls wait behind them, and only as
many are queued as the askers can take, so a slow provider never builds a backlog of
stale polls. The daily budget is taken per request; a poll refused by it waits for the
next day, a desk request may use the reserve. While the engine is away (the feed holds
more than its bound of rows without an ack) every request waits: an answer could not be
delivered, and asking would spend the budget and pile rows up in memory. A failure inside
the connector (a bug) puts the phone back: a poll after `backoff_first_s`, a locate
request with its remaining tries. Asyncio for the HTTP side (hundreds of
requests in flight on one core); the carrier client runs in its own thread (`connect.feed`).
"""

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from connect.budget import Backoff, BudgetFile, DailyBudget
from connect.config import HttpConnector, check_environment
from connect.feed import EngineFeed, Row
from connect.mapping import MAX_ANSWER_BYTES, Answer, build_request, map_answer
from connect.metrics import ConnectorMetrics
from connect.schedule import PollSchedule

log = logging.getLogger("geofence.connect")

LOCATE_TRIES = 3
PLAN_EVERY_S = 0.2             # how often due devices are queued
REGISTRY_CHECK_S = 2.0         # how often the registry's version is looked at
REFRESH_S = 300.0              # the schedule re-read anyway (subjects whose supervision ended)
SAVE_BUDGET_S = 5.0            # how often the day's count is saved (when it changed)
LOCATE, POLL = 0, 1            # job priorities
READ_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Job:
    device: str
    request: str | None = None     # a locate request's id; None: a scheduled poll
    reason: str | None = None      # desk or unsure
    tries: int = 0


class Connector:
    """One `[connect.http.NAME]` connector. `registry_db`: the engine's registry file, read
    only (opened by the thread that runs the connector: SQLite connections stay in theirs);
    `env`: where ${VAR} come from; `clock`: seconds (wall time); `max_backlog_rows`: rows
    without the engine's ack beyond which requests pause (default `feed.MAX_BACKLOG_ROWS`)."""

    def __init__(self, config: HttpConnector, endpoint: str, registry_db, *,
                 env: dict | None = None, metrics: ConnectorMetrics | None = None,
                 curve=None, ctx=None, clock: Callable[[], float] = time.time,
                 idle_batch_s: float | None = None, budget_file: BudgetFile | None = None,
                 max_backlog_rows: int | None = None):
        self.config = config
        self.env = dict(os.environ if env is None else env)
        check_environment(config, self.env)
        self.registry_db = registry_db
        self._registry = None
        self.metrics = metrics or ConnectorMetrics(config.name)
        self.clock = clock
        self.schedule = PollSchedule(config.every_s, config.prefixes)
        self.budget = DailyBudget(config.daily_budget, config.desk_reserve)
        self.budget_file = budget_file
        self._saved: tuple[int, int] | None = None
        self._saved_at = -1e18
        self.backoff = Backoff(config.backoff_first_s, config.backoff_max_s)
        self._seq = itertools.count()
        self._polls_queued: set[str] = set()
        self._jobs: asyncio.PriorityQueue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holding = False
        self._paused = False
        self._registry_checked = -1e18
        self._refreshed = -1e18
        extra = {} if idle_batch_s is None else {"idle_batch_s": idle_batch_s}
        if max_backlog_rows is not None:
            extra["max_backlog_rows"] = max_backlog_rows
        self.feed = EngineFeed(endpoint, config.carrier, self.metrics, self._on_locate,
                               curve=curve, ctx=ctx, **extra)

    # -- running -------------------------------------------------------------------------

    async def run(self, should_stop: Callable[[], bool], on_ready: Callable[[], None] = None):
        """Until should_stop(): plan, ask, settle. Stops the feed (acks awaited) at the end."""
        self._loop = asyncio.get_running_loop()
        if self.budget_file is not None:
            saved = self.budget_file.load()
            if saved is not None:
                self.budget.restore(*saved, self.clock())
        self._jobs = asyncio.PriorityQueue()
        self._room = asyncio.Event()
        self.feed.start()
        c = self.config
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=c.timeout_s),
            connector=aiohttp.TCPConnector(limit=c.concurrency, limit_per_host=c.concurrency),
            trust_env=False)   # no proxy from the environment: the provider is configured
        askers = [asyncio.create_task(self._asker()) for _ in range(c.concurrency)]
        self._session = session
        if on_ready is not None:
            on_ready()
        try:
            while not should_stop():
                if not self.feed.alive():
                    raise RuntimeError("the connector's engine feed stopped") from self.feed.error
                self.plan(self.clock())
                self._room.clear()
                try:   # again when an asker takes a poll (room in the queue), or shortly
                    await asyncio.wait_for(self._room.wait(), PLAN_EVERY_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in askers:
                task.cancel()
            await asyncio.gather(*askers, return_exceptions=True)
            await session.close()
            self.save_budget(self.clock(), force=True)
            await asyncio.get_running_loop().run_in_executor(None, self.feed.stop)
            if self._registry is not None:
                self._registry.close()
                self._registry = None

    def _on_locate(self, request: dict) -> None:
        """From the feed's thread: a locate request, into the jobs (loop-safe)."""
        self._loop.call_soon_threadsafe(self._take_locate, request)

    def _take_locate(self, request: dict) -> None:
        self.metrics.locates.labels(self.config.name, request["reason"]).inc()
        if not self.schedule.serves(request["device"]):
            self.metrics.skipped.labels(self.config.name, "not_served").inc()
            return
        self._put(LOCATE, Job(request["device"], request["request"], request["reason"]))

    def _put(self, priority: int, job: Job) -> None:
        self._jobs.put_nowait((priority, next(self._seq), job))

    # -- plan ----------------------------------------------------------------------------

    def plan(self, now_s: float) -> int:
        """Re-read the registry if it changed; queue due devices (at most as many as the
        askers can start now). Returns how many were queued."""
        if now_s - self._registry_checked >= REGISTRY_CHECK_S:
            self._registry_checked = now_s
            if self._registry is None:
                from alerts.registry import RegistryStore

                self._registry = RegistryStore(self.registry_db)
            change = self._registry.changes_since(self.schedule.version)
            if change is not None or now_s - self._refreshed >= REFRESH_S:
                self._refreshed = now_s
                self.schedule.update(change.registry if change is not None
                                     else self._registry.load(), now_s)
                self.metrics.served.labels(self.config.name).set(len(self.schedule))
        m, name = self.metrics, self.config.name
        m.budget.labels(name).set(self.budget.remaining(now_s))
        self.save_budget(now_s)
        if self.budget.warning_due(now_s):
            log.warning("connector %s: 80 %% of the daily budget of %d positionings spent",
                        name, self.budget.limit)
        room = 2 * self.config.concurrency - len(self._polls_queued)
        if self.engine_behind() or room <= 0 or self.backoff.wait_s(now_s) > 0:
            return 0
        queued = 0
        for device in self.schedule.due(now_s, room):
            if self.budget.remaining(now_s) <= 0:
                m.skipped.labels(name, "budget").inc()
                self.schedule.retry_at(device, self.budget.renews_at(now_s))
                continue
            self._polls_queued.add(device)
            self._put(POLL, Job(device))
            queued += 1
        return queued

    def engine_behind(self) -> bool:
        """True while the feed holds more rows than its bound: requests wait (logged and
        shown as `geofence_connect_paused` when it starts and ends)."""
        m, name = self.metrics, self.config.name
        m.backlog.labels(name).set(self.feed.backlog())
        behind = self.feed.full()
        if behind != self._paused:
            self._paused = behind
            m.paused.labels(name).set(int(behind))
            if behind:
                log.warning("connector %s: over %d rows wait for the engine's acks; requests "
                            "paused", name, self.feed.max_backlog_rows)
            else:
                log.info("connector %s: the engine takes rows again; requests resumed", name)
        return behind

    def save_budget(self, now_s: float, force: bool = False) -> None:
        """The day's count to the budget file, if it changed (every SAVE_BUDGET_S)."""
        if self.budget_file is None or not self.config.daily_budget:
            return
        state = self.budget.state(now_s)
        if state != self._saved and (force or now_s - self._saved_at >= SAVE_BUDGET_S):
            try:
                self.budget_file.save(*state)
            except OSError as e:   # a full disk: the count lives on in memory
                log.warning("connector %s: budget not saved: %s", self.config.name,
                            e.strerror or type(e).__name__)
                return
            self._saved, self._saved_at = state, now_s

    # -- ask and settle ------------------------------------------------------------------

    async def _asker(self) -> None:
        while True:
            _, _, job = await self._jobs.get()
            try:
                await self._handle(job)
            except Exception as e:   # a bug: named (its text may hold a number or a
                # URL with a key), counted; the phone is asked again, the asker goes on
                log.error("connector %s: a request failed: %s", self.config.name,
                          type(e).__name__)
                self.metrics.failures.labels(self.config.name).inc()
                try:
                    self._ask_again(job, self.config.backoff_first_s, self.clock())
                except Exception as again:
                    log.error("connector %s: a request not put back: %s", self.config.name,
                              type(again).__name__)
            finally:
                if job.request is None:
                    self._polls_queued.discard(job.device)
                    self._room.set()

    async def _handle(self, job: Job) -> None:
        while True:
            if self.engine_behind():
                await asyncio.sleep(PLAN_EVERY_S)
            elif (wait := self.backoff.wait_s(self.clock())) > 0:
                await asyncio.sleep(wait)
            else:
                break
        now = self.clock()
        if not self.budget.take(now, desk=job.reason == "desk"):
            if job.request is None:
                self.metrics.skipped.labels(self.config.name, "budget").inc()
                self.schedule.retry_at(job.device, self.budget.renews_at(now))
            else:   # the engine records it timed out
                self.metrics.skipped.labels(self.config.name, "locate_budget").inc()
            return
        answer, outcome = await self.ask(job.device)
        self.settle(job, answer, outcome, self.clock())

    async def ask(self, device: str) -> tuple[Answer, str]:
        """One request for `device`: its Answer and the outcome counted (the answer's kind,
        or `timeout` / `transport` when no answer came)."""
        request = build_request(self.config, device, self.env)
        started = time.monotonic()
        try:
            async with self._session.request(request.method, request.url,
                                             headers=request.headers, data=request.body,
                                             allow_redirects=False) as response:
                body = await read_capped(response.content, MAX_ANSWER_BYTES)
                now_ms = int(self.clock() * 1000)
                if len(body) > MAX_ANSWER_BYTES:
                    answer = Answer("malformed", why="too_large")
                else:
                    answer = map_answer(self.config, response.status, body, now_ms,
                                        response.headers.get("Retry-After"))
                outcome = answer.kind
        except asyncio.TimeoutError:
            answer, outcome = Answer("retry", why="timeout"), "timeout"
        except (aiohttp.ClientError, OSError, ValueError):
            # refused, reset, a bad answer line; never the URL (it may hold a key)
            answer, outcome = Answer("retry", why="transport"), "transport"
        self.metrics.request(outcome, time.monotonic() - started)
        return answer, outcome

    def settle(self, job: Job, answer: Answer, outcome: str, now_s: float) -> None:
        """What one answer means: a row for the engine, the next poll, the back-off."""
        name = self.config.name
        if answer.kind in ("retry", "rate_limited"):
            hold = self.backoff.failed(now_s, rate_limited=answer.kind == "rate_limited",
                                       retry_after_s=answer.retry_after_s)
            if hold and not self._holding:
                log.warning("connector %s: %s; holding requests back %.1f s", name,
                            answer.why or outcome, hold)
            self._holding = hold > 0
            self._ask_again(job, max(self.config.backoff_first_s, hold), now_s)
            return
        self._holding = False
        self.backoff.succeeded()
        self.schedule.polled(job.device, now_s)
        if answer.kind == "position":
            self.feed.put(Row(job.device, answer.t_ms, answer.lon, answer.lat, answer.acc_m,
                              answer.src, answer.datum, job.request))
            self.metrics.answers.labels(name, "position").inc()
        elif answer.kind == "state":
            nan = float("nan")
            self.feed.put(Row(job.device, answer.t_ms, nan, nan, nan, answer.state,
                              "wgs84", job.request))
            self.metrics.answers.labels(name, "state").inc()


    def _ask_again(self, job: Job, again_s: float, now_s: float) -> None:
        """After a failure: a poll back on the schedule in `again_s`; a locate request
        queued again then, if it has tries left."""
        if job.request is None:
            self.schedule.retry_at(job.device, now_s + again_s)
        elif job.tries + 1 < LOCATE_TRIES:
            self._loop.call_later(again_s, self._put, LOCATE, replace(job, tries=job.tries + 1))


async def read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """An answer's body to its end, or its first bytes past `limit` (then: too large).
    Not `read(limit + 1)`: that returns what is buffered, so an answer sent in pieces
    would be cut at the first."""
    body = bytearray()
    async for chunk in content.iter_chunked(READ_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            break
    return bytes(body)


def engine_endpoint(config: HttpConnector, ingest_bind: str) -> str:
    """Where the connector connects: its `endpoint`, else the engine's `[ingest] bind`
    (a wildcard host as loopback)."""
    endpoint = config.endpoint or ingest_bind
    for wildcard, local in (("tcp://0.0.0.0:", "tcp://127.0.0.1:"), ("tcp://*:", "tcp://127.0.0.1:"),
                            ("tcp://[::]:", "tcp://[::1]:")):
        if endpoint.startswith(wildcard):
            endpoint = local + endpoint[len(wildcard):]
    return endpoint


def run_connector(settings, name: str, should_stop: Callable[[], bool], *,
                  ingest_endpoint: str | None = None,
                  on_ready: Callable[[], None] | None = None) -> None:
    """The connector `name` of `settings` until should_stop(): what `geofence connect
    http` and `serve`'s connector children run. `ingest_endpoint`: where the engine's
    ingest listens (serve knows it once bound); default its `[ingest] bind`."""
    from connect.config import ConnectConfigError
    from engine.paths import EnginePaths
    from ingest.carrier import load_curve

    connectors = settings.connect.http
    if name not in connectors:
        raise ConnectConfigError([f"no connector {name!r} in {settings.source} "
                                  f"(configured: {', '.join(connectors) or 'none'})"])
    config = connectors[name]
    registry_db = EnginePaths(Path(settings.storage.path).absolute()).registry_db
    if not Path(registry_db).is_file():
        raise ConnectConfigError([f"connector {name}: no registry at {registry_db}; start "
                                  "`geofence serve` or import a registry first"])
    curve = load_curve(config.curve_keys, config.carrier) if config.curve_keys else None
    metrics = ConnectorMetrics(name)
    if config.metrics_bind:
        _serve_metrics(config.metrics_bind, metrics)
    endpoint = engine_endpoint(config, ingest_endpoint or settings.ingest.bind)
    budget_file = BudgetFile(Path(settings.storage.path).absolute() /
                             f"connect-{name}.budget.json")
    connector = Connector(config, endpoint, registry_db, metrics=metrics, curve=curve,
                          budget_file=budget_file)
    log.info("connector %s: carrier %s, %d askers", name, config.carrier, config.concurrency)
    asyncio.run(connector.run(should_stop, on_ready))


def _serve_metrics(bind: str, metrics: ConnectorMetrics) -> int:
    from prometheus_client import start_http_server

    from engine.address import parse_host_port

    host, port = parse_host_port(bind)
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server.server_port
