"""The map's GeoJSON: townships, counties dissolved from them, and injunction zones.

Built once per process from the layers the engine runs on (`engine.layers`), then
cached as one JSON text per feature:

- every jurisdiction feature, level "township";
- one feature per parent unit of those features (the counties above a township layer,
  found through `parent`, never through code digits), level "county": the shapely union
  of its features;
- the zones, level "zone", if a zone layer is configured.

Geometries are simplified (SIMPLIFY_DEG, topology preserved) and coordinates rounded to
COORD_DIGITS decimals (about 1 m): the built-in Zaozhuang layer goes from ~111,000
vertices to a few thousand. Zones can name places tied to victims, so a user is sent
only the zones named by the exclusions of the people they can see (`zone_codes`).
"""

import json
from dataclasses import dataclass

import numpy as np
import shapely

from geofence import Layer

SIMPLIFY_DEG = 0.0005
COORD_DIGITS = 5


@dataclass(frozen=True)
class MapLayer:
    base: tuple[str, ...]                  # township and county features, as JSON texts
    zones: dict[str, str]                  # zone code -> feature JSON text
    zone_layer: Layer | None

    def zone_features_for(self, exclusions: set[str]) -> list[str]:
        """Zone features named by `exclusions` (a zone code covers the zones below it)."""
        if self.zone_layer is None or not exclusions:
            return []
        codes = set()
        for code in exclusions:
            if self.zone_layer.hierarchy.is_known(code):
                codes.update(str(self.zone_layer.codes[i])
                             for i in self.zone_layer.features_under(code))
        return [self.zones[c] for c in sorted(codes) if c in self.zones]

    def geojson(self, zone_features: list[str]) -> str:
        return ('{"type":"FeatureCollection","features":['
                + ",".join([*self.base, *zone_features]) + "]}")


def build_map_layer(jurisdictions: Layer, zones: Layer | None) -> MapLayer:
    features = []
    geoms = np.asarray(jurisdictions.geometries)
    for i, code in enumerate(jurisdictions.codes.tolist()):
        features.append(_feature(geoms[i], code=code, name=str(jurisdictions.names[i]),
                                 parent=jurisdictions.parents[i], level="township"))
    hierarchy = jurisdictions.hierarchy
    counties = dict.fromkeys(p for p in jurisdictions.parents if p)
    for county in counties:
        members = jurisdictions.features_under(county)
        union = shapely.union_all(shapely.make_valid(geoms[members]))
        parents = hierarchy.ancestors(county)
        features.append(_feature(union, code=county, name=hierarchy.name_of(county),
                                 parent=parents[0] if parents else None, level="county"))
    zone_texts = {}
    if zones is not None:
        zone_geoms = np.asarray(zones.geometries)
        for i, code in enumerate(zones.codes.tolist()):
            zone_texts[code] = _feature(zone_geoms[i], code=code, name=str(zones.names[i]),
                                        parent=zones.parents[i], level="zone")
    return MapLayer(tuple(features), zone_texts, zones)


def _feature(geometry, **properties) -> str:
    simple = shapely.simplify(geometry, SIMPLIFY_DEG, preserve_topology=True)
    rounded = shapely.transform(simple, lambda xy: np.round(xy, COORD_DIGITS))
    return json.dumps({"type": "Feature", "properties": properties,
                       "geometry": json.loads(shapely.to_geojson(rounded))},
                      ensure_ascii=False, separators=(",", ":"))
