// The admin JSON API (docs/admin-api.md), as the page uses it: a session
// cookie (HttpOnly, which the page never sees) and the session's CSRF
// token, sent as X-CSRF-Token on every request that may change something.

export const PREFIX = "/api/v1/admin";

// ApiError is a refused or failed request: status 0 when the gateway did
// not answer; message is the API's "error" text.
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// session is who is logged in ("" for nobody) and the CSRF token.
export const session = { admin: "", csrf: "", expires: "" };

let onLoggedOut = () => {};

// whenLoggedOut sets what happens when a request is refused for want of a
// session (it expired, or someone ended it): the page shows the login.
export function whenLoggedOut(fn) {
  onLoggedOut = fn;
}

// call makes one request; body (if any) is sent as JSON. It resolves to
// the decoded answer, or throws an ApiError.
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = session.csrf;
  let resp;
  try {
    resp = await fetch(PREFIX + path, init);
  } catch (e) {
    throw new ApiError(0, "the gateway did not answer (" + e.message + ")");
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    // no JSON: the status says enough
  }
  if (!resp.ok) {
    const msg = data && typeof data.error === "string" ? data.error : `${resp.status} ${resp.statusText}`;
    if (resp.status === 401 && path !== "/login" && session.admin) {
      session.admin = "";
      session.csrf = "";
      onLoggedOut(msg);
    }
    throw new ApiError(resp.status, msg);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);

// q builds a query string from the set values of params: q({user: "a"}).
export function q(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  const s = u.toString();
  return s ? "?" + s : "";
}

// seg is a value made safe as one path segment.
export const seg = (v) => encodeURIComponent(String(v));

export async function login(name, password) {
  const r = await post("/login", { name, password });
  Object.assign(session, { admin: r.admin, csrf: r.csrf_token, expires: r.expires_at || "" });
}

// resume finds the session of the cookie the browser holds, if any (after
// a reload the page knows nothing, and whoami gives the CSRF token again).
// It resolves to whether there is one.
export async function resume() {
  try {
    const r = await get("/whoami");
    if (!r.csrf_token) return false; // not a session: the page does not use tokens
    Object.assign(session, { admin: r.admin, csrf: r.csrf_token, expires: r.expires_at || "" });
    return true;
  } catch (e) {
    if (e.status === 401) return false;
    throw e;
  }
}

export async function logout() {
  try {
    await post("/logout");
  } finally {
    session.admin = "";
    session.csrf = "";
  }
}

// optional is a GET that resolves to null when the gateway has no such
// endpoint (an older gateway, 404), instead of throwing.
export async function optional(path) {
  try {
    return await get(path);
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}
