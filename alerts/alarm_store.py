"""The engine's alarms, in one SQLite file: lifecycle, history, change log, outbox.

Workers store the alarms they raise in their own files; the dispatcher imports them here,
where people and timers act on them:

- one open alarm per subject and type within one episode (SPEC §6 as amended,
  `alerts.episodes`): an alarm raised while the episode of an earlier one of the same
  subject and type still runs, and that one is open (or escalated) at the same office,
  is folded into it (``details.repeats``, ``details.last``) instead of opening a second
  one. The episode ends with its closing event (a `zone_exit` with the `zone_return`
  that links to it, `signal_lost` and `phone_off` with `signal_restored`): `ended_ms`
  and `ended_by` record when and by which alarm, and an alarm raised after that opens a
  new alarm with its own time, while the old one stays as it is until people handle it.
  The raised id is recorded in `raised` either way, so a replay after a crash is
  recognised and adds nothing;
- status ``open`` → ``acknowledged`` → ``resolved``, or ``escalated`` when nobody
  acknowledged in time (SPEC §6 timers): the alarm then goes to the parent office, and
  on up the tree while it stays unacknowledged; every change is kept in `history`;
- every change is appended to `changes` (what PUB and the desk's live stream follow) and
  the webhook deliveries it causes are enqueued in the same transaction (`alerts.outbox`),
  so an alarm is stored before it goes anywhere and is never lost between the two.

Counters for the metrics (raised by type and severity, fix-to-alarm latency) are kept in
the same file, so they survive restarts and any process can read them.
"""

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from alerts import episodes, outbox
from alerts.alarms import UNRESOLVED, Alarm
from engine.database import Schema, connect, run_script, transaction
from engine.messages import topic
from geofence.errors import GeofenceError

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _version_1(db: sqlite3.Connection) -> None:
    """The alarms, their history and change log, the metrics counters and the webhook
    outbox (`alerts.outbox`), as the unversioned engine had them."""
    run_script(db, """
        CREATE TABLE IF NOT EXISTS alarms (
            id TEXT PRIMARY KEY, type TEXT NOT NULL, severity TEXT NOT NULL,
            fold_key TEXT NOT NULL, subject TEXT, office TEXT NOT NULL, offices TEXT NOT NULL,
            t_ms INTEGER NOT NULL, raised_at_ms INTEGER NOT NULL, status TEXT NOT NULL,
            escalate_at_ms INTEGER,
            updated_ms INTEGER NOT NULL, doc TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS alarms_fold ON alarms (fold_key, type, status);
        CREATE INDEX IF NOT EXISTS alarms_escalate ON alarms (escalate_at_ms)
            WHERE escalate_at_ms IS NOT NULL;
        CREATE INDEX IF NOT EXISTS alarms_status ON alarms (status);
        CREATE INDEX IF NOT EXISTS alarms_t ON alarms (t_ms);
        CREATE TABLE IF NOT EXISTS raised (id TEXT PRIMARY KEY, alarm_id TEXT NOT NULL)
            WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS history (alarm_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
            action TEXT NOT NULL, user TEXT, office TEXT, note TEXT);
        CREATE INDEX IF NOT EXISTS history_alarm ON history (alarm_id);
        CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id TEXT NOT NULL, at_ms INTEGER NOT NULL, action TEXT NOT NULL,
            topics TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS changes_alarm ON changes (alarm_id);
        CREATE TABLE IF NOT EXISTS raised_counts (type TEXT, severity TEXT, n INTEGER NOT NULL,
            PRIMARY KEY (type, severity)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS latency (le REAL PRIMARY KEY, n INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
        CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alarm_id TEXT NOT NULL,
            office TEXT NOT NULL,
            key TEXT NOT NULL,
            body BLOB NOT NULL,
            created_ms INTEGER NOT NULL,
            next_attempt_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt_ms INTEGER,
            last_error TEXT,
            delivered_ms INTEGER,
            UNIQUE (alarm_id, office, key));
        CREATE INDEX IF NOT EXISTS outbox_pending_office ON outbox (office, next_attempt_ms)
            WHERE delivered_ms IS NULL;
        CREATE INDEX IF NOT EXISTS outbox_pending_created ON outbox (created_ms)
            WHERE delivered_ms IS NULL;
        CREATE TABLE IF NOT EXISTS delivery_stats (name TEXT PRIMARY KEY, n INTEGER NOT NULL)
            WITHOUT ROWID""")


def _version_2(db: sqlite3.Connection) -> None:
    """Episodes (`alerts.episodes`): when each alarm's episode ended (event time) and the
    alarm that ended it. Alarms stored before are given the ends their stored returns and
    restorations imply, so an exit after a return already in the file opens a new alarm."""
    db.execute("ALTER TABLE alarms ADD COLUMN ended_ms INTEGER")
    db.execute("ALTER TABLE alarms ADD COLUMN ended_by TEXT")
    # A closing alarm then folded later ones into itself: its newest repeat's time counts.
    closing = db.execute(
        "SELECT id, type, fold_key, max(t_ms, coalesce(json_extract(doc, '$.details.last.t'), "
        "t_ms)) AS t FROM alarms WHERE type IN (%s) ORDER BY t, id"
        % ",".join("?" * len(episodes.CLOSING)), sorted(episodes.CLOSING)).fetchall()
    for alarm_id, kind, key, t_ms in closing:
        _end_episodes(db, alarm_id, kind, key, t_ms)


def _end_episodes(db: sqlite3.Connection, alarm_id: str, kind: str, key: str,
                  t_ms: int) -> None:
    """A closing alarm (`zone_return`, `signal_restored`) at `t_ms` ends every running
    episode it closes of the same subject that began no later than it."""
    for ended in episodes.ended_types(kind):
        db.execute("UPDATE alarms SET ended_ms = ?, ended_by = ? WHERE fold_key = ? AND "
                   "type = ? AND ended_ms IS NULL AND t_ms <= ?",
                   (t_ms, alarm_id, key, ended, t_ms))


SCHEMA = Schema("alarm store", marker="alarms", steps=(_version_1, _version_2))


def connect_alarms(path: str | Path, sync: str = "normal", *,
                   read_only: bool = False) -> sqlite3.Connection:
    """A connection to the alarms file at the current schema (a writer upgrades it first;
    a reader gets NotReadyError while it is absent or older). Any thread may use it, one
    at a time (the metrics are read from the scraping thread)."""
    return connect(path, SCHEMA, sync=sync, read_only=read_only, check_same_thread=False)


class AlarmStateError(GeofenceError, ValueError):
    """The alarm cannot take this action in its current status (e.g. resolving twice)."""


class UnknownAlarmError(GeofenceError, LookupError):
    """No alarm has this id."""


@dataclass(frozen=True)
class Incoming:
    """An alarm as a worker raised it, with where it goes: `offices` are the receiving
    offices' paths from the root (the supervising office's first, then copies, e.g. the
    origin office during a delegation)."""

    alarm: Alarm
    offices: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Change:
    seq: int
    alarm_id: str
    action: str
    topics: tuple[str, ...]
    alarm: Alarm


class AlarmStore:
    """One connection to the alarms file. Several processes may open it (WAL)."""

    def __init__(self, path: str | Path, sync: str = "normal",
                 escalation_s: dict[str, int] | None = None, *, read_only: bool = False):
        """`escalation_s`: seconds an alarm of each severity may stay unacknowledged
        (severities without one never escalate). `read_only`: for readers that must not
        create or upgrade the file (the metrics); NotReadyError until its writer has."""
        self.path = Path(path)
        self.escalation_s = dict(escalation_s or {})
        self._db = connect_alarms(path, sync, read_only=read_only)

    def close(self) -> None:
        self._db.close()

    def outbox(self) -> outbox.Outbox:
        """The webhook outbox over this store's connection (close the store, not it)."""
        return outbox.Outbox(self._db)

    # -- raising ---------------------------------------------------------------------------

    def add(self, alarms: Iterable[Incoming], now_ms: int, webhook_offices: set[str] = frozenset(),
            positions: dict[str, int] | None = None) -> list[str]:
        """Store new alarms (folding repeats), enqueue their webhooks; returns new alarm ids.

        `positions` (source name → last imported row) are saved in the same transaction,
        so an import interrupted by a crash is repeated whole, and adds nothing twice.
        """
        opened = []
        with self._transaction():
            for incoming in alarms:
                if self._add_one(incoming, now_ms, webhook_offices):
                    opened.append(incoming.alarm.id)
            for source, position in (positions or {}).items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 (f"position:{source}", position))
        return opened

    def _add_one(self, incoming: Incoming, now_ms: int, webhook_offices) -> bool:
        alarm = incoming.alarm
        if self._db.execute("SELECT 1 FROM raised WHERE id = ?", (alarm.id,)).fetchone():
            return False  # seen before: a replay after a crash
        self._count_raised(alarm, now_ms)
        # Fold only within a running episode, into an alarm nobody has taken up yet, at
        # the same office (`alerts.episodes`).
        row = self._db.execute(
            "SELECT doc FROM alarms WHERE fold_key = ? AND type = ? AND office = ? AND "
            "status IN ('open', 'escalated') AND ended_ms IS NULL ORDER BY t_ms DESC LIMIT 1",
            (alarm.fold_key, alarm.type, alarm.office)).fetchone() \
            if episodes.folds(alarm.type) else None
        if row is not None:
            self._fold(Alarm.from_json(row[0]), alarm, now_ms)
            return False
        alarm = self._linked_to_its_exit(alarm)
        offices = [path[-1] for path in incoming.offices]
        escalate_at = self._escalate_at(alarm.severity, now_ms)
        text = alarm.to_json()   # the worker's text, stored and posted as it came
        self._db.execute(
            "INSERT INTO alarms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, NULL, NULL)",
            (alarm.id, alarm.type, alarm.severity, alarm.fold_key, alarm.subject,
             alarm.office, json.dumps(offices), alarm.t_ms, now_ms, escalate_at, now_ms,
             text))
        self._db.execute("INSERT INTO raised VALUES (?, ?)", (alarm.id, alarm.id))
        _end_episodes(self._db, alarm.id, alarm.type, alarm.fold_key, alarm.t_ms)
        self._history(alarm.id, now_ms, "raised", None, alarm.office, None)
        self._change(alarm.id, now_ms, "raised", [topic(p) for p in incoming.offices])
        body = text.encode()
        for n, office in enumerate(offices):
            if office in webhook_offices:
                outbox.enqueue(self._db, alarm.id, office, "raised" if n == 0 else "copy",
                               body, now_ms)
        return True

    def _linked_to_its_exit(self, alarm: Alarm) -> Alarm:
        """A `zone_return` whose `details.exit_id` names an exit that was folded into an
        older alarm, with `details.exit_alarm` naming that alarm (which PUB and webhook
        receivers got; the folded id they only saw as `details.last.id`). Anything else
        as it came."""
        exit_id = alarm.details.get("exit_id") if alarm.type == "zone_return" else None
        if exit_id is None:
            return alarm
        row = self._db.execute("SELECT alarm_id FROM raised WHERE id = ?", (exit_id,)).fetchone()
        if row is None or row[0] == exit_id:
            return alarm
        return replace(alarm, details={**alarm.details, "exit_alarm": row[0]}, _json=None)

    def _fold(self, alarm: Alarm, repeat: Alarm, now_ms: int) -> None:
        folded = alarm.folded(repeat)
        self._db.execute("UPDATE alarms SET doc = ?, updated_ms = ? WHERE id = ?",
                         (folded.to_json(), now_ms, alarm.id))
        self._db.execute("INSERT INTO raised VALUES (?, ?)", (repeat.id, alarm.id))
        self._history(alarm.id, now_ms, "repeated", None, None, None)
        self._change(alarm.id, now_ms, "repeated", self._topics(alarm.id))

    # -- people ----------------------------------------------------------------------------

    def acknowledge(self, alarm_id: str, user: str, office: str, note: str,
                    now_ms: int) -> Alarm:
        return self._act(alarm_id, "acknowledged", ("open", "escalated"), user, office, note,
                         now_ms)

    def resolve(self, alarm_id: str, user: str, office: str, note: str, now_ms: int) -> Alarm:
        return self._act(alarm_id, "resolved", UNRESOLVED, user, office, note, now_ms)

    def _act(self, alarm_id, status, allowed, user, office, note, now_ms) -> Alarm:
        with self._transaction():
            alarm = self._alarm(alarm_id)
            if alarm is None:
                raise UnknownAlarmError(f"no alarm {alarm_id!r}")
            if alarm.status not in allowed:
                raise AlarmStateError(f"alarm is {alarm.status}; cannot mark it {status}")
            alarm = alarm.with_status(status)
            self._db.execute("UPDATE alarms SET status = ?, escalate_at_ms = NULL, doc = ?, "
                             "updated_ms = ? WHERE id = ?",
                             (status, alarm.to_json(), now_ms, alarm_id))
            self._history(alarm_id, now_ms, status, user, office, note)
            self._change(alarm_id, now_ms, status, self._topics(alarm_id))
        return alarm

    # -- timers ----------------------------------------------------------------------------

    def escalate_due(self, now_ms: int, parent_path: Callable[[str], tuple[str, ...] | None],
                     webhook_offices: set[str] = frozenset()) -> int:
        """Escalate every alarm unacknowledged past its timer to the next office up.

        `parent_path(office)` is the path of the office's parent (None at the root: the
        alarm then stays escalated there, with no further timer). Returns how many.
        """
        due = self._db.execute("SELECT id FROM alarms WHERE escalate_at_ms <= ? "
                               "ORDER BY escalate_at_ms", (now_ms,)).fetchall()
        for (alarm_id,) in due:
            with self._transaction():
                alarm = self._alarm(alarm_id)
                if alarm is None or alarm.status not in ("open", "escalated"):
                    continue
                path = parent_path(alarm.escalated_to)
                if path is None:
                    self._db.execute("UPDATE alarms SET escalate_at_ms = NULL WHERE id = ?",
                                     (alarm_id,))
                    continue
                alarm = alarm.escalated(path[-1])
                next_at = self._escalate_at(alarm.severity, now_ms) if len(path) > 1 else None
                offices = json.loads(self._db.execute(
                    "SELECT offices FROM alarms WHERE id = ?", (alarm_id,)).fetchone()[0])
                self._db.execute(
                    "UPDATE alarms SET status = 'escalated', "
                    "escalate_at_ms = ?, offices = ?, doc = ?, updated_ms = ? WHERE id = ?",
                    (next_at, json.dumps(offices + [path[-1]]), alarm.to_json(), now_ms,
                     alarm_id))
                self._history(alarm_id, now_ms, "escalated", None, path[-1], None)
                self._change(alarm_id, now_ms, "escalated", [topic(path)])
                if path[-1] in webhook_offices:
                    outbox.enqueue(self._db, alarm_id, path[-1],
                                   f"escalated-{alarm.escalation_level}",
                                   alarm.to_json().encode(), now_ms)
        return len(due)

    def _escalate_at(self, severity: str, now_ms: int) -> int | None:
        seconds = self.escalation_s.get(severity)
        return None if seconds is None else now_ms + int(seconds) * 1000

    # -- reading ---------------------------------------------------------------------------

    def get(self, alarm_id: str) -> Alarm | None:
        return self._alarm(alarm_id)

    def episode(self, alarm_id: str) -> dict:
        """Where an alarm stands in its episode (`alerts.episodes`), for the desk: `ended`
        (event time, ms) and `ended_by` (the closing alarm) once its episode is over; for
        a `zone_return`, `exit` = the alarm its exit opened or was folded into (its
        `details.exit_id` may name a raised id that was folded)."""
        row = self._db.execute("SELECT ended_ms, ended_by, type, doc FROM alarms WHERE id = ?",
                               (alarm_id,)).fetchone()
        if row is None:
            return {}
        ended_ms, ended_by, kind, doc = row
        out = {"ended": ended_ms, "ended_by": ended_by} if ended_ms is not None else {}
        if kind == "zone_return":
            exit_id = Alarm.from_json(doc).details.get("exit_id")
            found = self._db.execute("SELECT alarm_id FROM raised WHERE id = ?",
                                     (exit_id,)).fetchone() if exit_id else None
            if found is not None:
                out["exit"] = found[0]
        return out

    def history(self, alarm_id: str) -> list[dict]:
        """Every step of an alarm, oldest first: who, when, what, note."""
        return [{"at": at, "action": action, "user": user, "office": office, "note": note}
                for at, action, user, office, note in self._db.execute(
                    "SELECT at_ms, action, user, office, note FROM history WHERE alarm_id = ? "
                    "ORDER BY rowid", (alarm_id,))]

    def offices_of(self, alarm_id: str) -> list[str]:
        """The offices an alarm went to: supervising, copies, escalation targets."""
        row = self._db.execute("SELECT offices FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return json.loads(row[0]) if row else []

    def query(self, *, status: str | None = None, type: str | None = None,
              offices: Iterable[str] | None = None, since_ms: int | None = None,
              limit: int = 100) -> list[Alarm]:
        """Alarms newest first; `offices` restricts to alarms that went to any of them."""
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if type:
            where.append("type = ?")
            args.append(type)
        if since_ms is not None:
            where.append("updated_ms >= ?")
            args.append(since_ms)
        if offices is not None:
            codes = list(offices)
            where.append("EXISTS (SELECT 1 FROM json_each(alarms.offices) WHERE value IN "
                         f"({','.join('?' * len(codes))}))" if codes else "0")
            args += codes
        sql = "SELECT doc FROM alarms"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY t_ms DESC, id LIMIT ?"
        return [Alarm.from_json(doc) for (doc,) in self._db.execute(sql, (*args, int(limit)))]

    def changes_after(self, seq: int, limit: int = 500) -> list[Change]:
        rows = self._db.execute(
            "SELECT c.seq, c.alarm_id, c.action, c.topics, a.doc FROM changes c "
            "JOIN alarms a ON a.id = c.alarm_id WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
            (seq, limit)).fetchall()
        return [Change(s, a, act, tuple(json.loads(t)), Alarm.from_json(d))
                for s, a, act, t, d in rows]

    def last_change(self) -> int:
        row = self._db.execute("SELECT max(seq) FROM changes").fetchone()
        return row[0] or 0

    def position(self, source: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?",
                               (f"position:{source}",)).fetchone()
        return int(row[0]) if row else 0

    def set_position(self, source: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"position:{source}", value))

    def stored_at_ms(self) -> dict[str, int]:
        """Every alarm id → when it was stored here (wall ms; for latency measurements)."""
        return dict(self._db.execute("SELECT id, raised_at_ms FROM alarms"))

    def raised_ids(self) -> dict[str, str]:
        """Every raised alarm id → the alarm it opened or was folded into."""
        return dict(self._db.execute("SELECT id, alarm_id FROM raised"))

    # -- metrics ---------------------------------------------------------------------------

    def raised_counts(self) -> dict[tuple[str, str], int]:
        return {(t, s): n for t, s, n in self._db.execute("SELECT type, severity, n FROM raised_counts")}

    def status_counts(self) -> dict[tuple[str, str], int]:
        """(status, severity) → number of alarms, for the open/unacknowledged gauges."""
        return {(st, sev): n for st, sev, n in self._db.execute(
            "SELECT status, severity, count(*) FROM alarms WHERE status != 'resolved' "
            "GROUP BY status, severity")}

    def latency_histogram(self) -> tuple[list[tuple[float, int]], float]:
        """Cumulative (le, count) buckets of fix-to-alarm latency in seconds, and the sum."""
        rows = dict(self._db.execute("SELECT le, n FROM latency"))   # one row per bucket hit
        total = rows.pop(-1.0, 0) / 1000.0
        buckets, running = [], 0
        for le in (*LATENCY_BUCKETS_S, float("inf")):
            running += rows.get(le, 0)
            buckets.append((le, running))
        return buckets, total

    def _count_raised(self, alarm: Alarm, now_ms: int) -> None:
        self._db.execute("INSERT INTO raised_counts VALUES (?, ?, 1) ON CONFLICT DO UPDATE "
                         "SET n = n + 1", (alarm.type, alarm.severity))
        received_ms = alarm.received_ms
        if received_ms is None:
            return
        seconds = max(0, now_ms - received_ms) / 1000.0
        le = next((b for b in LATENCY_BUCKETS_S if seconds <= b), float("inf"))
        self._db.execute("INSERT INTO latency VALUES (?, 1) ON CONFLICT DO UPDATE "
                         "SET n = n + 1", (le,))
        self._db.execute("INSERT INTO latency VALUES (-1.0, ?) ON CONFLICT DO UPDATE "
                         "SET n = n + excluded.n", (max(0, now_ms - received_ms),))

    # -- helpers ---------------------------------------------------------------------------

    def _alarm(self, alarm_id: str) -> Alarm | None:
        row = self._db.execute("SELECT doc FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return Alarm.from_json(row[0]) if row else None

    def _topics(self, alarm_id: str) -> list[str]:
        row = self._db.execute("SELECT topics FROM changes WHERE alarm_id = ? AND action = "
                               "'raised'", (alarm_id,)).fetchone()
        return json.loads(row[0]) if row else []

    def _history(self, alarm_id, at_ms, action, user, office, note) -> None:
        self._db.execute("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)",
                         (alarm_id, at_ms, action, user, office, note))

    def _change(self, alarm_id: str, at_ms: int, action: str, topics: list[str]) -> None:
        self._db.execute("INSERT INTO changes (alarm_id, at_ms, action, topics) VALUES "
                         "(?, ?, ?, ?)", (alarm_id, at_ms, action, json.dumps(topics)))

    def _transaction(self):
        return transaction(self._db)
