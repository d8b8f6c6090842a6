// The top bar's counts of unacknowledged alarms by severity, echoed in the tab's title.

import { $, el } from "./dom.js";
import { SEVERITIES, SEVERITY_NAMES } from "./format.js";
import { UNACKED_STATUSES, state } from "./state.js";

const BASE_TITLE = document.title;

export function renderCounters() {
  const counts = Object.fromEntries(SEVERITIES.map((s) => [s, 0]));
  for (const doc of state.alarms.values())
    if (UNACKED_STATUSES.includes(doc.status) && doc.severity in counts) counts[doc.severity]++;
  const box = $("counters");
  box.replaceChildren(el("span", { class: "counters-label", text: "待处理" }));
  for (const s of SEVERITIES) {
    box.append(el("span", {
      class: `count sev-${s}${counts[s] ? "" : " zero"}`, "data-testid": `count-${s}`,
      title: `待处理/已升级的${SEVERITY_NAMES[s]}级报警`,
    }, el("span", { class: "count-name", text: SEVERITY_NAMES[s] }),
    el("span", { class: "count-n", text: String(counts[s]) })));
  }
  const urgent = counts.critical + counts.high;
  document.title = urgent ? `(${urgent}) ${BASE_TITLE}` : BASE_TITLE;
}

export function resetTitle() {
  document.title = BASE_TITLE;
}
