"""The baseline for benchmarks/ingest.py: the duplicate filter ingest used before issue 10.

`RecentFixes` kept, per device index, the t of its last K accepted fixes (a ring), so a
resend older than the device's last K fixes was stored twice. Kept here, unchanged, only
to measure the exact filter (ingest/dedup.py) against it in the same run.
"""

import numpy as np

from geofence._jit import kernel
from ingest.protocol import DUPLICATE, OK


@kernel
def _mark_duplicates(device_idx, t_ms, reason, times, count, last, prev):
    """Mark DUPLICATE in place (see the module docstring); returns how many.

    last[d]: this batch's latest still-OK fix of device d (-1 on entry and on exit);
    prev[i]: the one before fix i."""
    k_max = times.shape[1]
    marked = 0
    for i in range(len(reason)):
        prev[i] = -1
        d = device_idx[i]
        if d >= 0 and reason[i] == OK:
            t = t_ms[i]
            dup = False
            for k in range(min(count[d], k_max)):
                dup = dup or times[d, k] == t
            j = last[d]
            steps = 0
            while not dup and j >= 0 and steps < k_max:
                dup = t_ms[j] == t
                j = prev[j]
                steps += 1
            if dup:
                reason[i] = DUPLICATE
                marked += 1
            else:
                prev[i] = last[d]
                last[d] = i
    for i in range(len(reason)):
        if device_idx[i] >= 0:
            last[device_idx[i]] = -1
    return marked


@kernel
def _remember(device_idx, t_ms, accepted, times, count):
    k_max = times.shape[1]
    for i in range(len(t_ms)):
        d = device_idx[i]
        if accepted[i] and d >= 0:
            times[d, count[d] % k_max] = t_ms[i]
            count[d] += 1


class RecentFixes:
    """The t of the last `window` accepted fixes of each device index.

    Not for concurrent use: one ingest thread marks and remembers (the kernels share a
    scratch array)."""

    def __init__(self, window: int = 16, devices: int = 1024):
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = int(window)
        self._times = np.zeros((0, self.window), np.int64)
        self._count = np.zeros(0, np.int64)   # fixes remembered per device (ring position)
        self._last = np.zeros(0, np.int64)    # scratch for _mark_duplicates, all -1
        self.reserve(devices)

    def reserve(self, devices: int) -> None:
        """Room for device indices 0..devices-1 (capacity at least doubles when it grows)."""
        old = len(self._count)
        if devices <= old:
            return
        cap = max(int(devices), 2 * old)
        times = np.zeros((cap, self.window), np.int64)
        times[:old] = self._times
        count = np.zeros(cap, np.int64)
        count[:old] = self._count
        self._times, self._count = times, count
        self._last = np.full(cap, -1, np.int64)

    def _checked(self, device_idx, t_ms, n_other):
        device_idx = np.ascontiguousarray(device_idx, np.int64)
        t_ms = np.ascontiguousarray(t_ms, np.int64)
        if len(device_idx) != len(t_ms) or len(t_ms) != n_other:
            raise ValueError("device_idx, t_ms and the third array must have equal lengths")
        if len(device_idx):
            self.reserve(int(device_idx.max()) + 1)
        return device_idx, t_ms

    def mark_duplicates(self, device_idx, t_ms, reason) -> int:
        """Set DUPLICATE (in place, on the int8 reason array) for fixes still OK whose
        (device, t) was remembered or appears earlier in the batch; returns how many.
        Device index -1 (unknown) is skipped."""
        if reason.dtype != np.int8 or not reason.flags.c_contiguous:
            raise ValueError("reason must be a contiguous int8 array")
        device_idx, t_ms = self._checked(device_idx, t_ms, len(reason))
        prev = np.empty(len(reason), np.int64)
        return _mark_duplicates(device_idx, t_ms, reason, self._times, self._count, self._last,
                                prev)

    def remember(self, device_idx, t_ms, accepted_mask) -> None:
        """Record the accepted fixes' t, in batch order, once the batch is stored."""
        accepted = np.ascontiguousarray(accepted_mask, np.bool_)
        device_idx, t_ms = self._checked(device_idx, t_ms, len(accepted))
        _remember(device_idx, t_ms, accepted, self._times, self._count)
