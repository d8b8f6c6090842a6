// 人员: the visible subjects and one person's page: level (严管/普管/宽管), home, zones,
// devices (shown only here, and only when the server sends them), this year's leaves
// with the days used, and ending supervision (解除矫正, two clicks). The onboarding and
// edit form is person-form.js.

import { api } from "./api.js";
import { cstYear, fmtCst } from "./dates.js";
import { $, el } from "./dom.js";
import { clearRefusal, showRefusal } from "./errors.js";
import { CATEGORY_NAMES, LEVEL_NAMES, RISK_NAMES, curfewText, labelled } from "./format.js";
import { leaveRow, selectLeave } from "./leaves.js";
import { handsetText, loadLatestLocate, renderLocates } from "./locate.js";
import { namedOffice, namedPlace } from "./names.js";
import { state } from "./state.js";
import { showView } from "./views.js";

export const people = { list: [], selected: null, doc: null, seq: 0, onEdit: () => {}, onLeave: () => {} };

export function setupPeople() {
  $("people-search").addEventListener("input", renderPeople);
  $("people-ended").addEventListener("change", loadPeople);
  $("person-edit").addEventListener("click", () => people.doc && people.onEdit(people.doc));
  $("person-leave").addEventListener("click", () => people.doc && people.onLeave(people.doc.id));
  $("person-end-button").addEventListener("click", () => {
    $("person-end-confirm").hidden = false;
    $("person-end-error").textContent = "解除后不再产生报警，请再次点击“确认解除”。";
  });
  $("person-end-confirm").addEventListener("click", endSupervision);
}

export function resetPeople() {
  Object.assign(people, { list: [], selected: null, doc: null });
  people.seq++;
  $("people-list").replaceChildren();
  renderPerson();
}

/** The subjects this user sees (with the ended ones when asked); also the form's names. */
export async function loadPeople() {
  const seq = ++people.seq;
  try {
    const data = await api("/api/subjects", { query: { ended: $("people-ended").checked ? 1 : "" } });
    if (seq !== people.seq) return;
    people.list = data.subjects || [];
    for (const s of people.list) state.subjects.set(s.id, s);
    fillSubjectOptions();
    $("people-error").textContent = "";
    renderPeople();
  } catch (e) {
    if (seq === people.seq && e.status !== 401) $("people-error").textContent = `名单加载失败：${e.message}`;
  }
}

/** The subjects' datalist behind every subject input (leave form, filters, audit). */
export function fillSubjectOptions() {
  $("subject-options").replaceChildren(...[...state.subjects.values()].map((s) =>
    el("option", { value: s.id, text: `${s.id} · ${namedOffice(s.office)}` })));
}

function renderPeople() {
  const q = $("people-search").value.trim().toLowerCase();
  const shown = people.list.filter((s) => !q || s.id.toLowerCase().includes(q) ||
    String(s.office).startsWith(q) || namedOffice(s.office).toLowerCase().includes(q));
  $("people-count").textContent = `${shown.length} 人`;
  $("people-list").replaceChildren(...shown.slice(0, 500).map((s) => el("li", {
    class: `person-row${s.id === people.selected ? " selected" : ""}${s.ended ? " ended" : ""}`,
    tabIndex: 0, "data-testid": "person-row", "data-subject": s.id,
    onclick: () => selectPerson(s.id),
    onkeydown: (e) => { if (e.key === "Enter") selectPerson(s.id); },
  },
  el("span", { class: "pr-id", text: s.id }),
  el("span", { class: `level lv-${s.level || "normal"}`, text: LEVEL_NAMES[s.level || "normal"] }),
  s.risk === "key" ? el("span", { class: "tag key", text: "重点" }) : null,
  s.ended ? el("span", { class: "tag", text: "已解除" }) : null,
  el("span", { class: "pr-office muted", text: namedOffice(s.office) }))));
}

/** Open a person's page (from the list, an alarm, or a leave). */
export async function selectPerson(id) {
  showView("people");
  people.selected = id;
  people.doc = state.subjects.get(id) || null;
  $("person-end-confirm").hidden = true;
  clearRefusal($("person-end-error"));
  renderPeople();
  renderPerson();
  loadLatestLocate(id);
  try {
    const doc = await api(`/api/subjects/${encodeURIComponent(id)}`);
    if (people.selected !== id) return;
    people.doc = doc;
    $("person-note").textContent = "";
  } catch (e) {
    if (people.selected !== id || e.status === 401) return;
    $("person-note").textContent = e.status === 404 ? "该人员不存在或不在本辖区"
      : `详情加载失败：${e.message}`;
  }
  renderPerson();
  loadPersonLeaves(id);
}

function renderPerson() {
  const doc = people.doc;
  $("person-empty").hidden = !!doc;
  $("person-body").hidden = !doc;
  renderLocates();
  if (!doc) return;
  const level = doc.level || "normal";
  $("person-title").textContent = doc.id;
  const badge = $("person-level");
  badge.className = `level lv-${level}`;
  badge.textContent = `${LEVEL_NAMES[level] || level}`;
  badge.dataset.level = level;
  $("person-ended").hidden = !doc.ended;
  const rows = [
    ["管理等级", labelled(LEVEL_NAMES, level)],
    ["主管单位", namedOffice(doc.office)],
    ["活动范围", (doc.home || []).map(namedPlace).join("、") || "—"],
    ["风险", labelled(RISK_NAMES, doc.risk)],
    ["矫正类别", labelled(CATEGORY_NAMES, doc.category)],
    ["禁止区域", (doc.exclusions || []).map(namedPlace).join("、") || "无"],
  ];
  if (doc.curfews) rows.push(["宵禁", doc.curfews.map(curfewText).join("；")]);
  if (doc.night_watch) rows.push(["昼伏夜出监测", "是"]);
  if (doc.devices) rows.push(["定位设备", doc.devices.join("、") || "—"]);
  if (doc.handset) rows.push(["手机状态", handsetText(doc.handset)]);
  if (doc.origin) rows.push(["委托", `由 ${namedOffice(doc.origin)} 委托 ${namedOffice(doc.office)} 监管`]);
  if (doc.ended) rows.push(["解除时间", fmtCst(doc.ended)]);
  $("person-fields").replaceChildren(...rows.flatMap(([k, v]) => [
    el("dt", { text: k }), el("dd", { text: v }),
  ]));
  $("person-edit").disabled = !!doc.ended;
  $("person-leave").disabled = !!doc.ended;
  $("person-end").hidden = !!doc.ended;
}

/** This year's leaves of the person, and the approved days used against the cap. */
export async function loadPersonLeaves(id) {
  const year = cstYear(Date.now());
  $("person-year").textContent = `${year} 年`;
  const list = $("person-leaves");
  try {
    const data = await api(`/api/subjects/${encodeURIComponent(id)}/leaves`, { query: { year } });
    if (people.selected !== id) return;
    $("person-days").textContent = `已批准外出 ${data.days_used} 天 / 全年上限 ${data.max_days_per_year} 天`;
    const rows = (data.leaves || []).map((d) => leaveRow(d, (leaveId) => {
      showView("leave");
      selectLeave(leaveId);
    }));
    list.replaceChildren(...(rows.length ? rows : [el("li", { class: "muted empty", text: "本年度没有外出记录" })]));
  } catch (e) {
    if (people.selected !== id || e.status === 401) return;
    $("person-days").textContent = "";
    list.replaceChildren(el("li", { class: "form-error", text: `外出记录加载失败：${e.message}` }));
  }
}

async function endSupervision() {
  const doc = people.doc;
  if (!doc) return;
  const button = $("person-end-confirm");
  button.disabled = true;
  try {
    await api(`/api/subjects/${encodeURIComponent(doc.id)}/end`, {
      method: "POST", body: { note: $("person-end-note").value.trim() },
    });
    $("person-end-note").value = "";
    $("person-end-error").textContent = "";
    button.hidden = true;
    await loadPeople();
    await selectPerson(doc.id);
  } catch (e) {
    if (e.status !== 401) showRefusal(e, "解除矫正", $("person-end-error"));
  } finally {
    button.disabled = false;
  }
}
