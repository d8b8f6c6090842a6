// The patrol desk page (SPEC §8): log in, live alarm list over SSE, SVG map of the
// jurisdictions, alarm detail with acknowledge / resolve, a subject's 24 h track.
// Vanilla JS modules, no build step, nothing loaded from the internet. Data never goes
// through innerHTML: every text is set with textContent.
//
// This module only wires the page together:
//   session.js      boot, login, logout; starting and stopping the desk
//   api.js          fetch wrapper (JSON, errors, 401)     live.js   the SSE stream
//   alarms.js       list snapshot, redraw of every view   filters.js  the three filters
//   alarm-list.js   the list rows                         counters.js open counts, title
//   detail.js       selection, detail panel, history      actions.js  ack / resolve
//   track.js        the track buttons                     sound.js  beep and its toggle
//   locate.js       立即定位: locate requests, their state, the fix on the map
//   map.js          SVG view, zoom, pan, scale    map-areas.js  jurisdictions and zones
//   map-alarms.js   alarm dots on the map         map-track.js  a track on the map
//   state.js, names.js, format.js, dom.js: shared state, names, labels, DOM builders
// Supervision work (SPEC §11, §12), each a page chosen in the top bar (views.js, which
// also gives viewers their read-only look):
//   leave-form.js   the leave request form     leaves.js  the leave list, one leave, steps
//   people.js       subjects, a person's page  person-form.js  onboarding and edit
//   audit.js        the audit log page         picker.js  jurisdictions by name or code
//   dates.js        Beijing-time dates          errors.js  refusals (403/409/422) in words

import { act } from "./actions.js";
import { setupAlarmList } from "./alarm-list.js";
import { loadAlarms, renderAll } from "./alarms.js";
import { setUnauthorizedHandler } from "./api.js";
import { loadAudit, setupAudit } from "./audit.js";
import { select } from "./detail.js";
import { $ } from "./dom.js";
import { resetLeaveForm, setupLeaveForm } from "./leave-form.js";
import { leaves, loadLeaves, setupLeaves } from "./leaves.js";
import { bindLocate, locates } from "./locate.js";
import { track } from "./map-track.js";
import { setupMap } from "./map.js";
import { loadPeople, loadPersonLeaves, people, setupPeople } from "./people.js";
import { setupPersonForm } from "./person-form.js";
import { boot, onLogin, onLogout, onUnauthorized } from "./session.js";
import { renderSoundToggle, toggleSound, unlockAudio } from "./sound.js";
import { clearTrack, showTrack } from "./track.js";
import { state } from "./state.js";
import { onShow, setupViews, showView } from "./views.js";

function init() {
  setUnauthorizedHandler(onUnauthorized);
  setupMap((id) => select(id, { center: false }));
  $("login-form").addEventListener("submit", onLogin);
  $("logout").addEventListener("click", onLogout);
  $("sound-toggle").addEventListener("click", toggleSound);
  for (const id of ["filter-office", "filter-type", "filter-status"])
    $(id).addEventListener("change", () => {
      renderAll();
      loadAlarms();
    });
  setupAlarmList(select);
  $("ack-button").addEventListener("click", () => act("ack"));
  $("resolve-button").addEventListener("click", () => act("resolve"));
  $("track-show").addEventListener("click", showTrack);
  $("track-clear").addEventListener("click", clearTrack);
  bindLocate($("locate-alarm"), $("locate-alarm-note"), () => {
    const doc = state.alarms.get(state.selected);
    return doc && doc.subject ? { subject: doc.subject, alarm: doc.id } : null;
  });
  bindLocate($("locate-person"), $("locate-person-note"), () =>
    (people.doc && !people.doc.ended ? { subject: people.doc.id } : null));
  // An answer shows in the track too when that person's track is on the map.
  locates.onAnswer = (doc) => {
    if (track.subject === doc.subject) showTrack(doc.subject);
  };
  setupViews();
  setupLeaves();
  setupLeaveForm();
  setupPeople();
  setupPersonForm();
  setupAudit();
  onShow("leave", loadLeaves);
  onShow("people", loadPeople);
  onShow("audit", loadAudit);
  people.onLeave = (id) => {
    showView("leave");
    resetLeaveForm(id);
  };
  leaves.changed = (subject) => {
    if (people.selected === subject) loadPersonLeaves(subject);
  };
  // Browsers allow audio only after a user gesture: the first click or key enables it.
  document.addEventListener("pointerdown", unlockAudio, true);
  document.addEventListener("keydown", unlockAudio, true);
  renderSoundToggle();
  boot();
}

init();
