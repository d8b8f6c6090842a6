"""Read and write jurisdiction and zone layers: GeoJSON FeatureCollections (SPEC §3).

`parse_layer` is a pure function: it returns a complete `LayerData` or raises one
`LayerError` that lists every problem found, naming each bad feature by its index in
the file and its code, so a data clerk can fix the whole file in one pass.

Accepted, beyond the letter of RFC 7946, because real boundary files do it:
- `code` and `parent` may be JSON integers (codes exported from spreadsheets); they are
  read as their decimal strings, so `370402001` and `"370402001"` are the same code
  (a float such as `370402001.0` is refused: it may have lost digits). Surrounding
  whitespace of codes and names is dropped; `crs_datum` is case-insensitive.
- Rings need not be closed (they are closed on load) and may carry a third
  coordinate (ignored). Ring orientation is not checked.
- A `parent` that is neither a feature nor a unit is not an error: it becomes an implicit
  root unit named by its code (a township layer may name counties it does not describe).
- An empty FeatureCollection is an empty layer (a zone layer may have no zones yet).

Rejected: anything that is not a FeatureCollection; a property other than `code`, `name`,
`parent` (of a feature or a unit), or a collection member other than `type`, `features`,
`crs_datum`, `units` and the ignored `name`/`bbox`; features without geometry or with a
geometry other than Polygon/MultiPolygon; empty or invalid geometry (with GEOS's reason);
coordinates that are not finite or outside lon [-180, 180] / lat [-90, 90]; a missing or
empty code or name; duplicate codes among features and units; an unknown `crs_datum`;
cycles in the parent chain.

A collection member `"crs_datum"` (`wgs84` default, `gcj02`, `bd09`) names the datum of
the file; all coordinates are converted to WGS-84 in one vectorized call, after
validation, so `LayerData.geometries` is always WGS-84 and `LayerData.datum` records the
source datum. Validity is checked in the file's own coordinates (so GEOS's reason points
at the numbers in the file) and once more after the shift.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from geofence.datum import DATUMS
from geofence.errors import LayerError
from geofence.hierarchy import find_cycles
from geofence.known_keys import unknown_keys

_GEOMETRY_TYPES = ("Polygon", "MultiPolygon")
# The contract: a feature's properties and a unit carry these and nothing else, so a
# misspelt "parent" is an error rather than a silently flat hierarchy. `name` and `bbox`
# at the top are what GDAL and RFC 7946 write; they are accepted and not used.
PROPERTY_KEYS = ("code", "name", "parent")
COLLECTION_KEYS = ("type", "features", "crs_datum", "units", "name", "bbox")


@dataclass(frozen=True)
class Unit:
    """An upper level (county, city) that has no polygon of its own."""

    code: str
    name: str
    parent: str | None


@dataclass(frozen=True, eq=False)
class LayerData:
    """A validated layer. Feature i is `codes[i]`, `names[i]`, `parents[i]`, `geometries[i]`.

    `geometries` is a read-only object array of shapely Polygon/MultiPolygon in WGS-84;
    `units` holds the declared units, then the implicit roots; `datum` is the file's datum.
    Compared by identity (it holds an array).
    """

    codes: tuple[str, ...]
    names: tuple[str, ...]
    parents: tuple[str | None, ...]
    units: tuple[Unit, ...]
    geometries: np.ndarray
    datum: str

    def __len__(self) -> int:
        return len(self.codes)


class _Bad(Exception):
    """One problem with one feature's geometry; collected, never escapes this module."""


def parse_layer(source: str | os.PathLike | Mapping[str, Any]) -> LayerData:
    """Validate and load a layer from a UTF-8 JSON file or an already parsed mapping."""
    doc = _read(source) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(doc, Mapping) or doc.get("type") != "FeatureCollection":
        raise LayerError("not a GeoJSON FeatureCollection")
    features = doc.get("features")
    if not isinstance(features, list):
        raise LayerError("FeatureCollection has no 'features' array")

    problems = unknown_keys(doc, COLLECTION_KEYS, "the collection")
    datum = doc.get("crs_datum", "wgs84")
    datum = datum.strip().lower() if isinstance(datum, str) else datum
    if datum not in DATUMS:
        problems.append(f"unknown crs_datum {datum!r}; expected one of {', '.join(DATUMS)}")
    codes, names, parents, geometries, labels, places = [], [], [], [], [], []
    for i, feature in enumerate(features):
        if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
            problems.append(f"feature #{i}: not a GeoJSON Feature")
            continue  # nothing else about it is worth reporting; the layer is refused anyway
        props = feature.get("properties") or {}
        label, code, name, parent = _read_properties(f"feature #{i}", props, problems)
        try:
            geometries.append(_read_geometry(feature.get("geometry")))
        except _Bad as e:
            problems.append(f"{label}: {e}")
            geometries.append(None)
        codes.append(code)
        names.append(name)
        parents.append(parent)
        labels.append(label)
        places.append(f"feature #{i}")

    units, unit_places = _read_units(doc.get("units", []), problems)
    _check_codes(codes + [u.code for u in units], places + unit_places, problems)
    parent_of = {u.code: u.parent for u in units} | {c: p for c, p in zip(codes, parents) if c}
    for cycle in find_cycles(parent_of):
        problems.append(f"parent cycle: {' -> '.join(cycle + [cycle[0]])}")
    if problems:
        raise LayerError(problems)

    geoms = np.array(geometries, dtype=object)
    if datum != "wgs84":
        geoms = _to_wgs84(geoms, datum, labels)
    geoms.setflags(write=False)
    return LayerData(
        codes=tuple(codes),
        names=tuple(names),
        parents=tuple(parents),
        units=tuple(units) + _implicit_roots(codes, parents, units),
        geometries=geoms,
        datum=datum,
    )


def layer_to_geojson(data: LayerData) -> dict:
    """The layer as a WGS-84 FeatureCollection (with its units) for the desk's map.

    Parsing the result gives back the same layer; implicit roots come back as units.
    """
    texts = shapely.to_geojson(data.geometries)
    features = [
        {
            "type": "Feature",
            "properties": {"code": code, "name": name, "parent": parent},
            "geometry": json.loads(text),
        }
        for code, name, parent, text in zip(data.codes, data.names, data.parents, texts)
    ]
    units = [{"code": u.code, "name": u.name, "parent": u.parent} for u in data.units]
    return {"type": "FeatureCollection", "crs_datum": "wgs84", "units": units, "features": features}


def _read(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayerError(f"cannot read layer {os.fspath(path)!r}: {e}") from e


def _code(value: Any) -> str | None:
    """A code as a string: strings stripped, integers (not booleans) in decimal."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _read_properties(where: str, props: Any, problems: list[str]):
    """(label, code, name, parent) of a feature or unit, noting problems under its label.

    The label is "feature #3 (code '370402001')", or just "feature #3" without a code.
    """
    if not isinstance(props, Mapping):
        problems.append(f"{where}: not an object with code and name")
        return where, None, None, None
    code = _code(props.get("code"))
    label = f"{where} (code {code!r})" if code else where
    problems += unknown_keys(props, PROPERTY_KEYS, label)
    if code is None:
        problems.append(f"{where}: code is missing or empty (a string or an integer)")
    name = props.get("name")
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        problems.append(f"{label}: name is missing or empty")
    parent = props.get("parent")
    if parent is not None and parent != "":
        parent = _code(parent)
        if parent is None:
            problems.append(f"{label}: parent must be a code (a string or an integer)")
    return label, code, name or None, parent or None


def _read_units(raw: Any, problems: list[str]) -> tuple[list[Unit], list[str]]:
    if not isinstance(raw, list):
        problems.append("'units' must be an array of {code, name, parent}")
        return [], []
    units, places = [], []
    for i, item in enumerate(raw):
        _, code, name, parent = _read_properties(f"unit #{i}", item, problems)
        if code is not None and name is not None:
            units.append(Unit(code, name, parent))
            places.append(f"unit #{i}")
    return units, places


def _check_codes(codes: list[str | None], places: list[str], problems: list[str]) -> None:
    """Report each code used more than once, with every place it is used."""
    where: dict[str, list[str]] = {}
    for code, place in zip(codes, places):
        if code is not None:
            where.setdefault(code, []).append(place)
    for code, places in where.items():
        if len(places) > 1:
            problems.append(f"duplicate code {code!r}: {', '.join(places)}")


def _read_geometry(geometry: Any):
    """A shapely Polygon/MultiPolygon from a GeoJSON geometry, or `_Bad` with the reason."""
    if not isinstance(geometry, Mapping):
        raise _Bad("has no geometry")
    kind = geometry.get("type")
    if kind not in _GEOMETRY_TYPES:
        raise _Bad(f"geometry type {kind!r} is not Polygon or MultiPolygon")
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, (list, tuple)):
        raise _Bad("geometry has no coordinates array")
    if not coordinates:
        raise _Bad("empty geometry")
    if kind == "Polygon":
        result = _polygon(coordinates)
    else:
        result = shapely.MultiPolygon([_polygon(p) for p in coordinates])
    if not shapely.is_valid(result):
        raise _Bad(f"invalid geometry: {shapely.is_valid_reason(result)}")
    return result


def _polygon(rings: Any) -> shapely.Polygon:
    if not isinstance(rings, (list, tuple)) or not rings:
        raise _Bad("empty geometry")
    shell, *holes = [_ring(r) for r in rings]
    return shapely.Polygon(shell, holes)


def _ring(positions: Any) -> np.ndarray:
    """Validated (n, 2) float64 ring coordinates, closed."""
    try:
        raw = np.asarray(positions)
    except ValueError:  # ragged
        raw = np.array(None)
    if raw.size == 0:
        raise _Bad("empty geometry (a ring without positions)")
    if raw.dtype.kind not in "iuf" or raw.ndim != 2 or raw.shape[1] < 2:
        raise _Bad("coordinates are not [lon, lat] number pairs")
    xy = raw[:, :2].astype(np.float64)
    if not np.isfinite(xy).all():
        raise _Bad("coordinates are not finite")
    bad_lon = np.abs(xy[:, 0]) > 180
    if bad_lon.any():
        raise _Bad(f"longitude {xy[bad_lon, 0][0]} is outside [-180, 180]")
    bad_lat = np.abs(xy[:, 1]) > 90
    if bad_lat.any():
        raise _Bad(f"latitude {xy[bad_lat, 1][0]} is outside [-90, 90]")
    if not (xy[0] == xy[-1]).all():
        xy = np.vstack([xy, xy[:1]])
    if len(xy) < 4:
        raise _Bad("a ring has fewer than 4 positions")
    return xy


def _to_wgs84(geoms: np.ndarray, datum: str, labels: list[str]) -> np.ndarray:
    """All coordinates through one `to_wgs84` call; re-checks validity after the shift."""
    from geofence.datum import to_wgs84  # lazily: the datum kernels compile on first use

    xy = shapely.get_coordinates(geoms)
    lon, lat = to_wgs84(xy[:, 0], xy[:, 1], datum)
    out = shapely.set_coordinates(geoms.copy(), np.column_stack([lon, lat]))
    broken = np.flatnonzero(~shapely.is_valid(out))
    if broken.size:
        reasons = shapely.is_valid_reason(out[broken])
        raise LayerError(
            [f"{labels[i]}: invalid after {datum} -> wgs84: {r}" for i, r in zip(broken, reasons)]
        )
    return out


def _implicit_roots(codes, parents, units) -> tuple[Unit, ...]:
    """Units for parent codes named by no feature or unit, in order of first mention."""
    known = set(codes) | {u.code for u in units}
    mentioned = [p for p in list(parents) + [u.parent for u in units] if p and p not in known]
    return tuple(Unit(code, code, None) for code in dict.fromkeys(mentioned))
