"""The patrol desk page in a real headless browser against the real engine (SPEC §8).

`geofence serve` runs with its desk; a desk user of the city office logs in through the
form. A subject then leaves their county (fixes sent over the carrier protocol), and the
zone_exit alarm must appear in the open page over Server-Sent Events, without a reload.
The user opens it, acknowledges it with a note, and sees 已确认 in the list and the
detail, then logs out: a reload shows the login form. A full-page screenshot is kept in
tests/output/desk.png.

Needs Debian's Chromium (`apt-get install -y chromium fonts-noto-cjk`; the fonts only
make the screenshot readable): skipped without it, a failure when CI is set.
"""

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import shapely

from alerts.alarms import alarm_id
from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from ingest.protocol import encode_cols
from service.cli import main as cli
from tests.engine_harness import Carrier, Engine, population_document, write_config

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).parent / "output"
PASSWORD = "patrol-desk-pw"
STEP_MS = 60_000
WAIT_MS = 20_000


def _chromium() -> Path:
    """Chromium's path; without it a failure in CI (a skipped browser test there would let
    a broken desk through unnoticed), a skip with the reason on a developer's machine."""
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{CHROMIUM} is missing in CI: apt-get install -y chromium "
                        f"fonts-noto-cjk (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium fonts-noto-cjk); "
                    f"in CI (CI set) this is a failure")
    return CHROMIUM


def _places(subject: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """A point at home (inside the subject's county) and one in another county."""
    layer = Layer.from_geojson(zaozhuang_geojson())
    home = subject["home"][0]
    inside = shapely.union_all(layer.geometries[layer.features_under(home)])
    other = next(i for i in range(len(layer.codes)) if layer.parents[i] != home)
    far = layer.geometries[other].representative_point()
    here = inside.representative_point()
    return (here.x, here.y), (far.x, far.y)


def test_an_exit_appears_live_and_is_acknowledged_in_the_page(tmp_path, monkeypatch):
    executable = _chromium()
    from playwright.sync_api import expect, sync_playwright

    doc = population_document(12, seed=5)
    subject = next(s for s in doc["subjects"] if s["risk"] == "normal")
    config = write_config(tmp_path, desk=True)
    (tmp_path / "registry.json").write_text(json.dumps(doc, ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import",
                str(tmp_path / "registry.json")]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli(["--config", str(config), "user", "add", "desk", "--office", "3704"]) == 0

    home, away = _places(subject)
    plan = [home, home, away, away]          # a normal subject: 2 fixes out raise the exit
    t0 = int(time.time() * 1000) - (len(plan) + 1) * STEP_MS
    times = [t0 + k * STEP_MS for k in range(len(plan))]
    expected = alarm_id(subject["id"], "zone_exit", times[-1])
    shot = tmp_path / "desk.png"

    engine = Engine(config)
    try:
        url = engine.wait_for("geofence: desk on ").split("desk on ")[1].split()[0]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(executable), headless=True,
                                        args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.set_default_timeout(WAIT_MS)
                page.goto(url)

                page.get_by_test_id("login-user").fill("desk")
                page.get_by_test_id("login-password").fill(PASSWORD)
                page.get_by_test_id("login-password").press("Enter")    # Enter logs in
                expect(page.get_by_test_id("me-office")).to_contain_text("3704")
                expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "on")
                expect(page.get_by_test_id("alarm-row")).to_have_count(0)
                page.evaluate("window.__sameDocument = true")

                carrier = Carrier(engine.endpoint)
                try:
                    lon, lat = np.array(plan).T
                    ack = carrier.request(encode_cols(
                        "cmcc", 1, [subject["devices"][0]] * len(plan), times, lon, lat,
                        np.full(len(plan), 30.0)))
                finally:
                    carrier.close()
                assert ack is not None and ack["status"] == "ok", ack

                row = page.locator(f"[data-testid=alarm-row][data-alarm-id='{expected}']")
                expect(row).to_have_attribute("data-status", "open")
                expect(row).to_contain_text("越界")
                expect(row).to_contain_text(subject["id"])
                assert page.evaluate("window.__sameDocument === true"), "the page reloaded"

                row.click()
                status = page.get_by_test_id("detail-status")
                expect(status).to_have_text("待处理")
                page.get_by_test_id("ack-note").fill("已电话联系本人，称去邻县探亲，正在返回。")
                page.get_by_test_id("ack-button").click()
                expect(row).to_have_attribute("data-status", "acknowledged")
                expect(row).to_contain_text("已确认")
                expect(status).to_have_text("已确认")
                expect(page.get_by_test_id("history")).to_contain_text("去邻县探亲")
                expect(page.locator(f"[data-testid=map] [data-alarm-id='{expected}']")) \
                    .to_have_count(1)

                # Back home, then out again while the first exit is still unresolved: a
                # new episode, so a second exit row with its own time; the first one's
                # detail says its episode ended with the return, the return links it.
                again = [home, home, away, away]
                later = [times[-1] + (k + 1) * STEP_MS // 4 for k in range(len(again))]
                carrier = Carrier(engine.endpoint)
                try:
                    lon, lat = np.array(again).T
                    ack = carrier.request(encode_cols(
                        "cmcc", 2, [subject["devices"][0]] * len(again), later, lon, lat,
                        np.full(len(again), 30.0)))
                finally:
                    carrier.close()
                assert ack is not None and ack["status"] == "ok", ack
                returned = alarm_id(subject["id"], "zone_return", later[1])
                second = alarm_id(subject["id"], "zone_exit", later[-1])
                second_row = page.locator(
                    f"[data-testid=alarm-row][data-alarm-id='{second}']")
                expect(second_row).to_have_attribute("data-status", "open")
                expect(row).to_have_attribute("data-status", "acknowledged")
                row.click()
                expect(page.get_by_test_id("episode-ended")).to_contain_text("查看返回报警")
                page.get_by_test_id("episode-ended").get_by_role("button").click()
                expect(page.locator("#detail-fields")).to_contain_text(returned)
                page.get_by_role("button", name="查看越界报警").click()
                expect(page.locator("#detail-fields")).to_contain_text(expected)
                second_row.click()
                expect(page.locator("#detail-fields")).to_contain_text(second)
                expect(page.get_by_test_id("episode-ended")).to_have_count(0)

                page.get_by_test_id("track-button").click()
                expect(page.locator("[data-testid=map] .track-dot")).to_have_count(
                    len(plan) + len(again))
                page.wait_for_timeout(300)      # let the map settle before the picture
                page.screenshot(path=str(shot), full_page=True)

                page.get_by_test_id("logout").click()     # the session ends on the server too
                expect(page.get_by_test_id("login-user")).to_be_visible()
                page.reload()
                expect(page.get_by_test_id("login-user")).to_be_visible()
                expect(page.get_by_test_id("me-office")).not_to_be_visible()
                assert not errors, errors
            finally:
                browser.close()
    finally:
        engine.stop()
    OUTPUT.mkdir(exist_ok=True)
    shutil.copyfile(shot, OUTPUT / "desk.png")
    print(f"desk screenshot: {shot} (kept as {OUTPUT / 'desk.png'})")



@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception),
                                         ("1", pytest.fail.Exception),
                                         ("", pytest.skip.Exception),
                                         ("false", pytest.skip.Exception)])
def test_a_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    monkeypatch.setitem(globals(), "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no-chromium is missing"):
        _chromium()
