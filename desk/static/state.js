// The page's one state object, and the rules for merging alarm documents into it.

const STATUS_RANK = { open: 0, escalated: 1, acknowledged: 2, resolved: 3 };
export const ACTIVE_STATUSES = ["open", "escalated", "acknowledged"];
export const UNACKED_STATUSES = ["open", "escalated"];
export const LIST_LIMIT = 500;    // rows kept in the list (and dots on the map)

export const state = {
  me: null,
  officeNames: new Map(),  // office code -> name (from /api/me)
  placeNames: new Map(),   // jurisdiction or zone code -> name (from /api/layer)
  places: [],              // [{code, name, level, parent}] of /api/layer, for pickers
  parents: new Map(),      // code -> parent code (offices and layer features)
  alarms: new Map(),       // id -> doc (everything seen: fetched and from SSE)
  fresh: new Set(),        // ids that arrived live and were not opened yet
  subjects: new Map(),     // id -> subject
  selected: null,          // alarm id
  events: null,            // EventSource
  lastEventId: null,       // the last change seq received
  sseRetry: null,
  sseBroken: false,
  loadSeq: 0,
};

/** Forget the session's data; a list load still in flight is dropped when it answers. */
export function resetState() {
  Object.assign(state, {
    me: null, events: null, lastEventId: null, sseRetry: null, sseBroken: false, selected: null,
  });
  state.officeNames.clear();
  state.placeNames.clear();
  state.places = [];
  state.parents.clear();
  state.alarms.clear();
  state.fresh.clear();
  state.subjects.clear();
  state.loadSeq++;
}

/** Merge a doc; a stale copy (lower status rank, escalation or repeats) never wins. */
export function upsert(doc) {
  const old = state.alarms.get(doc.id);
  if (old && progress(old) > progress(doc)) return false;
  state.alarms.set(doc.id, doc);
  return true;
}

function progress(doc) {
  const d = doc.details || {};
  return (STATUS_RANK[doc.status] ?? 0) * 1e8 + (d.escalation_level || 0) * 1e6 + (d.repeats || 0);
}

export function newestFirst(a, b) {
  return (b.raised_at ?? b.t ?? 0) - (a.raised_at ?? a.t ?? 0) || (b.t ?? 0) - (a.t ?? 0) ||
    (a.id < b.id ? -1 : 1);
}
