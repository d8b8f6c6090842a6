// The detail panel's track buttons: load the selected subject's last 24 h of fixes and
// draw them, or clear them.

import { api } from "./api.js";
import { renderDetail } from "./detail.js";
import { $ } from "./dom.js";
import { fmtTime } from "./format.js";
import { drawTrack, eraseTrack, track } from "./map-track.js";
import { state } from "./state.js";

export async function showTrack() {
  const doc = state.alarms.get(state.selected);
  if (!doc || !doc.subject) return;
  const note = $("track-note");
  note.textContent = "加载中…";
  try {
    const data = await api(`/api/subjects/${encodeURIComponent(doc.subject)}/track`);
    const fixes = (data.fixes || []).filter((f) => Number.isFinite(f.lon) && Number.isFinite(f.lat))
      .sort((a, b) => a.t - b.t);
    track.subject = doc.subject;
    drawTrack(fixes);
    note.textContent = fixes.length
      ? `${doc.subject}：${fixes.length} 个定位，${fmtTime(fixes[0].t)} 至 ` +
        `${fmtTime(fixes[fixes.length - 1].t)}${data.truncated ? "（只显示最新的定位）" : ""}`
      : `${doc.subject}：最近 24 小时没有定位`;
  } catch (e) {
    if (e.status !== 401) note.textContent = `轨迹加载失败：${e.message}`;
  }
  renderDetail();
}

export function clearTrack() {
  eraseTrack();
  renderDetail();
}
