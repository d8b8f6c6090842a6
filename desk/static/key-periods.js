// 重点时期 (key periods, issue 13): a banner in the top bar while one that concerns the
// user's offices is in force (its subjects are judged by the strict rules meanwhile).
// Declared and ended through /api/key-periods; the page polls the list once a minute.

import { api } from "./api.js";
import { $ } from "./dom.js";
import { fmtTime } from "./format.js";

const POLL_MS = 60_000;
let timer = 0;

export async function loadKeyPeriods() {
  const banner = $("key-period-banner");
  try {
    const { key_periods: periods } = await api("/api/key-periods");
    const active = periods.filter((p) => p.active);
    banner.textContent = active.length
      ? `重点时期：${active.map((p) => `${p.name}（至 ${fmtTime(Date.parse(p.end))}）`).join("；")}`
      : "";
    banner.hidden = !active.length;
  } catch (e) {
    if (e.status !== 401) banner.hidden = true;
  }
}

export function startKeyPeriods() {
  stopKeyPeriods();
  loadKeyPeriods();
  timer = setInterval(loadKeyPeriods, POLL_MS);
}

export function stopKeyPeriods() {
  clearInterval(timer);
  timer = 0;
  $("key-period-banner").hidden = true;
}
