"""Does a `warm_up()` really prepare a fresh process for its first batch? (tests only)

Warm-ups exist so that the first real batch of a new process neither compiles nor waits.
So in a fresh interpreter, after `warm_up()`: every kernel it names has a compiled
signature, loaded from Numba's on-disk cache rather than compiled (once the cache is
filled: the first of two runs may fill it), and a call shaped like production's adds no
signature (so it compiles nothing either).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json
{warm}
kernels = [{kernels}]
warmed = [len(k.signatures) for k in kernels]
hits = [sum(k.stats.cache_hits.values()) for k in kernels]
misses = [sum(k.stats.cache_misses.values()) for k in kernels]
{call}
print(json.dumps({{"warmed": warmed, "hits": hits, "misses": misses,
                  "after": [len(k.signatures) for k in kernels]}}))
"""


def _fresh_process(warm: str, kernels: str, call: str) -> dict:
    script = _SCRIPT.format(warm=warm, kernels=kernels, call=call)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def assert_warm_up_prepares(warm: str, kernels: str, call: str) -> None:
    """`warm`: statements that import and warm up; `kernels`: the dispatchers it must
    prepare, comma-separated expressions; `call`: statements calling them as production does."""
    _fresh_process(warm, kernels, call)  # fills the cache if this checkout never did
    report = _fresh_process(warm, kernels, call)
    n = len(report["warmed"])
    assert all(k >= 1 for k in report["warmed"]), report
    assert report["misses"] == [0] * n and all(k >= 1 for k in report["hits"]), report
    assert report["after"] == report["warmed"], report
