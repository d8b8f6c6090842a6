"""What every benchmark stage shares: timing, child processes, machine info, the report.

- `best_of`: best-of-N wall time (`time.perf_counter`) of a call, and its result.
- `run_child`: run code in a fresh interpreter (cold start, peak RSS via
  `resource.getrusage`, a different Numba cache) and get back the dict it fills.
- `Report`: figures with units and targets, printed as an aligned table and written
  as JSON with the parameters and the machine they were measured on.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
GIB = 1 << 30
WARM_UP = [sys.executable, "-c", "import geofence; geofence.warm_up()"]


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def best_of(fn, repeat: int):
    """(best wall time in seconds over `repeat` calls of fn(), the last call's result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def uniform_points(bounds, n: int, seed: int):
    """n seeded uniform points (lon, lat float64 arrays) over (x0, y0, x1, y1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = bounds
    return rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter; it fills the dict `out`, which is returned
    with `peak_rss_bytes` (of the child) and `wall_s` (of the whole process) added."""
    script = ("import json, time\nfrom benchmarks.common import peak_rss_bytes\nout = {}\n"
              f"{code}\nout['peak_rss_bytes'] = peak_rss_bytes()\nprint(json.dumps(out))\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    wall_s = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr}")
    return {**json.loads(proc.stdout.splitlines()[-1]), "wall_s": wall_s}


def fill_kernel_cache() -> None:
    """Compile (or load) every kernel once in a child, so later children find them cached."""
    subprocess.run(WARM_UP, cwd=ROOT, check=True)


def machine_info() -> dict:
    with open("/proc/cpuinfo") as lines:
        cpu = next((line.split(":", 1)[1].strip() for line in lines
                    if line.startswith("model name")), platform.processor())
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu, "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(), "platform": platform.platform(),
        **{pkg: version(pkg) for pkg in ("numpy", "numba", "shapely", "rtree")},
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR", "(next to the sources)"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass
class Figure:
    group: str
    name: str
    value: float
    unit: str
    target: str = ""
    status: str = ""  # PASS, MISS or "" (no target)
    fmt: str = ""  # format spec for the table; default: about 3 significant digits

    def shown(self) -> str:
        return format(self.value, self.fmt) if self.fmt else _fmt(self.value)


@dataclass
class Report:
    stage: str
    params: dict
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict = field(default_factory=machine_info)  # taken at the start of the stage

    def add(self, group: str, name: str, value: float, unit: str, *,
            at_least: float | None = None, at_most: float | None = None,
            fmt: str = "") -> float:
        """Record a figure, with PASS/MISS against a target if one is given."""
        target, status = "", ""
        if at_least is not None:
            target, status = f">= {at_least:g}", "PASS" if value >= at_least else "MISS"
        elif at_most is not None:
            target, status = f"<= {at_most:g}", "PASS" if value <= at_most else "MISS"
        figure = Figure(group, name, value, unit, target, status, fmt)
        self.figures.append(figure)
        log(f"{self.stage}: {group}: {name} = {figure.shown()} {unit} {status}".rstrip())
        return value

    def table(self) -> str:
        rows = [("", "figure", "value", "unit", "target", "")]
        rows += [(f.group, f.name, f.shown(), f.unit, f.target, f.status)
                 for f in self.figures]
        w = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [f"== {self.stage} =="] + [f"{key}: {_params(value)}"
                                            for key, value in self.params.items()]
        for k, r in enumerate(rows):
            group = r[0] if k < 2 or r[0] != rows[k - 1][0] else ""
            lines.append(f"{group:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:<{w[3]}}  "
                         f"{r[4]:<{w[4]}}  {r[5]}".rstrip())
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def write_json(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.stage}.json"
        doc = {"stage": self.stage, "machine": self.machine, "params": self.params,
               "figures": [asdict(f) for f in self.figures], "notes": self.notes}
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return path


def _params(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}"
                         for k, v in value.items())
    return str(value)


def _fmt(value) -> str:
    if isinstance(value, (int, bool)) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    v = abs(value)
    return (f"{value:,.0f}" if v >= 1000 else f"{value:.1f}" if v >= 100
            else f"{value:.2f}" if v >= 1 else f"{value:.3g}")


def cold_and_warm(script: str) -> list[tuple[str, dict]]:
    """Run `script` in fresh interpreters with an empty and with the warm kernel cache:
    compile time, reported apart from the figures it would otherwise inflate."""
    import tempfile

    with tempfile.TemporaryDirectory() as empty:
        cold = run_child(script, {"NUMBA_CACHE_DIR": empty})
    fill_kernel_cache()
    return [("empty cache", cold), ("warm cache", run_child(script))]
