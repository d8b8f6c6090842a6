"""The dispatcher: publishes every stored alarm on the ZeroMQ PUB socket (SPEC §7).

Workers store alarms in their own SQLite files; this process follows each file's `alarms`
table in insertion order and publishes two frames per alarm: the topic (the office path
from the root, ``3704/370402/370402001/``, so a county subscribes to its whole subtree with
a prefix) and the msgpack alarm document. An alarm is stored before it is published
anywhere. PUB is live only: a subscriber that was away catches up over HTTP (the desk).
Positions are kept in the dispatcher's own file, so a restart does not publish the whole
history again (at most the last few alarms twice: receivers de-duplicate by `id`).
"""

import logging
import re
import sqlite3
import time
from pathlib import Path

import msgpack
import zmq

from service.paths import EnginePaths

log = logging.getLogger("geofence.dispatcher")

POLL_S = 0.02
READ_ALARMS = 500


class Dispatcher:
    def __init__(self, paths: EnginePaths, ctx: zmq.Context, publish: str):
        self.paths = paths
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.bind(publish)
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._db = sqlite3.connect(str(paths.root / "dispatcher.sqlite"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS published (source TEXT PRIMARY KEY, "
                         "rowid INTEGER)")
        self._sources: dict[str, sqlite3.Connection] = {}

    def run(self, should_stop) -> None:
        while not should_stop():
            if not self.publish_new():
                time.sleep(POLL_S)

    def publish_new(self) -> int:
        """Publish alarms stored since the last call; returns how many."""
        sent = 0
        for path in sorted(self.paths.root.glob("evaluation-*-of-*.sqlite")):
            source = self._source(path)
            if source is None:
                continue
            done = self._position(path.name)
            try:
                rows = source.execute("SELECT rowid, office_path, doc FROM alarms WHERE rowid > ?"
                                      " ORDER BY rowid LIMIT ?", (done, READ_ALARMS)).fetchall()
            except sqlite3.OperationalError:  # the worker has not created its tables yet
                continue
            for _, topic, doc in rows:
                self.pub.send_multipart([topic.encode(), msgpack.packb(_json(doc))])
            if rows:
                self._db.execute("INSERT OR REPLACE INTO published VALUES (?, ?)",
                                 (path.name, rows[-1][0]))
                sent += len(rows)
        return sent

    def _source(self, path: Path) -> sqlite3.Connection | None:
        if path.name not in self._sources:
            if not re.fullmatch(r"evaluation-\d+-of-\d+\.sqlite", path.name):
                return None
            self._sources[path.name] = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro",
                                                       uri=True, isolation_level=None)
        return self._sources[path.name]

    def _position(self, name: str) -> int:
        row = self._db.execute("SELECT rowid FROM published WHERE source = ?", (name,)).fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        self.pub.close(linger=0)
        for db in self._sources.values():
            db.close()
        self._db.close()


def _json(doc: str) -> dict:
    import json
    return json.loads(doc)
