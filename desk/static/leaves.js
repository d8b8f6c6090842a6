// The leave list (请假记录) and one leave: its fields, its steps (审批记录), and approve /
// reject / cancel / close (销假) with a note. The server decides who may do what (403 with
// its reason is shown in words); the buttons only follow the leave's state and
// `can_approve`. Imported permits (source "import") are read-only here.

import { api } from "./api.js";
import { fmtCst, hhmm } from "./dates.js";
import { $, el } from "./dom.js";
import { clearRefusal, showRefusal } from "./errors.js";
import { LEAVE_ACTION_NAMES, LEAVE_STATUS_NAMES, WEEKDAY_NAMES } from "./format.js";
import { namedOffice, namedPlace } from "./names.js";
import { isReadOnly } from "./views.js";

const ACTION_WORDS = { approve: "批准", reject: "驳回", cancel: "撤销", close: "销假" };
export const leaves = { list: [], selected: null, doc: null, loadSeq: 0, changed: () => {} };

export function setupLeaves() {
  $("leave-filter").addEventListener("change", loadLeaves);
  $("leave-filter-subject").addEventListener("change", loadLeaves);
  for (const action of Object.keys(ACTION_WORDS))
    $(`leave-${action}`).addEventListener("click", () => leaveAction(action));
}

export function resetLeaves() {
  leaves.list = [];
  leaves.selected = null;
  leaves.doc = null;
  leaves.loadSeq++;
  $("leave-filter").value = "mine";
  $("leave-filter-subject").value = "";
  $("leave-list").replaceChildren();
  $("leave-count").textContent = "";
  showMine(0);
  renderLeave();
}

export async function loadLeaves() {
  const seq = ++leaves.loadSeq;
  const error = $("leave-list-error");
  try {
    if (isReadOnly() && $("leave-filter").value === "mine") $("leave-filter").value = "pending";
    const filter = $("leave-filter").value;     // "mine": pending ones this user may approve
    const data = await api("/api/leaves", { query: {
      status: filter === "mine" ? "pending" : filter,
      subject: $("leave-filter-subject").value.trim(),
    } });
    if (seq !== leaves.loadSeq) return;
    error.textContent = "";
    leaves.list = (data.leaves || []).filter((d) => filter !== "mine" || d.can_approve);
    if (filter === "mine" && !$("leave-filter-subject").value.trim()) showMine(leaves.list.length);
    renderList();
  } catch (e) {
    if (seq !== leaves.loadSeq || e.status === 401) return;
    error.textContent = `请假记录加载失败：${e.message}`;
  }
}

// Leave changes have no live stream: while logged in the count is refreshed, and the
// list too while the leave page is open (reads of a whole list are not audited).
const POLL_MS = 30_000;
let pollTimer = 0;

export function startLeavePolling() {
  stopLeavePolling();
  pollTimer = setInterval(() => {
    countMine();
    if ($("desk-view").dataset.view === "leave" && !$("leave-filter-subject").value.trim())
      loadLeaves();
  }, POLL_MS);
}

export function stopLeavePolling() {
  clearInterval(pollTimer);
  pollTimer = 0;
}

/** How many pending leaves this user may approve, on the 外出请假 button (not for viewers). */
export async function countMine() {
  if (isReadOnly()) return showMine(0);
  const seq = leaves.loadSeq;
  try {
    const data = await api("/api/leaves", { query: { status: "pending" } });
    if (seq === leaves.loadSeq) showMine((data.leaves || []).filter((d) => d.can_approve).length);
  } catch (e) {
    // The count is a hint; the list says what failed when it is opened.
  }
}

function showMine(n) {
  const badge = $("leave-mine");
  badge.hidden = !n;
  badge.textContent = n ? String(n) : "";
}

/** "MM-DD HH:MM 至 MM-DD HH:MM" in Beijing time, and the weekly window if standing. */
export function windowText(doc) {
  let text = `${fmtCst(doc.start_ms)} 至 ${fmtCst(doc.end_ms)}`;
  const r = doc.recurring;
  if (r) {
    const days = (r.days || []).map((d) => WEEKDAY_NAMES[d] || d).join("、");
    text += `；每周${days} ${hhmm(r.from ?? r.from_min)}–${hhmm(r.to ?? r.to_min)}`;
  }
  return text;
}

export const destinationsText = (doc) => (doc.destinations || []).map(namedPlace).join("、") || "—";

/** A leave as a list row (also used on a person's page). */
export function leaveRow(doc, onPick) {
  const pending = doc.status === "pending";
  return el("li", {
    class: `leave-row ls-${doc.status}${doc.id === leaves.selected ? " selected" : ""}`,
    tabIndex: 0, "data-testid": "leave-row", "data-leave-id": doc.id,
    "data-status": doc.status, "data-subject": doc.subject,
    onclick: () => onPick(doc.id),
    onkeydown: (e) => { if (e.key === "Enter") onPick(doc.id); },
  },
  el("span", { class: `status ls ls-${doc.status}`,
    text: LEAVE_STATUS_NAMES[doc.status] || doc.status }),
  el("span", { class: "lr-subject", text: doc.subject }),
  el("span", { class: "lr-days", text: `${doc.days ?? "?"} 天` }),
  pending && doc.can_approve ? el("span", { class: "mine", text: "可审批" }) : null,
  doc.recurring ? el("span", { class: "tag", text: "长期" }) : null,
  doc.source === "import" ? el("span", { class: "tag", text: "导入" }) : null,
  el("span", { class: "lr-where", text: `目的地：${destinationsText(doc)}` }),
  el("span", { class: "lr-window muted", text: windowText(doc) }));
}

function renderList() {
  $("leave-count").textContent = `${leaves.list.length} 条`;
  const list = $("leave-list");
  if (!leaves.list.length) {
    list.replaceChildren(el("li", { class: "muted empty", text: "没有符合条件的请假" }));
    return;
  }
  list.replaceChildren(...leaves.list.map((d) => leaveRow(d, selectLeave)));
}

export async function selectLeave(id, { keepMessage = false } = {}) {
  leaves.selected = id;
  if (!keepMessage) clearRefusal($("leave-error"));
  renderList();
  try {
    const doc = await api(`/api/leaves/${encodeURIComponent(id)}`);
    if (leaves.selected !== id) return;
    leaves.doc = doc;
    const i = leaves.list.findIndex((d) => d.id === id);
    if (i >= 0) leaves.list[i] = doc;
  } catch (e) {
    if (leaves.selected !== id || e.status === 401) return;
    leaves.doc = leaves.list.find((d) => d.id === id) || null;
    $("leave-error").textContent = e.status === 404 ? "该请假不存在或不在本辖区"
      : `加载失败：${e.message}`;
  }
  renderList();
  renderLeave();
}

function renderLeave() {
  const doc = leaves.doc;
  $("leave-empty").hidden = !!doc;
  $("leave-body").hidden = !doc;
  if (!doc) return;
  $("leave-title").textContent = `外出请假 · ${doc.subject}`;
  const status = $("leave-status");
  status.className = `status ls ls-${doc.status}`;
  status.textContent = LEAVE_STATUS_NAMES[doc.status] || doc.status;
  status.dataset.status = doc.status;
  const rows = [
    ["编号", el("code", { text: doc.id })],
    ["矫正对象", doc.subject],
    ["主管单位", namedOffice(doc.office)],
    ["目的地", destinationsText(doc)],
    ["时间", windowText(doc)],
    ["天数", `${doc.days ?? "?"} 天`],
    ["事由", doc.reason || "—"],
    ["审批单位", doc.approver ? namedOffice(doc.approver) : "—"],
    ["申请人", doc.requested_by ? `${doc.requested_by} · ${fmtCst(doc.requested_ms)}` : "—"],
    ["来源", doc.source === "import" ? "登记导入（只读）" : "巡查台"],
  ];
  if (doc.closed_ms) rows.push(["销假时间", fmtCst(doc.closed_ms)]);
  if (doc.permit) rows.push(["外出许可", el("code", { text: doc.permit })]);
  $("leave-fields").replaceChildren(...rows.flatMap(([k, v]) => [
    el("dt", { text: k }), el("dd", {}, v),
  ]));
  const now = Date.now();
  const editable = doc.source !== "import" && !isReadOnly();
  const enable = {
    approve: doc.status === "pending" && !!doc.can_approve,
    reject: doc.status === "pending" && !!doc.can_approve,
    cancel: doc.status === "pending" || (doc.status === "approved" && doc.start_ms > now),
    close: doc.status === "approved" && doc.start_ms <= now,
  };
  $("leave-actions").hidden = !editable;
  for (const [action, on] of Object.entries(enable)) $(`leave-${action}`).disabled = !on;
  renderSteps(doc.history || []);
}

function renderSteps(history) {
  const list = $("leave-history");
  if (!history.length) {
    list.replaceChildren(el("li", { class: "muted", text: "暂无记录" }));
    return;
  }
  list.replaceChildren(...history.map((h) => el("li", { class: `act-${h.action}` },
    el("span", { class: "h-time", text: fmtCst(h.at_ms ?? h.at) }),
    el("span", { class: "h-action", text: LEAVE_ACTION_NAMES[h.action] || h.action }),
    el("span", { class: "h-who", text: [h.user || "系统", h.office ? namedOffice(h.office) : ""]
      .filter(Boolean).join(" · ") }),
    h.note ? el("p", { class: "h-note", text: h.note }) : null)));
}

async function leaveAction(action) {
  const doc = leaves.doc;
  if (!doc) return;
  const note = $("leave-note").value.trim();
  const error = $("leave-error");
  if (action === "reject" && !note) {
    error.textContent = "驳回时请填写理由";
    $("leave-note").focus();
    return;
  }
  clearRefusal(error);
  const buttons = Object.keys(ACTION_WORDS).map((a) => $(`leave-${a}`));
  for (const b of buttons) b.disabled = true;
  try {
    const updated = await api(`/api/leaves/${encodeURIComponent(doc.id)}/${action}`,
      { method: "POST", body: { note } });
    $("leave-note").value = "";
    if (updated && updated.id) leaves.doc = updated;
    leaves.changed(doc.subject);
  } catch (e) {
    if (e.status === 401) return;
    showRefusal(e, ACTION_WORDS[action], error);
  }
  renderLeave();
  await loadLeaves();
  if (leaves.selected === doc.id) await selectLeave(doc.id, { keepMessage: true });
  countMine();
}
