// 立即定位 (locate on demand, SPEC §14): ask for a person's position now, from an alarm or
// from the person's page; follow the request over the live stream (已请求 → 已发送运营商
// → the fix, a handset status 关机/停机/无法接通, or 定位超时); draw the fix on the map
// with its accuracy circle. The button is disabled while the person has a request open
// (whoever asked: the desk allows one per person at a time). The stream carries a
// request's events to the offices above the office it went to (the delegate's during a
// delegation); a request this page cannot hear of there (the origin office asking for a
// delegated person) is read again every POLL_MS until it closes.

import { api } from "./api.js";
import { svg } from "./dom.js";
import { refusal } from "./errors.js";
import { HANDSET_NAMES, fixText, fmtTime } from "./format.js";
import { applyScale, fitTo, map, project } from "./map.js";
import { isUnder } from "./names.js";
import { state } from "./state.js";

const OPEN = ["pending", "sent"];
const RANK = { pending: 0, sent: 1, answered: 2, timed_out: 2 };
const FOCUS_KM = 3;   // half the side of the view around a new fix
const POLL_MS = 2000;

/** The newest request seen per subject; `onAnswer(doc)`: a request was answered. */
export const locates = { bySubject: new Map(), onAnswer: () => {} };
const panels = [];    // {button, note, current, busy, error, subject}
let pollTimer = 0;

export const isOpen = (doc) => !!doc && OPEN.includes(doc.state);

/** What the page says about a request. */
export function locateText(doc) {
  switch (doc.state) {
    case "pending": return `已请求 · ${fmtTime(doc.requested_at)}`;
    case "sent": return `已发送运营商 · ${fmtTime(doc.sent_at)}`;
    case "timed_out": return `定位超时 · 请求于 ${fmtTime(doc.requested_at)}`;
    case "answered":
      if (doc.fix) return `已定位：${fixText(doc.fix)} · ${fmtTime(doc.fix.t)}`;
      return `${HANDSET_NAMES[doc.handset] || doc.handset || "未知状态"} · ${fmtTime(doc.answered_at)}`;
    default: return String(doc.state);
  }
}

/** A place on the page that asks: `current()` gives {subject, alarm} or null. */
export function bindLocate(button, note, current) {
  const panel = { button, note, current, busy: false, error: "", subject: null };
  panels.push(panel);
  button.addEventListener("click", () => requestLocate(panel));
}

export function renderLocates() {
  for (const p of panels) {
    const subject = (p.current() || {}).subject || null;
    if (subject !== p.subject) {
      p.subject = subject;
      p.error = "";
    }
    const doc = subject ? locates.bySubject.get(subject) : null;
    p.button.disabled = !subject || p.busy || isOpen(doc);
    p.note.textContent = p.error || (doc ? locateText(doc) : "");
    p.note.dataset.state = p.error ? "error" : doc ? doc.state : "";
    p.note.classList.toggle("form-error", !!p.error);
  }
}

async function requestLocate(panel) {
  const which = panel.current();
  if (!which) return;
  panel.busy = true;
  panel.error = "";
  renderLocates();
  try {
    const doc = await api(`/api/subjects/${encodeURIComponent(which.subject)}/locate`, {
      method: "POST", body: which.alarm ? { alarm: which.alarm } : {},
    });
    onLocate(doc);
  } catch (e) {
    if (e.status === 401) return;
    panel.error = e.status === 429 ? `定位请求过于频繁，请稍后再试（${e.message}）`
      : e.status === 409 ? `无法定位：${/no phone/.test(e.message) ? "未登记手机号" : "已解除矫正"}`
        : refusal(e, "定位");
  } finally {
    panel.busy = false;
    renderLocates();
  }
}

/** A request's document (from the POST, the stream or a read): keep, show, draw. */
export function onLocate(doc) {
  const old = locates.bySubject.get(doc.subject);
  if (old && (old.request === doc.request ? RANK[old.state] > RANK[doc.state]
    : old.requested_at > doc.requested_at)) return;
  locates.bySubject.set(doc.subject, doc);
  renderLocates();
  schedulePoll();
  if (doc.state === "answered" && (!old || old.request !== doc.request || old.state !== "answered")) {
    if (doc.fix) drawLocateFix(doc);
    locates.onAnswer(doc);
  }
}

/** The person's newest request (made by anyone), when an alarm or a page opens. */
export async function loadLatestLocate(subject) {
  try {
    const data = await api(`/api/subjects/${encodeURIComponent(subject)}/locates`);
    const newest = (data.requests || [])[0];
    if (newest) onLocate(newest);
  } catch (e) {
    // Only the button's state depends on it: the POST answers for itself.
  }
}

/** After the stream reconnected: read the open requests again (their events are not
 *  replayed). */
export function refreshOpenLocates() {
  return refresh([...locates.bySubject.values()].filter(isOpen));
}

async function refresh(docs) {
  for (const doc of docs) {
    try {
      onLocate(await api(`/api/locate/${encodeURIComponent(doc.request)}`));
    } catch (e) {
      // gone from the user's scope, or no connection: the next reconnect tries again
    }
  }
}

/** Whether the stream brings this request's events: its office is in the user's subtree. */
const streamed = (doc) => !!state.me && isUnder(doc.office, state.me.office);

function schedulePoll() {
  clearTimeout(pollTimer);
  const unheard = [...locates.bySubject.values()].filter((d) => isOpen(d) && !streamed(d));
  pollTimer = unheard.length ? setTimeout(() => refresh(unheard).then(schedulePoll), POLL_MS) : 0;
}

// The map drawn after an answer came (it loads slowly): draw the answers kept so far.
document.addEventListener("places-loaded", () => {
  for (const doc of locates.bySubject.values())
    if (doc.state === "answered" && doc.fix) drawLocateFix(doc, false);
});

/** The answered fix: a marker and its accuracy circle, one per person; `focus`: the view
 *  on it. */
function drawLocateFix(doc, focus = true) {
  if (!map.layers || !map.proj) return;
  const g = map.layers.locate;
  for (const old of g.querySelectorAll("[data-subject]"))
    if (old.dataset.subject === doc.subject) old.remove();
  const [x, y] = project(doc.fix.lon, doc.fix.lat);
  const group = svg("g", { class: "locate-fix", "data-subject": doc.subject, "data-testid": "locate-fix" });
  const title = svg("title");
  title.textContent = `立即定位 · ${doc.subject} · ${fixText(doc.fix)} · ${fmtTime(doc.fix.t)}`;
  group.append(title);
  if (doc.fix.acc) {
    group.append(svg("circle", {
      class: "locate-acc", cx: x.toFixed(4), cy: y.toFixed(4), r: (Number(doc.fix.acc) / 1000).toFixed(4),
    }));
  }
  group.append(svg("circle", { class: "locate-dot", cx: x.toFixed(4), cy: y.toFixed(4), r: "0" }));
  g.append(group);
  if (focus) fitTo(x - FOCUS_KM, y - FOCUS_KM, x + FOCUS_KM, y + FOCUS_KM, 0);
  applyScale();
}

export function resetLocates() {
  clearTimeout(pollTimer);
  pollTimer = 0;
  locates.bySubject.clear();
  for (const p of panels) Object.assign(p, { busy: false, error: "", subject: null });
  if (map.layers) map.layers.locate.replaceChildren();
  renderLocates();
}

/** The handset status of a person's page (`handset` of GET /api/subjects/{id}). */
export function handsetText(handset) {
  return `${HANDSET_NAMES[handset.state] || handset.state}（自 ${fmtTime(handset.since)}）`;
}
