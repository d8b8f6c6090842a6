// 审计日志: who read or changed which person's data, when and from where (SPEC §11),
// filtered by subject, user and a start time; newest first as the server sends them.

import { api } from "./api.js";
import { fmtCst, parseCst } from "./dates.js";
import { $, el } from "./dom.js";
import { AUDIT_ACTION_NAMES, ROLE_NAMES, labelled } from "./format.js";
import { namedOffice } from "./names.js";

const AUDIT_LIMIT = 500;
let seq = 0;

export function setupAudit() {
  $("audit-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    loadAudit();
  });
}

export function resetAudit() {
  seq++;
  $("audit-rows").replaceChildren();
  $("audit-count").textContent = "";
}

export async function loadAudit() {
  const mine = ++seq;
  const error = $("audit-error");
  const since = parseCst($("audit-since").value);
  $("audit-rows").replaceChildren();            // never the last query's rows under new filters
  $("audit-count").textContent = "查询中…";
  try {
    const data = await api("/api/audit", { query: {
      subject: $("audit-subject").value.trim(), user: $("audit-user").value.trim(),
      since: Number.isFinite(since) ? since : "", limit: AUDIT_LIMIT,
    } });
    if (mine !== seq) return;
    error.textContent = "";
    const entries = data.entries || [];
    $("audit-count").textContent = `${entries.length} 条${entries.length >= AUDIT_LIMIT ? "（仅显示最近的）" : ""}`;
    $("audit-rows").replaceChildren(...(entries.length ? entries.map(auditRow)
      : [el("tr", {}, el("td", { colSpan: 8, class: "muted", text: "没有符合条件的记录" }))]));
  } catch (e) {
    if (mine !== seq || e.status === 401) return;
    error.textContent = e.status === 403 ? `无权查看审计日志：${e.message}`
      : `审计日志加载失败：${e.message}`;
  }
}

function auditRow(a) {
  return el("tr", { "data-testid": "audit-row", "data-action": a.action },
    el("td", { text: fmtCst(a.at_ms) }),
    el("td", { text: a.user || "—" }),
    el("td", { text: a.office ? namedOffice(a.office) : "—" }),
    el("td", { text: ROLE_NAMES[a.role] || a.role || "—" }),
    el("td", { text: labelled(AUDIT_ACTION_NAMES, a.action) }),
    el("td", { text: a.subject || "—" }),
    el("td", { text: a.address || "—" }),
    el("td", { text: a.detail || "" }));
}
