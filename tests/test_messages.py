"""The messages between the engine's processes: each decodes what its encoder wrote, and
a frame that is not one of them is refused with `MessageError` (never a crash)."""

import msgpack
import pytest

from engine.messages import (MessageError, WorkerReport, decode_alarm_frames,
                             decode_new_fixes, encode_alarm_frames, encode_new_fixes, topic)


def test_each_message_decodes_what_its_encoder_wrote():
    assert decode_new_fixes(encode_new_fixes(42)) == 42
    report = WorkerReport(1, 99, late=3, verdicts=(5, 1, 2), kernel_s=0.25, restarts=2)
    assert WorkerReport.decode(report.encode()) == report
    start = WorkerReport(0, 7, restarts=1)    # the first report after a start
    assert WorkerReport.decode(start.encode()) == start and start.kernel_s is None
    frames = encode_alarm_frames(topic(["3704", "370402"]), {"id": "a1", "t": 5})
    assert frames[0] == b"3704/370402/"
    assert decode_alarm_frames(frames) == ("3704/370402/", {"id": "a1", "t": 5})


@pytest.mark.parametrize("frame", [b"", b"\xc1", msgpack.packb("7"), msgpack.packb([1, 2])])
def test_a_new_fixes_frame_that_is_not_an_int_is_refused(frame):
    with pytest.raises(MessageError):
        decode_new_fixes(frame)


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", msgpack.packb(3), msgpack.packb({"worker": 0, "seq": 1}),
    msgpack.packb({"worker": 0, "seq": 1, "late": 0, "verdicts": [1, 2], "kernel_s": None,
                   "restarts": 0}),
    msgpack.packb({"worker": "x", "seq": 1, "late": 0, "verdicts": [1, 2, 3],
                   "kernel_s": None, "restarts": 0}),
    msgpack.packb({"worker": 0, "seq": 1, "late": 0, "verdicts": [1, 2, 3], "kernel_s": None,
                   "restarts": 0, "extra": 1})])
def test_a_report_that_is_not_a_worker_report_is_refused(frame):
    with pytest.raises(MessageError):
        WorkerReport.decode(frame)


def test_alarm_frames_other_than_topic_and_map_are_refused():
    for frames in ([b"3704/"], [b"3704/", msgpack.packb([1])], [b"3704/", b"\xc1"]):
        with pytest.raises(MessageError):
            decode_alarm_frames(frames)
