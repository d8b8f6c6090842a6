"""The layers an engine runs on: from the config's files, or the built-in Zaozhuang layer."""

import warnings

from geofence import Layer, LayerWarning
from geofence.builtin import zaozhuang_geojson
from engine.config import Settings


def load_layers(settings: Settings) -> tuple[Layer, Layer | None]:
    """(jurisdictions, zones or None). Overlap/gap warnings are logged once by the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerWarning)
        if settings.layers.jurisdictions:
            jurisdictions = Layer.from_geojson(settings.layers.jurisdictions)
        else:
            jurisdictions = Layer.from_geojson(zaozhuang_geojson())
        zones = Layer.from_geojson(settings.layers.zones) if settings.layers.zones else None
    return jurisdictions, zones


def code_checkers(jurisdictions: Layer, zones: Layer | None):
    """(is_place, is_zone) for validating registry references."""
    def is_zone(code: str) -> bool:
        return zones is not None and zones.hierarchy.is_known(code)
    return jurisdictions.hierarchy.is_known, is_zone
