"""The built-in jurisdiction layer: Zaozhuang's 66 townships (real names and codes,
generated shapes), for an engine whose `[layers] jurisdictions` is empty and for the demo.

It ships as a gzip GeoJSON file written by a seeded generator (`sim.zaozhuang`; real
boundaries cannot ship with the code). The engine only loads it; `tests/test_synthetic.py`
checks that the file is exactly what the generator makes, and `python -m sim.zaozhuang`
regenerates it.
"""

import gzip
import json
from pathlib import Path

BUILTIN_LAYER_PATH = Path(__file__).parent / "data" / "zaozhuang.geojson.gz"


def zaozhuang_geojson() -> dict:
    """The built-in layer as a FeatureCollection with `units` (city, counties); a fresh dict
    each call."""
    return json.loads(gzip.decompress(BUILTIN_LAYER_PATH.read_bytes()))
