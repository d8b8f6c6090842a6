// Onboarding (新增矫正对象) and editing a person: devices, home, level, risk, category and
// injunction zones. The server validates exactly as `registry import` does; a 422 lists
// every problem under the form, and nothing was changed. An edit sends only what changed.

import { api } from "./api.js";
import { $, el } from "./dom.js";
import { clearRefusal, showRefusal } from "./errors.js";
import { CATEGORY_NAMES, curfewText, parseCurfews } from "./format.js";
import { loadPeople, people, selectPerson } from "./people.js";
import { PlacePicker } from "./picker.js";
import { state } from "./state.js";

let home = null;
let exclusions = null;
let editing = null;        // the person's document being edited; null while onboarding

export function setupPersonForm() {
  home = new PlacePicker($("pf-home"), { levels: ["county", "township"], testid: "pf-home" });
  exclusions = new PlacePicker($("pf-exclusions"), {
    levels: ["zone"], testid: "pf-exclusions", placeholder: "禁止区域名称或代码（回车添加）",
  });
  $("pf-category").replaceChildren(...Object.entries(CATEGORY_NAMES).map(([k, v]) =>
    el("option", { value: k, text: `${v} ${k}` })));
  $("person-new").addEventListener("click", () => openPersonForm(null));
  $("pf-cancel").addEventListener("click", closePersonForm);
  $("person-form").addEventListener("submit", submit);
  people.onEdit = openPersonForm;
}

/** The form for a new person (`doc` null) or for editing `doc`. */
export function openPersonForm(doc) {
  editing = doc;
  $("person-form").hidden = false;
  $("person-form-title").textContent = doc ? `修改 ${doc.id}` : "新增矫正对象";
  $("person-form-new").hidden = !!doc;
  clearRefusal($("person-form-error"), $("person-form-problems"));
  const office = $("pf-office");
  office.replaceChildren(...(state.me.offices || []).map((o) =>
    el("option", { value: o.code, text: `${o.name} ${o.code}` })));
  $("pf-id").value = "";
  office.value = state.me.office;
  $("pf-devices").value = doc ? (doc.devices || []).join("\n") : "";
  home.codes = doc ? doc.home : [];
  exclusions.codes = doc ? doc.exclusions : [];
  $("pf-level").value = doc ? doc.level || "normal" : "normal";
  $("pf-risk").value = doc ? doc.risk || "normal" : "normal";
  $("pf-category").value = doc ? doc.category || "probation" : "probation";
  $("pf-curfews").value = doc ? (doc.curfews || []).map(curfewText).join("\n") : "";
  $("pf-night-watch").checked = !!(doc && doc.night_watch);
  (doc ? $("pf-devices") : $("pf-id")).focus();
}

export function closePersonForm() {
  editing = null;
  $("person-form").hidden = true;
}

function fields() {
  return {
    devices: $("pf-devices").value.split(/[\s,，、]+/).filter(Boolean),
    home: home.codes,
    level: $("pf-level").value,
    risk: $("pf-risk").value,
    category: $("pf-category").value,
    exclusions: exclusions.codes,
    curfews: parseCurfews($("pf-curfews").value),
    night_watch: $("pf-night-watch").checked,
  };
}

async function submit(event) {
  event.preventDefault();
  const error = $("person-form-error");
  const problems = $("person-form-problems");
  clearRefusal(error, problems);
  const f = fields();
  let request;
  if (editing) {
    const body = {};
    for (const [k, v] of Object.entries(f)) {
      const before = editing[k] ?? (k === "devices" ? undefined : k === "curfews" ? []
        : k === "night_watch" ? false : null);
      // Devices are sent only if shown (to whom the server shows them) or typed in.
      if (k === "devices" && before === undefined && !v.length) continue;
      if (JSON.stringify(v) !== JSON.stringify(before)) body[k] = v;
    }
    if (!Object.keys(body).length) {
      error.textContent = "没有修改";
      return;
    }
    request = [`/api/subjects/${encodeURIComponent(editing.id)}`, { method: "PATCH", body }];
  } else {
    request = ["/api/subjects", { method: "POST",
      body: { id: $("pf-id").value.trim(), office: $("pf-office").value, ...f } }];
  }
  const what = editing ? "保存修改" : "新增";
  try {
    const doc = await api(...request);
    const id = (doc && doc.id) || (editing ? editing.id : request[1].body.id);
    closePersonForm();
    await loadPeople();
    await selectPerson(id);
  } catch (e) {
    if (e.status !== 401) showRefusal(e, what, error, problems);
  }
}
