// The list's three filters (office, type, status): filling them and testing a doc.

import { $, el } from "./dom.js";
import { STATUS_NAMES, TYPE_NAMES } from "./format.js";
import { isUnder } from "./names.js";
import { ACTIVE_STATUSES } from "./state.js";

export function fillFilters(offices) {
  const office = $("filter-office");
  office.replaceChildren(el("option", { value: "", text: "全部（本辖区）" }));
  for (const { o, depth } of officeTree(offices)) {
    office.append(el("option", {
      value: o.code, text: `${"\u3000".repeat(depth)}${o.name} ${o.code}`,
    }));
  }
  const type = $("filter-type");
  type.replaceChildren(el("option", { value: "", text: "全部类型" }));
  for (const [k, v] of Object.entries(TYPE_NAMES)) type.append(el("option", { value: k, text: v }));
  const status = $("filter-status");
  status.replaceChildren(
    el("option", { value: "active", text: "未办结", title: "待处理、已升级、已确认" }),
    el("option", { value: "", text: "全部状态" }),
  );
  for (const k of ["open", "escalated", "acknowledged", "resolved"])
    status.append(el("option", { value: k, text: STATUS_NAMES[k] }));
  status.value = "active";
}

/** Offices in depth-first order under their parents (roots: parent not in the list). */
function officeTree(offices) {
  const codes = new Set(offices.map((o) => String(o.code)));
  const children = new Map();
  for (const o of offices) {
    const p = o.parent && codes.has(String(o.parent)) ? String(o.parent) : "";
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(o);
  }
  for (const list of children.values())
    list.sort((a, b) => String(a.code).localeCompare(String(b.code)));
  const out = [];
  const walk = (p, depth) => {
    for (const o of children.get(p) || []) {
      out.push({ o, depth });
      walk(String(o.code), depth + 1);
    }
  };
  walk("", 0);
  return out;
}

/** The filters' current values: {office, type, status} ("active": any unfinished status). */
export function filters() {
  return {
    office: $("filter-office").value,
    type: $("filter-type").value,
    status: $("filter-status").value,
  };
}

/** Does the doc pass the filters? (The office filter also matches copies and escalations.) */
export function matches(doc, f = filters()) {
  if (f.type && doc.type !== f.type) return false;
  if (f.status === "active" && !ACTIVE_STATUSES.includes(doc.status)) return false;
  if (f.status && f.status !== "active" && doc.status !== f.status) return false;
  if (f.office) {
    const d = doc.details || {};
    const offices = [doc.office, d.escalated_to, ...(d.copy_to || [])];
    if (!offices.some((o) => o && isUnder(o, f.office))) return false;
  }
  return true;
}
