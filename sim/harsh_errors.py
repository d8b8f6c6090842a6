"""What phones really report: the harsh error behaviours of issue 13, each a small seeded model.

`sim.movement.fix_errors` draws an honest Gaussian error from each fix's stated accuracy.
Real feeds are worse, and an alarm rule tuned on the honest model fails on them:

- heavy tails: a share of fixes lies 1-3x their stated accuracy away (`heavy_tail`);
- Wi-Fi jumps: a share of Wi-Fi fixes is placed kilometres off (a moved or mis-mapped
  access point) with its usual small stated accuracy (`wifi_jumps`);
- cell ping-pong: a phone near a border is served by towers on either side of it, so its
  cell fixes alternate between two places, one across the border (`ping_pong`);
- indoors, phones report cell fixes only, for hours (`indoor_stretches`).

All parameters live in `HarshErrors`; `HARSH` holds the defaults the benchmark uses.
Positions are in metres (the caller converts, e.g. with `sim.ground`).
"""

from dataclasses import dataclass

import numpy as np

from ingest.protocol import SOURCES

WIFI, CELL = SOURCES.index("wifi"), SOURCES.index("cell")


@dataclass(frozen=True)
class HarshErrors:
    """The parameters of every harsh error behaviour, in one place."""

    tail_share: float = 0.05                 # of all fixes: 1-3x their accuracy away
    tail_factor: tuple[float, float] = (1.0, 3.0)
    wifi_jump_share: float = 0.02            # of Wi-Fi fixes: kilometres off
    wifi_jump_m: tuple[float, float] = (2_000.0, 15_000.0)
    ping_pong_within_m: float = 1_500.0      # residents this near a border ping-pong ...
    ping_pong_share: float = 0.25            # ... this share of their cell fixes across it
    across_tower_m: tuple[float, float] = (500.0, 2_500.0)   # the far tower: this far beyond
    tower_scatter_m: float = 300.0           # a cell fix's scatter around its tower
    indoor_share: float = 0.3                # of subjects a day: one cell-only stretch
    indoor_hours: tuple[float, float] = (2.0, 8.0)


HARSH = HarshErrors()


def heavy_tail(acc_m: np.ndarray, rng, errors: HarshErrors = HARSH):
    """(east, north) error in metres: Gaussian (sigma acc/2 per axis), except a
    `tail_share` of fixes placed tail_factor x acc away in a random direction; and the mask
    of those tail fixes."""
    n = len(acc_m)
    east, north = rng.normal(0, acc_m / 2), rng.normal(0, acc_m / 2)
    tail = rng.random(n) < errors.tail_share
    r = acc_m[tail] * rng.uniform(*errors.tail_factor, tail.sum())
    bearing = rng.uniform(0, 2 * np.pi, tail.sum())
    east[tail], north[tail] = r * np.cos(bearing), r * np.sin(bearing)
    return east, north, tail


def wifi_jumps(src: np.ndarray, rng, errors: HarshErrors = HARSH):
    """(east, north) offsets in metres to add: `wifi_jump_share` of Wi-Fi fixes jump
    wifi_jump_m away (their stated accuracy stays small); and the mask of jumps."""
    n = len(src)
    jump = (src == WIFI) & (rng.random(n) < errors.wifi_jump_share)
    east, north = np.zeros(n), np.zeros(n)
    r = rng.uniform(*errors.wifi_jump_m, jump.sum())
    bearing = rng.uniform(0, 2 * np.pi, jump.sum())
    east[jump], north[jump] = r * np.cos(bearing), r * np.sin(bearing)
    return east, north, jump


def across_tower(home_x, home_y, border_x, border_y, rng, errors: HarshErrors = HARSH):
    """Where the tower across the border stands, for a home and its nearest border point:
    straight on from home through the border, across_tower_m beyond it."""
    dx, dy = border_x - home_x, border_y - home_y
    norm = np.maximum(np.hypot(dx, dy), 1.0)
    beyond = rng.uniform(*errors.across_tower_m, np.shape(home_x))
    return border_x + dx / norm * beyond, border_y + dy / norm * beyond


def ping_pong(x, y, src, pingers: np.ndarray, tower_x, tower_y, rng,
              errors: HarshErrors = HARSH):
    """Reported positions (metres) of fixes whose subject is in `pingers` (bool per fix:
    living within ping_pong_within_m of a border, and near home): `ping_pong_share` of their cell fixes come from the tower
    across the border (its position plus tower_scatter_m), the rest stay as given. Returns
    (x, y, mask of the fixes served across)."""
    across = pingers & (src == CELL) & (rng.random(len(src)) < errors.ping_pong_share)
    k = across.sum()
    x, y = x.copy(), y.copy()
    x[across] = tower_x[across] + rng.normal(0, errors.tower_scatter_m, k)
    y[across] = tower_y[across] + rng.normal(0, errors.tower_scatter_m, k)
    return x, y, across


def indoor_stretches(subject: np.ndarray, t_ms: np.ndarray, n_subjects: int, start_ms: int,
                     day_ms: int, rng, errors: HarshErrors = HARSH) -> np.ndarray:
    """Mask of fixes sent from indoors: for `indoor_share` of subjects, one stretch of
    indoor_hours in the day during which every fix is a cell fix."""
    indoors = rng.random(n_subjects) < errors.indoor_share
    length = rng.uniform(*errors.indoor_hours, n_subjects) * 3_600_000
    begin = start_ms + rng.uniform(0, 1, n_subjects) * (day_ms - length)
    t = t_ms - begin[subject]
    return indoors[subject] & (t >= 0) & (t < length[subject])
