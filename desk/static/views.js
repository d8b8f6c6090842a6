// The desk's pages: 报警 (the alarm panes), 外出请假, 人员, 审计日志. A work page covers the
// alarm panes (which keep their layout and live stream underneath, made inert), and the
// read-only look of a viewer: a 只读 badge and no element marked data-write.

import { $ } from "./dom.js";
import { state } from "./state.js";

const ALARM_PANES = [".list-pane", ".map-pane", ".detail-pane"];
const WORK_VIEWS = { leave: "leave-view", people: "people-view", audit: "audit-view" };
const openers = new Map();     // view -> function called each time it is shown

/** `fn()` runs whenever `view` is shown (to load fresh data). */
export function onShow(view, fn) {
  openers.set(view, fn);
}

export function setupViews() {
  for (const b of document.querySelectorAll("nav.views button"))
    b.addEventListener("click", () => showView(b.dataset.view));
}

export function showView(view) {
  const desk = $("desk-view");
  desk.dataset.view = view;
  for (const b of document.querySelectorAll("nav.views button"))
    b.setAttribute("aria-pressed", String(b.dataset.view === view));
  for (const [v, id] of Object.entries(WORK_VIEWS)) $(id).hidden = v !== view;
  for (const sel of ALARM_PANES) desk.querySelector(sel).inert = view !== "alarms";
  const open = openers.get(view);
  if (open) open();
}

/** A viewer (procuratorate, inspector) reads only: the badge, and no write controls. */
export function applyRole(me) {
  const readOnly = isReadOnly(me);
  document.body.classList.toggle("read-only", readOnly);
  $("read-only").hidden = !readOnly;
}

export function isReadOnly(me = state.me) {
  return !!me && me.role === "viewer";
}
