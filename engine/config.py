"""Settings: one frozen object, loaded once from TOML and passed in explicitly (SPEC §9).

Without a file, built-in defaults for a local single-machine run. Every key has a type
and a range (`CHECKS`): an unknown section or key (with the near one suggested), a value
of the wrong type, or one out of range (inf, nan, 0 where it must be positive, port
99999) is an error. All of a file's problems are reported at once, one line each, naming
the file, section and key, so a typo never silently falls back to a default and a value
that would spin or crash-loop a process never reaches one.
"""

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.address import check_zmq_endpoint, parse_host_port
from geofence.errors import GeofenceError
from geofence.known_keys import nearest, quoted, unknown_keys

DEFAULT_FILE = "geofence.toml"


class ConfigError(GeofenceError, ValueError):
    """The configuration has unknown, mistyped or out-of-range keys (`problems`, one line
    each, naming file, section and key); fix the file."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Storage:
    path: str = "geofence-data"        # directory holding the SQLite files
    sync: str = "normal"               # "normal": survives kill -9; "full": also power loss
    keep_fixes_days: int = 7           # evaluated fixes are purged after this (tracks: 24 h)


@dataclass(frozen=True)
class Layers:
    jurisdictions: str = ""            # GeoJSON file; empty: the built-in Zaozhuang layer
    zones: str = ""                    # GeoJSON file of injunction zones; empty: none


@dataclass(frozen=True)
class Ingest:
    bind: str = "tcp://127.0.0.1:5555"
    curve_keys: str = ""               # directory with server.key_secret (CURVE on when set)
    curve_carriers: str = ""           # directory of allowed carriers' public keys
    max_fix_age_s: int = 7 * 24 * 3600
    max_backlog_fixes: int = 2_000_000  # answer `busy` beyond this many unevaluated fixes
    metrics_bind: str = "127.0.0.1:9105"
    default_acc_gps_m: float = 30.0    # accuracy assumed when a fix gives none, per source
    default_acc_wifi_m: float = 80.0
    default_acc_cell_m: float = 1500.0
    default_acc_unknown_m: float = 1500.0


@dataclass(frozen=True)
class Alerts:
    publish: str = "tcp://127.0.0.1:5556"
    curve_keys: str = ""               # directory with server.key_secret (CURVE on PUB when set)
    curve_subscribers: str = ""        # directory of allowed subscribers' public keys
    webhooks: dict = field(default_factory=dict)  # office code -> {url, secret, timeout_s}


@dataclass(frozen=True)
class Desk:
    bind: str = "127.0.0.1:8080"
    session_hours: float = 12.0        # a session ends after this long unused (sliding)
    login_attempts: int = 5            # failures per user name and address in 15 min (10x per
                                       # address for any names), then 429
    cookie_secure: bool = False        # Secure cookie flag: set true behind HTTPS
    trust_forwarded_for: bool = False  # behind a reverse proxy: the client address is the last
                                       # X-Forwarded-For entry, and the page's origin is taken
                                       # from X-Forwarded-Proto and -Host when present
    hosts: list = field(default_factory=list)  # host names the desk answers to (others: 421,
                                       # against DNS rebinding); empty: the bind host, plus
                                       # localhost, 127.0.0.1, ::1 on loopback; required
                                       # when binding 0.0.0.0 or ::


@dataclass(frozen=True)
class Rules:
    exit_margin_m: float = 200.0
    exit_fixes: int = 2
    exit_fixes_key: int = 1
    return_fixes: int = 2
    possible_exit_fixes: int = 3
    exclusion_fixes: int = 1
    possible_exclusion_fixes: int = 2
    signal_lost_after_s: int = 3600
    phone_off_after_s: int = 3 * 3600  # a handset its carrier reports off (关机) or suspended
                                       # (停机) this long: phone_off (SPEC §14)
    permit_overstay_after_s: int = 1800
    curfew_fixes: int = 2              # consecutive fixes outside the curfew zone in its
                                       # window: curfew_breach (宵禁)
    night_from_hour: int = 22          # 昼伏夜出: a night is from this local hour (UTC+8)
    night_to_hour: int = 6             # to this one, the next morning
    night_absence_nights: int = 3      # nights away from home of the last 7: night_absence
    key_period_signal_lost_after_s: int = 1800  # during a key period (重大活动/敏感节点):
                                       # signal_lost after this, or the level's if shorter
    feed_outage_share: float = 0.5
    feed_outage_silence_s: int = 900   # a carrier's subject counts as silent for feed_outage
    feed_outage_min_subjects: int = 10  # fewer subjects on a carrier: signal_lost each
    escalate_critical_s: int = 600
    escalate_high_s: int = 1800
    escalate_medium_s: int = 7200
    clock: str = "wall"                # "feed": event time (newest fix, then wall time since):
                                       # for replays of recorded days and the demo
    check_every_s: float = 1.0         # how often the clock-driven rules run
    # Gatherings (聚集, `alerts.gathering`): linked people (a shared case, or both key)
    # with fixes at most `gathering_max_dt_s` apart and centres within radius +
    # acc_k * sqrt(acc1² + acc2²), for `gathering_after_s`; fixes less accurate than
    # `gathering_max_acc_m` are left out; a pair not seen together for `gathering_gap_s`
    # is apart.
    gathering_radius_m: float = 200.0
    gathering_acc_k: float = 0.5
    gathering_max_acc_m: float = 150.0
    gathering_max_dt_s: int = 300
    gathering_after_s: int = 1800
    gathering_gap_s: int = 900
    strict: dict = field(default_factory=dict)  # [rules.strict]: 严管 subjects' keys, over
                                       # STRICT_DEFAULTS (`for_level`)
    loose: dict = field(default_factory=dict)   # [rules.loose]: 宽管, over LOOSE_DEFAULTS

    def for_level(self, level: str) -> "Rules":
        """These settings as they apply to subjects of supervision `level` (SPEC §11):
        `[rules]`, then the level's built-in defaults, then its table from the file. A
        built-in default never makes strict looser, or loose stricter, than `[rules]` (a
        smaller count or time is stricter for every per-level key): with `[rules]
        signal_lost_after_s = 600`, strict stays at 600, not the default 1800."""
        if level == "normal":
            return self
        if level not in LEVEL_DEFAULTS:
            raise ValueError(f"unknown supervision level {level!r} (known: normal, "
                             f"{', '.join(LEVEL_DEFAULTS)})")
        bound = min if level == "strict" else max
        defaults = {key: bound(value, getattr(self, key))
                    for key, value in LEVEL_DEFAULTS[level].items()}
        return replace(self, **{**defaults, **getattr(self, level)})


# Keys of [rules] that may differ by supervision level (SPEC §11): the ones judged per
# subject. Any other key in [rules.strict] or [rules.loose] is refused with its reason.
PER_LEVEL_KEYS = ("exit_fixes", "exit_fixes_key", "return_fixes", "possible_exit_fixes",
                  "exclusion_fixes", "possible_exclusion_fixes", "signal_lost_after_s",
                  "phone_off_after_s", "permit_overstay_after_s")
NOT_PER_LEVEL = {
    "exit_margin_m": "the margin is built into the verdict engine all subjects share",
    "feed_outage_share": "a carrier's outage concerns all of its subjects",
    "feed_outage_silence_s": "a carrier's outage concerns all of its subjects",
    "feed_outage_min_subjects": "a carrier's outage concerns all of its subjects",
    "escalate_critical_s": "escalation follows an alarm's severity, not its subject",
    "escalate_high_s": "escalation follows an alarm's severity, not its subject",
    "escalate_medium_s": "escalation follows an alarm's severity, not its subject",
    "clock": "the engine has one clock",
    "key_period_signal_lost_after_s": "a key period applies to every level it names",
    "curfew_fixes": "a curfew is an order of its own, whatever the level",
    "night_from_hour": "nights are the same for everyone",
    "night_to_hour": "nights are the same for everyone",
    "night_absence_nights": "night_watch is a flag of its own, whatever the level",
    "check_every_s": "the clock rules run for all subjects at once",
    **dict.fromkeys(("gathering_radius_m", "gathering_acc_k", "gathering_max_acc_m",
                     "gathering_max_dt_s", "gathering_after_s", "gathering_gap_s"),
                    "a gathering concerns two people, who may be of different levels"),
    "strict": "a level's table holds no other level's",
    "loose": "a level's table holds no other level's",
}
# Built-in settings per level, over [rules]: strict (严管) raises an exit on one `out` fix
# and signal_lost after 30 min; loose (宽管) gives a little more room. Key persons keep
# `exit_fixes_key` (1) at every level.
STRICT_DEFAULTS = {"exit_fixes": 1, "possible_exit_fixes": 2, "signal_lost_after_s": 1800,
                   "permit_overstay_after_s": 900}
LOOSE_DEFAULTS = {"exit_fixes": 3, "possible_exit_fixes": 4, "signal_lost_after_s": 7200,
                  "permit_overstay_after_s": 3600}
LEVEL_DEFAULTS = {"strict": STRICT_DEFAULTS, "loose": LOOSE_DEFAULTS}


@dataclass(frozen=True)
class Leave:
    """Leave (外出请假, SPEC §12; 社区矫正法实施办法 art. 27-28)."""
    township_max_days: int = 7         # up to this many days the supervising office approves;
                                       # longer (and every standing permit): its parent
    max_days: int = 30                 # one leave lasts at most this many days
    max_days_per_year: int = 60        # approved days of leave in a calendar year (UTC+8)
    standing_max_days: int = 183       # a standing permit (recurring) runs at most this long
    four_eyes: bool = True             # the approver must be another user than the requester
    record_past: bool = False          # a leave whose end has passed may be filed (补录: a
                                       # paper approval recorded afterwards); the demo, which
                                       # replays a past day, sets it


@dataclass(frozen=True)
class Carriers:
    """Carriers both ways (SPEC §14): locate requests to their connections."""
    locate_timeout_s: int = 120        # a request unanswered this long is recorded timed out
    locate_subject_every_s: int = 60   # the desk asks for one subject at most this often
    locate_user_per_hour: int = 60     # and one user at most this many times an hour
    connection_idle_s: int = 300       # a carrier connection silent this long gets no requests
                                       # (an idle carrier sends an empty batch to stay reachable)


@dataclass(frozen=True)
class Connect:
    """Pull connectors (SPEC §14): `[connect.http.NAME]` tables, one HTTP positioning API
    each (`connect.config.HttpConnector`), run by `serve` as children."""
    http: dict = field(default_factory=dict)   # name -> HttpConnector, once loaded


@dataclass(frozen=True)
class Settings:
    storage: Storage = Storage()
    layers: Layers = Layers()
    ingest: Ingest = Ingest()
    alerts: Alerts = Alerts()
    desk: Desk = Desk()
    rules: Rules = Rules()
    leave: Leave = Leave()
    carriers: Carriers = Carriers()
    connect: Connect = Connect()
    source: str = "built-in defaults"


# -- ranges -------------------------------------------------------------------------------

MAX_RUN_FIXES = 255                      # the rules' uint8 run counters (alerts._rules_kernel)
MAX_DURATION_S = 10 * 366 * 24 * 3600    # ten years: longer is a typo (and nears ms overflow)
MAX_SESSION_HOURS = 24 * 365
MAX_DISTANCE_M = 100_000.0
MAX_CHECK_EVERY_S = 3600.0
MIN_CHECK_EVERY_S = 0.01                 # below, the clock rules would spin a worker
MAX_LEAVE_DAYS = 366                     # any leave limit: a calendar year at most


@dataclass(frozen=True)
class Whole:
    """A whole number from `low` to `high`."""
    low: int
    high: int

    def problems(self, value) -> list[str]:
        if self.low <= value <= self.high:
            return []
        return [f"must be a whole number in {self.low}..{self.high}, not {value!r}"]


@dataclass(frozen=True)
class Real:
    """A finite number up to `high`, from `low` (excluded when `above`)."""
    low: float
    high: float
    above: bool = False

    def problems(self, value) -> list[str]:
        low_ok = value > self.low if self.above else value >= self.low
        if math.isfinite(value) and low_ok and value <= self.high:
            return []
        return [f"must be a finite number in {'(' if self.above else '['}{self.low:g}, "
                f"{self.high:g}], not {value!r}"]


@dataclass(frozen=True)
class OneOf:
    """One of a few words (the error lists them)."""
    choices: tuple[str, ...]

    def problems(self, value) -> list[str]:
        if value in self.choices:
            return []
        return [f"must be one of {', '.join(self.choices)}; not {value!r}"]


@dataclass(frozen=True)
class Text:
    """Free text (a file or directory: whether it is usable is checked before `serve`
    starts anything, see `service.preflight`); `required`: not empty."""
    required: bool = False

    def problems(self, value) -> list[str]:
        return ["must not be empty"] if self.required and not value.strip() else []


@dataclass(frozen=True)
class Address:
    """A bind address that `parse` accepts (`engine.address`); when `optional`, empty turns
    the listener off."""
    parse: Callable[[str], Any]
    optional: bool = False

    def problems(self, value) -> list[str]:
        if self.optional and not value:
            return []
        try:
            self.parse(value)
        except ValueError as e:
            return [str(e)]
        return []


@dataclass(frozen=True)
class Flag:
    """true or false (the type check is all)."""

    def problems(self, value) -> list[str]:
        return []


@dataclass(frozen=True)
class HostNames:
    """`[desk] hosts`: names or addresses without a port (`desk.hosts` says which; whether
    the list may be empty depends on the bind, checked before `serve` starts anything)."""

    def problems(self, value) -> list[str]:
        if not value:
            return []
        from desk.hosts import allowed_hosts

        try:
            allowed_hosts("", value)   # with entries listed, the bind host plays no part
        except ConfigError as e:
            return [str(e).removeprefix("[desk] hosts ")]
        return []


@dataclass(frozen=True)
class LevelTable:
    """`[rules.strict]` / `[rules.loose]`: only `PER_LEVEL_KEYS` (a misspelt one named with
    the near one; another rules key refused with why it is not per level), each well typed
    and in the range `[rules]` gives it."""

    def problems(self, value) -> list[str]:
        default = Rules()
        problems = []
        for key, item in value.items():
            if key in NOT_PER_LEVEL:
                where = "" if key in LEVEL_DEFAULTS else "; set it in [rules]"
                problems.append(f"{key}: not per level ({NOT_PER_LEVEL[key]}){where}")
            elif key not in PER_LEVEL_KEYS:
                problems += unknown_keys({key: item}, PER_LEVEL_KEYS, "")
            else:
                item, wrong = _typed(getattr(default, key), item)
                problems += ([f"{key}: {wrong}"] if wrong else
                             [f"{key}: {p}" for p in CHECKS["rules"][key].problems(item)])
        return problems


@dataclass(frozen=True)
class Webhooks:
    """`[alerts.webhooks."CODE"]` tables: known keys only, then `alerts.webhooks` checks."""

    def problems(self, value) -> list[str]:
        from alerts.webhooks import WEBHOOK_KEYS, parse_webhooks

        problems = []
        for office, table in value.items():
            if isinstance(table, dict):
                problems += unknown_keys(table, WEBHOOK_KEYS, f"webhook {quoted(office)}")
                table = {k: v for k, v in table.items() if k in WEBHOOK_KEYS}
            try:
                parse_webhooks({office: table})
            except ValueError as e:
                problems.append(str(e))
        return problems


@dataclass(frozen=True)
class Connectors:
    """`[connect.http.NAME]` tables: `connect.config` checks every key (all problems, no
    credential ever shown); `from_mapping` keeps the parsed connectors."""

    def problems(self, value) -> list[str]:
        from connect.config import ConnectConfigError, HttpConnector, parse_connectors

        if all(isinstance(v, HttpConnector) for v in value.values()):
            return []   # parsed already
        try:
            parse_connectors(value)
        except ConnectConfigError as e:
            return e.problems
        return []


SECONDS = Whole(1, MAX_DURATION_S)
FIXES = Whole(1, MAX_RUN_FIXES)
ACCURACY_M = Real(0, MAX_DISTANCE_M, above=True)
ZMQ_BIND = Address(check_zmq_endpoint)
HTTP_BIND = Address(parse_host_port, optional=True)

# Every key's range, by section: a key without one fails the tests.
CHECKS: dict[str, dict[str, Any]] = {
    "storage": {"path": Text(required=True), "sync": OneOf(("normal", "full")),
                "keep_fixes_days": Whole(1, 10 * 366)},
    "layers": {"jurisdictions": Text(), "zones": Text()},
    "ingest": {"bind": ZMQ_BIND, "curve_keys": Text(), "curve_carriers": Text(),
               "max_fix_age_s": SECONDS, "max_backlog_fixes": Whole(1, 2**40),
               "metrics_bind": HTTP_BIND,
               "default_acc_gps_m": ACCURACY_M, "default_acc_wifi_m": ACCURACY_M,
               "default_acc_cell_m": ACCURACY_M, "default_acc_unknown_m": ACCURACY_M},
    "alerts": {"publish": ZMQ_BIND, "curve_keys": Text(), "curve_subscribers": Text(),
               "webhooks": Webhooks()},
    "desk": {"bind": HTTP_BIND, "session_hours": Real(0, MAX_SESSION_HOURS, above=True),
             "login_attempts": Whole(1, 1_000_000), "cookie_secure": Flag(),
             "trust_forwarded_for": Flag(), "hosts": HostNames()},
    "rules": {"exit_margin_m": Real(0, MAX_DISTANCE_M),
              "exit_fixes": FIXES, "exit_fixes_key": FIXES, "return_fixes": FIXES,
              "possible_exit_fixes": FIXES, "exclusion_fixes": FIXES,
              "possible_exclusion_fixes": FIXES,
              "signal_lost_after_s": SECONDS, "phone_off_after_s": SECONDS,
              "permit_overstay_after_s": Whole(0, MAX_DURATION_S),
              "key_period_signal_lost_after_s": SECONDS, "curfew_fixes": FIXES,
              "night_from_hour": Whole(0, 23), "night_to_hour": Whole(0, 23),
              "night_absence_nights": Whole(1, 7),
              "feed_outage_share": Real(0, 1, above=True), "feed_outage_silence_s": SECONDS,
              "feed_outage_min_subjects": Whole(1, 2**31 - 1),
              "escalate_critical_s": SECONDS, "escalate_high_s": SECONDS,
              "escalate_medium_s": SECONDS,
              "clock": OneOf(("wall", "feed")),
              "check_every_s": Real(MIN_CHECK_EVERY_S, MAX_CHECK_EVERY_S),
              "gathering_radius_m": Real(0, 5_000, above=True),
              "gathering_acc_k": Real(0, 3), "gathering_max_acc_m": Real(0, 5_000, above=True),
              "gathering_max_dt_s": Whole(1, 3600), "gathering_after_s": SECONDS,
              "gathering_gap_s": Whole(1, 24 * 3600),
              "strict": LevelTable(), "loose": LevelTable()},
    "leave": {"township_max_days": Whole(1, MAX_LEAVE_DAYS), "max_days": Whole(1, MAX_LEAVE_DAYS),
              "max_days_per_year": Whole(1, MAX_LEAVE_DAYS),
              "standing_max_days": Whole(1, MAX_LEAVE_DAYS), "four_eyes": Flag(),
              "record_past": Flag()},
    "carriers": {"locate_timeout_s": Whole(1, 24 * 3600),
                 "locate_subject_every_s": Whole(0, 24 * 3600),
                 "locate_user_per_hour": Whole(1, 100_000),
                 "connection_idle_s": Whole(1, 24 * 3600)},
    "connect": {"http": Connectors()},
}


# -- loading ------------------------------------------------------------------------------

def load(path: str | None = None) -> Settings:
    """Settings from `path`, else ./geofence.toml if present, else the defaults."""
    if path is None:
        if not Path(DEFAULT_FILE).is_file():
            return Settings()
        path = DEFAULT_FILE
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from e
    return from_mapping(raw, source=str(path))


def from_mapping(raw: dict[str, Any], source: str = "mapping") -> Settings:
    """Settings from parsed TOML; ConfigError listing every problem of the document."""
    sections = _sections()
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name, table in raw.items():
        if name not in sections:
            near = nearest(name, sections)
            hint = f"; did you mean [{near}]?" if near else f" (known: {', '.join(sections)})"
            problems.append(f"{source}: unknown section [{name}]{hint}")
        elif not isinstance(table, dict):
            problems.append(f"{source}: [{name}] must be a table")
        else:
            if name == "rules" and isinstance(table.get("normal"), dict):
                problems.append(f"{source}: [rules.normal]: the normal level (普管) is "
                                f"[rules] itself; set its keys there")
                table = {k: v for k, v in table.items() if k != "normal"}
            values[name] = _section(sections[name], table, f"{source}: [{name}]", problems)
    settings = replace(Settings(), source=source, **values)
    problems += check(settings, only={(s, k) for s, table in raw.items()
                                      if isinstance(table, dict) for k in table})
    if problems:
        raise ConfigError(problems)
    return _with_connectors(settings)


def _with_connectors(settings: Settings) -> Settings:
    """The `[connect.http]` tables as `HttpConnector`s (checked already)."""
    if not settings.connect.http:
        return settings
    from connect.config import parse_connectors

    return replace(settings, connect=Connect(parse_connectors(settings.connect.http)))


def check(settings: Settings, only: set[tuple[str, str]] | None = None) -> list[str]:
    """One line per key of `settings` out of its range (of the keys in `only`, if given)."""
    problems = []
    for section, checks in CHECKS.items():
        values = getattr(settings, section)
        for key, rule in checks.items():
            if only is None or (section, key) in only:
                # a level's table is named as TOML names it; its lines start "KEY: ...",
                # or ": unknown key ..." (as `unknown_keys` words them)
                where = f"[{section}.{key}]" if isinstance(rule, LevelTable) else (
                    f"[{section}] {key}:")
                problems += [f"{settings.source}: {where}{'' if p[0] == ':' else ' '}{p}"
                             for p in rule.problems(getattr(values, key))]
    rules = settings.rules
    if rules.night_from_hour == rules.night_to_hour and (
            only is None or ("rules", "night_from_hour") in only
            or ("rules", "night_to_hour") in only):
        problems.append(f"{settings.source}: [rules] night_from_hour: a night must end at "
                        f"another hour than it begins ({rules.night_to_hour})")
    return problems


def _sections() -> dict[str, Any]:
    return {f.name: f.default for f in fields(Settings) if f.name != "source"}


def _section(default, table: dict[str, Any], where: str, problems: list[str]):
    """`default` with the well-typed keys of `table`; unknown and mistyped keys noted."""
    known = [f.name for f in fields(default)]
    problems += unknown_keys(table, known, where)
    changes = {}
    for key, value in table.items():
        if key not in known:
            continue
        value, wrong = _typed(getattr(default, key), value)
        if wrong:
            problems.append(f"{where} {key}: {wrong}")
            continue
        changes[key] = value
    return replace(default, **changes)


def _typed(default, value, show_value: bool = True) -> tuple[Any, str | None]:
    """`value` as the type of `default` (an int where a float goes, a list for a tuple),
    or the problem when it is of another type (naming the value unless `show_value` is
    false: a credential must not reach an error message)."""
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is tuple and isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
        shown = f", not {value!r}" if show_value else ""
        return value, f"must be {_type_name(expected)}{shown}"
    return value, None


def _type_name(expected: type) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
            dict: "a table", tuple: "an array"}.get(expected, expected.__name__)
