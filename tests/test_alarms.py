"""The alarm as one typed value: its JSON text travels unchanged, its lifecycle makes new
values, and a damaged document is refused with a clear error."""

import json

import pytest

from alerts.alarms import (Alarm, AlarmDocumentError, AlarmFix, Place, alarm_id, new_alarm)
from alerts.registry import Subject
from alerts.schedule import Route

KEY_PERSON = Subject("S1", ("13900000001",), "370402001", ("370402",), risk="key", index=0)


def exit_alarm(**overrides) -> Alarm:
    fields = dict(subject=KEY_PERSON, route=Route("370481001", ("370402001",), ("370481",)),
                  t_ms=2_000, trigger_t_ms=2_000, fix=AlarmFix(2_000, 117.1, 34.9, 30.0, "gps"),
                  where=Place("370481001", "荆河街道"), raised_at_ms=2_500,
                  details={"zone": "Z1"}, received_ms=2_100)
    return new_alarm("zone_exit", **{**fields, **overrides})


def test_a_new_alarm_is_the_spec_document_with_a_stable_id():
    alarm = exit_alarm()
    assert alarm.to_document() == {
        "id": alarm_id("S1", "zone_exit", 2_000), "type": "zone_exit", "severity": "critical",
        "subject": "S1", "office": "370481001", "t": 2_000, "raised_at": 2_500,
        "fix": {"t": 2_000, "lon": 117.1, "lat": 34.9, "acc": 30.0, "src": "gps"},
        "where": {"code": "370481001", "name": "荆河街道"}, "home": ["370481"],
        "status": "open", "details": {"zone": "Z1", "copy_to": ["370402001"]}}
    assert alarm.copies == ("370402001",) and alarm.fold_key == "S1"
    assert exit_alarm(raised_at_ms=9_999).id == alarm.id       # the trigger decides the id


def test_the_json_text_passes_through_every_hop_unchanged():
    text = exit_alarm().to_json()
    read = Alarm.from_json(text, received_ms=7)
    assert read.to_json() is text             # not re-encoded by a hop that only reads
    assert read == exit_alarm() and read.received_ms == 7
    assert json.loads(text) == read.to_document()
    assert "荆河街道" in text                  # UTF-8, not \\u escapes


def test_lifecycle_changes_make_new_values_and_new_text():
    alarm = Alarm.from_json(exit_alarm().to_json())
    acked = alarm.with_status("acknowledged")
    assert alarm.status == "open" and acked.status == "acknowledged"
    assert json.loads(acked.to_json())["status"] == "acknowledged"
    repeat = exit_alarm(t_ms=3_000, trigger_t_ms=3_000)
    folded = alarm.folded(repeat).folded(repeat)
    assert folded.details["repeats"] == 2 and folded.details["last"]["id"] == repeat.id
    assert "repeats" not in alarm.details
    up = alarm.escalated("370481").escalated("3704")
    assert (up.status, up.escalated_to, up.escalation_level) == ("escalated", "3704", 2)
    with pytest.raises(AlarmDocumentError):
        alarm.with_status("forgotten")


def test_an_outage_alarm_has_no_subject_and_goes_to_the_given_office():
    outage = new_alarm("feed_outage", subject=None, route=None, t_ms=5, trigger_t_ms=4,
                       fix=None, where=None, raised_at_ms=6, details={"carrier": "cmcc"},
                       office="3704")
    assert (outage.office, outage.subject, outage.severity) == ("3704", None, "critical")
    assert outage.fold_key == "carrier:cmcc" and outage.id == alarm_id("carrier:cmcc",
                                                                       "feed_outage", 4)


@pytest.mark.parametrize("text", ["not json", "[]", '{"id": "x"}',
                                  exit_alarm().to_json().replace('"t":2000', '"t":"soon"')])
def test_a_damaged_document_is_refused_with_a_clear_error(text):
    with pytest.raises(AlarmDocumentError):
        Alarm.from_json(text)
