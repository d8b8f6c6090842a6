"""Orders in the registry (issue 13): subjects' `curfews` and `night_watch`, and the
`key_periods` kind; refused with every problem at once, nothing half-applied, exported in
the import format."""

import pytest

from alerts.registry import Curfew, KeyPeriod, RegistryError, RegistryStore

OFFICES = [{"code": "3704", "name": "枣庄市司法局"},
           {"code": "370402", "name": "市中区司法局", "parent": "3704"},
           {"code": "370402001", "name": "中心街街道司法所", "parent": "370402"}]
SUBJECT = {"id": "S-1", "devices": ["139001"], "office": "370402001", "home": ["370402"]}
PERIOD = {"id": "kp-1", "name": "全国两会", "start": "2026-03-04T00:00:00+08:00",
          "end": "2026-03-12T00:00:00+08:00", "offices": ["3704"]}


def is_place(code: str) -> bool:
    return code.startswith("3704")


def is_zone(code: str) -> bool:
    return code == "Z1"


@pytest.fixture
def store(tmp_path):
    s = RegistryStore(tmp_path / "registry.sqlite")
    s.import_document({"offices": OFFICES}, is_place, is_zone)
    yield s
    s.close()


def test_curfews_key_periods_and_night_watch_import_and_export_to_themselves(store):
    subject = {**SUBJECT, "night_watch": True,
               "curfews": [{"from": "22:00", "to": "06:00"},
                           {"from": "09:00", "to": "17:00", "days": [6, 7], "zone": "Z1"}]}
    registry = store.import_document({"subjects": [subject], "key_periods": [PERIOD]},
                                     is_place, is_zone)
    s = registry.subjects["S-1"]
    assert s.curfews == (Curfew(22 * 60, 6 * 60), Curfew(9 * 60, 17 * 60, (6, 7), "Z1"))
    assert s.night_watch
    assert registry.key_periods["kp-1"] == KeyPeriod(
        "kp-1", "全国两会", 1_772_553_600_000, 1_773_244_800_000, ("3704",),
        ("normal", "strict", "loose"))
    doc = registry.to_document()
    assert doc["subjects"][0]["curfews"][0] == {"from": "22:00", "to": "06:00",
                                                "days": [1, 2, 3, 4, 5, 6, 7]}
    again = store.import_document(doc, is_place, is_zone)
    assert again.subjects == registry.subjects and again.key_periods == registry.key_periods
    reopened = RegistryStore(store.path)
    try:
        assert reopened.load().subjects == registry.subjects
        assert reopened.load().key_periods == registry.key_periods
    finally:
        reopened.close()


def test_every_problem_of_curfews_and_key_periods_is_reported_and_nothing_changes(store):
    subject = {**SUBJECT, "night_watch": "yes",
               "curfews": [{"from": "22:00", "to": "22:00"},
                           {"from": "25:00", "to": "6", "days": [0], "until": "x"},
                           {"from": "01:00", "to": "02:00", "zone": "Z9"}]}
    period = {**PERIOD, "end": "2026-03-01T00:00:00+08:00", "offices": ["9999"],
              "levels": ["harsh"]}
    before = store.version()
    with pytest.raises(RegistryError) as e:
        store.import_document({"subjects": [subject], "key_periods": [period, {"id": "kp-2"}]},
                              is_place, is_zone)
    problems = e.value.problems
    expected = ["night_watch must be true or false", "curfews[0]: from and to are the same",
                "curfew from must be a time", "curfew to must be a time",
                "days must be a non-empty array", 'unknown key "until"',
                "unknown zone code 'Z9' in curfews", "end is not after start",
                "key period kp-1: unknown office '9999'", "levels must be a non-empty array",
                "key_periods[1] (id kp-2): name is missing",
                "key_periods[1] (id kp-2): offices must be an array"]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert store.version() == before and store.load().subjects == {}
    assert store.load().key_periods == {}
