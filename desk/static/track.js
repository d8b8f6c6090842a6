// The detail panel's track buttons: load a subject's last 24 h of fixes and draw them, or
// clear them. Handset status reports (关机, 停机, 无法接通: entries without a position)
// are listed under the note, newest first.

import { api } from "./api.js";
import { renderDetail } from "./detail.js";
import { $, el } from "./dom.js";
import { HANDSET_NAMES, fmtTime } from "./format.js";
import { drawTrack, eraseTrack, track } from "./map-track.js";
import { state } from "./state.js";

const STATUS_SHOWN = 20;

/** Show `subject`'s track (default: the selected alarm's subject). */
export async function showTrack(subject = null) {
  if (typeof subject !== "string") {
    const doc = state.alarms.get(state.selected);
    subject = doc && doc.subject;
  }
  if (!subject) return;
  const note = $("track-note");
  note.textContent = "加载中…";
  try {
    const data = await api(`/api/subjects/${encodeURIComponent(subject)}/track`);
    const entries = (data.fixes || []).slice().sort((a, b) => a.t - b.t);
    const fixes = entries.filter((f) => Number.isFinite(f.lon) && Number.isFinite(f.lat));
    const statuses = entries.filter((f) => f.handset !== undefined);
    track.subject = subject;
    drawTrack(fixes);
    renderStatuses(statuses);
    const counted = statuses.length ? `，${statuses.length} 条手机状态` : "";
    note.textContent = fixes.length
      ? `${subject}：${fixes.length} 个定位${counted}，${fmtTime(fixes[0].t)} 至 ` +
        `${fmtTime(fixes[fixes.length - 1].t)}${data.truncated ? "（只显示最新的定位）" : ""}`
      : `${subject}：最近 24 小时没有定位${counted}`;
  } catch (e) {
    if (e.status !== 401) note.textContent = `轨迹加载失败：${e.message}`;
  }
  renderDetail();
}

function renderStatuses(statuses) {
  const list = $("track-status");
  const newest = statuses.slice(-STATUS_SHOWN).reverse();
  list.replaceChildren(...newest.map((s) => el("li", {
    "data-handset": s.handset || "",
    text: `${fmtTime(s.t)} · 手机${HANDSET_NAMES[s.handset] || s.handset || "状态未知"}`,
  })));
  list.hidden = !newest.length;
}

export function clearTrack() {
  eraseTrack();
  renderDetail();
}
