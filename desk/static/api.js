// The desk API over fetch: JSON in and out (every POST is application/json), errors as
// HttpError (status 0: no connection).
// A 401 on any call but the login, while logged in, calls the handler set by the page.

import { state } from "./state.js";

export class HttpError extends Error {
  /** `data`: the error's JSON body (a 422 carries `problems`, every one of them). */
  constructor(status, message, data = null) {
    super(message);
    this.status = status;
    this.data = data;
  }
}

let onUnauthorized = () => {};

/** What to do when the session turns out to be gone (show the login form). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export async function api(path, { method = "GET", body, query } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query))
      if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
    const qs = params.toString();
    if (qs) path = `${path}?${qs}`;
  }
  if (method !== "GET") {
    // The desk refuses a POST that is not JSON (415), even one without a body.
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new HttpError(0, "无法连接服务器");
  }
  let data = null;
  if ((res.headers.get("Content-Type") || "").includes("json")) {
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
  }
  if (res.status === 401 && path !== "/api/login" && state.me) onUnauthorized();
  if (!res.ok) throw new HttpError(res.status, (data && data.error) || `HTTP ${res.status}`, data);
  return data;
}
