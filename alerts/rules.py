"""Alarm rules (SPEC §6), the fix-driven part: evaluated fixes in, alarm events out.

`RuleState` keeps per-subject rule state (a struct of arrays, see `_rules_kernel`) and
turns each batch of evaluated fixes into events with one compiled call. Fixes are taken
per subject in event-time order; a fix not newer than its subject's newest accepted fix
is *late*: reported in `Events.late`, never changing state (SPEC §6).

Events, not alarms: an event names the rule, the subject and the triggering fix. The
caller derives the alarm id from (subject, type, triggering fix) and stores the alarm.
Events are deterministic: they depend only on the state and the batch (sorted by
(subject, t), ties in batch order), so replaying the same batches from the same snapshot
gives the same events in the same order, and alarm ids after a crash match the first run.

The clock-driven rules (signal_lost, phone_off, permit_overstay, feed_outage) live
elsewhere; they read `newest_t_ms`, `last_fix`, `carrier`, `flags` and the handset state,
and call `mark_signal_lost` (or `mark_phone_off`) so that the subject's next fix raises
signal_restored (`Events.after` says after which).

Handset status reports (`alerts.handset`) are no fixes: `apply_reports` folds them into
the handset state kept beside the kernel's, with numpy; `apply` clears that state for a
subject whose new position fix is newer than the report.
"""

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from alerts import _rules_kernel as rk
from alerts.handset import HANDSET_FIELDS, NO_HANDSET, OFF, SUSPENDED, fold_reports
from alerts.registry import LEVELS
from ingest.protocol import STATES
from geofence.errors import GeofenceError
from geofence.verdict import IN, OUT, UNSURE

# Indexed by event code (`Events.type`); SPEC §6 type strings.
EVENT_TYPES = ("zone_exit", "zone_return", "possible_exit", "exclusion_entry",
               "possible_exclusion", "signal_lost", "signal_restored", "permit_overstay",
               "feed_outage", "phone_off")
# Alarm types no rule raises: the engine's own faults (`alerts.engine_fault`).
ENGINE_TYPES = ("engine_fault",)
# Alarm types of orders (issue 13), raised beside the rules kernel (`alerts.curfews`).
ORDER_TYPES = ("curfew_breach", "night_absence")
# Alarm types of a pair of people, raised by `alerts.gathering` (one alarm for each).
PAIR_TYPES = ("gathering",)

NO_TIME = rk.NO_TIME  # `newest_t_ms` before any fix; `linked_t_ms` of events without a link
_SEVERITY = {"zone_return": "info", "possible_exit": "medium", "exclusion_entry": "critical",
             "possible_exclusion": "medium", "signal_lost": "high", "signal_restored": "info",
             "permit_overstay": "high", "feed_outage": "critical", "phone_off": "high",
             "engine_fault": "critical", "curfew_breach": "high",
             "night_absence": "medium", "gathering": "high"}

SNAPSHOT_MAGIC = b"GFRULES\x00"
SNAPSHOT_VERSION = 3   # 3: handset state (`alerts.handset.HANDSET_FIELDS`) appended
# What the clock-driven rules need of each subject's newest fix, besides the kernel's state:
# where it was (alarm positions, permit_overstay's home check) and which carrier sent it
# or, when newer, the subject's newest status report (feed_outage). Kept by `apply` with
# numpy, outside the kernel.
LAST_FIX_FIELDS = (
    ("last_lon", np.float64, np.nan),
    ("last_lat", np.float64, np.nan),
    ("last_acc_m", np.float32, np.nan),
    ("last_src", np.int8, -1),
    ("carrier", np.int16, -1),
)
ALL_FIELDS = rk.STATE_FIELDS + LAST_FIX_FIELDS + HANDSET_FIELDS
# The fields of each snapshot version this build restores; a field a version lacks starts
# as before any fix (a version-2 snapshot restores with no handset state).
SNAPSHOT_FIELDS = {2: rk.STATE_FIELDS + LAST_FIX_FIELDS, SNAPSHOT_VERSION: ALL_FIELDS}
BYTES_PER_SUBJECT = sum(np.dtype(dt).itemsize for _, dt, _ in ALL_FIELDS)
_HEADER = struct.Struct("<8sHHQ")   # magic, version, number of fields, number of subjects
_TRAILER = struct.Struct("<I")      # CRC-32 of everything before it


class RulesError(GeofenceError, ValueError):
    """A batch, a rules setting or a snapshot given to `RuleState` is malformed; fix the caller."""


class SnapshotError(RulesError):
    """A snapshot is not one `RuleState.snapshot` wrote (or it was damaged); restore another."""


def severity(event: int | str, key: bool) -> str:
    """Severity per SPEC §6 of an event type (code or name); `key`: the subject is a risk key."""
    name = EVENT_TYPES[event] if isinstance(event, (int, np.integer)) else event
    if name == "zone_exit":
        return "critical" if key else "high"
    if name not in _SEVERITY:
        raise RulesError(f"unknown event type {event!r} (known: {', '.join(EVENT_TYPES)})")
    return _SEVERITY[name]


@dataclass(frozen=True)
class Events:
    """Events of one batch, ordered by (subject, t), within a fix in rule order.

    `fix` is the index of the triggering fix in the caller's batch; `linked_t_ms` is, for a
    zone_return, the t of the fix that raised the exit it closes (`NO_TIME` otherwise);
    `zone` the exclusion zone of exclusion events (-1 otherwise); `after`, for a
    signal_restored, the code of the alarm it ends (signal_lost or phone_off; -1
    otherwise). `late` holds the batch indices of late fixes, ascending.
    """

    type: np.ndarray
    subject: np.ndarray
    fix: np.ndarray
    t_ms: np.ndarray
    linked_t_ms: np.ndarray
    zone: np.ndarray
    late: np.ndarray
    after: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.type)

    @property
    def n_late(self) -> int:
        return len(self.late)


def sort_batch(subject: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
    """The order that sorts a batch by (subject, t); equal (subject, t) keep batch order.

    Usually one int64 key ``subject << 32 | (t - t_min)`` and an unstable sort: 5-10x
    faster than `np.lexsort`. When two fixes tie (one subject, one instant) the stable
    sort decides, and when the batch spans 2**32 ms (50 days) or more, `np.lexsort`.
    """
    subject = np.asarray(subject)
    t_ms = np.asarray(t_ms)
    if (len(t_ms) == 0 or int(t_ms.max()) - int(t_ms.min()) >= 2**32
            or subject.min() < 0 or subject.max() >= 2**31):
        return np.lexsort((t_ms, subject))
    key = (subject.astype(np.int64) << 32) | (t_ms - t_ms.min())
    order = np.argsort(key)
    ranked = key[order]
    if (ranked[1:] == ranked[:-1]).any():
        order = np.argsort(key, kind="stable")
    return order


class RuleState:
    """Rule state of subjects 0..n-1 and the thresholds from `rules` (a `engine.config.Rules`):
    `limits`, one row per rule class (level * 2 + key, `_rules_kernel.N_CLASSES`), each
    level's row from `rules.for_level`.

    One writer at a time: `apply`, `mark_signal_lost`, `grow` and `restore` change the
    state in place (the kernel releases the GIL, so readers must not rely on the GIL).
    """

    def __init__(self, n_subjects: int, rules):
        self.limits = limits_table(rules)
        self._arrays = {name: np.full(0, init, dt) for name, dt, init in ALL_FIELDS}
        self.grow(n_subjects)

    @property
    def n_subjects(self) -> int:
        return len(self._arrays["flags"])

    def grow(self, n: int) -> None:
        """Make room for subjects up to n-1 (new ones start with no fix); never shrinks."""
        extra = int(n) - self.n_subjects
        if extra > 0:
            for name, dt, init in ALL_FIELDS:
                self._arrays[name] = np.concatenate([self._arrays[name], np.full(extra, init, dt)])

    # -- what the clock-driven rules read --------------------------------------------------

    @property
    def newest_t_ms(self) -> np.ndarray:
        """Per subject, t of the newest accepted fix (`NO_TIME` before any); read-only."""
        return _read_only(self._arrays["newest_t_ms"])

    def mark_signal_lost(self, subjects) -> None:
        """Record a signal_lost raised for these subjects: their next fix raises signal_restored."""
        self.set_flags(subjects, rk.SIGNAL_LOST_SET)

    def mark_phone_off(self, subjects) -> None:
        """Record a phone_off raised for these subjects: no signal_lost for them, and their
        next fix raises signal_restored (`Events.after`: phone_off)."""
        self.set_flags(subjects, rk.SIGNAL_LOST_SET | rk.PHONE_OFF_SET)

    @property
    def handset(self) -> np.ndarray:
        """Per subject, the handset state (index into `protocol.STATES`, `NO_HANDSET`:
        none, or a position fix since); read-only."""
        return _read_only(self._arrays["handset"])

    @property
    def handset_since_ms(self) -> np.ndarray:
        """Per subject, since when the handset state holds (`NO_TIME`: none); read-only."""
        return _read_only(self._arrays["handset_since_ms"])

    @property
    def heard_t_ms(self) -> np.ndarray:
        """Per subject, the newest row taken of any kind, fix or status report (`NO_TIME`
        before any): when the subject's carrier last spoke of it (feed_outage)."""
        return np.maximum(self._arrays["newest_t_ms"], self._arrays["report_t_ms"])

    def reported_off(self) -> np.ndarray:
        """Per subject: the newest report is off or suspended, with no position fix since."""
        handset = self._arrays["handset"]
        return (handset == OFF) | (handset == SUSPENDED)   # they stop the silence clock

    # -- batches ---------------------------------------------------------------------------

    def apply(self, subject, t_ms, verdict, excl_verdict, excl_zone, rule_class=None, *,
              fixes=None, carrier: int = -1, capacity: int | None = None) -> Events:
        """Apply one batch of evaluated fixes (any order) and return its events.

        `excl_verdict` is the worst exclusion verdict per fix (OUT when the subject has no
        zones) and `excl_zone` its zone (-1 none), as `ExclusionVerdicts.worst()` gives;
        `rule_class` is per subject (`SubjectBook.rule_class`: level * 2 + risk key; a bool
        array is the key flag of normal-level subjects), None for all normal, no key.
        `capacity` is the initial size
        of the event outputs (default n + 16: most fixes raise nothing); if the kernel
        runs out it stops, and the outputs are grown and the kernel resumed.
        `fixes` (anything with `lon`, `lat`, `acc_m`, `src` columns in batch order) and
        `carrier` (the batch's carrier id) are remembered for each subject's newest fix.
        """
        s, t, v, xv, xz = self._batch(subject, t_ms, verdict, excl_verdict, excl_zone)
        classes = self._classes(rule_class, s)
        n = len(s)
        order = sort_batch(s, t)
        batch = rk.SortedBatch(s[order], t[order], order, v[order], xv[order], xz[order])
        late = np.empty(n, np.uint8)
        progress = np.zeros(rk.N_PROGRESS, np.int64)
        out = event_columns(n + 16 if capacity is None else max(int(capacity), 0))
        while rk.apply_batch(self.kernel_state(), batch, classes, self.limits, out, late,
                             progress) < 0:
            written = int(progress[rk.PROGRESS_EVENTS])
            left = n - int(progress[rk.PROGRESS_FIX])
            out = event_columns(written + rk.MAX_EVENTS_PER_FIX * left, keep=out,
                                n_keep=written)
        taken = ~late.view(bool)
        s_taken, rows = batch.subject[taken], order[taken]
        if len(rows):   # the newest fix per subject: its last accepted one in sorted order
            last = np.r_[s_taken[1:] != s_taken[:-1], True]
            who, rows = s_taken[last], rows[last]
            if fixes is not None:
                self._remember_last(who, rows, fixes, carrier)
            self._clear_handsets(who)
        m = int(progress[rk.PROGRESS_EVENTS])
        columns = {name: column[:m].copy() for name, column in out._asdict().items()}
        return Events(**columns, late=np.sort(order[late.view(bool)]),
                      after=self._restored_after(columns["type"], columns["subject"]))

    def _remember_last(self, who, rows, fixes, carrier: int) -> None:
        """Newest fix of subjects `who`: batch rows `rows`; their carrier unless a status
        report newer than the fix came from another."""
        a = self._arrays
        a["last_lon"][who] = fixes.lon[rows]
        a["last_lat"][who] = fixes.lat[rows]
        a["last_acc_m"][who] = fixes.acc_m[rows]
        a["last_src"][who] = fixes.src[rows]
        a["carrier"][who[a["newest_t_ms"][who] > a["report_t_ms"][who]]] = carrier

    def _clear_handsets(self, who) -> None:
        """A position fix newer than the handset report ends the reported state. One that
        arrives late, taken between the state's first report and its newest, shows the
        phone was on meanwhile: the state holds from its newest report (the earliest time
        known to follow that fix)."""
        a = self._arrays
        newest, report = a["newest_t_ms"][who], a["report_t_ms"][who]
        held = a["handset"][who] != NO_HANDSET
        ended = held & (report < newest)
        moved = held & ~ended & (a["handset_since_ms"][who] < newest)
        a["handset"][who[ended]] = NO_HANDSET
        a["handset_since_ms"][who[ended]] = NO_TIME
        a["handset_since_ms"][who[moved]] = report[moved]

    def _restored_after(self, types: np.ndarray, subjects: np.ndarray) -> np.ndarray:
        """Per event, what a signal_restored ends (phone_off when that was raised, else
        signal_lost; -1 for other events); clears the phone_off marks it ends."""
        after = np.full(len(types), -1, np.int8)
        restored = types == rk.SIGNAL_RESTORED
        if restored.any():
            who = subjects[restored]
            flags = self._arrays["flags"]
            was_off = (flags[who] & rk.PHONE_OFF_SET) != 0
            after[restored] = np.where(was_off, rk.PHONE_OFF, rk.SIGNAL_LOST)
            flags[who[was_off]] &= np.uint8(~rk.PHONE_OFF_SET & 0xFF)
        return after

    def apply_reports(self, subject, t_ms, state, carrier: int = -1) -> np.ndarray:
        """Apply one batch of handset status reports (any order; `state` per report an
        index into `protocol.STATES`, i.e. src - STATE0) from `carrier`; returns the batch
        indices of the late ones, ascending. A report taken also counts as the carrier
        speaking: it clears the subject's feed_outage mark (`_rules_kernel.OUTAGE_SILENT`)."""
        s = self._subjects(subject)
        t = _integers(t_ms, "t_ms", np.int64)
        c = _integers(state, "state", np.int8)
        if not len(s) == len(t) == len(c):
            raise RulesError("subject, t_ms and state must have the same length")
        if len(c) and (c.min() < 0 or c.max() >= len(STATES)):
            raise RulesError(f"state must hold handset states 0..{len(STATES) - 1} "
                             f"({', '.join(STATES)})")
        a = self._arrays
        folded = fold_reports(sort_batch(s, t), s, t, c, a["newest_t_ms"], a["report_t_ms"],
                              a["handset"], a["handset_since_ms"])
        who = folded.subject
        a["handset"][who] = folded.state
        a["handset_since_ms"][who] = folded.since_ms
        a["report_t_ms"][who] = folded.report_t_ms
        if carrier >= 0:
            a["carrier"][who] = carrier
        self.clear_flags(who, rk.OUTAGE_SILENT)
        return folded.late

    def last_fix(self, subjects) -> dict[str, np.ndarray]:
        """Newest fix of each subject: t_ms, lon, lat, acc_m, src, carrier, and the area
        verdict the rules gave it (NaN / -1: none)."""
        idx = self._subjects(subjects)
        names = ("newest_t_ms", "last_lon", "last_lat", "last_acc_m", "last_src", "carrier",
                 "verdict")
        keys = ("t_ms", "lon", "lat", "acc_m", "src", "carrier", "verdict")
        return {k: self._arrays[n][idx] for k, n in zip(keys, names)}

    @property
    def carrier(self) -> np.ndarray:
        """Per subject, the carrier id of the newest fix, or of the newest status report if
        that is newer (-1 before any); read-only."""
        return _read_only(self._arrays["carrier"])

    @property
    def flags(self) -> np.ndarray:
        """Per subject, the kernel's flag bits (`_rules_kernel`); read-only."""
        return _read_only(self._arrays["flags"])

    def set_flags(self, subjects, bits: int) -> None:
        """Set flag bits (e.g. `_rules_kernel.OUTAGE_SILENT`) for these subjects."""
        self._arrays["flags"][self._subjects(subjects)] |= np.uint8(bits)

    def clear_flags(self, subjects, bits: int) -> None:
        self._arrays["flags"][self._subjects(subjects)] &= np.uint8(~bits & 0xFF)

    def kernel_state(self) -> rk.State:
        """The kernel's arrays themselves (not copies): for `_rules_kernel.apply_batch`."""
        return rk.State(*(self._arrays[name] for name, _, _ in rk.STATE_FIELDS))

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """All state as bytes: header (magic, version, fields, subjects), arrays, CRC-32."""
        parts = [_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, len(ALL_FIELDS),
                              self.n_subjects)]
        parts += [self._arrays[name].astype(np.dtype(dt).newbyteorder("<")).tobytes()
                  for name, dt, _ in ALL_FIELDS]
        body = b"".join(parts)
        return body + _TRAILER.pack(zlib.crc32(body))

    def restore(self, data: bytes) -> None:
        """Replace all state with a snapshot's (thresholds stay those of this object)."""
        data = bytes(data)
        if len(data) < _HEADER.size + _TRAILER.size:
            raise SnapshotError(f"snapshot too short ({len(data)} bytes)")
        magic, version, n_fields, n = _HEADER.unpack_from(data)
        if magic != SNAPSHOT_MAGIC:
            raise SnapshotError("not a rule-state snapshot (bad magic)")
        stored = SNAPSHOT_FIELDS.get(version)
        if stored is None or n_fields != len(stored):
            raise SnapshotError(f"snapshot version {version} with {n_fields} fields; this "
                                f"build reads versions {', '.join(map(str, SNAPSHOT_FIELDS))}")
        per_subject = sum(np.dtype(dt).itemsize for _, dt, _ in stored)
        expected = _HEADER.size + n * per_subject + _TRAILER.size
        if len(data) != expected:
            raise SnapshotError(f"snapshot of {n} subjects has {len(data)} bytes, "
                                f"expected {expected} (truncated?)")
        (crc,) = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
        if zlib.crc32(data[:-_TRAILER.size]) != crc:
            raise SnapshotError("snapshot checksum mismatch (damaged)")
        arrays, offset = {}, _HEADER.size
        for name, dt, _ in stored:
            wire = np.dtype(dt).newbyteorder("<")
            arrays[name] = np.frombuffer(data, wire, n, offset).astype(dt)
            offset += n * wire.itemsize
        for name, dt, init in ALL_FIELDS[len(stored):]:   # an older version lacks these
            arrays[name] = np.full(n, init, dt)
        self._arrays = arrays

    # -- checks ----------------------------------------------------------------------------

    def _subjects(self, subjects) -> np.ndarray:
        idx = _integers(subjects, "subjects", np.int32)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_subjects):
            raise RulesError(f"subject indices must be in 0..{self.n_subjects - 1}")
        return idx

    def _classes(self, rule_class, batch_subjects: np.ndarray) -> np.ndarray:
        """Rule classes as the kernel takes them; those of the batch's subjects checked
        (the kernel indexes the limits table with them), not all N every batch."""
        if rule_class is None:
            return np.zeros(self.n_subjects, np.int8)
        given = np.asarray(rule_class)
        if given.shape != (self.n_subjects,):
            raise RulesError(f"rule_class must have one entry per subject ({self.n_subjects}), "
                             f"not shape {given.shape}")
        if given.dtype.kind not in "biu":
            raise RulesError(f"rule_class must hold classes 0..{rk.N_CLASSES - 1} "
                             f"(level * 2 + key), not {given.dtype}")
        used = given[batch_subjects]
        if len(used) and (used.min() < 0 or used.max() >= rk.N_CLASSES):
            raise RulesError(f"rule_class must hold classes 0..{rk.N_CLASSES - 1} "
                             f"(level * 2 + key)")
        return np.ascontiguousarray(given, np.int8)

    def _batch(self, subject, t_ms, verdict, excl_verdict, excl_zone):
        s = self._subjects(subject)
        t = _integers(t_ms, "t_ms", np.int64)
        v = _integers(verdict, "verdict", np.int8)
        xv = _integers(excl_verdict, "excl_verdict", np.int8)
        xz = _integers(excl_zone, "excl_zone", np.int32)
        if not len(s) == len(t) == len(v) == len(xv) == len(xz):
            raise RulesError("subject, t_ms, verdict, excl_verdict and excl_zone must have "
                             "the same length")
        for name, arr in (("verdict", v), ("excl_verdict", xv)):
            if not np.isin(arr, (IN, UNSURE, OUT)).all():
                raise RulesError(f"{name} must hold verdict codes IN, UNSURE, OUT "
                                 f"({IN}, {UNSURE}, {OUT})")
        if len(xz) and xz.min() < -1:
            raise RulesError("excl_zone must be a zone index or -1")
        return s, t, v, xv, xz


def warm_up() -> None:
    """Compile or load the rules kernel once, on a tiny batch, before traffic."""
    from engine.config import Rules

    RuleState(1, Rules()).apply([0], [1], [OUT], [OUT], [-1])


def limits_table(rules) -> np.ndarray:
    """The thresholds by rule class: int64[N_CLASSES, len(LIMIT_NAMES)], the rows of a
    level's two classes (no key, key) both its `rules.for_level(level)` limits."""
    rows = []
    for level in LEVELS:
        row = _limits(rules.for_level(level), "" if level == "normal" else f"{level}.")
        rows += [row, row]
    table = np.array(rows, np.int64)
    assert table.shape == (rk.N_CLASSES, len(rk.LIMIT_NAMES))
    return table


def by_class(rules, name: str) -> np.ndarray:
    """One per-subject setting (e.g. ``signal_lost_after_s``) by rule class: int64[N_CLASSES],
    each level's value from `rules.for_level` (the key flag does not change it)."""
    return np.repeat(np.array([int(getattr(rules.for_level(level), name)) for level in LEVELS],
                              np.int64), 2)


def _limits(rules, level: str = "") -> np.ndarray:
    values = []
    for name in rk.LIMIT_NAMES:
        value = getattr(rules, name, None)
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not (
                1 <= value <= rk.RUN_MAX):
            raise RulesError(f"rules.{level}{name} must be an integer in 1..{rk.RUN_MAX}, "
                             f"not {value!r}")
        values.append(int(value))
    return np.array(values, np.int64)


def _integers(values, name: str, dtype) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise RulesError(f"{name} must be a 1-D array of integers, not {arr.dtype} {arr.shape}")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise RulesError(f"{name} out of range for {np.dtype(dtype).name}")
    return np.ascontiguousarray(arr, dtype)


def event_columns(capacity: int, keep: rk.EventColumns | None = None,
                  n_keep: int = 0) -> rk.EventColumns:
    """Event output arrays with room for `capacity` events, the first `n_keep` of `keep`
    copied in."""
    out = rk.EventColumns(*(np.empty(capacity, dt) for _, dt in rk.EVENT_FIELDS))
    if keep is not None:
        for new, old in zip(out, keep):
            new[:n_keep] = old[:n_keep]
    return out


def _read_only(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view
