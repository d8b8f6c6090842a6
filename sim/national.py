"""A seeded national-scale layer: 41,000 synthetic townships with 10.5 million vertices.

Real township boundaries cannot ship with the code, yet point location must be measured at
national scale (`benchmarks/locate.py`). A jittered quad lattice over lon 75-134, lat 18-53
with wiggly shared borders (`sim.lattice`); townships form 4 x 4 counties, counties at most
7 x 5 provinces, with 9-digit codes like the real ones.
"""

import math

import numpy as np

from sim.lattice import JITTER_FRACTION, SyntheticLayer, fractal_edges, warp

NATIONAL_EXTENT_DEG = (75.0, 18.0, 134.0, 53.0)
NATIONAL_COUNTY_CELLS = 4  # a county is a 4 x 4 block of townships (real mean: ~14)
NATIONAL_PROVINCE_GRID = (7, 5)  # at most 7 x 5 provinces
NATIONAL_COUNTRY = {"code": "100000", "name": "全国（合成）", "parent": None}


def national_layer(
    n_townships: int = 41000, vertices_per_border_side: int = 64, seed: int = 0
) -> SyntheticLayer:
    """A national-scale partition of lon 75-134, lat 18-53 into quad-like wiggly townships.

    Exactly `n_townships` features when n has a factor pair giving cells within 2:1 of square
    (41000 = 250 x 164), else the nearest nx * ny. Each feature is one ring of
    4 * vertices_per_border_side + 1 coordinates (a power of two per side): 10.5 million at the
    defaults. Townships form 4 x 4 counties, counties at most 7 x 5 provinces. Fully vectorized.
    """
    nx, ny = _grid_shape(n_townships, NATIONAL_EXTENT_DEG)
    x0, y0, x1, y1 = NATIONAL_EXTENT_DEG
    cell = np.array([(x1 - x0) / nx, (y1 - y0) / ny])
    rng = np.random.default_rng(seed)
    nodes = np.stack(np.meshgrid(np.linspace(x0, x1, nx + 1), np.linspace(y0, y1, ny + 1)), -1)
    nodes[1:-1, 1:-1] += rng.uniform(-JITTER_FRACTION, JITTER_FRACTION, (ny - 1, nx - 1, 2)) * cell
    s = vertices_per_border_side
    # h[r, c] runs node (r, c) -> (r, c+1); v[r, c] runs node (r, c) -> (r+1, c)
    h = fractal_edges(nodes[:, :-1].reshape(-1, 2), nodes[:, 1:].reshape(-1, 2), s, rng)
    v = fractal_edges(nodes[:-1].reshape(-1, 2), nodes[1:].reshape(-1, 2), s, rng)
    hv = warp(np.concatenate([h, v]), NATIONAL_EXTENT_DEG, (nx, ny), cell, rng)  # one warp
    h, v = hv[: len(h)].reshape(ny + 1, nx, s + 1, 2), hv[len(h) :].reshape(ny, nx + 1, s + 1, 2)
    r, c = np.divmod(np.arange(nx * ny), nx)
    south, east, north, west = h[r, c], v[r, c + 1], h[r + 1, c, ::-1], v[r, c, ::-1]
    ring = [south[:, :s], east[:, :s], north[:, :s], west[:, :s], south[:, :1]]
    coords = np.concatenate(ring, axis=1).reshape(-1, 2)  # counter-clockwise, closed
    one = np.arange(nx * ny + 1, dtype=np.int64)
    codes, parents, units = _national_codes(r, c, nx, ny)
    names = [f"合成镇{code}" for code in codes]
    offsets = (one * (4 * s + 1), one, one.copy())
    return SyntheticLayer(coords, offsets, codes, names, parents, units)


def _grid_shape(n: int, extent) -> tuple[int, int]:
    """(nx, ny) with nx * ny == n and near-square cells if possible, else nx * ny ~= n."""
    if n < 1:
        raise ValueError(f"n_townships must be positive, got {n}")
    width, height = extent[2] - extent[0], extent[3] - extent[1]
    aspect = {ny: width * ny / (height * (n // ny)) for ny in range(1, n + 1) if n % ny == 0}
    skew = {ny: max(q, 1.0 / q) for ny, q in aspect.items()}  # cell width/height or inverse
    ny = min(skew, key=skew.get)
    if skew[ny] > 2.0:
        ny = max(1, round(math.sqrt(n * height / width)))
    return max(1, round(n / ny)), ny


def _national_codes(r: np.ndarray, c: np.ndarray, nx: int, ny: int):
    """9-digit township codes: province (2 digits) + county in province (4) + township (3)."""
    k, (pcols, prows) = NATIONAL_COUNTY_CELLS, NATIONAL_PROVINCE_GRID
    pw, ph = -(-nx // (k * pcols)), -(-ny // (k * prows))  # counties per province, each way
    crow, ccol = r // k, c // k
    province = 11 + (crow // ph) * pcols + ccol // pw
    county = (crow % ph) * pw + ccol % pw + 1
    town = (r % k) * k + c % k + 1
    triples = zip(province.tolist(), county.tolist(), town.tolist())
    codes = [f"{p:02d}{q:04d}{t:03d}" for p, q, t in triples]  # like 370481101
    parents = [code[:6] for code in codes]
    counties = sorted(set(parents))
    units = [dict(NATIONAL_COUNTRY)]
    units += [{"code": p, "name": f"合成省{p}", "parent": NATIONAL_COUNTRY["code"]}
              for p in sorted({q[:2] for q in counties})]  # fmt: skip
    units += [{"code": q, "name": f"合成县{q}", "parent": q[:2]} for q in counties]
    return codes, parents, units
