"""The demo's zone layer: injunction zones (禁止令) inside Zaozhuang and the cities outside
it that permits (外出审批) name as destinations.

Eight small rectangles (schools, a bar street, internet cafés, a victim's neighbourhood)
placed at random inside their county, well apart; three large ones for the cities. The
zones are added to the `Ground` too, so that events can be planted in them.
"""

import numpy as np
import shapely

from sim.ground import Ground, to_degrees, to_metres

# county, kind, name, width and height in metres
INJUNCTION_ZONES = (
    ("370402", "school", "市中区青檀路小学", 440, 380),
    ("370402", "victim", "市中区文化路小区（被害人住所）", 600, 500),
    ("370403", "bar_street", "薛城区临城酒吧街", 640, 320),
    ("370404", "internet_cafe", "峄城区坛山路网吧", 380, 380),
    ("370405", "school", "台儿庄区运河中学", 460, 400),
    ("370406", "school", "山亭区城头小学", 420, 380),
    ("370481", "school", "滕州市善国中学", 500, 420),
    ("370481", "internet_cafe", "滕州市荆河路网吧", 380, 380),
)
# code, name, centre (lon, lat), width and height in metres: cities a permit may name
TRIP_ZONES = (
    ("WC-320300", "徐州市区（外出目的地）", (117.18, 34.26), 24_000, 20_000),
    ("WC-370800", "济宁市区（外出目的地）", (116.59, 35.41), 22_000, 18_000),
    ("WC-371300", "临沂市区（外出目的地）", (118.35, 35.05), 24_000, 20_000),
)


def _rectangle(cx: float, cy: float, width: float, height: float, angle: float):
    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * (width / 2, height / 2)
    return shapely.Polygon(np.column_stack([cx + corners[:, 0] * c - corners[:, 1] * s,
                                            cy + corners[:, 0] * s + corners[:, 1] * c]))


def _zone_feature(code: str, name: str, poly) -> dict:
    x, y = np.asarray(poly.exterior.coords).T
    lon, lat = to_degrees(x, y)
    ring = [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat)]
    if not shapely.Polygon(ring).exterior.is_ccw:
        ring = ring[::-1]
    return {"type": "Feature", "properties": {"code": code, "name": name},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def place_zones(ground: Ground, rng) -> tuple[dict, dict[str, str]]:
    """The zone layer (GeoJSON) and each injunction zone's county; adds the zones to `ground`."""
    features, county_of = [], {}
    for n, (county, _kind, name, w, h) in enumerate(INJUNCTION_ZONES, 1):
        code = f"JZ{n:02d}"
        placed = ground.area(county_of) if county_of else None
        cx, cy = ground.sample_inside(county, rng, 1_500.0, placed, 3_000.0)
        poly = _rectangle(cx, cy, w, h, rng.uniform(0, np.pi))
        ground.add(code, poly)
        county_of[code] = county
        features.append(_zone_feature(code, name, poly))
    for code, name, (lon, lat), w, h in TRIP_ZONES:
        cx, cy = to_metres(lon, lat)
        poly = _rectangle(float(cx), float(cy), w, h, 0.0)
        ground.add(code, poly)
        features.append(_zone_feature(code, name, poly))
    return {"type": "FeatureCollection", "features": features}, county_of
