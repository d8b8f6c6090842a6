"""Settings: one frozen object, loaded once from TOML and passed in explicitly (SPEC §9).

Without a file, built-in defaults for a local single-machine run. Unknown sections or
keys are errors that name them, so a typo never silently falls back to a default.
"""

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from geofence.errors import GeofenceError

DEFAULT_FILE = "geofence.toml"


class ConfigError(GeofenceError, ValueError):
    """The configuration file is unreadable or has an unknown or mistyped key; fix the file."""


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

    def __post_init__(self):
        if not self.session_hours > 0:
            raise ConfigError(f"[desk] session_hours must be > 0, not {self.session_hours!r}")
        if self.login_attempts < 1:
            raise ConfigError(f"[desk] login_attempts must be >= 1, not {self.login_attempts!r}")


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
    permit_overstay_after_s: int = 1800
    feed_outage_share: float = 0.5
    feed_outage_silence_s: int = 900   # a carrier's subject counts as silent for feed_outage
    feed_outage_min_subjects: int = 10  # fewer subjects on a carrier: signal_lost each
    escalate_critical_s: int = 600
    escalate_high_s: int = 1800
    escalate_medium_s: int = 7200
    clock: str = "wall"                # "feed": event time (newest fix, then wall time since):
                                       # for replays of recorded days and the demo
    check_every_s: float = 1.0         # how often the clock-driven rules run


@dataclass(frozen=True)
class Settings:
    storage: Storage = Storage()
    layers: Layers = Layers()
    ingest: Ingest = Ingest()
    alerts: Alerts = Alerts()
    desk: Desk = Desk()
    rules: Rules = Rules()
    source: str = "built-in defaults"


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
    sections = {f.name: f.default for f in fields(Settings) if f.name != "source"}
    values: dict[str, Any] = {}
    for name, table in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}] "
                              f"(known: {', '.join(sorted(sections))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        values[name] = _section(sections[name], table, f"{source}: [{name}]")
    return replace(Settings(), source=source, **values)


def _section(default, table: dict[str, Any], where: str):
    known = {f.name: f for f in fields(default)}
    changes = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where} unknown key {key!r} (known: {', '.join(sorted(known))})")
        expected = type(getattr(default, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(f"{where} {key} must be {expected.__name__}, not {value!r}")
        changes[key] = value
    result = replace(default, **changes)
    if isinstance(result, Storage) and result.sync not in ("normal", "full"):
        raise ConfigError(f"{where} sync must be one of normal, full; not {result.sync!r}")
    if isinstance(result, Alerts) and result.webhooks:
        from alerts.webhooks import parse_webhooks
        try:
            parse_webhooks(result.webhooks)
        except ValueError as e:
            raise ConfigError(f"{where} {e}") from e
    if isinstance(result, Rules) and result.clock not in ("wall", "feed"):
        raise ConfigError(f"{where} clock must be one of wall, feed; not {result.clock!r}")
    return result
