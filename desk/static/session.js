// The session: boot (is there one?), the login form, logout, and starting and stopping
// the desk for a logged-in user.

import { clearList } from "./alarm-list.js";
import { cancelRender, loadAlarms } from "./alarms.js";
import { api } from "./api.js";
import { resetAudit } from "./audit.js";
import { resetTitle } from "./counters.js";
import { cancelHistoryRefresh, loadSubjects, renderDetail } from "./detail.js";
import { $ } from "./dom.js";
import { fillFilters } from "./filters.js";
import { resetLeaveForm } from "./leave-form.js";
import { startKeyPeriods, stopKeyPeriods } from "./key-periods.js";
import { countMine, resetLeaves, startLeavePolling, stopLeavePolling } from "./leaves.js";
import { closeEvents, openEvents, setLive } from "./live.js";
import { loadLayer } from "./map-areas.js";
import { eraseTrack } from "./map-track.js";
import { resetLocates } from "./locate.js";
import { clearMap } from "./map.js";
import { fillSubjectOptions, resetPeople } from "./people.js";
import { closePersonForm } from "./person-form.js";
import { resetState, state } from "./state.js";
import { applyRole, showView } from "./views.js";

const BOOT_RETRY_MS = 5000;

function show(view) {
  $("boot").hidden = view !== "boot";
  $("login-view").hidden = view !== "login";
  $("desk-view").hidden = view !== "desk";
}

/** Start the desk if the session cookie is still good, else show the login form. */
export async function boot() {
  show("boot");
  try {
    const me = await api("/api/me");
    startDesk(me);
  } catch (e) {
    if (e.status === 401) {
      showLogin();
    } else {
      $("boot").textContent = `无法连接服务器（${e.message}），5 秒后重试…`;
      setTimeout(boot, BOOT_RETRY_MS);
    }
  }
}

function showLogin(message = "") {
  show("login");
  $("login-error").textContent = message;
  $("login-password").value = "";
  $("login-user").focus();
}

export async function onLogin(event) {
  event.preventDefault();
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  const error = $("login-error");
  if (!user || !password) {
    error.textContent = "请输入用户名和密码";
    return;
  }
  const button = $("login-submit");
  button.disabled = true;
  error.textContent = "";
  try {
    await api("/api/login", { method: "POST", body: { user, password } });
    startDesk(await api("/api/me"));
  } catch (e) {
    error.textContent = e.status === 401 ? "用户名或密码错误"
      : e.status === 429 ? "登录尝试过多，请稍后再试"
      : e.status === 0 ? "无法连接服务器，请检查网络"
      : `登录失败：${e.message}`;
    $("login-password").select();
  } finally {
    button.disabled = false;
  }
}

export async function onLogout() {
  try {
    await api("/api/logout", { method: "POST" });
  } catch (e) {
    // The session is gone either way on this page.
  }
  stopDesk();
  showLogin();
}

/** The server said 401 while logged in: the session expired or was revoked. */
export function onUnauthorized() {
  stopDesk();
  showLogin("登录已失效，请重新登录");
}

function startDesk(me) {
  stopDesk();
  state.me = me;
  for (const o of me.offices || []) {
    state.officeNames.set(String(o.code), o.name);
    if (o.parent) state.parents.set(String(o.code), String(o.parent));
  }
  if (me.office && me.office_name) state.officeNames.set(String(me.office), me.office_name);
  $("me-user").textContent = me.user;
  $("me-office").textContent = `${me.office_name || ""} ${me.office}`.trim();
  applyRole(me);
  fillFilters(me.offices || []);
  show("desk");
  showView("alarms");
  renderDetail();
  resetLeaveForm();
  countMine();
  startLeavePolling();
  startKeyPeriods();
  loadSubjects().then(() => {
    if (state.me === me) fillSubjectOptions();
  });
  loadLayer();
  // The live stream resumes right after the list's snapshot (its `seq`): nothing between
  // the two is lost. Without a seq it starts at the end, and merging keeps the newest.
  loadAlarms().then((seq) => {
    if (state.me === me) openEvents(seq);
  });
}

function stopDesk() {
  closeEvents();
  cancelRender();
  cancelHistoryRefresh();
  resetState();
  clearList();
  clearMap();
  eraseTrack();
  setLive("off");
  resetTitle();
  stopLeavePolling();
  stopKeyPeriods();
  resetLeaves();
  resetPeople();
  resetLocates();
  resetAudit();
  closePersonForm();
  applyRole(null);
}
