"""Rules: fixes per second of `RuleState.apply` on one core, and rule state per subject.

A `RuleState` of 1,000,000 registered subjects (quick: 100,000) with the default
thresholds (`engine.config.Rules()`). Seeded batches of 100,000 fixes: subjects drawn
at random (so each batch touches a random tenth of the state, in random order), times
increasing from batch to batch and random within one, verdicts ~90 % in, 6 % unsure,
4 % out, no exclusion zones (excl verdict OUT, zone -1); 5 % of subjects are key
subjects. Warm kernel (`alerts.rules.warm_up` first, not timed).

Timed, per batch, on fresh state each pass so that no fix is late:
- ``apply``: the whole call, argument checks and the (subject, t) sort included;
- kernel alone: the same batches on a second state, `sort_batch` and the gathers done
  before the clock starts, then `_rules_kernel.apply_batch` alone (the compiled kernel);
- sort alone: `sort_batch` on the batch.
Figures are total fixes / total time over all batches of the best of `REPEAT` passes.
State per subject: `alerts.rules.BYTES_PER_SUBJECT` and the bytes actually held.
"""

import time

import numpy as np

from alerts import _rules_kernel as rk
from alerts.rules import (BYTES_PER_SUBJECT, EVENT_TYPES, RuleState, event_columns, sort_batch,
                          warm_up)
from benchmarks.common import Report
from geofence.verdict import IN, OUT, UNSURE
from engine.config import Rules

SEED = 20240611
REPEAT = 3
BATCH = 100_000
KEY_SHARE = 0.05
VERDICT_SHARE = {IN: 0.90, UNSURE: 0.06, OUT: 0.04}
FULL = {"subjects": 1_000_000, "batches": 20}
QUICK = {"subjects": 100_000, "batches": 10}


def run(quick: bool) -> Report:
    sizes = QUICK if quick else FULL
    n, n_batches = sizes["subjects"], sizes["batches"]
    rep = Report("rules", {"seed": SEED, "repeat": REPEAT, "batch": BATCH, **sizes,
                           "verdict_share": "in 0.90, unsure 0.06, out 0.04",
                           "key_share": KEY_SHARE, "rules": "engine.config.Rules() defaults"})
    warm_up()
    rng = np.random.default_rng(SEED)
    key = (rng.random(n) < KEY_SHARE).astype(np.int8)   # rule class: normal level, key or not
    batches = [batch(rng, n, k) for k in range(n_batches)]
    total = n_batches * BATCH

    best = {"apply": np.inf, "kernel": np.inf, "sort": np.inf}
    events = None
    for _ in range(REPEAT):
        t_apply, events = time_apply(n, batches, key)
        t_kernel, t_sort = time_kernel(n, batches, key)
        best = {"apply": min(best["apply"], t_apply), "kernel": min(best["kernel"], t_kernel),
                "sort": min(best["sort"], t_sort)}
    group = f"{n:,} subjects, 1 core"
    rep.add(group, "RuleState.apply (sort included)", total / best["apply"] / 1e6, "M fixes/s",
            at_least=5)
    rep.add(group, "  kernel alone (apply_fixes)", total / best["kernel"] / 1e6, "M fixes/s")
    rep.add(group, "  sort_batch alone", total / best["sort"] / 1e6, "M fixes/s")
    rep.add(group, "  apply per batch of 100,000", best["apply"] / n_batches * 1e3, "ms")

    state = RuleState(n, Rules())
    held = sum(a.nbytes for a in state._arrays.values())
    rep.add("state", "BYTES_PER_SUBJECT", BYTES_PER_SUBJECT, "bytes", at_most=256)
    rep.add("state", "held / subjects", held / n, "bytes", at_most=256)
    rep.add("state", "snapshot size", len(state.snapshot()) / 2**20, "MiB")

    counts = np.bincount(events, minlength=len(EVENT_TYPES))
    for code in np.flatnonzero(counts):
        rep.add("events (last pass)", EVENT_TYPES[code], int(counts[code]), "events")
    rep.notes.append("verdicts are drawn per fix independently, so out runs (and exits) are "
                     "more frequent than in a real feed; the kernel cost barely depends on it")
    return rep


def batch(rng, n: int, k: int):
    """Batch k: random subjects, t in [k, k + 1) minutes, the verdict mix, no zones."""
    s = rng.integers(0, n, BATCH).astype(np.int32)
    t = (k * 60_000 + rng.integers(0, 60_000, BATCH)).astype(np.int64)
    v = rng.choice(list(VERDICT_SHARE), BATCH, p=list(VERDICT_SHARE.values())).astype(np.int8)
    return s, t, v, np.full(BATCH, OUT, np.int8), np.full(BATCH, -1, np.int32)


def time_apply(n: int, batches, key):
    """(seconds of `apply` over all batches on fresh state, event type codes of the pass)."""
    state = RuleState(n, Rules())
    seconds, types = 0.0, []
    for s, t, v, xv, xz in batches:
        start = time.perf_counter()
        ev = state.apply(s, t, v, xv, xz, key)
        seconds += time.perf_counter() - start
        types.append(ev.type)
    return seconds, np.concatenate(types)


def time_kernel(n: int, batches, key):
    """(seconds of the kernel alone, seconds of `sort_batch` alone) over all batches."""
    state = RuleState(n, Rules())
    arrays, limits = state.kernel_state(), state.limits
    kernel_s = sort_s = 0.0
    for s, t, v, xv, xz in batches:
        start = time.perf_counter()
        order = sort_batch(s, t)
        sort_s += time.perf_counter() - start
        sorted_batch = rk.SortedBatch(s[order], t[order], order, v[order], xv[order], xz[order])
        late = np.empty(BATCH, np.uint8)
        progress = np.zeros(rk.N_PROGRESS, np.int64)
        out = event_columns(BATCH + 16)
        start = time.perf_counter()
        done = rk.apply_batch(arrays, sorted_batch, key, limits, out, late, progress)
        kernel_s += time.perf_counter() - start
        assert done >= 0, "event outputs too small for the kernel-alone timing"
    return kernel_s, sort_s
