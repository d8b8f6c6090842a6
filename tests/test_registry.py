"""Registry import refuses device ids the carrier wire cannot carry, with every problem."""

import pytest

from alerts.registry import RegistryError, RegistryStore

OFFICE = {"code": "370402001", "name": "中心街街道司法所"}


def subject(sid: str, device: str) -> dict:
    return {"id": sid, "devices": [device], "office": "370402001", "home": ["370402"],
            "risk": "normal", "category": "probation"}


def test_device_ids_with_a_nul_or_too_long_are_refused_together_and_nothing_changes(tmp_path):
    store = RegistryStore(tmp_path / "registry.sqlite")
    try:
        with pytest.raises(RegistryError) as e:
            store.import_document({"offices": [OFFICE],
                                   "subjects": [subject("S1", "139\x00"), subject("S2", "9" * 33)]},
                                  lambda code: True, lambda code: False)
        assert len(e.value.problems) == 2
        assert "NUL" in e.value.problems[0] and "1..32" in e.value.problems[1]
        assert store.load().subjects == {}
    finally:
        store.close()


CLEAN = {"offices": [{**OFFICE, "parent": "370402"}, {"code": "370402", "name": "薛城区司法局"}],
         "subjects": [{**subject("S-17", "13900000017"), "exclusions": ["Z1"]}],
         "permits": [{"id": "P1", "subject": "S-17", "start": "2026-03-01T08:00:00+08:00",
                      "end": "2026-03-01T18:00:00+08:00", "destinations": ["370402"],
                      "office": "370402001"}],
         "delegations": [{"id": "D1", "subject": "S-17", "start": "2026-03-01T00:00:00+08:00",
                          "end": "2026-04-01T00:00:00+08:00", "office": "370402",
                          "home": ["370402"]}]}


def misspelt(kind: str, right: str, wrong: str) -> dict:
    """CLEAN with the first entry of `kind` (or the document itself) carrying `wrong`
    for `right`."""
    doc = {k: [dict(e) for e in v] for k, v in CLEAN.items()}
    entry = doc if kind == "document" else doc[kind][0]
    entry[wrong] = entry.pop(right)
    return doc


@pytest.mark.parametrize("kind, right, wrong, where", [
    ("subjects", "exclusions", "exclusion", "subjects[0] (id S-17)"),    # the two
    ("delegations", "end", "ends", "delegations[0] (id D1)"),
    ("offices", "parent", "parnet", "offices[0] (code 370402001)"),
    ("permits", "destinations", "destination", "permits[0] (id P1)"),
    ("document", "permits", "permit", "the document"),
])
def test_an_unknown_key_at_any_level_is_refused_with_the_near_one_and_nothing_changes(
        tmp_path, kind, right, wrong, where):
    doc = misspelt(kind, right, wrong)
    store = RegistryStore(tmp_path / "registry.sqlite")
    try:
        before = store.import_document({"offices": CLEAN["offices"][1:]}, lambda c: True,
                                       lambda c: True)
        with pytest.raises(RegistryError) as e:
            store.import_document(doc, lambda code: True, lambda code: True)
        assert f'{where}: unknown key "{wrong}"; did you mean "{right}"?' in e.value.problems
        after = store.load()
        assert after.version == before.version and after.offices == before.offices
        assert after.subjects == {} and after.delegations == {}
    finally:
        store.close()


def test_unknown_keys_are_reported_with_every_other_problem_of_the_document(tmp_path):
    doc = misspelt("subjects", "exclusions", "exclusion")
    doc["delegations"][0]["ends"] = doc["delegations"][0].pop("end")
    doc["subjects"][0]["office"] = "nowhere"
    doc["offices"][0]["colour"] = "red"             # nothing near: the known keys are listed
    store = RegistryStore(tmp_path / "registry.sqlite")
    try:
        with pytest.raises(RegistryError) as e:
            store.import_document(doc, lambda code: True, lambda code: True)
        problems = e.value.problems
        assert any('"exclusion"; did you mean "exclusions"' in p for p in problems)
        assert any('"ends"; did you mean "end"' in p for p in problems)
        assert any("unknown office 'nowhere'" in p for p in problems)
        assert 'offices[0] (code 370402001): unknown key "colour" (known: code, name, ' \
               'parent)' in problems
        assert store.load().version == 0
    finally:
        store.close()


def test_the_clean_document_imports_and_exports_to_itself(tmp_path):
    store = RegistryStore(tmp_path / "registry.sqlite")
    try:
        registry = store.import_document(CLEAN, lambda code: True, lambda code: True)
        assert registry.subjects["S-17"].exclusions == ("Z1",)
        assert registry.delegations["D1"].end_ms is not None
        again = store.import_document(registry.to_document(), lambda c: True, lambda c: True)
        assert again.subjects == registry.subjects and again.delegations == registry.delegations
    finally:
        store.close()
