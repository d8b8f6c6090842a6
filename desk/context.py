"""What the desk's handlers share: typed keys on the application and the request."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from desk.events import ChangeFeed
from desk.mapdata import MapLayer
from desk.metrics import DeskMetrics
from desk.stores import Stores
from desk.users import Session
from engine.config import Settings
from engine.paths import EnginePaths
from geofence.errors import GeofenceError


@dataclass
class DeskState:
    """Everything one desk application holds (one per process)."""

    settings: Settings
    paths: EnginePaths
    stores: Stores
    feed: ChangeFeed
    metrics: DeskMetrics
    clock: Callable[[], float]
    login_checks: asyncio.Semaphore      # scrypt runs at once (CPU and 16 MiB each)
    track_reads: asyncio.Semaphore
    map_lock: asyncio.Lock
    hosts: frozenset[str]                # the host names it answers to (`desk.hosts`)
    map_layer: MapLayer | None = None
    code_checkers: tuple | None = None   # (is_place, is_zone) of the layers, once loaded

    async def checkers(self):
        """(is_place, is_zone) for validating registry writes: the layers are loaded once
        per process, off the event loop."""
        if self.code_checkers is None:
            async with self.map_lock:
                if self.code_checkers is None:
                    self.code_checkers = await asyncio.get_running_loop().run_in_executor(
                        None, _load_checkers, self.settings)
        return self.code_checkers

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


def _load_checkers(settings: Settings):
    from engine.layers import code_checkers, load_layers

    return code_checkers(*load_layers(settings))


DESK = web.AppKey("desk", DeskState)
# The engine's health board (`engine.health.HealthBoard`), when serve started this desk.
HEALTH = web.AppKey("health", object)
SESSION = web.RequestKey("session", Session)


class ApiError(GeofenceError):
    """An API answer other than success: rendered as {"error": message} with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def desk_of(request: web.Request) -> DeskState:
    return request.app[DESK]
