// The leave form (新建外出申请): subject, destinations picked by name or code, start and
// end in Beijing time, reason, and optionally a standing permit for cross-county work
// (weekdays, daily hours, until a date). Checks what it can before sending; the server's
// caps and authority (422 / 403 with a reason) are shown as it words them.

import { api } from "./api.js";
import { DAY_MS, cstDateValue, cstInputValue, parseCst } from "./dates.js";
import { $, el } from "./dom.js";
import { clearRefusal, showRefusal } from "./errors.js";
import { WEEKDAY_NAMES } from "./format.js";
import { leaves, loadLeaves, selectLeave } from "./leaves.js";
import { namedOffice } from "./names.js";
import { PlacePicker } from "./picker.js";
import { state } from "./state.js";

const MINUTE_MS = 60_000;
let destinations = null;

export function setupLeaveForm() {
  destinations = new PlacePicker($("leave-destinations"), {
    levels: ["county", "township"], testid: "leave-dest", placeholder: "输入区县、乡镇名称或代码",
  });
  $("leave-weekdays").replaceChildren(...[1, 2, 3, 4, 5, 6, 7].map((d) => el("label",
    { class: "check" },
    el("input", { type: "checkbox", name: "leave-day", value: String(d), checked: d <= 5 }),
    ` ${WEEKDAY_NAMES[d]}`)));
  $("leave-standing").addEventListener("change", () => {
    $("leave-recurring").hidden = !$("leave-standing").checked;
    showDays();
  });
  for (const id of ["leave-start", "leave-end", "leave-until"])
    $(id).addEventListener("input", showDays);
  $("leave-subject").addEventListener("change", showSubject);
  $("leave-form").addEventListener("submit", submit);
}

/** An empty form: from now (to the minute) for one day; `subject` filled in if given. */
export function resetLeaveForm(subject = "") {
  const start = Math.floor(Date.now() / MINUTE_MS) * MINUTE_MS;
  $("leave-subject").value = subject;
  destinations.clear();
  $("leave-start").value = cstInputValue(start);
  $("leave-end").value = cstInputValue(start + DAY_MS);
  $("leave-until").value = cstDateValue(start + 90 * DAY_MS);
  $("leave-reason").value = "";
  $("leave-standing").checked = false;
  $("leave-recurring").hidden = true;
  $("leave-form-ok").textContent = "";
  clearRefusal($("leave-form-error"), $("leave-form-problems"));
  showSubject();
  showDays();
}

function showSubject() {
  const s = state.subjects.get($("leave-subject").value.trim());
  $("leave-subject-note").textContent = s ? `主管：${namedOffice(s.office)}` : "";
}

/** The request the form describes, or a list of what is missing. */
function request() {
  const missing = [];
  const subject = $("leave-subject").value.trim();
  if (!subject) missing.push("请填写矫正对象");
  else if (state.subjects.size && !state.subjects.has(subject))
    missing.push(`矫正对象 ${subject} 不在本辖区名单中`);
  const codes = destinations.codes;
  if (!codes.length) missing.push("请选择至少一个目的地");
  const start = parseCst($("leave-start").value);
  let end = parseCst($("leave-end").value);
  if (!Number.isFinite(start)) missing.push("请填写开始时间");
  const body = { subject, destinations: codes, start_ms: start, end_ms: end,
    reason: $("leave-reason").value.trim() };
  if ($("leave-standing").checked) {
    const days = [...document.querySelectorAll("input[name=leave-day]:checked")]
      .map((i) => Number(i.value));
    if (!days.length) missing.push("长期外出请至少选择一个星期几");
    const until = parseCst($("leave-until").value);
    if (!Number.isFinite(until)) missing.push("请填写长期外出的有效期");
    else {
      end = until + DAY_MS;          // through the whole last day
      body.end_ms = end;
      body.until_ms = end;
    }
    body.recurring = { days, from: $("leave-from").value, to: $("leave-to").value };
  } else if (!Number.isFinite(end)) missing.push("请填写结束时间");
  if (Number.isFinite(start) && Number.isFinite(end) && end <= start)
    missing.push("结束时间须晚于开始时间");
  if (!body.reason) missing.push("请填写事由");
  return { body, missing };
}

function showDays() {
  const { body } = request();
  const span = body.end_ms - body.start_ms;
  $("leave-days").textContent = Number.isFinite(span) && span > 0
    ? `共 ${Math.ceil(span / DAY_MS)} 天（不足一天按一天计）` : "";
}

async function submit(event) {
  event.preventDefault();
  const error = $("leave-form-error");
  const problems = $("leave-form-problems");
  $("leave-form-ok").textContent = "";
  clearRefusal(error, problems);
  const { body, missing } = request();
  if (missing.length) {
    error.textContent = "请补全申请：";
    problems.replaceChildren(...missing.map((m) => el("li", { text: m })));
    return;
  }
  const button = event.submitter || $("leave-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const doc = await api("/api/leaves", { method: "POST", body });
    resetLeaveForm();
    $("leave-form-ok").textContent = `已提交（编号 ${doc.id}），待 ${namedOffice(doc.approver)} 审批`;
    if ($("leave-filter").value === "mine") $("leave-filter").value = "pending";
    leaves.changed(body.subject);
    await loadLeaves();
    await selectLeave(doc.id);
  } catch (e) {
    if (e.status !== 401) showRefusal(e, "提交", error, problems);
  } finally {
    button.disabled = false;
  }
}
