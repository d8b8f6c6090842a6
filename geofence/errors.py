"""Errors of the compiled core: one root, narrow subclasses that also inherit the builtin."""


class GeofenceError(Exception):
    """Root of every error this project raises on purpose; catch it to handle them all."""


class LayerError(GeofenceError, ValueError):
    """A layer file or mapping is invalid; the message names every bad feature. Fix the data."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
        super().__init__(text)


class UnknownCodeError(GeofenceError, KeyError):
    """A jurisdiction or zone code is not in the layer; check the registry against the layer."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InputArrayError(GeofenceError, ValueError):
    """Arrays given to a batch call have the wrong dtype, shape or values; convert them first."""


class LayerWarning(UserWarning):
    """A layer loaded, but has overlaps or gaps; run `geofence layer check` for details."""
