// The map's areas from /api/layer: counties, townships and exclusion zones as paths,
// with labels at their centroids. Also learns the areas' names and parents.

import { api } from "./api.js";
import { $, svg } from "./dom.js";
import { renderMapAlarms } from "./map-alarms.js";
import { map, project, setViewBox, KM_PER_DEG } from "./map.js";
import { state } from "./state.js";

export async function loadLayer() {
  $("map-note").textContent = "地图加载中…";
  try {
    const fc = await api("/api/layer");
    if (!state.me) return;
    drawLayer(fc);
    document.dispatchEvent(new Event("places-loaded"));   // pickers waiting for names
    $("map-note").textContent = "";
    renderMapAlarms();
  } catch (e) {
    if (e.status !== 401 && state.me) $("map-note").textContent = `地图加载失败：${e.message}`;
  }
}

function geometryRings(geom) {
  if (!geom) return [];
  if (geom.type === "Polygon") return geom.coordinates;
  if (geom.type === "MultiPolygon") return geom.coordinates.flat();
  return [];
}

function drawLayer(fc) {
  const feats = (fc.features || []).filter((f) => f && f.geometry && f.properties);
  let [minLon, minLat, maxLon, maxLat] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const f of feats) {
    for (const ring of geometryRings(f.geometry)) {
      for (const [lon, lat] of ring) {
        if (lon < minLon) minLon = lon;
        if (lon > maxLon) maxLon = lon;
        if (lat < minLat) minLat = lat;
        if (lat > maxLat) maxLat = lat;
      }
    }
  }
  if (!Number.isFinite(minLon)) {
    $("map-note").textContent = "没有辖区图层";
    return;
  }
  const lat0 = (minLat + maxLat) / 2;
  map.proj = { lon0: (minLon + maxLon) / 2, lat0, kx: KM_PER_DEG * Math.cos(lat0 * Math.PI / 180) };
  const [x0, y0] = project(minLon, maxLat);
  const [x1, y1] = project(maxLon, minLat);
  const margin = Math.max(x1 - x0, y1 - y0) * 0.06;   // room for exits just outside
  map.fit = { x: x0 - margin, y: y0 - margin, w: x1 - x0 + 2 * margin, h: y1 - y0 + 2 * margin };
  const eps = Math.max(map.fit.w, map.fit.h) / 8000;   // drop vertices closer than this (km)

  for (const f of feats) {
    const p = f.properties;
    const level = p.level || "township";
    const { d, bbox } = pathData(f.geometry, eps);
    if (!d) continue;
    const feature = {
      code: String(p.code), name: p.name || "", parent: p.parent ? String(p.parent) : null,
      level, bbox,
    };
    if (feature.name) state.placeNames.set(feature.code, feature.name);
    state.places.push({ code: feature.code, name: feature.name, level, parent: feature.parent });
    if (feature.parent && !state.parents.has(feature.code))
      state.parents.set(feature.code, feature.parent);
    const layer = level === "county" ? "counties" : level === "zone" ? "zones" : "townships";
    const path = svg("path", { d, class: `feat feat-${level}`, "data-code": feature.code });
    const title = svg("title");
    title.textContent = `${feature.name} ${feature.code}`;
    path.append(title);
    map.layers[layer].append(path);
    feature.path = path;
    map.features.push(feature);
    if (level !== "zone") addLabel(feature);
    else addLabel(feature, "zone");
  }
  setViewBox({ ...map.fit });
}

function pathData(geom, eps) {
  const parts = [];
  const bbox = [Infinity, Infinity, -Infinity, -Infinity];
  for (const ring of geometryRings(geom)) {
    let last = null;
    const pts = [];
    for (const [lon, lat] of ring) {
      const [x, y] = project(lon, lat);
      if (x < bbox[0]) bbox[0] = x;
      if (y < bbox[1]) bbox[1] = y;
      if (x > bbox[2]) bbox[2] = x;
      if (y > bbox[3]) bbox[3] = y;
      if (last && Math.abs(x - last[0]) < eps && Math.abs(y - last[1]) < eps) continue;
      pts.push(`${x.toFixed(3)} ${y.toFixed(3)}`);
      last = [x, y];
    }
    if (pts.length >= 3) parts.push(`M${pts.join("L")}Z`);
  }
  return { d: parts.join(""), bbox };
}

/** A label at the area-weighted centroid of the feature's largest ring. */
function addLabel(feature, kind = feature.level) {
  const path = feature.path;
  let best = null;
  let bestArea = 0;
  const rings = path.getAttribute("d").split("M").filter(Boolean);
  for (const r of rings) {
    const pts = r.replace("Z", "").split("L").map((s) => s.split(" ").map(Number));
    let a = 0;
    let cx = 0;
    let cy = 0;
    for (let i = 0; i < pts.length; i++) {
      const [xa, ya] = pts[i];
      const [xb, yb] = pts[(i + 1) % pts.length];
      const cross = xa * yb - xb * ya;
      a += cross;
      cx += (xa + xb) * cross;
      cy += (ya + yb) * cross;
    }
    if (Math.abs(a) > bestArea) {
      bestArea = Math.abs(a);
      best = [cx / (3 * a), cy / (3 * a)];
    }
  }
  if (!best) return;
  const node = svg("text", { x: best[0].toFixed(3), y: best[1].toFixed(3), class: `label label-${kind}` });
  const name = svg("tspan", { class: "label-name" });
  name.textContent = feature.name;
  node.append(name);
  if (kind !== "zone") {
    const code = svg("tspan", { class: "label-code", x: best[0].toFixed(3), dy: "1.15em" });
    code.textContent = feature.code;
    node.append(code);
  }
  map.layers.labels.append(node);
  map.labels.push({
    node, kind, bboxW: feature.bbox[2] - feature.bbox[0], bboxH: feature.bbox[3] - feature.bbox[1],
    chars: Math.max(feature.name.length, feature.code.length * 0.55),
  });
}
