"""The messages between the engine's processes, each with one encoder and one decoder.

Inside one engine the processes talk over ZeroMQ `ipc://` sockets in the data directory
(names in `engine.paths`); the durable hand-offs are the SQLite files, so every message
here is a hint that something is ready, or a report: losing one costs a moment, never a
fix or an alarm. The alarm PUB frames are the exception, and the outside contract
(SPEC §7).

    ingest ── PUB seq.sock ─────────▶ workers        NewFixes
        ┌──────────────────────────┐
        │ msgpack int: last seq    │   the newest stored batch (CONFLATE: only the
        └──────────────────────────┘   latest matters; workers read the store from
                                        their checkpoint)

    worker k ── PUSH done.sock ─────▶ ingest         WorkerReport
        ┌──────────────────────────────────────────────────────────────┐
        │ msgpack map {worker: k, seq, late, verdicts: [in, unsure,    │
        │              out], kernel_s, restarts}                       │
        └──────────────────────────────────────────────────────────────┘
        `seq`: evaluated through this batch (flow control, purging, metrics); the
        first report after a start carries only the checkpoint and `restarts`.

    worker k ── PUSH alarms.sock ───▶ dispatcher     AlarmsStored
        ┌───┐
        │ ∅ │   an empty frame: new alarms are committed in the worker's file
        └───┘   (the dispatcher polls too; a lost nudge costs 20 ms)

    dispatcher ── PUB [alerts] publish ─▶ subscribers   alarm frames (SPEC §7)
        ┌──────────────────────────────┬────────────────────────────────┐
        │ topic: "3704/370402/37.../"  │ msgpack alarm document         │
        └──────────────────────────────┴────────────────────────────────┘
        the topic is the receiving office's path from the root, "/"-joined and
        "/"-ended, so a prefix subscription takes a whole subtree.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from geofence.errors import GeofenceError

ALARMS_STORED = b""
_REPORT_KEYS = frozenset(("worker", "seq", "late", "verdicts", "kernel_s", "restarts"))


class MessageError(GeofenceError, ValueError):
    """A frame on an internal socket is not one of this module's messages (another
    program on the socket, or a version mismatch): it is dropped and logged."""


def encode_new_fixes(last_seq: int) -> bytes:
    return msgpack.packb(int(last_seq))


def decode_new_fixes(frame: bytes) -> int:
    try:
        seq = msgpack.unpackb(frame)
    except (ValueError, msgpack.UnpackException) as e:
        raise MessageError(f"new-fixes message is not msgpack: {e}") from None
    if type(seq) is not int:
        raise MessageError(f"new-fixes message holds {type(seq).__name__}, not an int")
    return seq


@dataclass(frozen=True)
class WorkerReport:
    """A worker's progress: evaluated through `seq`, and what it saw on the way."""

    worker: int
    seq: int
    late: int = 0
    verdicts: tuple[int, int, int] = (0, 0, 0)   # in, unsure, out
    kernel_s: float | None = None                 # None: no batch evaluated (a start)
    restarts: int = 0                             # times the supervisor restarted it

    def encode(self) -> bytes:
        return msgpack.packb({"worker": self.worker, "seq": self.seq, "late": self.late,
                              "verdicts": list(self.verdicts), "kernel_s": self.kernel_s,
                              "restarts": self.restarts})

    @classmethod
    def decode(cls, frame: bytes) -> "WorkerReport":
        try:
            m = msgpack.unpackb(frame)
        except (ValueError, msgpack.UnpackException) as e:
            raise MessageError(f"worker report is not msgpack: {e}") from None
        if not isinstance(m, dict) or set(m) != _REPORT_KEYS:
            raise MessageError(f"worker report is not a map of {', '.join(sorted(_REPORT_KEYS))}")
        try:
            verdicts = tuple(int(v) for v in m["verdicts"])
            report = cls(int(m["worker"]), int(m["seq"]), int(m["late"]), verdicts,
                         None if m["kernel_s"] is None else float(m["kernel_s"]),
                         int(m["restarts"]))
        except (TypeError, ValueError) as e:
            raise MessageError(f"worker report has a mistyped field: {e}") from None
        if len(verdicts) != 3:
            raise MessageError("worker report: verdicts must be [in, unsure, out]")
        return report


def topic(path: Iterable[str]) -> str:
    """The PUB topic of an office path: codes from the root, "/"-joined and "/"-ended."""
    return "".join(f"{code}/" for code in path)


def encode_alarm_frames(topic_text: str, document: dict) -> list[bytes]:
    """The two PUB frames of one alarm change for one office subtree."""
    return [topic_text.encode(), msgpack.packb(document)]


def decode_alarm_frames(frames: list[bytes]) -> tuple[str, dict]:
    """(topic, alarm document): what a subscriber does with the two frames."""
    if len(frames) != 2:
        raise MessageError(f"an alarm message has 2 frames, not {len(frames)}")
    try:
        document = msgpack.unpackb(frames[1], raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:
        raise MessageError(f"alarm frame is not msgpack: {e}") from None
    if not isinstance(document, dict):
        raise MessageError("alarm frame does not hold a map")
    return frames[0].decode(), document
