// Alarms on the map: a dot per alarm at its triggering fix, with the fix's accuracy
// circle; the selected alarm on top with a ring, its home area shaded.

import { svg } from "./dom.js";
import { SEVERITY_NAMES, STATUS_NAMES, fmtTime, typeName } from "./format.js";
import { filters, matches } from "./filters.js";
import { applyScale, fitTo, map, project, setViewBox } from "./map.js";
import { isUnder, whereText } from "./names.js";
import { LIST_LIMIT, newestFirst, state } from "./state.js";

/** The position shown for an alarm: its triggering fix. */
function alarmFix(doc) {
  return doc.fix && Number.isFinite(doc.fix.lon) && Number.isFinite(doc.fix.lat) ? doc.fix : null;
}

export function renderMapAlarms() {
  if (!map.layers || !map.proj) return;
  const g = map.layers.alarms;
  const f = filters();
  const docs = [...state.alarms.values()].filter((d) => matches(d, f) && alarmFix(d))
    .sort(newestFirst).slice(0, LIST_LIMIT).reverse();   // newest drawn last (on top)
  const selected = state.selected && state.alarms.get(state.selected);
  if (selected && alarmFix(selected) && !docs.includes(selected)) docs.push(selected);
  const nodes = [];
  let top = null;
  for (const doc of docs) {
    const fix = alarmFix(doc);
    const [x, y] = project(fix.lon, fix.lat);
    const isSel = doc.id === state.selected;
    const group = svg("g", {
      class: `alarm sev-${doc.severity} st-${doc.status}${isSel ? " selected" : ""}`,
      "data-alarm-id": doc.id,
    });
    const title = svg("title");
    title.textContent = `${SEVERITY_NAMES[doc.severity] || ""} ${typeName(doc.type)} · ` +
      `${doc.subject || ""} · ${whereText(doc)} · ${fmtTime(doc.t)} · ${STATUS_NAMES[doc.status] || ""}`;
    group.append(title);
    if (fix.acc) {
      group.append(svg("circle", {
        class: "acc", cx: x.toFixed(4), cy: y.toFixed(4), r: (Number(fix.acc) / 1000).toFixed(4),
      }));
    }
    if (isSel) group.append(svg("circle", { class: "ring", cx: x.toFixed(4), cy: y.toFixed(4), r: "0" }));
    group.append(svg("circle", {
      class: `dot${isSel ? " selected" : ""}`, cx: x.toFixed(4), cy: y.toFixed(4), r: "0",
    }));
    if (isSel) top = group;
    else nodes.push(group);
  }
  if (top) nodes.push(top);
  g.replaceChildren(...nodes);
  highlightHome(selected);
  applyScale();
}

/** Shade the selected alarm's home area (its `home` codes and everything below them). */
function highlightHome(doc) {
  const g = map.layers.home;
  g.replaceChildren();
  if (!doc || !doc.home || !doc.home.length) return;
  const homes = doc.home.map(String);
  for (const f of map.features) {
    if (f.level !== "township") continue;
    if (homes.some((h) => isUnder(f.code, h)))
      g.append(svg("path", { d: f.path.getAttribute("d"), class: "home-area" }));
  }
}

/** Bring the alarm's dot into view if it is near the edge or outside. */
export function centerOnAlarm(id) {
  const doc = state.alarms.get(id);
  if (!doc || !map.vb || !map.proj) return;
  const fix = alarmFix(doc);
  if (!fix) return;
  const [x, y] = project(fix.lon, fix.lat);
  const vb = map.vb;
  const inside = x > vb.x + vb.w * 0.05 && x < vb.x + vb.w * 0.95 &&
    y > vb.y + vb.h * 0.05 && y < vb.y + vb.h * 0.95;
  if (inside) return;
  // Keep the zoom, unless the jurisdictions and the point cannot both be seen.
  const span = {
    x0: Math.min(map.fit.x, x), y0: Math.min(map.fit.y, y),
    x1: Math.max(map.fit.x + map.fit.w, x), y1: Math.max(map.fit.y + map.fit.h, y),
  };
  if (vb.w >= map.fit.w * 0.99) {
    fitTo(span.x0, span.y0, span.x1, span.y1, 0.06);
  } else {
    setViewBox({ ...vb, x: x - vb.w / 2, y: y - vb.h / 2 });
  }
}
