"""Which device to poll next: each served device every `every_s(level, key)` seconds.

Built from the registry (read-only) and rebuilt from its change log when it changes: a
subject's devices are served while the subject is supervised (not ended) and, with
`prefixes`, when the number starts with one of them. A device first seen is placed at a
stable offset inside its interval (from a hash of the number), so a fresh start or a big
import spreads its polls instead of asking for everyone at once. Answering a desk's locate
request also counts as the device's poll (a fresh fix is what the schedule wanted).
"""

import heapq
import zlib


class PollSchedule:
    """Due times of the served devices (a heap; a device's stale entries are skipped)."""

    def __init__(self, every_s, prefixes: tuple = ()):
        self._every_s = every_s        # (level, key) -> seconds
        self._prefixes = tuple(prefixes)
        self._served: dict[str, int] = {}       # device -> every_s
        self._due: dict[str, float] = {}        # device -> due time (s)
        self._heap: list[tuple[float, str]] = []
        self.version = -1

    def __len__(self) -> int:
        return len(self._served)

    def serves(self, device: str) -> bool:
        return not self._prefixes or device.startswith(self._prefixes)

    def update(self, registry, now_s: float) -> None:
        """Take the registry's subjects as they are now (`alerts.registry.Registry`)."""
        now_ms = int(now_s * 1000)
        served = {}
        for subject in registry.subjects.values():
            if not subject.supervised_at(now_ms):
                continue
            every = self._every_s(subject.level, subject.risk == "key")
            for device in subject.devices:
                if self.serves(device):
                    served[device] = min(every, served.get(device, every))
        for device in list(self._due):
            if device not in served:
                del self._due[device]
        for device, every in served.items():
            before = self._served.get(device)
            if before is None:
                self._set(device, now_s + _offset(device) * every)
            elif every < before and device in self._due:   # stricter: the next poll no later than `every`
                self._set(device, min(self._due[device], now_s + every))
        self._served = served
        self.version = registry.version

    def due(self, now_s: float, limit: int) -> list[str]:
        """Up to `limit` devices due by `now_s`, most overdue first; each is taken off
        the schedule until `polled` (or `skip`) puts it back."""
        taken = []
        while self._heap and len(taken) < limit and self._heap[0][0] <= now_s:
            at, device = heapq.heappop(self._heap)
            if self._due.get(device) == at:
                del self._due[device]
                taken.append(device)
        return taken

    def polled(self, device: str, now_s: float) -> None:
        """`device` was asked for now (whatever the answer): next time in one interval."""
        every = self._served.get(device)
        if every is not None:
            self._set(device, now_s + every)

    def retry_at(self, device: str, at_s: float) -> None:
        """Ask for `device` again at `at_s` (after a back-off, or when the budget renews)."""
        if device in self._served:
            self._set(device, at_s)

    def _set(self, device: str, at: float) -> None:
        self._due[device] = at
        heapq.heappush(self._heap, (at, device))
        if len(self._heap) > 4 * len(self._due) + 64:   # stale entries: compact
            self._heap = [(t, d) for d, t in self._due.items()]
            heapq.heapify(self._heap)


def _offset(device: str) -> float:
    """A stable fraction in [0, 1) for a device: where in its interval it is first polled."""
    return zlib.crc32(device.encode()) / 2**32
