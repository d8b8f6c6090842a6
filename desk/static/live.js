// Live changes over Server-Sent Events (/api/events): merge each alarm as it comes, beep
// on a new critical one, reconnect after a break, and show the connection's state.

import { loadAlarms, scheduleRender } from "./alarms.js";
import { api } from "./api.js";
import { renderDetail, scheduleHistoryRefresh } from "./detail.js";
import { $ } from "./dom.js";
import { onLocate, refreshOpenLocates } from "./locate.js";
import { beep } from "./sound.js";
import { state, upsert } from "./state.js";

const SSE_RETRY_MS = 5000;

/** Open the stream after change seq `after` (null: from now on). */
export function openEvents(after = null) {
  if (state.events) state.events.close();
  const es = new EventSource(after === null || after === undefined
    ? "/api/events" : `/api/events?after=${encodeURIComponent(after)}`);
  state.events = es;
  es.addEventListener("open", () => {
    setLive("on");
    if (state.sseBroken) {
      state.sseBroken = false;
      loadAlarms();          // catch up on anything the reconnect did not replay
      refreshOpenLocates();  // locate events are never replayed
    }
  });
  es.addEventListener("alarm", (e) => {
    let doc;
    try {
      doc = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    if (e.lastEventId) state.lastEventId = e.lastEventId;
    onAlarmEvent(doc);
  });
  // A locate request changed (no id: the resume point stays an alarm change seq).
  es.addEventListener("locate", (e) => {
    try {
      onLocate(JSON.parse(e.data));
    } catch (err) {
      // a malformed event: the next read of the request shows it
    }
  });
  // Too far behind to replay: the stream starts at the end, so fetch the list afresh.
  es.addEventListener("reset", (e) => {
    if (e.lastEventId) state.lastEventId = e.lastEventId;
    loadAlarms();
  });
  es.addEventListener("error", () => {
    state.sseBroken = true;
    if (es.readyState === EventSource.CLOSED) {
      setLive("down");
      state.sseRetry = setTimeout(checkSessionThenReconnect, SSE_RETRY_MS);
    } else {
      setLive("retry");
    }
  });
}

/** Close the stream and drop a pending reconnect. */
export function closeEvents() {
  if (state.events) state.events.close();
  clearTimeout(state.sseRetry);
}

async function checkSessionThenReconnect() {
  if (!state.me) return;
  try {
    await api("/api/me");     // a 401 here shows the login form
    if (state.me) openEvents(state.lastEventId);
  } catch (e) {
    if (state.me) state.sseRetry = setTimeout(checkSessionThenReconnect, SSE_RETRY_MS);
  }
}

/** The top bar's indicator: "on", "retry", "down" or "off". */
export function setLive(mode) {
  const live = $("live");
  live.dataset.state = mode;
  $("live-text").textContent = {
    on: "实时连接", retry: "连接中断，正在重连…", down: "连接中断，稍后重试", off: "未连接",
  }[mode];
}

function onAlarmEvent(doc) {
  const isNew = !state.alarms.has(doc.id) && doc.status === "open";
  if (!upsert(doc)) return;
  if (isNew) {
    state.fresh.add(doc.id);
    if (doc.severity === "critical") beep();
  }
  scheduleRender();
  if (doc.id === state.selected) {
    renderDetail();
    scheduleHistoryRefresh(doc.id);
  }
}
