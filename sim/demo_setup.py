"""The demo's working directory: its config, zone layer, registry, truth and desk logins.

DIR (default ./geofence-demo) gets a config (`geofence.toml`: storage in DIR/data, the zone
layer, `[rules] clock = "feed"` so the clock rules run in the replayed day's time, the
desk on --desk-bind, ingest, PUB and metrics on their default ports if free), the zone
layer, the registry and the planted truth (`sim.scenario`) as JSON, and `demo.json`, which
marks DIR as a demo's: only such a directory is ever cleared.
"""

import json
import secrets
import shutil
import socket
from pathlib import Path

from geofence.errors import GeofenceError

DEFAULT_INGEST_PORT, DEFAULT_PUBLISH_PORT, DEFAULT_METRICS_PORT = 5555, 5556, 9105
MARKER = "demo.json"            # what makes DIR a demo directory the next run may clear
CITY_USER = "demo"
CLERK_USER = "demo-clerk"       # files the day's leaves on the desk; CITY_USER approves
CITY_OFFICE = "3704"
CHECK_EVERY_S = 0.1             # the clock rules' period: 1 min of a day replayed at 600x


class DemoError(GeofenceError, ValueError):
    """The demo cannot start as asked (a busy port, a directory that is not a demo's); the
    message says what to change."""


def fresh_directory(root: Path) -> None:
    """An empty `root`, clearing a previous demo's; never a directory that is not one."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise DemoError(f"{root} is not empty and holds no earlier demo ({MARKER}): "
                            "choose another --data directory")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)


def check_resumable(root: Path, subjects: int, seed: int) -> bool:
    """Whether `root` holds a demo to continue (--keep), of these subjects and seed."""
    if not (root / MARKER).is_file():
        return False
    previous = json.loads((root / MARKER).read_text())
    if (previous.get("subjects"), previous.get("seed")) != (subjects, seed):
        raise DemoError(f"{root} holds a demo of {previous.get('subjects')} subjects, seed "
                        f"{previous.get('seed')}: pass those, or drop --keep to start afresh")
    return True


def _port(default: int) -> int:
    """`default` if it is free on loopback, else any free port."""
    for port in (default, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise DemoError("no free loopback port")


def _check_desk_bind(bind: str) -> None:
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise DemoError(f"--desk-bind must be HOST:PORT, not {bind!r}")
    if int(port) == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError as e:
            raise DemoError(f"the desk cannot listen on {bind} ({e.strerror}): pass "
                            "--desk-bind with another port, or port 0 for any") from e


def write_config(root: Path, desk_bind: str, scenario):
    """DIR/geofence.toml and the zone layer; the loaded settings."""
    from engine.config import load

    _check_desk_bind(desk_bind)
    (root / "zones.geojson").write_text(json.dumps(scenario.zones, ensure_ascii=False))
    lines = ["# written by `geofence demo`: the engine on built-in Zaozhuang data",
             "[storage]", f"path = {json.dumps(str(root / 'data'))}",
             "[layers]", f"zones = {json.dumps(str(root / 'zones.geojson'))}",
             "[ingest]", f'bind = "tcp://127.0.0.1:{_port(DEFAULT_INGEST_PORT)}"',
             f'metrics_bind = "127.0.0.1:{_port(DEFAULT_METRICS_PORT)}"',
             "[alerts]", f'publish = "tcp://127.0.0.1:{_port(DEFAULT_PUBLISH_PORT)}"',
             "[desk]", f"bind = {json.dumps(desk_bind)}",
             "[rules]", 'clock = "feed"   # the clock rules run in the replayed day\'s time',
             f"check_every_s = {CHECK_EVERY_S}",
             "[leave]", "record_past = true   # the demo files leaves of a day replayed"]
    (root / "geofence.toml").write_text("\n".join(lines) + "\n")
    return load(str(root / "geofence.toml"))


def prepare(root: Path, settings, scenario, resume: bool) -> list[tuple[str, str, str]]:
    """Import the registry (unless resuming), write the truth, set the desk users' fresh
    passwords; the logins as (user, password, office)."""
    from alerts.registry import RegistryStore
    from sim.demo_leaves import desk_trips
    from desk.users import UserStore
    from engine.layers import code_checkers, load_layers
    from engine.paths import EnginePaths

    paths = EnginePaths.create(settings.storage.path)
    if not resume:
        document = scenario.registry_document()
        on_desk = {t["id"] for t in desk_trips(scenario.permits)}   # filed on the desk
        document["permits"] = [p for p in document["permits"] if p["id"] not in on_desk]
        (root / "registry.json").write_text(json.dumps(document, ensure_ascii=False, indent=1))
        (root / "truth.json").write_text(json.dumps(scenario.truth, ensure_ascii=False, indent=1))
        registry = RegistryStore(paths.registry_db)
        try:
            registry.import_document(document, *code_checkers(*load_layers(settings)))
        finally:
            registry.close()
        (root / MARKER).write_text(json.dumps({"subjects": len(scenario.ids),
                                               "seed": scenario.seed,
                                               "day_end_ms": scenario.end_ms}))
    town = next(r["subject"] for r in scenario.truth if r["kind"] == "exit")
    town_office = next(s["office"] for s in scenario.subjects if s["id"] == town)
    logins = [(CITY_USER, secrets.token_urlsafe(9), CITY_OFFICE),
              (CLERK_USER, secrets.token_urlsafe(9), CITY_OFFICE),
              (f"demo-{town_office}", secrets.token_urlsafe(9), town_office)]
    with UserStore(paths.desk_db) as users:
        for name, password, office in logins:
            users.add(name, office, password, replace=True)
    return logins
