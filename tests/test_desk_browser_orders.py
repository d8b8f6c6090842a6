"""Orders on the desk page (issue 13) in a real headless browser against the real engine:
the key-period banner, and a person's curfews and night watch edited in the person form
(a bad curfew listed as a problem, nothing changed; a good one kept by the registry).

Needs Debian's Chromium like tests/test_desk_browser.py (skipped without it).
"""

import time
from datetime import datetime, timezone
from pathlib import Path

from alerts.registry import RegistryStore
from tests.engine_harness import Engine, population_document
from tests.test_desk_browser import _chromium
from tests.test_desk_browser_supervision import (_browser, _desk, _login, _offices, _pair,
                                                 _person_row)


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def test_the_banner_shows_a_key_period_and_the_form_edits_curfews(tmp_path, monkeypatch):
    _chromium()
    from playwright.sync_api import expect

    doc = population_document(12, seed=5)
    a, _ = _pair(doc)
    county = _offices(doc)[a["office"]]["parent"]
    now = int(time.time() * 1000)
    doc["key_periods"] = [{"id": "kp-1", "name": "全国两会", "start": _rfc3339(now - 3_600_000),
                           "end": _rfc3339(now + 86_400_000), "offices": [county]}]
    config = _desk(tmp_path, monkeypatch, doc, [("county", county, "officer")])
    errors: list[str] = []
    engine = Engine(config)
    try:
        with _browser(engine) as (browser, url):
            page = _login(browser, url, "county", errors)
            expect(page.get_by_test_id("key-period-banner")).to_contain_text("重点时期：全国两会")
            page.get_by_test_id("view-people").click()
            page.get_by_test_id("people-search").fill(a["id"])
            _person_row(page, a).click()
            page.get_by_test_id("person-edit").click()
            page.get_by_test_id("pf-curfews").fill("25:00-06:00")
            page.get_by_test_id("pf-submit").click()
            expect(page.get_by_test_id("person-form-problems")).to_contain_text("25:00")
            page.get_by_test_id("pf-curfews").fill("22:00-06:00 12345")
            page.get_by_test_id("pf-night-watch").check()
            page.get_by_test_id("pf-submit").click()
            expect(page.get_by_test_id("person-form")).to_be_hidden()
            expect(page.get_by_test_id("person")).to_contain_text("22:00-06:00 12345")
            expect(page.get_by_test_id("person")).to_contain_text("昼伏夜出监测")
            assert not errors, errors
    finally:
        engine.stop()
    store = RegistryStore(Path(tmp_path) / "data" / "registry.sqlite")
    try:
        subject = store.load().subjects[a["id"]]
        assert [c.to_document() for c in subject.curfews] == [
            {"from": "22:00", "to": "06:00", "days": [1, 2, 3, 4, 5]}]
        assert subject.night_watch
    finally:
        store.close()
