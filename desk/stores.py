"""The desk's SQLite connections, all owned by one thread.

SQLite calls block, so the event loop never makes them itself: every read or write goes
through `Stores.run`, which hands a function to a single dedicated thread. One thread
means each connection is only ever used from the thread that opened it, and the desk's
own writes (acknowledge, resolve, sessions) never race each other. Reads are quick
(indexed, WAL lets them run beside the dispatcher's writes); an acknowledge waits at
most the alarm store's busy timeout for the dispatcher's write lock.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from alerts.alarm_store import AlarmStore
from alerts.registry import RegistryStore
from carriers.locate_store import LocateStore
from desk.scope import Scope
from desk.users import UserStore
from engine.paths import EnginePaths

T = TypeVar("T")


class Stores:
    """The alarm store, the registry, the desk's users and the locate requests, behind one
    thread."""

    def __init__(self, paths: EnginePaths, sync: str = "normal"):
        self.paths = paths
        self.sync = sync
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="desk-db")
        self.alarms: AlarmStore | None = None
        self.registry: RegistryStore | None = None
        self.users: UserStore | None = None
        self.locates: LocateStore | None = None
        self._scope: Scope | None = None

    async def run(self, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self) -> None:
        self.alarms = AlarmStore(self.paths.alarms_db, self.sync)
        self.registry = RegistryStore(self.paths.registry_db)
        self.users = UserStore(self.paths.desk_db)
        self.locates = LocateStore(self.paths.locate_db, self.sync)

    def scope(self) -> Scope:
        """The current registry's scope (database thread only): reloaded when the
        registry's version changes, checked with one small query."""
        version = self.registry.version()
        if self._scope is None or self._scope.version != version:
            self._scope = Scope(self.registry.load())
        return self._scope

    async def close(self) -> None:
        try:
            await self.run(self._close)
        finally:
            self._executor.shutdown(wait=True)

    def _close(self) -> None:
        for store in (self.alarms, self.registry, self.users, self.locates):
            if store is not None:
                store.close()
        self.alarms = self.registry = self.users = self.locates = None
