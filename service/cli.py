"""The `geofence` command: one entry point, a subcommand per job (SPEC §9).

Every subcommand exits non-zero with a one-line reason on bad input (one line per
problem when a file has several).
"""

import argparse
import json
import sys

import numpy as np

from geofence.errors import GeofenceError

EXIT_BAD_INPUT = 2


class UsageError(GeofenceError, ValueError):
    """A command's input is wrong (a file, an argument, a password); the message says how."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (GeofenceError, OSError) as e:   # bad input, a missing or unreadable file
        for reason in _reasons(e):
            print(f"geofence: error: {reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geofence",
        description="Real-time geofence monitoring for community corrections.")
    p.add_argument("--config", metavar="FILE",
                   help="TOML configuration (default: ./geofence.toml if present)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML configuration (default: ./geofence.toml if present)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the whole engine on built-in Zaozhuang data",
                          description="Start the whole engine (ingest, workers, dispatcher, "
                          "desk) on the built-in Zaozhuang layer with 2,032 simulated people, "
                          "replay a day of carrier fixes fast with planted exits, permitted "
                          "trips, overstays, silences and injunction breaches, then keep a live "
                          "feed; prints the desk's URL and a demo login. It writes its own "
                          "config into --data (no --config).")
    from sim.demo import add_demo_arguments
    add_demo_arguments(demo)
    demo.set_defaults(run=_demo)

    layer = sub.add_parser("layer", parents=[common], help="jurisdiction and zone layers")
    layer_sub = layer.add_subparsers(dest="layer_command", required=True, metavar="ACTION")
    check = layer_sub.add_parser(
        "check", parents=[common], help="validate a layer file and report counts, vertices, bounds, overlaps, gaps",
        description="Validate a GeoJSON layer; exit 1 if it has overlaps or gaps, 2 if invalid.")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_layer_check)

    locate = sub.add_parser("locate", parents=[common], help="which jurisdiction holds a point",
                            description="Print the feature holding LON LAT and its parents.")
    locate.add_argument("--layer", required=True, metavar="FILE")
    locate.add_argument("--datum", default="wgs84", choices=("wgs84", "gcj02", "bd09"),
                        help="datum of LON LAT (default wgs84)")
    locate.add_argument("lon", type=float, metavar="LON")
    locate.add_argument("lat", type=float, metavar="LAT")
    locate.set_defaults(run=_locate)

    serve = sub.add_parser("serve", parents=[common], help="run the engine: ingest, workers",
                           description="Run the engine until Ctrl-C or SIGTERM.")
    serve.add_argument("--workers", type=_positive_int, default=1,
                       help="evaluation worker processes (default 1)")
    serve.add_argument("--insecure", action="store_true",
                       help="allow binding a non-loopback address without CURVE")
    serve.set_defaults(run=_serve)

    registry = sub.add_parser("registry", parents=[common], help="offices, subjects, permits, delegations")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True,
                                           metavar="ACTION")
    imp = registry_sub.add_parser("import", parents=[common], help="atomic upsert of a registry JSON document",
                                  description="Check every reference; on any problem, report "
                                  "them all and change nothing.")
    imp.add_argument("file")
    imp.set_defaults(run=_registry_import)
    exp = registry_sub.add_parser("export", parents=[common], help="print the registry as JSON")
    exp.set_defaults(run=_registry_export)

    keys = sub.add_parser("keys", parents=[common], help="CURVE keys for carriers")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = keys_sub.add_parser("generate", parents=[common], help="create the server's and carriers' key pairs",
                              description="Write server.key/server.key_secret and, per "
                              "carrier, NAME.key (copy it to the engine's carriers directory) "
                              "and NAME.key_secret (give it to the carrier).")
    gen.add_argument("dir")
    gen.add_argument("--carrier", action="append", default=[], metavar="NAME",
                     help="a carrier to create keys for (repeatable)")
    gen.add_argument("--force", action="store_true", help="replace existing keys")
    gen.set_defaults(run=_keys_generate)

    connect = sub.add_parser("connect", parents=[common],
                             help="pull connectors: ask positioning APIs, feed the engine")
    connect_sub = connect.add_subparsers(dest="connect_command", required=True,
                                         metavar="KIND")
    http = connect_sub.add_parser(
        "http", parents=[common], help="an HTTP positioning API ([connect.http.NAME])",
        description="Ask an HTTP positioning API for each subject's device on a schedule per "
        "supervision level and key, and for the devices the engine's locate requests name; "
        "feed the answers to the engine as a carrier. Runs until Ctrl-C or SIGTERM.")
    http.add_argument("--name", help="which [connect.http.NAME] (default: the only one)")
    http.set_defaults(run=_connect_http)

    from service.desk_commands import add_commands as add_desk_commands
    add_desk_commands(sub, common)

    _store_commands(sub, common)

    sim = sub.add_parser("simulate", parents=[common], help="a carrier pushing a realistic synthetic feed",
                         description="Replay a simulated day of fixes for N subjects of the "
                         "built-in population to a running engine.")
    sim.add_argument("--subjects", type=_positive_int, default=2032)
    sim.add_argument("--rate", type=_rate, default=0.0,
                     help="fixes per second (0: as fast as acks allow)")
    sim.add_argument("--connect", default="tcp://127.0.0.1:5555")
    sim.add_argument("--form", choices=("cols", "rows"), default="cols")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--curve-dir", help="directory with server.key and the carriers' key pairs")
    sim.add_argument("--register", action="store_true",
                     help="first import the simulated subjects into this engine's registry")
    sim.add_argument("--locate-delay", type=_seconds, default=0.0, metavar="SECONDS",
                     help="how long the carriers take to answer a locate request (default 0)")
    sim.add_argument("--linger", type=_seconds, default=0.0, metavar="SECONDS",
                     help="stay connected this long after the day is sent, answering locate "
                     "requests (default 0)")
    sim.set_defaults(run=_simulate)
    return p


def _store_commands(sub, common) -> None:
    store = sub.add_parser("store", parents=[common], help="the engine's SQLite files")
    store_sub = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    check = store_sub.add_parser(
        "check", parents=[common], help="check every store file page by page",
        description="SQLite's integrity check of every store file in the storage path "
        "(fixes, evaluation files incl. retired ones, alarms, registry, desk), one line per "
        "file; exit 1 if any is damaged. Safe while the engine runs.")
    check.add_argument("--quick", action="store_true",
                       help="quick_check: every page, without matching indexes to tables")
    check.set_defaults(run=_store_check)
    backup = sub.add_parser(
        "backup", parents=[common], help="a consistent copy of every store, while the engine runs",
        description="Copy every store file into DIR (new or empty) with SQLite's backup API, "
        "in the order that keeps their cursors consistent, then write DIR/manifest.json. "
        "Safe while the engine runs.")
    backup.add_argument("dir", metavar="DIR")
    backup.set_defaults(run=_backup)
    restore = sub.add_parser(
        "restore", parents=[common], help="put a backup into an empty storage path",
        description="Verify the backup in DIR (manifest, sizes, SHA-256, integrity) and "
        "copy it into the storage path, which must be missing or empty; then start serve.")
    restore.add_argument("dir", metavar="DIR")
    restore.set_defaults(run=_restore)


def _storage(args):
    from pathlib import Path

    from engine.paths import EnginePaths

    return EnginePaths(Path(_settings(args).storage.path).absolute())


def _store_check(args) -> int:
    from engine.store_check import check_stores

    paths = _storage(args)
    if not paths.root.is_dir():
        raise UsageError(f"storage path {paths.root} does not exist")
    checks = check_stores(paths, quick=args.quick)
    for check in checks:
        print(check.line(paths.root))
    damaged = sum(1 for check in checks if check.problems)
    print(f"{len(checks)} store file(s) in {paths.root}: "
          + (f"{damaged} damaged" if damaged else "all sound"))
    return 1 if damaged else 0


def _backup(args) -> int:
    import time
    from pathlib import Path

    from engine.backup import backup

    started = time.monotonic()
    target = Path(args.dir).absolute()
    files = backup(_storage(args), target)
    print(f"backup of {len(files)} store file(s) in {target} "
          f"({sum(f.bytes for f in files):,} bytes, {time.monotonic() - started:.1f} s)")
    return 0


def _restore(args) -> int:
    from pathlib import Path

    from engine.backup import restore

    paths = _storage(args)
    files = restore(Path(args.dir).absolute(), paths)
    print(f"restored {len(files)} store file(s) into {paths.root}; start the engine with "
          "`geofence serve`")
    return 0


def _demo(args) -> int:
    from sim.demo import demo_options, run_demo

    run_demo(**demo_options(args))
    return 0


def _settings(args):
    from engine.config import load

    return load(args.config)


def _serve(args) -> int:
    from service.serve import serve

    serve(_settings(args), workers=args.workers, insecure=args.insecure)
    return 0


def _connect_http(args) -> int:
    import logging
    import signal

    from connect.runner import run_connector

    settings = _settings(args)
    names = list(settings.connect.http)
    name = args.name
    if name is None:
        if len(names) != 1:
            raise UsageError(f"--name is needed: {settings.source} configures "
                             f"{len(names)} connector(s) ({', '.join(names) or 'none'})")
        name = names[0]
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda *_: stopping.append(1))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_connector(settings, name, lambda: bool(stopping),
                      on_ready=lambda: print(f"geofence: connector {name} running", flush=True))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _registry_store(settings):
    from alerts.registry import RegistryStore
    from engine.paths import EnginePaths

    return RegistryStore(EnginePaths.create(settings.storage.path).registry_db)


def _registry_import(args) -> int:
    from engine.layers import code_checkers, load_layers

    settings = _settings(args)
    try:
        with open(args.file, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{args.file} is not valid JSON: {e}") from e
    registry = _registry_store(settings).import_document(doc, *code_checkers(*load_layers(settings)))
    print(f"registry version {registry.version}: {len(registry.offices)} offices, "
          f"{len(registry.subjects)} subjects, {len(registry.permits)} permits, "
          f"{len(registry.delegations)} delegations")
    return 0


def _registry_export(args) -> int:
    registry = _registry_store(_settings(args)).load()
    print(json.dumps(registry.to_document(), ensure_ascii=False, indent=1))
    return 0


def _keys_generate(args) -> int:
    from ingest.keys import generate

    for path in generate(args.dir, args.carrier, force=args.force):
        print(path)
    return 0


def _simulate(args) -> int:
    from sim.simulate import simulate

    if args.register:
        _register_simulated(args)
    simulate(args.connect, args.subjects, args.rate, seed=args.seed, form=args.form,
             curve_dir=args.curve_dir, locate_delay_s=args.locate_delay, linger_s=args.linger)
    return 0


def _register_simulated(args) -> None:
    from engine.layers import code_checkers, load_layers
    from sim.population import builtin_population, registry_document

    settings = _settings(args)
    jurisdictions, zones = load_layers(settings)
    layer, people, _ = builtin_population(args.subjects, args.seed)
    doc = registry_document(layer, people)
    _registry_store(settings).import_document(doc, *code_checkers(jurisdictions, zones))


def _layer_check(args) -> int:
    from geofence.geojson import parse_layer
    from geofence.quality import check_layer

    report = check_layer(parse_layer(args.file))
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print("\n".join(report.to_lines()))
    return 1 if report.problems else 0


def _locate(args) -> int:
    import geofence
    from geofence.datum import to_wgs84

    if not (-180 <= args.lon <= 180 and -90 <= args.lat <= 90):
        raise UsageError(f"LON LAT out of range: {args.lon} {args.lat}")
    lon, lat = to_wgs84(np.array([args.lon]), np.array([args.lat]), args.datum)
    layer = geofence.Layer.from_geojson(args.file if hasattr(args, "file") else args.layer,
                                        warn=False)
    found = int(layer.locate(lon, lat)[0])
    if found < 0:
        print(f"{lon[0]:.7f} {lat[0]:.7f}: in no jurisdiction of this layer")
        return 1
    chain = layer.chain(str(layer.codes[found]))
    print(" > ".join(f"{code} {name}" for code, name in chain))
    return 0


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of fixes per second >= 0: {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0: {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number: {text}")
    return value


def _reasons(e: BaseException) -> list[str]:
    """One line per problem: each line of our own errors (a config lists every bad key),
    the first line of anything else."""
    text = str(e) if not isinstance(e, KeyError) or e.args else repr(e)
    lines = text.strip().splitlines()
    if not lines:
        return [type(e).__name__]
    return lines if isinstance(e, GeofenceError) else lines[:1]


if __name__ == "__main__":
    sys.exit(main())
