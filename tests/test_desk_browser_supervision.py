"""Supervision work on the desk page in a real headless browser against the real engine
(SPEC §11, §12): leave, people, audit and the read-only look of viewers.

`geofence serve` runs with its desk and one worker; users log in through the form.
- Leave: a township officer files a leave for subject A to another county on the page (a
  40-day one first: the cap's reason is shown); a user of the county above approves it on
  the page (four eyes: not the requester); an overlapping one is then refused with its
  reason; the county files a standing permit for B. A's fixes in that county then raise
  nothing, while B (same county, no approved leave) raises zone_exit with the same fixes;
  A's page shows the leave and the days used, the audit page its steps, and 销假 closes
  it. The leave page is kept as tests/output/leave.png (docs/leave.png is a copy of it).
- People: edit with every problem listed (422, nothing changed), level, onboarding, a
  leave filed from the person's page and cancelled (撤销), end of supervision.
- Viewer: the 只读 badge and no write control on any page; an alarm opens without 确认.

Needs Debian's Chromium like tests/test_desk_browser.py (skipped without it, a failure
when CI is set).
"""

import io
import json
import shutil
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import shapely

from alerts.alarms import alarm_id
from geofence import Layer
from geofence.builtin import zaozhuang_geojson
from ingest.protocol import encode_cols
from service.cli import main as cli
from tests.engine_harness import Carrier, Engine, population_document, write_config
from tests.test_desk_browser import _chromium

OUTPUT = Path(__file__).parent / "output"
PASSWORD = "patrol-desk-pw"
STEP_MS = 60_000
WAIT_MS = 20_000
CST = timezone(timedelta(hours=8))


# -- set-up --------------------------------------------------------------------------------

def _offices(doc: dict) -> dict[str, dict]:
    return {o["code"]: o for o in doc["offices"]}


def _ordinary(doc: dict, n: int) -> list[dict]:
    """`n` ordinary subjects (risk normal: two fixes out raise an exit) of one county."""
    by_county = defaultdict(list)
    for s in doc["subjects"]:
        if s["risk"] == "normal" and not s.get("exclusions"):
            by_county[s["home"][0]].append(s)
    return next(group[:n] for group in by_county.values() if len(group) >= n)


def _pair(doc: dict) -> tuple[dict, dict]:
    a, b = _ordinary(doc, 2)
    return a, b


def _places(county: str) -> tuple[tuple[float, float], tuple[float, float], str, str]:
    """A point inside `county`, one in another county, that county's code and name."""
    layer = Layer.from_geojson(zaozhuang_geojson())
    inside = shapely.union_all(layer.geometries[layer.features_under(county)])
    other = next(i for i in range(len(layer.codes))
                 if layer.parents[i] and layer.parents[i] != county)
    far = layer.geometries[other].representative_point()
    here = inside.representative_point()
    code = str(layer.parents[other])
    return (here.x, here.y), (far.x, far.y), code, layer.hierarchy.name_of(code)


def _add_user(config: Path, monkeypatch, name: str, office: str, role: str = "officer"):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli(["--config", str(config), "user", "add", name, "--office", office,
                "--role", role]) == 0


def _desk(tmp_path: Path, monkeypatch, doc: dict, users: list[tuple[str, str, str]]) -> Path:
    config = write_config(tmp_path, desk=True)
    (tmp_path / "registry.json").write_text(json.dumps(doc, ensure_ascii=False))
    assert cli(["--config", str(config), "registry", "import",
                str(tmp_path / "registry.json")]) == 0
    for name, office, role in users:
        _add_user(config, monkeypatch, name, office, role)
    return config


@contextmanager
def _browser(engine: Engine):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)      # a loaded machine: the first write loads layers
    url = engine.wait_for("geofence: desk on ").split("desk on ")[1].split()[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(_chromium()), headless=True,
                                    args=["--no-sandbox"])
        try:
            yield browser, url
        finally:
            browser.close()


def _login(browser, url: str, user: str, errors: list[str]):
    """A fresh context (its own cookies) logged in as `user`."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1600, "height": 1000}, locale="zh-CN",
                               timezone_id="Asia/Shanghai").new_page()
    page.on("pageerror", lambda e: errors.append(f"{user}: {e}"))
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.get_by_test_id("login-user").fill(user)
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("me-user")).to_have_text(user)
    expect(page.get_by_test_id("live-status")).to_have_attribute("data-state", "on")
    return page


def _send(engine: Engine, device: str, plan: list, times: list[int], batch: int = 1) -> int:
    """One batch of `device`'s fixes; how many were sent."""
    carrier = Carrier(engine.endpoint)
    try:
        lon, lat = np.array(plan).T
        ack = carrier.request(encode_cols("cmcc", batch, [device] * len(plan), times, lon, lat,
                                          np.full(len(plan), 30.0)))
    finally:
        carrier.close()
    assert ack is not None and ack["status"] == "ok", ack
    return len(plan)


def _wait_until(predicate, what: str, timeout_s: float = WAIT_MS / 1000 * 3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def _leave_row(page, subject: dict):
    """The subject's row in the leave page's list (a person's page has rows too)."""
    return page.get_by_test_id("leave-list").locator(
        f"[data-testid=leave-row][data-subject='{subject['id']}']")


def _person_row(page, subject: dict):
    return page.locator(f"[data-testid=person-row][data-subject='{subject['id']}']")


def _cst_input(ms: int) -> str:
    """A datetime-local input's value in Beijing time (the page reads it as UTC+8)."""
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m-%dT%H:%M")


def _alarm_subjects(page) -> list[str]:
    """Subjects of every alarm this user sees, from the desk API in the page's session."""
    return page.evaluate("""async () => {
        const r = await fetch('/api/alarms?limit=500', {credentials: 'same-origin'});
        return (await r.json()).alarms.map((a) => a.subject);
    }""")


# -- leave ---------------------------------------------------------------------------------

def test_a_leave_filed_and_approved_on_the_page_lets_the_subject_travel(tmp_path, monkeypatch):
    _chromium()
    from playwright.sync_api import expect

    doc = population_document(12, seed=5)
    a, b, m = _ordinary(doc, 3)
    county = _offices(doc)[a["office"]]["parent"]
    assert county == a["home"][0]
    home, away, destination, destination_name = _places(county)
    names = {o["code"]: o["name"] for o in doc["offices"]}
    config = _desk(tmp_path, monkeypatch, doc, [("clerk", a["office"], "officer"),
                                                 ("county", county, "officer")])
    plan = [home, home, away, away]
    shot = tmp_path / "leave.png"
    errors: list[str] = []

    engine = Engine(config)
    try:
        with _browser(engine) as (browser, url):
            # The township officer files the leave.
            clerk = _login(browser, url, "clerk", errors)
            clerk.get_by_test_id("view-leave").click()
            form = clerk.get_by_test_id("leave-form")
            expect(form).to_be_visible()
            clerk.get_by_test_id("leave-subject").fill(a["id"])
            clerk.get_by_test_id("leave-dest-search").fill(destination_name)
            clerk.locator(f"[data-testid=leave-dest-results] [data-code='{destination}']").click()
            expect(clerk.get_by_test_id("leave-dest-chosen")).to_contain_text(destination)
            now = int(time.time() * 1000)
            clerk.get_by_test_id("leave-start").fill(_cst_input(now - 3_600_000))
            clerk.get_by_test_id("leave-reason").fill("赴外县探望住院的母亲")
            # Too long: the cap's reason is shown in words, and the form keeps what was typed.
            clerk.get_by_test_id("leave-end").fill(_cst_input(now + 40 * 86_400_000))
            clerk.get_by_test_id("leave-submit").click()
            expect(clerk.get_by_test_id("leave-form-error")).to_contain_text("不符合规定")
            expect(form).to_contain_text("单次请假最长30天")
            expect(clerk.get_by_test_id("leave-dest-chosen")).to_contain_text(destination)
            clerk.get_by_test_id("leave-end").fill(_cst_input(now + 86_400_000))
            expect(clerk.get_by_test_id("leave-days")).to_contain_text("共 2 天")
            clerk.get_by_test_id("leave-submit").click()
            expect(clerk.get_by_test_id("leave-form-ok")).to_contain_text("已提交")
            expect(clerk.get_by_test_id("leave-form-error")).to_have_text("")
            mine = _leave_row(clerk, a)
            expect(mine).to_have_count(1)
            expect(mine).to_have_attribute("data-status", "pending")
            expect(clerk.get_by_test_id("leave-status")).to_have_text("待审批")
            # Four eyes: the requester's approve button is off (and the server says why).
            expect(clerk.get_by_test_id("leave-approve")).to_be_disabled()

            # The county user approves it on the page.
            boss = _login(browser, url, "county", errors)
            expect(boss.get_by_test_id("leave-mine")).to_have_text("1")    # on the button
            boss.get_by_test_id("view-leave").click()
            expect(boss.get_by_test_id("leave-filter")).to_have_value("mine")
            row = _leave_row(boss, a)
            expect(row).to_have_attribute("data-status", "pending")
            expect(row).to_contain_text("可审批")
            expect(row).to_contain_text(f"{destination_name} {destination}")
            row.click()
            expect(boss.get_by_test_id("leave-history")).to_contain_text("clerk")
            boss.get_by_test_id("leave-note").fill("同意，按时销假。")
            boss.get_by_test_id("leave-approve").click()
            expect(boss.get_by_test_id("leave-status")).to_have_text("已批准")
            expect(boss.get_by_test_id("leave-history")).to_contain_text("同意，按时销假。")
            expect(boss.get_by_test_id("leave-error")).to_have_text("")
            expect(boss.get_by_test_id("leave-mine")).to_be_hidden()

            # Once approved, another leave of A in that time is refused with the reason.
            clerk.get_by_test_id("leave-subject").fill(a["id"])
            clerk.get_by_test_id("leave-dest-search").fill(destination)
            clerk.get_by_test_id("leave-dest-search").press("Enter")
            clerk.get_by_test_id("leave-reason").fill("再次外出")
            clerk.get_by_test_id("leave-submit").click()
            expect(clerk.get_by_test_id("leave-form")).to_contain_text("时间重叠")
            expect(clerk.get_by_test_id("leave-form-ok")).to_have_text("")

            # The county files a standing permit for B (weekdays 08:00-19:00 to that county):
            # county level, so pending for the county, and it allows nothing yet.
            boss.get_by_test_id("leave-subject").fill(b["id"])
            boss.get_by_test_id("leave-dest-search").fill(destination)
            boss.get_by_test_id("leave-dest-search").press("Enter")
            boss.get_by_test_id("leave-reason").fill("跨县务工")
            boss.get_by_test_id("leave-standing").check()
            expect(boss.get_by_test_id("leave-from")).to_have_value("08:00")
            boss.get_by_test_id("leave-submit").click()
            expect(boss.get_by_test_id("leave-form-ok")).to_contain_text(f"待 {names[county]}")
            standing = _leave_row(boss, b)
            expect(standing).to_contain_text("长期")
            expect(standing).to_contain_text("每周一、二、三、四、五 08:00–19:00")

            # The worker must judge A with the approval in hand, without asserting a time:
            # the county user then moves M's home to the destination on the page, and M's
            # fixes at its old home raise zone_exit only in a registry at least that new.
            boss.get_by_test_id("view-people").click()
            _person_row(boss, m).click()
            boss.get_by_test_id("person-edit").click()
            boss.locator(f"[data-testid=pf-home-chosen] .chip[data-code='{county}'] button").click()
            boss.get_by_test_id("pf-home-search").fill(destination_name)
            boss.locator(f"[data-testid=pf-home-results] [data-code='{destination}']").click()
            boss.get_by_test_id("pf-submit").click()
            expect(boss.get_by_test_id("person-form")).to_be_hidden()
            expect(boss.get_by_test_id("person")).to_contain_text(
                f"{destination_name} {destination}")
            sent, batch = 0, 1

            def m_exit_seen():
                nonlocal sent, batch
                t = int(time.time() * 1000) - 2000
                sent += _send(engine, m["devices"][0], [home, home], [t, t + 1000], batch)
                batch += 1
                time.sleep(0.5)
                return m["id"] in _alarm_subjects(boss)

            _wait_until(m_exit_seen, "M's zone_exit (the worker has the approval)")

            # A (on leave) and B (no leave) send the same fixes out there, A first.
            t0 = int(time.time() * 1000) - (len(plan) + 1) * 1000
            times = [t0 + k * 1000 for k in range(len(plan))]
            sent += _send(engine, a["devices"][0], plan, times, batch)
            sent += _send(engine, b["devices"][0], plan, times, batch + 1)
            boss.get_by_test_id("view-alarms").click()
            expected = alarm_id(b["id"], "zone_exit", times[-1])
            exit_row = boss.locator(f"[data-testid=alarm-row][data-alarm-id='{expected}']")
            expect(exit_row).to_contain_text("越界")
            _wait_until(lambda: engine.evaluated_fixes() >= sent, "every fix evaluated")
            subjects = _alarm_subjects(boss)
            assert b["id"] in subjects and a["id"] not in subjects, subjects
            expect(boss.locator("[data-testid=alarm-row]", has_text=a["id"])).to_have_count(0)

            # A's page: the level, the leave of the year and the days used.
            boss.get_by_test_id("view-people").click()
            _person_row(boss, a).click()
            expect(boss.get_by_test_id("person-level")).to_have_text("普管")
            expect(boss.get_by_test_id("person-days")).to_contain_text("已批准外出 2 天")
            expect(boss.get_by_test_id("person-leaves")
                   .locator("[data-testid=leave-row][data-status=approved]")).to_have_count(1)

            # The audit log page: every step on A, by whom.
            boss.get_by_test_id("view-audit").click()
            boss.get_by_test_id("audit-subject").fill(a["id"])
            boss.get_by_test_id("audit-search").click()
            audit = boss.get_by_test_id("audit-table")
            expect(boss.get_by_test_id("audit-count")).not_to_have_text("查询中…")
            expect(audit.locator("[data-action='leave.approve']")).to_contain_text("county")
            expect(audit.locator("[data-action='leave.create']")).to_contain_text("clerk")
            expect(audit).to_contain_text("批准请假（leave.approve）")
            expect(audit).not_to_contain_text(b["id"])

            # The picture for the README: the leave page with the approved leave open.
            boss.get_by_test_id("view-leave").click()
            boss.get_by_test_id("leave-filter").select_option("")
            _leave_row(boss, a).click()
            expect(boss.get_by_test_id("leave-status")).to_have_text("已批准")
            boss.get_by_test_id("leave-subject").fill(b["id"])
            boss.get_by_test_id("leave-reason").fill("到外县工地务工")
            boss.get_by_test_id("leave-dest-search").fill(destination_name[:1])
            boss.wait_for_timeout(300)
            boss.screenshot(path=str(shot), full_page=True)

            # 销假: A reported back; the leave is closed with the note in its history.
            boss.get_by_test_id("leave-note").fill("本人已返回报到")
            boss.get_by_test_id("leave-close").click()
            expect(boss.get_by_test_id("leave-status")).to_have_text("已销假")
            expect(boss.get_by_test_id("leave-history")).to_contain_text("本人已返回报到")
            expect(boss.get_by_test_id("leave-close")).to_be_disabled()
            assert not errors, errors
    finally:
        engine.stop()
    OUTPUT.mkdir(exist_ok=True)
    shutil.copyfile(shot, OUTPUT / "leave.png")
    print(f"leave screenshot: {shot} (kept as {OUTPUT / 'leave.png'})")


# -- people ----------------------------------------------------------------------------------

def test_person_edit_onboarding_and_end_on_the_page(tmp_path, monkeypatch):
    """A bad edit shows every problem and changes nothing, a good one sets the level; an
    empty onboarding lists its problems, a complete one opens the new person; ending
    supervision takes two clicks and is kept."""
    _chromium()
    from playwright.sync_api import expect

    doc = population_document(12, seed=5)
    a, _ = _pair(doc)
    county = _offices(doc)[a["office"]]["parent"]
    config = _desk(tmp_path, monkeypatch, doc, [("county", county, "officer")])
    errors: list[str] = []
    engine = Engine(config)
    try:
        with _browser(engine) as (browser, url):
            page = _login(browser, url, "county", errors)
            page.get_by_test_id("view-people").click()
            page.get_by_test_id("people-search").fill(a["id"])
            _person_row(page, a).click()
            expect(page.get_by_test_id("person-level")).to_have_text("普管")
            expect(page.get_by_test_id("person")).to_contain_text(a["devices"][0])
            page.get_by_test_id("person-edit").click()
            form = page.get_by_test_id("person-form")
            expect(form).to_be_visible()
            page.get_by_test_id("pf-level").select_option("strict")
            page.get_by_test_id("pf-home-search").fill("999999")
            page.get_by_test_id("pf-home-search").press("Enter")
            page.get_by_test_id("pf-exclusions-search").fill("no-such-zone")
            page.get_by_test_id("pf-exclusions-search").press("Enter")
            page.get_by_test_id("pf-submit").click()
            problems = page.get_by_test_id("person-form-problems").locator("li")
            expect(problems).to_have_count(2)
            expect(page.get_by_test_id("person-form-problems")).to_contain_text("999999")
            expect(page.get_by_test_id("person-form-problems")).to_contain_text("no-such-zone")
            expect(page.get_by_test_id("person-form-error")).to_contain_text("2 处问题")
            expect(page.get_by_test_id("person-level")).to_have_text("普管")   # unchanged

            page.locator("[data-testid=pf-home-chosen] .chip[data-code='999999'] button").click()
            page.locator("[data-testid=pf-exclusions-chosen] .chip button").click()
            page.get_by_test_id("pf-submit").click()
            expect(form).to_be_hidden()
            expect(page.get_by_test_id("person-level")).to_have_text("严管")
            # Onboarding: an empty form lists every problem; a complete one opens the person.
            page.get_by_test_id("person-new").click()
            page.get_by_test_id("pf-id").fill("NEW-001")
            page.get_by_test_id("pf-submit").click()
            expect(page.get_by_test_id("person-form-error")).to_contain_text("处问题")
            expect(page.get_by_test_id("person-form-problems").locator("li")).not_to_have_count(0)
            page.get_by_test_id("pf-office").select_option(a["office"])
            page.get_by_test_id("pf-devices").fill("13912345678")
            page.get_by_test_id("pf-home-search").fill(county)
            page.get_by_test_id("pf-home-search").press("Enter")
            page.get_by_test_id("pf-level").select_option("loose")
            page.get_by_test_id("pf-submit").click()
            expect(form).to_be_hidden()
            expect(page.locator("#person-title")).to_have_text("NEW-001")
            expect(page.get_by_test_id("person-level")).to_have_text("宽管")
            expect(page.get_by_test_id("person")).to_contain_text("13912345678")
            _person_row(page, a).click()

            # From a person's page to the leave form, filled in for them.
            page.get_by_test_id("person-leave").click()
            expect(page.get_by_test_id("leave-form")).to_be_visible()
            expect(page.get_by_test_id("leave-subject")).to_have_value(a["id"])
            page.get_by_test_id("leave-dest-search").fill("370403")
            page.get_by_test_id("leave-dest-search").press("Enter")
            page.get_by_test_id("leave-reason").fill("探亲")
            page.get_by_test_id("leave-submit").click()
            expect(page.get_by_test_id("leave-status")).to_have_text("待审批")
            page.get_by_test_id("leave-cancel").click()             # 撤销 a pending request
            expect(page.get_by_test_id("leave-status")).to_have_text("已撤销")
            expect(page.get_by_test_id("leave-history")).to_contain_text("撤销")
            page.get_by_test_id("view-people").click()
            expect(page.get_by_test_id("person-leaves")
                   .locator("[data-testid=leave-row][data-status=cancelled]")).to_have_count(1)

            # Ending takes two clicks; the person leaves the list, shown under 只看已解除.
            page.get_by_test_id("person-end-note").fill("矫正期满，依法解除")
            page.get_by_test_id("person-end-button").click()
            page.get_by_test_id("person-end-confirm").click()
            expect(page.locator("#person-ended")).to_be_visible()
            expect(page.get_by_test_id("person-edit")).to_be_disabled()
            expect(_person_row(page, a)).to_have_count(0)
            page.locator("#people-ended").check()
            expect(_person_row(page, a)).to_contain_text("已解除")
            page.reload()                            # what the server kept, not the page
            expect(page.get_by_test_id("me-user")).to_have_text("county")
            page.get_by_test_id("view-people").click()
            page.locator("#people-ended").check()
            _person_row(page, a).click()
            expect(page.get_by_test_id("person-level")).to_have_text("严管")
            expect(page.locator("#person-ended")).to_be_visible()
            assert not errors, errors
    finally:
        engine.stop()


# -- viewer ----------------------------------------------------------------------------------

def test_a_viewer_sees_the_read_only_badge_and_no_write_control(tmp_path, monkeypatch):
    _chromium()
    from playwright.sync_api import expect

    doc = population_document(12, seed=5)
    a, _ = _pair(doc)
    county = _offices(doc)[a["office"]]["parent"]
    home, away, _, _ = _places(county)
    config = _desk(tmp_path, monkeypatch, doc, [("inspector", "3704", "viewer"),
                                                 ("officer", "3704", "officer")])
    plan = [home, home, away, away]
    errors: list[str] = []
    engine = Engine(config)
    try:
        with _browser(engine) as (browser, url):
            officer = _login(browser, url, "officer", errors)     # the same page, writable
            expect(officer.get_by_test_id("read-only")).to_be_hidden()
            officer.get_by_test_id("view-leave").click()
            expect(officer.get_by_test_id("leave-form")).to_be_visible()

            page = _login(browser, url, "inspector", errors)
            expect(page.get_by_test_id("read-only")).to_be_visible()
            expect(page.get_by_test_id("read-only")).to_have_text("只读")
            t0 = int(time.time() * 1000) - (len(plan) + 1) * STEP_MS
            times = [t0 + k * STEP_MS for k in range(len(plan))]
            _send(engine, a["devices"][0], plan, times)
            row = page.locator("[data-testid=alarm-row][data-alarm-id="
                               f"'{alarm_id(a['id'], 'zone_exit', times[-1])}']")
            row.click()
            expect(page.get_by_test_id("detail-status")).to_have_text("待处理")
            expect(page.get_by_test_id("history")).to_contain_text("产生")
            for control in ("ack-button", "resolve-button", "ack-note"):
                expect(page.get_by_test_id(control)).to_be_hidden()

            page.get_by_test_id("view-leave").click()
            expect(page.get_by_test_id("leave-view")).to_be_visible()
            expect(page.get_by_test_id("leave-filter")).to_have_value("pending")
            expect(page.get_by_test_id("leave-form")).to_be_hidden()
            page.get_by_test_id("view-people").click()
            expect(page.get_by_test_id("person-new")).to_be_hidden()
            _person_row(page, a).click()
            expect(page.get_by_test_id("person-level")).to_have_text("普管")
            for control in ("person-edit", "person-leave", "person-end-button"):
                expect(page.get_by_test_id(control)).to_be_hidden()
            page.get_by_test_id("view-audit").click()
            expect(page.get_by_test_id("audit-table")).to_be_visible()
            expect(page.get_by_test_id("audit-error")).to_have_text("")
            # No visible write control anywhere on any page: every one carries data-write.
            for view in ("alarms", "leave", "people", "audit"):
                page.get_by_test_id(f"view-{view}").click()
                visible = page.locator("[data-write]:visible, [data-write] :visible")
                expect(visible).to_have_count(0)
            assert not errors, errors
    finally:
        engine.stop()
