"""The `geofence` command: one entry point, a subcommand per job (SPEC §9).

Every subcommand exits non-zero with a one-line reason on bad input.
"""

import argparse
import json
import sys

import numpy as np

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (OSError, ValueError, KeyError) as e:  # GeofenceError subclasses these
        print(f"geofence: error: {_reason(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geofence",
        description="Real-time geofence monitoring for community corrections.")
    p.add_argument("--config", metavar="FILE",
                   help="TOML configuration (default: ./geofence.toml if present)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the engine on built-in Zaozhuang data",
                          description="Simulate a day of fixes for Zaozhuang's supervised "
                          "people on the built-in layer and report what the engine finds.")
    demo.add_argument("--subjects", type=_positive_int, default=2032)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(run=_demo)

    layer = sub.add_parser("layer", help="jurisdiction and zone layers")
    layer_sub = layer.add_subparsers(dest="layer_command", required=True, metavar="ACTION")
    check = layer_sub.add_parser(
        "check", help="validate a layer file and report counts, vertices, bounds, overlaps, gaps",
        description="Validate a GeoJSON layer; exit 1 if it has overlaps or gaps, 2 if invalid.")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=_layer_check)

    locate = sub.add_parser("locate", help="which jurisdiction holds a point",
                            description="Print the feature holding LON LAT and its parents.")
    locate.add_argument("--layer", required=True, metavar="FILE")
    locate.add_argument("--datum", default="wgs84", choices=("wgs84", "gcj02", "bd09"),
                        help="datum of LON LAT (default wgs84)")
    locate.add_argument("lon", type=float, metavar="LON")
    locate.add_argument("lat", type=float, metavar="LAT")
    locate.set_defaults(run=_locate)
    return p


def _demo(args) -> int:
    from service import core_demo

    core_demo.run(subjects=args.subjects, seed=args.seed)
    return 0


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
        raise ValueError(f"LON LAT out of range: {args.lon} {args.lat}")
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number: {text}")
    return value


def _reason(e: BaseException) -> str:
    text = str(e) if not isinstance(e, KeyError) or e.args else repr(e)
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
