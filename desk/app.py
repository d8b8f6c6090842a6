"""The desk's web application, and running it as one of the engine's processes.

    make_app(settings, paths)  -> aiohttp Application (tests serve it on port 0)
    run_desk(settings, should_stop, on_ready)  blocks: binds [desk] bind, calls
        on_ready(url) once listening, returns after should_stop() turns true

Routes (SPEC §8, §11, §12): /api/login, /api/logout, /api/me,
/api/alarms[/{id}[/ack|/resolve]], /api/subjects[/{id}[/track|/end]] (desk.subjects_api),
/api/events, /api/layer, /api/audit; key periods (`desk.key_periods_api`):
/api/key-periods[/{id}/end]; leaves (`desk.leaves_api`):
/api/leaves[/{id}[/approve|/reject|/cancel|/close]], /api/subjects/{id}/leaves;
locate requests (`desk.locate_api`): /api/subjects/{id}/locate[s], /api/locate/{request};
/healthz and /metrics without a session; the page at / and /static/.
Middlewares, outermost first: JSON errors and headers, allowed hosts, same origin, the
session, viewers read only.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from desk import (api, audit_api, auth, key_periods_api, leaves_api, locate_api, static,
                  subjects_api)
from desk.context import DESK, HEALTH, DeskState
from desk.events import ChangeFeed
from desk.hosts import configured_hosts, host_middleware
from desk.jsonbody import MAX_BODY_BYTES
from desk.locate_events import LocateFollower
from desk.http import (RouteAccessLogger, outer_middleware, same_origin_middleware,
                       session_middleware, viewer_middleware)
from desk.metrics import DeskMetrics
from desk.revocation import RevocationWatch
from desk.stores import Stores
from engine.address import parse_host_port
from engine.config import ConfigError, Settings
from engine.paths import EnginePaths

log = logging.getLogger("geofence.desk")

LOGIN_CHECKS_AT_ONCE = 2
SHUTDOWN_TIMEOUT_S = 5.0
STOP_POLL_S = 0.2


def make_app(settings: Settings, paths: EnginePaths, *,
             clock: Callable[[], float] = time.time, health=None) -> web.Application:
    """The desk application; its SQLite files open on startup and close on cleanup.

    `clock` (seconds, like time.time) is for tests of session expiry; `health`: the
    engine's health board (`engine.health`), which /healthz reports.
    """
    from desk.tracks import TRACK_READS_AT_ONCE

    hosts = configured_hosts(settings.desk)
    app = web.Application(middlewares=[outer_middleware, host_middleware,
                                       same_origin_middleware, session_middleware,
                                       viewer_middleware],
                          client_max_size=MAX_BODY_BYTES)
    stores = Stores(paths, settings.storage.sync)
    metrics = DeskMetrics(paths.alarms_db)
    feed = ChangeFeed(stores, on_clients=metrics.sse_clients.set)
    revocations = RevocationWatch(stores, feed)
    locates = LocateFollower(feed)
    app[DESK] = DeskState(settings, paths, stores, feed, metrics, clock,
                          asyncio.Semaphore(LOGIN_CHECKS_AT_ONCE),
                          asyncio.Semaphore(TRACK_READS_AT_ONCE), asyncio.Lock(), hosts)
    if health is not None:
        app[HEALTH] = health

    async def start(_app):
        await stores.open()
        await feed.start()
        await locates.start()
        revocations.start()

    async def stop_streams(_app):
        await revocations.stop()
        await locates.stop()
        await feed.stop()

    async def close(_app):
        await stores.run(metrics.close)
        await stores.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop_streams)
    app.on_cleanup.append(close)

    r = app.router
    r.add_post("/api/login", auth.login)
    r.add_post("/api/logout", auth.logout)
    r.add_get("/api/me", auth.me)
    r.add_get("/api/alarms", api.list_alarms)
    r.add_get("/api/alarms/{id}", api.get_alarm)
    r.add_post("/api/alarms/{id}/ack", api.acknowledge)
    r.add_post("/api/alarms/{id}/resolve", api.resolve)
    r.add_get("/api/subjects", subjects_api.list_subjects)
    r.add_post("/api/subjects", subjects_api.onboard)
    r.add_get("/api/subjects/{id}", subjects_api.get_subject)
    r.add_patch("/api/subjects/{id}", subjects_api.edit)
    r.add_post("/api/subjects/{id}/end", subjects_api.end)
    r.add_get("/api/subjects/{id}/track", api.track)
    r.add_get("/api/events", api.event_stream)
    r.add_get("/api/layer", api.layer)
    r.add_get("/api/audit", audit_api.list_audit)
    r.add_post("/api/leaves", leaves_api.request_leave)
    r.add_get("/api/leaves", leaves_api.list_leaves)
    r.add_get("/api/leaves/{id}", leaves_api.get_leave)
    r.add_post("/api/leaves/{id}/approve", leaves_api.approve)
    r.add_post("/api/leaves/{id}/reject", leaves_api.reject)
    r.add_post("/api/leaves/{id}/cancel", leaves_api.cancel)
    r.add_post("/api/leaves/{id}/close", leaves_api.close)
    r.add_get("/api/subjects/{id}/leaves", leaves_api.subject_leaves)
    r.add_post("/api/subjects/{id}/locate", locate_api.request_locate)
    r.add_get("/api/subjects/{id}/locates", locate_api.subject_locates)
    r.add_get("/api/locate/{request}", locate_api.get_locate)
    r.add_get("/api/key-periods", key_periods_api.list_periods)
    r.add_post("/api/key-periods", key_periods_api.create)
    r.add_post("/api/key-periods/{id}/end", key_periods_api.end)
    r.add_get("/healthz", api.health)
    r.add_get("/metrics", api.metrics)
    static.add_routes(app)
    return app


def parse_bind(bind: str) -> tuple[str, int]:
    """("host", port) of `[desk] bind` ("127.0.0.1:8080", "[::1]:8080"; port 0: any)."""
    try:
        return parse_host_port(bind)
    except ValueError as e:
        raise ConfigError(f"[desk] bind {e}") from e


def run_desk(settings: Settings, should_stop: Callable[[], bool],
             on_ready: Callable[[str], None], health=None) -> None:
    """Serve the desk until `should_stop()`; `on_ready(url)` once it is listening."""
    asyncio.run(serve_desk(settings, should_stop, on_ready, health=health))


async def serve_desk(settings: Settings, should_stop: Callable[[], bool],
                     on_ready: Callable[[str], None], paths: EnginePaths | None = None,
                     health=None) -> None:
    host, port = parse_bind(settings.desk.bind)
    paths = paths or EnginePaths.create(settings.storage.path)
    runner = web.AppRunner(make_app(settings, paths, health=health), access_log_class=RouteAccessLogger,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
        log.info("desk listening on %s", url)
        on_ready(url)
        while not should_stop():
            await asyncio.sleep(STOP_POLL_S)
    finally:
        await runner.cleanup()
