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
