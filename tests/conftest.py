"""Shared test configuration.

Hypothesis profiles: "dev" (the default: few examples, quick local runs) and "ci" (more
examples, derandomized so a CI failure reproduces). Pick one with the environment
variable HYPOTHESIS_PROFILE; when CI is set and HYPOTHESIS_PROFILE is not, "ci" is used.
Neither has a deadline: Numba compiles (or loads from its cache) on the first call, and a
timing limit would turn that into flaky failures.
"""

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
