"""The Numba presets every kernel uses: one place for compiler flags.

- ``kernel``: hot batch loops that write into arrays the caller gives and allocate
  nothing. Compiled without Numba's reference counting (``_nrt=False``): with it, every
  array handed to an inlined per-item body is increfed and decrefed once per item,
  which measured 8x slower on `locate` (8 M against 66 M points/s). Allocating inside
  such a kernel is a compile error, which is the rule anyway.
- ``serial``: builders that allocate their results (index construction).
- ``parallel``: the multi-core variants of kernels (``prange``).
- ``body``: the small per-item functions, inlined into the loops that call them.

Everything is cached on disk (``cache=True``) so a new process loads kernels instead
of compiling; `geofence.warm_up()` touches each once before traffic. A Python function
is wrapped by one preset only: with ``cache=True`` a parallel and a serial build of
the same function can load each other's cache entry.
"""

import numba

kernel = numba.njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
serial = numba.njit(cache=True, nogil=True, error_model="numpy")
parallel = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
body = numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
