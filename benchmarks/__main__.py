"""python -m benchmarks [--quick] [--json DIR] [stage ...]

Runs the named stages (default: all of `benchmarks.STAGES`), prints one table per stage
and writes `DIR/<stage>.json` (default DIR: benchmarks/results, git-ignored).
"""

import argparse
import importlib
import sys
from pathlib import Path

from benchmarks import STAGES
from benchmarks.common import RESULTS_DIR, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small inputs and no national layer (the CI smoke check)")
    parser.add_argument("--json", metavar="DIR", type=Path, default=RESULTS_DIR,
                        help=f"where to write <stage>.json (default: {RESULTS_DIR})")
    parser.add_argument("stages", nargs="*", metavar="stage",
                        help=f"any of: {', '.join(STAGES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    for stage in args.stages or list(STAGES):
        log(f"{stage}: running{' (quick)' if args.quick else ''}")
        report = importlib.import_module(STAGES[stage]).run(quick=args.quick)
        print(report.table(), flush=True)
        path = report.write_json(args.json)
        print(f"written {path}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
