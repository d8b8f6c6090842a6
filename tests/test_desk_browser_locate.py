"""立即定位 and handset status on the desk page, in a real headless browser (SPEC §14).

The desk runs alone (`run_desk`, a real HTTP server on port 0) over `test_desk_api`'s
world and the built-in Zaozhuang layer. Nothing sends requests to carriers in this
branch, so the test plays the ingest process: it writes `mark_sent`, `answer` and `expire`
into the real locate.sqlite, and a handset status row into the real fix store. A town
officer opens an alarm and clicks 立即定位: 已请求, then 已发送运营商, then the fix in
words, on the map (a marker with its accuracy circle) and in the track; on a person's
page a request answered 关机; another one times out (定位超时). The track lists the
status rows, the person shows 手机状态, and the alarm list labels phone_off 手机关机 and
an alarm type it does not know by its code. The page is kept as tests/output/locate.png
(docs/locate.png is a copy of it).
"""

import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from alerts.alarm_store import AlarmStore, Incoming
from alerts.alarms import Alarm
from carriers.locate_store import LocateStore
from desk import run_desk
from engine.config import Carriers
from ingest.protocol import STATE0, STATES
from tests import test_desk_api
from tests.test_desk_api import C402, PASSWORD, PATHS, T1
from tests.test_desk_browser import _chromium
from tests.test_desk_locate import subject_index, write_rows

template, world = test_desk_api.template, test_desk_api.world   # the desk world's fixtures

OUTPUT = Path(__file__).parent / "output"
WAIT_MS = 20_000
LAYER_WAIT_MS = 180_000
OFF = STATE0 + STATES.index("off")


def add_alarms(paths, now_ms: int) -> None:
    """A phone_off alarm of S1 and one of a type the page does not know."""
    incoming = []
    for alarm_id, kind, details in (("p1", "phone_off", {"handset": "off",
                                                         "since": now_ms - 4 * 3600_000}),
                                    ("u1", "made_up_type", {})):
        doc = {"id": alarm_id, "type": kind, "severity": "high", "subject": "S1",
               "office": T1, "t": now_ms - 1000, "raised_at": now_ms - 1000, "fix": None,
               "where": None, "home": [C402], "status": "open", "details": details}
        incoming.append(Incoming(Alarm.from_document(doc), (PATHS[T1],)))
    store = AlarmStore(paths.alarms_db)
    try:
        store.add(incoming, now_ms=now_ms)
    finally:
        store.close()


@contextmanager
def desk_running(settings):
    ready, stop, failed = threading.Event(), threading.Event(), []
    urls = []

    def serve():
        try:
            run_desk(settings, stop.is_set, lambda url: (urls.append(url), ready.set()))
        except BaseException as e:   # reported by the test, not lost in the thread
            failed.append(e)
            ready.set()

    thread = threading.Thread(target=serve, name="desk", daemon=True)
    thread.start()
    assert ready.wait(60) and not failed, failed
    try:
        yield urls[0]
    finally:
        stop.set()
        thread.join(30)


def login(browser, url: str, user: str, errors: list[str]):
    """A fresh browser context (its own cookies) logged in as `user`."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1600, "height": 1000}, locale="zh-CN",
                               timezone_id="Asia/Shanghai").new_page()
    page.on("pageerror", lambda e: errors.append(f"{user}: {e}"))
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.get_by_test_id("login-user").fill(user)
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "on")
    return page


def ingest(paths, fn):
    store = LocateStore(paths.locate_db)
    try:
        return fn(store)
    finally:
        store.close()


def open_request(paths, subject: str):
    found = [r for r in ingest(paths, lambda s: s.open_requests()) if r.subject == subject]
    assert len(found) == 1, found
    return found[0]


def test_locate_from_an_alarm_and_a_person_shows_pending_then_the_answer(world):
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    settings, paths = world
    settings = replace(settings, carriers=Carriers(locate_subject_every_s=0))
    now = int(time.time() * 1000)
    add_alarms(paths, now)
    write_rows(paths, subject_index(paths, "S4"), [(now - 30 * 60_000, 0),
                                                   (now - 20 * 60_000, OFF)], now - 60_000, 1)
    errors: list[str] = []
    expect.set_options(timeout=WAIT_MS)
    with desk_running(settings) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox"])
        try:
            page = login(browser, url, "town1", errors)
            row = page.locator("[data-testid=alarm-row][data-alarm-id='p1']")
            expect(row.locator(".type")).to_have_text("手机关机")
            expect(page.locator("[data-testid=alarm-row][data-alarm-id='u1'] .type")
                   ).to_have_text("made_up_type")
            expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "on")
            # the map layer is built once per desk process: slow on a loaded machine
            expect(page.locator("#map .layer-townships path").first).to_be_attached(
                timeout=LAYER_WAIT_MS)

            # from the alarm: pending, sent, then the fix in words, on the map, in the track
            row.click()
            expect(page.get_by_test_id("detail")).to_contain_text("关机")
            button, note = page.get_by_test_id("locate-button"), page.get_by_test_id("locate-note")
            button.click()
            expect(note).to_contain_text("已请求")
            expect(button).to_be_disabled()
            request = open_request(paths, "S1")
            ingest(paths, lambda s: s.mark_sent(request.id, "carrierA", now + 100))
            expect(note).to_contain_text("已发送运营商")
            expect(button).to_be_disabled()
            page.get_by_test_id("track-button").click()
            expect(page.locator("#track-note")).to_contain_text("S1")
            fix_t = int(time.time() * 1000)
            write_rows(paths, subject_index(paths, "S1"), [(fix_t, 0)], fix_t, 2)
            ingest(paths, lambda s: s.answer([(request.id, fix_t + 50, fix_t, "gps", 117.55,
                                               34.86, 25.0)]))
            expect(note).to_contain_text("已定位")
            expect(note).to_contain_text("GPS")
            expect(button).to_be_enabled()
            marker = page.get_by_test_id("locate-fix")
            expect(marker).to_have_count(1)
            expect(marker.locator("circle.locate-acc")).to_have_count(1)
            expect(page.locator("#track-note")).to_contain_text("1 个定位")

            # from a person's page: the handset status, then an answer 关机
            page.get_by_test_id("view-people").click()
            page.locator("[data-testid=person-row][data-subject='S4']").click()
            expect(page.get_by_test_id("person")).to_contain_text("手机状态")
            expect(page.get_by_test_id("person")).to_contain_text("关机（自")
            pbutton = page.get_by_test_id("person-locate")
            pnote = page.get_by_test_id("person-locate-note")
            pbutton.click()
            expect(pnote).to_contain_text("已请求")
            expect(pbutton).to_be_disabled()
            request = open_request(paths, "S4")
            ingest(paths, lambda s: s.answer([(request.id, now + 900, now + 800, "off", None,
                                               None, None)]))
            expect(pnote).to_contain_text("关机")
            expect(pbutton).to_be_enabled()
            # and one that nobody answers: 定位超时
            pbutton.click()
            expect(pnote).to_contain_text("已请求")
            request = open_request(paths, "S4")
            ingest(paths, lambda s: s.expire(request.requested_ms + 120_000, 120_000))
            expect(pnote).to_contain_text("定位超时")
            expect(pbutton).to_be_enabled()

            # the origin office of delegated S4 hears of its request by reading it again
            # (its events go to the delegate's side)
            origin = login(browser, url, "town3", errors)
            origin.get_by_test_id("view-people").click()
            origin.locator("[data-testid=person-row][data-subject='S4']").click()
            origin.get_by_test_id("person-locate").click()
            onote = origin.get_by_test_id("person-locate-note")
            expect(onote).to_contain_text("已请求")
            request = open_request(paths, "S4")
            assert request.office == T1
            ingest(paths, lambda s: s.answer([(request.id, fix_t + 80, fix_t + 60, "cell",
                                               117.56, 34.87, 800.0)]))
            expect(onote).to_contain_text("已定位")
            expect(onote).to_contain_text("基站")
            expect(pnote).to_contain_text("已定位")   # and the delegate's page, from its stream

            # back on the alarm: the track lists S1's status rows
            write_rows(paths, subject_index(paths, "S1"), [(fix_t + 1000, OFF)], fix_t + 1000, 3)
            page.get_by_test_id("view-alarms").click()
            page.locator("[data-testid=alarm-row][data-alarm-id='a1']").click()
            page.get_by_test_id("track-button").click()
            expect(page.get_by_test_id("track-status")).to_contain_text("手机关机")
            for _ in range(3):   # some of the township around the fix, for the picture
                page.locator("#zoom-out").click()
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "locate.png"))
        finally:
            browser.close()
    assert errors == []
