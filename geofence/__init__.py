"""geofence: the compiled core of geofence-engine.

Layers of jurisdictions and zones (`Layer`), batch point location (`Layer.locate`),
accuracy-aware verdicts against allowed areas and exclusion zones (`VerdictEngine`), and
datum conversions (`geofence.datum`). Arrays in, arrays out; no Python per fix.
This package imports nothing else of the project.
"""

from geofence.errors import (GeofenceError, InputArrayError, LayerError, LayerWarning,
                             UnknownCodeError)
from geofence.layer import Layer
from geofence.verdict import (EXIT_MARGIN_M, IN, OUT, UNSURE, VERDICT_NAMES,
                              ExclusionVerdicts, VerdictEngine, Verdicts)

__all__ = [
    "EXIT_MARGIN_M", "IN", "OUT", "UNSURE", "VERDICT_NAMES", "ExclusionVerdicts",
    "GeofenceError", "InputArrayError", "Layer", "LayerError", "LayerWarning",
    "UnknownCodeError", "VerdictEngine", "Verdicts", "warm_up",
]


def warm_up() -> None:
    """Compile or load from cache every kernel once, on tiny inputs, before traffic."""
    import numpy as np
    import shapely

    from geofence import datum

    datum.warm_up()
    squares = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": str(i), "name": str(i)},
         "geometry": shapely.geometry.mapping(shapely.box(i, 0, i + 1, 1))} for i in range(2)]}
    layer = Layer.from_geojson(squares, warn=False)
    xs = np.array([0.5, 1.5, 3.0])
    ys = np.array([0.5, 0.5, 0.5])
    layer.locate(xs, ys)
    layer.locate(xs, ys, parallel=True)
    layer.contains("0", xs, ys)
    engine = VerdictEngine(layer, layer)
    area = engine.area_id(["0"])
    engine.verdicts(xs, ys, np.ones(3), np.full(3, area))
    engine.exclusion_verdicts(xs, ys, np.ones(3), np.full(3, engine.exclusion_set_id(["1"])))
