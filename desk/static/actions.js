// Acknowledge and resolve (确认 / 处理) the selected alarm, with the note.

import { renderAll } from "./alarms.js";
import { api } from "./api.js";
import { refreshHistory, renderDetail } from "./detail.js";
import { $ } from "./dom.js";
import { state, upsert } from "./state.js";

/** `action`: "ack" or "resolve" (a resolve needs a note). */
export async function act(action) {
  const id = state.selected;
  const doc = id && state.alarms.get(id);
  if (!doc) return;
  const note = $("ack-note").value.trim();
  const error = $("action-error");
  if (action === "resolve" && !note) {
    error.textContent = "处理时请填写备注（核查情况）";
    $("ack-note").focus();
    return;
  }
  error.textContent = "";
  const buttons = [$("ack-button"), $("resolve-button")];
  for (const b of buttons) b.disabled = true;
  try {
    const updated = await api(`/api/alarms/${encodeURIComponent(id)}/${action}`,
      { method: "POST", body: { note } });
    if (updated && updated.id) {
      delete updated.history;
      upsert(updated);
    }
    $("ack-note").value = "";
  } catch (e) {
    if (e.status === 401) return;
    error.textContent = e.status === 409 ? `无法${action === "ack" ? "确认" : "处理"}：${e.message}`
      : e.status === 404 ? "该报警不存在或不在本辖区"
      : `操作失败：${e.message}`;
  }
  renderAll();
  renderDetail();
  refreshHistory(id);
}
