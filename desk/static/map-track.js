// A subject's track on the map: accuracy circles, the line, a dot per fix; the map
// zooms to it. `track.subject` says whose track is shown (null: none).

import { $, svg } from "./dom.js";
import { SRC_NAMES, fmtAcc, fmtTime } from "./format.js";
import { fitTo, map, project } from "./map.js";

export const track = { subject: null };

export function drawTrack(fixes) {
  const g = map.layers.track;
  g.replaceChildren();
  if (!map.proj || !fixes.length) return;
  const pts = fixes.map((f) => project(f.lon, f.lat));
  const circles = svg("g", { class: "track-acc" });
  const dots = svg("g", { class: "track-dots" });
  fixes.forEach((f, i) => {
    const [x, y] = pts[i];
    if (f.acc) {
      circles.append(svg("circle", {
        cx: x.toFixed(4), cy: y.toFixed(4), r: (Number(f.acc) / 1000).toFixed(4),
      }));
    }
    const dot = svg("circle", {
      class: `track-dot${i === fixes.length - 1 ? " last" : ""}`,
      cx: x.toFixed(4), cy: y.toFixed(4), r: "0",
    });
    const title = svg("title");
    title.textContent = `${fmtTime(f.t)} · ${fmtAcc(f.acc)} · ${SRC_NAMES[f.src] || "来源未知"}`;
    dot.append(title);
    dots.append(dot);
  });
  const line = svg("polyline", {
    class: "track-line", points: pts.map(([x, y]) => `${x.toFixed(4)},${y.toFixed(4)}`).join(" "),
  });
  g.append(circles, line, dots);
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  fitTo(Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys), 0.12);
}

/** Remove the track, its note and its list of handset statuses. */
export function eraseTrack() {
  track.subject = null;
  if (map.layers) map.layers.track.replaceChildren();
  $("track-note").textContent = "";
  const statuses = $("track-status");
  statuses.replaceChildren();
  statuses.hidden = true;
}
