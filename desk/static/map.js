// The map's view: an SVG in kilometres (equirectangular projection scaled by cos(lat)),
// its layers, zoom and pan, and keeping dots, labels and hatching a constant size on
// screen. What is drawn on it: map-areas.js, map-alarms.js, map-track.js, locate.js.

import { $, svg } from "./dom.js";

export const KM_PER_DEG = 111.195;       // mean Earth radius × π/180
const LABEL_PX = { county: 15, township: 11.5 };
const DOT_PX = 5.5;
const TRACK_DOT_PX = 2.6;
const MAX_ZOOM = 400;             // × the fitted scale

export const map = {
  svg: null,
  layers: null,
  proj: null,           // {lon0, lat0, kx}
  fit: null,            // the fitted viewBox
  vb: null,             // the current viewBox {x, y, w, h}
  features: [],         // {code, name, parent, level, path, bbox}
  labels: [],           // {node, level, bboxW}
  drag: null,
  frame: 0,
  onPick: null,         // (alarm id) on a click (not a drag) on an alarm's dot
};

export function project(lon, lat) {
  const p = map.proj;
  return [(lon - p.lon0) * p.kx, (p.lat0 - lat) * KM_PER_DEG];
}

/** Build the layers and listen for zoom and pan; `onPick(id)`: an alarm was clicked. */
export function setupMap(onPick) {
  const s = $("map");
  map.svg = s;
  map.onPick = onPick;
  const defs = svg("defs");
  const hatch = svg("pattern", {
    id: "zone-hatch", patternUnits: "userSpaceOnUse", width: "0.25", height: "0.25",
    patternTransform: "rotate(45)",
  });
  hatch.append(svg("rect", { width: "0.25", height: "0.25", fill: "rgba(200,40,40,0.10)" }),
    svg("line", { x1: "0", y1: "0", x2: "0", y2: "0.25", class: "hatch-line" }));
  defs.append(hatch);
  s.append(defs);
  const layers = {};
  // Bottom to top: what the desk acts on (alarms, the track) is never hidden by a label.
  for (const name of ["townships", "home", "counties", "zones", "labels", "track", "alarms", "locate"]) {
    layers[name] = svg("g", { class: `layer-${name}` });
    s.append(layers[name]);
  }
  map.layers = layers;
  s.addEventListener("wheel", onWheel, { passive: false });
  s.addEventListener("pointerdown", onPointerDown);
  s.addEventListener("pointermove", onPointerMove);
  s.addEventListener("pointerup", onPointerUp);
  s.addEventListener("pointercancel", () => { map.drag = null; });
  new ResizeObserver(() => scheduleScale()).observe(s);
  $("zoom-in").addEventListener("click", () => zoomBy(1 / 1.6));
  $("zoom-out").addEventListener("click", () => zoomBy(1.6));
  $("zoom-reset").addEventListener("click", () => setViewBox({ ...map.fit }));
}

export function clearMap() {
  if (!map.layers) return;
  for (const g of Object.values(map.layers)) g.replaceChildren();
  map.features = [];
  map.labels = [];
  map.proj = null;
  map.fit = null;
  $("map-note").textContent = "";
}

export function setViewBox(vb) {
  if (!vb) return;
  map.vb = vb;
  map.svg.setAttribute("viewBox", `${vb.x} ${vb.y} ${vb.w} ${vb.h}`);
  scheduleScale();
}

/** Kilometres per screen pixel at the current view (preserveAspectRatio "meet"). */
function kmPerPx() {
  const r = map.svg.getBoundingClientRect();
  if (!map.vb || !r.width || !r.height) return 1;
  return Math.max(map.vb.w / r.width, map.vb.h / r.height);
}

function scheduleScale() {
  if (map.frame) return;
  map.frame = requestAnimationFrame(() => {
    map.frame = 0;
    applyScale();
  });
}

/** Keep dots, labels and halos a constant size on screen, and decide which labels fit. */
export function applyScale() {
  if (!map.vb) return;
  const u = kmPerPx();
  const zoom = map.fit ? Math.max(map.fit.w, map.fit.h) / Math.max(map.vb.w, map.vb.h) : 1;
  const layers = map.layers;
  layers.labels.setAttribute("font-size", (LABEL_PX.township * u).toFixed(5));
  const showTownships = zoom >= 1.6;
  for (const l of map.labels) {
    let visible;
    if (l.kind === "county") {
      visible = !showTownships;   // zoomed in, the heavy borders and the codes say which county
      l.node.setAttribute("font-size", (LABEL_PX.county * u).toFixed(5));
    } else {
      const px = LABEL_PX.township;
      const wide = l.bboxW / u > l.chars * px + 10;
      const tall = l.bboxH / u > px * 2.6;
      visible = (l.kind === "zone" ? zoom >= 2.5 : showTownships) && wide && tall;
    }
    l.node.style.display = visible ? "" : "none";
  }
  for (const c of layers.alarms.querySelectorAll(".dot")) {
    const k = c.classList.contains("selected") ? 1.5 : 1;
    c.setAttribute("r", (DOT_PX * k * u).toFixed(5));
  }
  for (const c of layers.alarms.querySelectorAll(".ring"))
    c.setAttribute("r", (DOT_PX * 2.6 * u).toFixed(5));
  for (const c of layers.track.querySelectorAll(".track-dot"))
    c.setAttribute("r", (TRACK_DOT_PX * u).toFixed(5));
  for (const c of layers.locate.querySelectorAll(".locate-dot"))
    c.setAttribute("r", (DOT_PX * 1.3 * u).toFixed(5));
  const hatch = map.svg.querySelector("#zone-hatch");
  const step = (6 * u).toFixed(5);
  hatch.setAttribute("width", step);
  hatch.setAttribute("height", step);
  for (const child of hatch.children) {
    child.setAttribute(child.tagName === "line" ? "y2" : "height", step);
    if (child.tagName === "rect") child.setAttribute("width", step);
  }
}

function clientToMap(clientX, clientY) {
  const m = map.svg.getScreenCTM();
  if (!m) return null;
  const p = new DOMPoint(clientX, clientY).matrixTransform(m.inverse());
  return [p.x, p.y];
}

function zoomAt(factor, cx, cy) {
  if (!map.vb || !map.fit) return;
  const fitSize = Math.max(map.fit.w, map.fit.h);
  const size = Math.max(map.vb.w, map.vb.h) * factor;
  const clamped = Math.min(fitSize * 2, Math.max(fitSize / MAX_ZOOM, size));
  const f = clamped / Math.max(map.vb.w, map.vb.h);
  const vb = map.vb;
  setViewBox({ x: cx - (cx - vb.x) * f, y: cy - (cy - vb.y) * f, w: vb.w * f, h: vb.h * f });
}

function zoomBy(factor) {
  if (!map.vb) return;
  zoomAt(factor, map.vb.x + map.vb.w / 2, map.vb.y + map.vb.h / 2);
}

/** Show the box (map kilometres) with a margin around it, centred. */
export function fitTo(x0, y0, x1, y1, marginShare = 0.08) {
  const w = Math.max(x1 - x0, 2);
  const h = Math.max(y1 - y0, 2);
  const m = Math.max(w, h) * marginShare;
  setViewBox({ x: (x0 + x1) / 2 - w / 2 - m, y: (y0 + y1) / 2 - h / 2 - m, w: w + 2 * m, h: h + 2 * m });
}

function onWheel(event) {
  if (!map.vb) return;
  event.preventDefault();
  const p = clientToMap(event.clientX, event.clientY);
  if (!p) return;
  const delta = event.deltaMode === 1 ? event.deltaY * 30 : event.deltaY;
  zoomAt(Math.exp(Math.max(-300, Math.min(300, delta)) * 0.0015), p[0], p[1]);
}

function onPointerDown(event) {
  if (event.button !== 0 || !map.vb) return;
  map.drag = {
    x: event.clientX, y: event.clientY, vb: { ...map.vb }, u: kmPerPx(), moved: false,
    target: event.target, id: event.pointerId,
  };
}

function onPointerMove(event) {
  const drag = map.drag;
  if (!drag || event.pointerId !== drag.id) return;
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  if (!drag.moved && Math.hypot(dx, dy) < 4) return;
  if (!drag.moved) {
    drag.moved = true;
    map.svg.setPointerCapture(drag.id);
    map.svg.classList.add("dragging");
  }
  setViewBox({ ...drag.vb, x: drag.vb.x - dx * drag.u, y: drag.vb.y - dy * drag.u });
}

function onPointerUp() {
  const drag = map.drag;
  map.drag = null;
  map.svg.classList.remove("dragging");
  if (!drag || drag.moved) return;
  const hit = drag.target.closest && drag.target.closest("[data-alarm-id]");
  if (hit) map.onPick(hit.dataset.alarmId);
}
