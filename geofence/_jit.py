"""The two Numba presets every kernel uses: one place for compiler flags.

Kernels are cached on disk (``cache=True``) so a new process loads them instead of
compiling; `geofence.warm_up()` touches each once before traffic. A Python function is
wrapped by one preset only: with ``cache=True`` a parallel and a serial build of the
same function can load each other's cache entry.
"""

import numba

serial = numba.njit(cache=True, nogil=True, error_model="numpy")
parallel = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
