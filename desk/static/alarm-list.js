// The alarm list: one row per alarm, newest first, redrawn in place (a row is rebuilt
// only when what it shows changed), with listbox keyboard navigation.

import { $, el } from "./dom.js";
import { SEVERITY_NAMES, STATUS_NAMES, fmtTime, typeName } from "./format.js";
import { filters, matches } from "./filters.js";
import { namedOffice, officeName, placeName, whereText } from "./names.js";
import { LIST_LIMIT, newestFirst, state } from "./state.js";

const rowCache = new Map();   // id -> {li, key}

/** Listen for clicks and keys; `onSelect(id, {focusRow})` opens an alarm. */
export function setupAlarmList(onSelect) {
  const list = $("alarm-list");
  list.setAttribute("role", "listbox");
  list.addEventListener("click", (event) => {
    const li = event.target.closest(".alarm-row");
    if (li) onSelect(li.dataset.alarmId, { focusRow: false });
  });
  list.addEventListener("keydown", (event) => onListKey(event, onSelect));
}

export function clearList() {
  $("alarm-list").replaceChildren();
  rowCache.clear();
}

export function renderList() {
  const f = filters();
  const docs = [...state.alarms.values()].filter((d) => matches(d, f)).sort(newestFirst);
  const shown = docs.slice(0, LIST_LIMIT);
  const list = $("alarm-list");
  const keep = new Set(shown.map((d) => d.id));
  for (const [id, row] of rowCache) {
    if (!keep.has(id)) {
      row.li.remove();
      rowCache.delete(id);
    }
  }
  let cursor = list.firstElementChild;
  for (const doc of shown) {
    const li = renderRow(doc);
    if (li !== cursor) list.insertBefore(li, cursor);
    else cursor = cursor.nextElementSibling;
  }
  updateRovingFocus();
  $("list-count").textContent = docs.length > LIST_LIMIT
    ? `最新 ${LIST_LIMIT} 条（共 ${docs.length} 条）` : `${docs.length} 条`;
  if (!shown.length) list.append(el("li", { class: "empty muted", text: "没有符合条件的报警" }));
  else for (const e of list.querySelectorAll(".empty")) e.remove();
}

function rowKey(doc) {
  return JSON.stringify([doc.status, doc.details, doc.where, state.fresh.has(doc.id),
    state.selected === doc.id, officeName(doc.office)]);
}

function renderRow(doc) {
  const key = rowKey(doc);
  const cached = rowCache.get(doc.id);
  if (cached && cached.key === key) return cached.li;
  const li = cached ? cached.li : el("li", { role: "option", tabIndex: -1 });
  li.className = `alarm-row sev-${doc.severity} st-${doc.status}` +
    (state.fresh.has(doc.id) ? " fresh" : "") + (state.selected === doc.id ? " selected" : "");
  li.dataset.testid = "alarm-row";
  li.dataset.alarmId = doc.id;
  li.dataset.status = doc.status;
  li.setAttribute("aria-selected", String(state.selected === doc.id));
  const d = doc.details || {};
  const where = whereText(doc);
  li.replaceChildren(...[
    el("span", { class: "bar", "aria-hidden": "true" }),
    el("span", { class: `badge sev-${doc.severity}`, text: SEVERITY_NAMES[doc.severity] || doc.severity }),
    el("span", { class: "type", text: typeName(doc.type) }),
    el("span", { class: "subject", text: doc.subject || d.carrier || d.process || "—",
      title: doc.subject ? `矫正对象 ${doc.subject}` : d.carrier ? `运营商 ${d.carrier}`
        : d.process ? `引擎进程 ${d.process}` : null }),
    nameAndCode("office", officeName(doc.office), doc.office, `主管单位 ${namedOffice(doc.office)}`),
    el("span", { class: `status st-${doc.status}`, text: STATUS_NAMES[doc.status] || doc.status }),
    el("span", { class: "meta" }, ...[
      el("span", { class: "time", text: fmtTime(doc.t), title: `报警时间 ${fmtTime(doc.raised_at)}` }),
      doc.where && doc.where.code
        ? nameAndCode("where", doc.where.name || placeName(doc.where.code), doc.where.code,
          `所在位置 ${where}`)
        : el("span", { class: `where${doc.fix ? " outside" : ""}`, text: where }),
      d.repeats ? el("span", { class: "repeats", text: `重复 ${d.repeats} 次`,
        title: `最近一次 ${fmtTime(d.last && d.last.t)}` }) : null,
      d.escalated_to ? el("span", { class: "escalated", text: `↑ ${namedOffice(d.escalated_to)}`,
        title: `已升级至 ${namedOffice(d.escalated_to)}` }) : null,
    ].filter(Boolean)),
  ].filter(Boolean));
  rowCache.set(doc.id, { li, key });
  return li;
}

/** A name that may be cut short (…) next to a code that never is. */
function nameAndCode(cls, name, code, title) {
  return el("span", { class: `${cls} nc`, title },
    name ? el("span", { class: "n", text: name }) : null,
    el("span", { class: "c", text: String(code ?? "—") }));
}

/** The list's alarm rows, top to bottom. */
export function rows() {
  return [...$("alarm-list").querySelectorAll(".alarm-row")];
}

function updateRovingFocus() {
  const all = rows();
  if (!all.length) return;
  const current = all.find((r) => r.tabIndex === 0) || null;
  const target = all.find((r) => r.dataset.alarmId === state.selected) || current || all[0];
  for (const r of all) r.tabIndex = r === target ? 0 : -1;
}

function onListKey(event, onSelect) {
  const li = event.target.closest(".alarm-row");
  if (!li) return;
  const all = rows();
  const i = all.indexOf(li);
  let next = null;
  if (event.key === "ArrowDown") next = all[i + 1];
  else if (event.key === "ArrowUp") next = all[i - 1];
  else if (event.key === "Home") next = all[0];
  else if (event.key === "End") next = all[all.length - 1];
  else if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    onSelect(li.dataset.alarmId, { focusRow: true });
    return;
  } else return;
  event.preventDefault();
  if (next) {
    for (const r of all) r.tabIndex = r === next ? 0 : -1;
    next.focus();
  }
}
