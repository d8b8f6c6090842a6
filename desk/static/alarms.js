// The alarm set: fetching the list's snapshot for the current filters, and redrawing
// everything that shows it (list, counters, map dots) at once.

import { api } from "./api.js";
import { renderList } from "./alarm-list.js";
import { renderCounters } from "./counters.js";
import { $ } from "./dom.js";
import { filters } from "./filters.js";
import { renderMapAlarms } from "./map-alarms.js";
import { ACTIVE_STATUSES, UNACKED_STATUSES, state, upsert } from "./state.js";

const FETCH_LIMIT = 500;          // per /api/alarms request
const RENDER_DELAY_MS = 60;

function alarmQuery(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  q.set("limit", String(FETCH_LIMIT));
  return `/api/alarms?${q}`;
}

/** Fetch the list for the current filters; returns the change seq of the snapshot. */
export async function loadAlarms() {
  const seq = ++state.loadSeq;
  const f = filters();
  const base = { office: f.office, type: f.type };
  const queries = f.status === "active"
    ? ACTIVE_STATUSES.map((status) => ({ ...base, status }))
    : [{ ...base, status: f.status }];
  // The counters cover the whole subtree whatever the filter says.
  for (const status of UNACKED_STATUSES) {
    if (!queries.some((q) => q.status === status && !q.office && !q.type)) queries.push({ status });
  }
  $("list-error").textContent = "";
  $("alarm-list").setAttribute("aria-busy", "true");
  try {
    const answers = await Promise.all(queries.map((q) => api(alarmQuery(q))));
    if (seq !== state.loadSeq) return;
    for (const a of answers) for (const doc of a.alarms || []) upsert(doc);
    renderAll();
    const seqs = answers.map((a) => a.seq).filter(Number.isInteger);
    return seqs.length ? Math.min(...seqs) : null;
  } catch (e) {
    if (seq === state.loadSeq && e.status !== 401)
      $("list-error").textContent = `报警列表加载失败：${e.message}`;
    return null;
  } finally {
    $("alarm-list").removeAttribute("aria-busy");
  }
}

export function renderAll() {
  renderList();
  renderCounters();
  renderMapAlarms();
}

let renderTimer = 0;

/** Coalesce bursts of live events into one redraw (timers, not animation frames, so a
 * background tab still updates its title). */
export function scheduleRender() {
  if (renderTimer) return;
  renderTimer = setTimeout(() => {
    renderTimer = 0;
    renderAll();
  }, RENDER_DELAY_MS);
}

export function cancelRender() {
  clearTimeout(renderTimer);
  renderTimer = 0;
}
