"""A registry of simulated supervised people on the built-in Zaozhuang layer.

Each subject has a home county (in proportion to its townships), a home point inside it,
the township office holding that point, a category and a risk in about the real mix, and
one phone. The same seed gives the same people and phones, so a registry imported into
the engine (`registry_document`) knows every device a simulated carrier sends
(`builtin_population`, used by `geofence simulate` and the benchmarks).
"""

from dataclasses import dataclass

import numpy as np

from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from sim.zaozhuang import ZAOZHUANG_COUNTIES

COUNTIES = list(ZAOZHUANG_COUNTIES)
CATEGORY_SHARE = {"probation": 1906, "parole": 70, "medical_parole": 38, "control": 18}
KEY_SHARE = 0.05  # key persons (重点人员)
FIRST_PHONE = 13_900_000_000  # subject i's phone number is FIRST_PHONE + i


@dataclass(frozen=True)
class Population:
    """Subjects: id, phone, home county and township, home point, risk and category."""

    county: np.ndarray    # str code per subject
    home_lon: np.ndarray
    home_lat: np.ndarray
    township: np.ndarray  # str code of the township holding the home point
    risk: np.ndarray      # "normal" | "key"
    category: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [f"S{i:05d}" for i in range(len(self.county))]

    @property
    def phones(self) -> np.ndarray:
        """One int64 phone number per subject, the same for the same index on every run."""
        return FIRST_PHONE + np.arange(len(self.county), dtype=np.int64)

    @property
    def devices(self) -> list[str]:
        """The phone numbers as the registry's device ids."""
        return [str(p) for p in self.phones.tolist()]


def make_population(layer, counties: list[str], n: int, rng: np.random.Generator) -> Population:
    """`n` subjects spread over the counties in proportion to their townships."""
    weights = np.array([len(layer.features_under(c)) for c in counties], float)
    county_of = rng.choice(len(counties), size=n, p=weights / weights.sum())
    lon = np.empty(n)
    lat = np.empty(n)
    x0, y0, x1, y1 = layer.bounds
    todo = np.arange(n)
    while len(todo):  # rejection sampling: a home point inside the subject's county
        cx = rng.uniform(x0, x1, len(todo))
        cy = rng.uniform(y0, y1, len(todo))
        where = layer.locate(cx, cy)
        ok = np.zeros(len(todo), bool)
        for k, code in enumerate(counties):
            mine = county_of[todo] == k
            ok[mine] = np.isin(where[mine], layer.features_under(code))
        lon[todo[ok]], lat[todo[ok]] = cx[ok], cy[ok]
        todo = todo[~ok]
    township = layer.codes[layer.locate(lon, lat)]
    shares = np.array(list(CATEGORY_SHARE.values()), float)
    category = rng.choice(list(CATEGORY_SHARE), size=n, p=shares / shares.sum())
    risk = np.where(rng.random(n) < KEY_SHARE, "key", "normal")
    return Population(np.array(counties)[county_of], lon, lat, township, risk, category)


def builtin_population(subjects: int, seed: int) -> tuple[Layer, Population,
                                                          np.random.Generator]:
    """The built-in layer, the seeded population on it and the generator right after it:
    what an engine's registry is built from (same subjects and seed, same people and
    phones)."""
    layer = Layer.from_geojson(zaozhuang_geojson())
    rng = np.random.default_rng(seed)
    return layer, make_population(layer, COUNTIES, subjects, rng), rng


def registry_document(layer, people: Population) -> dict:
    """The registry (SPEC §3) for a population: one office per township, county and city,
    each subject supervised by the office of the township they live in, home = county."""
    offices = []
    for unit in layer.units:
        suffix = "司法局"
        offices.append({"code": unit.code, "name": unit.name + suffix, "parent": unit.parent})
    for code, name, parent in zip(layer.codes, layer.names, layer.parents):
        offices.append({"code": str(code), "name": name + "司法所", "parent": parent})
    subjects = [{"id": sid, "devices": [dev], "office": str(town), "home": [str(county)],
                 "risk": str(risk), "category": str(cat)}
                for sid, dev, town, county, risk, cat in zip(
                    people.ids, people.devices, people.township, people.county,
                    people.risk, people.category)]
    return {"offices": offices, "subjects": subjects, "permits": [], "delegations": []}
