"""Start-up failures of `serve`'s children: reported by the child, counted by the supervisor.

A child that cannot start (its port taken, a file it needs damaged) used to be restarted
forever while `serve` never became ready. Now the child sends one line saying why over the
supervisor's `ready` queue, and the supervisor stops the whole tree, exiting non-zero with
that line, once a child has failed the same way `START_UP_TRIES` times in a row before it
said ready. A child that crashes after it was ready is restarted with back-off, as ever:
what it had acknowledged is in the store.
"""

import logging
import sys

import zmq

from geofence.errors import GeofenceError

# Not bugs: bad input, the system refusing (a port taken, a disk full); logged without a
# traceback.
EXPECTED_FAILURES = (GeofenceError, OSError, zmq.ZMQError)

START_UP_TRIES = 3
FAILED = "start-up failed"     # first field of a child's failure message: (FAILED, name, reason)

log = logging.getLogger("geofence.serve")


class ReadyReporter:
    """A child's end of the supervisor's `ready` queue: `put` as on the queue (the child's
    ready message), and it remembers whether the child said ready."""

    def __init__(self, queue):
        self.queue = queue
        self.said_ready = False

    def put(self, message: tuple) -> None:
        self.said_ready = True
        self.queue.put(message)

    def failed(self, name: str, reason: str) -> None:
        self.queue.put((FAILED, name, reason))


def run_child(name: str, ready: ReadyReporter, main, *args) -> None:
    """Process target: `main(*args)` (`ready` among them). An exception before the child
    said ready goes to the supervisor as one line and the child exits 1; a traceback is
    logged only for what is not an expected failure (a bug)."""
    try:
        main(*args)
    except Exception as e:
        if ready.said_ready:
            raise
        reason = one_line(e)
        ready.failed(name, reason)
        if isinstance(e, EXPECTED_FAILURES):
            log.error("%s could not start: %s", name, reason)
        else:
            log.exception("%s could not start: %s", name, reason)
        sys.exit(1)


class StartUpWatch:
    """The supervisor's count of each child's consecutive identical start-up failures."""

    def __init__(self):
        self._ready: set[str] = set()
        self._reported: dict[str, str] = {}
        self._last: dict[str, tuple[str, int]] = {}    # name -> (reason, times in a row)

    def started(self, name: str) -> None:
        """A new process for `name`: not ready until it says so."""
        self._ready.discard(name)
        self._reported.pop(name, None)

    def message(self, message: tuple) -> bool:
        """Take a message from the `ready` queue; False if it was a failure report (not
        a ready message)."""
        if message[0] == FAILED:
            _, name, reason = message
            self._reported[name] = reason
            return False
        self._ready.add(message[0])
        self._last.pop(message[0], None)
        return True

    def exited(self, name: str, exitcode: int | None) -> str | None:
        """`name`'s process ended: the reason to stop the tree if it has now failed the same
        way `START_UP_TRIES` times in a row before it was ready, else None (restart it)."""
        if name in self._ready:
            return None
        reason = self._reported.pop(name, None) or \
            f"exited with code {exitcode} before it was ready"
        previous, times = self._last.get(name, (None, 0))
        times = times + 1 if reason == previous else 1
        self._last[name] = (reason, times)
        if times < START_UP_TRIES:
            return None
        return f"{name} could not start: {reason} ({times} times in a row)"


def one_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
