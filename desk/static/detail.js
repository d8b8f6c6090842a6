// The detail panel: selecting an alarm, its fields, its history (处理记录), and the
// subjects' risk and category shown there.

import { rows } from "./alarm-list.js";
import { renderAll } from "./alarms.js";
import { api } from "./api.js";
import { $, el } from "./dom.js";
import {
  ACTION_NAMES, CATEGORY_NAMES, HANDSET_NAMES, LEVEL_NAMES, RISK_NAMES, SEVERITY_NAMES, STATUS_NAMES,
  fixText, fmtDuration, fmtTime, plain, typeName,
} from "./format.js";
import { loadLatestLocate, renderLocates } from "./locate.js";
import { centerOnAlarm } from "./map-alarms.js";
import { track } from "./map-track.js";
import { namedOffice, namedPlace, whereText } from "./names.js";
import { selectPerson } from "./people.js";
import { UNACKED_STATUSES, state, upsert } from "./state.js";

const DETAIL_KEYS_SHOWN = new Set([
  "exit_id", "exit_alarm", "copy_to", "escalated_to", "escalation_level", "repeats", "last", "permit",
  "carrier", "zone", "silent_for_s", "process", "store", "kind", "reason", "handset", "since",
]);
// engine_fault: which store failed, and how (details.store, details.kind)
const STORE_NAMES = { fixes: "定位数据库", evaluation: "研判数据库", alarms: "报警数据库" };
const FAULT_NAMES = {
  missing: "文件被删除或移走", replaced: "文件被替换", disk_full: "磁盘已满",
  read_only: "文件系统只读", io_error: "磁盘读写错误", other: "无法写入",
};
const HISTORY_DELAY_MS = 250;

export function select(id, { focusRow = false, center = true } = {}) {
  state.selected = id;
  state.fresh.delete(id);
  $("action-error").textContent = "";
  renderAll();
  renderDetail();
  refreshHistory(id);
  const doc = state.alarms.get(id);
  if (doc && doc.subject) loadLatestLocate(doc.subject);
  if (center) centerOnAlarm(id);
  const row = rows().find((r) => r.dataset.alarmId === id);
  if (row) {
    row.scrollIntoView({ block: "nearest" });
    if (focusRow) row.focus();
  }
}

/** Fetch the alarm with its history; show both if it is still the one selected. */
export async function refreshHistory(id) {
  try {
    const doc = await api(`/api/alarms/${encodeURIComponent(id)}`);
    if (id !== state.selected) return;
    const history = doc.history || [];
    shownEpisode = { id, episode: doc.episode || {} };
    delete doc.history;
    delete doc.episode;
    if (upsert(doc)) renderAll();
    renderDetail();
    renderHistory(history);
  } catch (e) {
    if (id !== state.selected || e.status === 401) return;
    $("history").replaceChildren(el("li", {
      class: "form-error",
      text: e.status === 404 ? "该报警不存在或不在本辖区" : `处理记录加载失败：${e.message}`,
    }));
  }
}

let historyTimer = 0;
// Where the alarm shown stands in its episode (the detail API's `episode`): not part of
// the alarm document, so kept beside it rather than merged into the live state.
let shownEpisode = { id: null, episode: {} };

/** Refresh the history shortly (a live change to the selected alarm). */
export function scheduleHistoryRefresh(id) {
  clearTimeout(historyTimer);
  historyTimer = setTimeout(() => refreshHistory(id), HISTORY_DELAY_MS);
}

export function cancelHistoryRefresh() {
  clearTimeout(historyTimer);
  historyTimer = 0;
}

export function renderDetail() {
  const doc = state.selected ? state.alarms.get(state.selected) : null;
  $("detail-empty").hidden = !!doc;
  $("detail-body").hidden = !doc;
  renderLocates();
  if (!doc) return;
  const sev = $("detail-sev");
  sev.className = `badge sev-${doc.severity}`;
  sev.textContent = SEVERITY_NAMES[doc.severity] || doc.severity;
  $("detail-title").textContent = `${typeName(doc.type)} · ${doc.subject ||
    (doc.type === "engine_fault" ? "引擎" : "运营商数据")}`;
  const status = $("detail-status");
  status.className = `status st-${doc.status}`;
  status.textContent = STATUS_NAMES[doc.status] || doc.status;
  status.dataset.status = doc.status;
  $("detail-fields").replaceChildren(...detailFields(doc).flatMap(([k, v]) => [
    el("dt", { text: k }), el("dd", {}, v),
  ]));
  $("ack-button").disabled = !UNACKED_STATUSES.includes(doc.status);
  $("resolve-button").disabled = doc.status === "resolved";
  $("ack-note").disabled = doc.status === "resolved";
  $("track-show").disabled = !doc.subject;
  const trackFor = track.subject;
  $("track-clear").disabled = !trackFor;
}

function detailFields(doc) {
  const d = doc.details || {};
  const rows = [];
  const add = (k, v) => rows.push([k, v instanceof Node ? v : String(v)]);
  add("报警编号", el("code", { text: doc.id }));
  if (doc.subject) {
    const s = state.subjects.get(doc.subject);
    const extra = s ? [RISK_NAMES[s.risk] || s.risk, CATEGORY_NAMES[s.category] || s.category]
      .filter(Boolean).join(" · ") : "";
    const level = s && s.level ? LEVEL_NAMES[s.level] : "";
    const who = [extra, level].filter(Boolean).join(" · ");
    add("矫正对象", el("span", {}, who ? `${doc.subject}（${who}）` : doc.subject, " ",
      el("button", { type: "button", class: "link", text: "人员页", "data-testid": "open-person",
        onclick: () => selectPerson(doc.subject) })));
    if (s && s.origin) add("委托", `由 ${namedOffice(s.origin)} 委托 ${namedOffice(s.office)} 监管`);
  }
  add("主管单位", namedOffice(doc.office));
  if (d.copy_to && d.copy_to.length) add("抄送", d.copy_to.map(namedOffice).join("、"));
  if (d.escalated_to)
    add("已升级至", `${namedOffice(d.escalated_to)}${d.escalation_level ? `（第 ${d.escalation_level} 级）` : ""}`);
  add("事件时间", fmtTime(doc.t));
  add("报警时间", fmtTime(doc.raised_at));
  add("所在位置", whereText(doc));
  if (doc.fix) {
    add("定位", fixText(doc.fix));
    if (doc.fix.t !== doc.t) add("定位时间", fmtTime(doc.fix.t));
  }
  if (doc.home && doc.home.length) add("活动范围", doc.home.map(namedPlace).join("、"));
  if (d.zone !== undefined) add("禁止区域", namedPlace(d.zone));
  if (d.permit !== undefined) add("外出审批", plain(d.permit));
  if (d.carrier) add("运营商", d.carrier);
  if (d.silent_for_s !== undefined) add("失联时长", fmtDuration(d.silent_for_s));
  if (d.handset !== undefined) add("手机状态", HANDSET_NAMES[d.handset] || plain(d.handset));
  if (d.since !== undefined) add("状态开始", Number.isFinite(Number(d.since)) ? fmtTime(d.since) : plain(d.since));
  if (d.process) add("进程", d.process);
  if (d.store) add("存储", STORE_NAMES[d.store] || d.store);
  if (d.kind) add("故障", FAULT_NAMES[d.kind] || d.kind);
  if (d.reason) add("原因及处理", d.reason);
  if (d.repeats) {
    const last = d.last || {};
    const lastWhere = last.where && last.where.code ? namedPlace(last.where.code)
      : last.fix ? "辖区外" : "";
    add("重复", `${d.repeats} 次；最近 ${fmtTime(last.t)}${lastWhere ? ` · ${lastWhere}` : ""}`);
    if (last.fix) add("最近定位", `${fixText(last.fix)} · ${fmtTime(last.fix.t)}`);
  }
  const ep = shownEpisode.id === doc.id ? shownEpisode.episode : {};
  if (d.exit_id) add("对应越界", alarmLink(ep.exit || d.exit_alarm || d.exit_id, "查看越界报警"));
  if (ep.ended) {
    add("事件结束", el("span", { "data-testid": "episode-ended" }, fmtTime(ep.ended), " ",
      alarmLink(ep.ended_by, doc.type === "zone_exit" ? "查看返回报警" : "查看恢复报警")));
  }
  for (const [k, v] of Object.entries(d)) if (!DETAIL_KEYS_SHOWN.has(k)) add(k, plain(v));
  return rows;
}

/** A button selecting another alarm (an exit, the return that ended it), or its id when
 * that alarm is not among those loaded. */
function alarmLink(id, label) {
  if (!state.alarms.has(id)) return el("code", { text: id });
  return el("button", {
    type: "button", class: "link", text: `${label} ${id.slice(0, 8)}…`,
    onclick: () => select(id),
  });
}

function renderHistory(history) {
  const list = $("history");
  if (!history.length) {
    list.replaceChildren(el("li", { class: "muted", text: "暂无记录" }));
    return;
  }
  list.replaceChildren(...history.map((h) => el("li", { class: `act-${h.action}` },
    el("span", { class: "h-time", text: fmtTime(h.at) }),
    el("span", { class: "h-action", text: ACTION_NAMES[h.action] || h.action }),
    el("span", { class: "h-who", text: [h.user || "系统", h.office ? namedOffice(h.office) : ""]
      .filter(Boolean).join(" · ") }),
    h.note ? el("p", { class: "h-note", text: h.note }) : null,
  )));
}

export async function loadSubjects() {
  try {
    const data = await api("/api/subjects");
    for (const s of data.subjects || []) state.subjects.set(s.id, s);
    renderDetail();
  } catch (e) {
    // Subjects only add risk and category to the detail panel.
  }
}
