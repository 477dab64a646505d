// The admin page: a one-page app over the admin JSON API. Routes are the
// URL's fragment (#/devices, #/audit?user=alice), so a reload or a link
// keeps the view; nothing but the API's answers is shown.

import * as api from "./api.js";
import { h, message, replace } from "./dom.js";
import overview from "./overview.js";
import users from "./users.js";
import devices from "./devices.js";
import invites from "./invites.js";
import rules from "./rules.js";
import audit from "./audit.js";

// A page is {title, mount(view, ctx) → {refresh?, stop?}}; ctx = {path:
// the route's segments after its name, params: URLSearchParams, go}.
const pages = { overview, users, devices, invites, rules, audit };

// REFRESH_MS is how often a page's figures are read again.
const REFRESH_MS = 5000;

const view = document.getElementById("view");
const header = document.getElementById("top");
let current = null; // the mounted page's handle
let refreshing = false;
let readyMarked = false;

// ready marks the moment the page can first be used (the login form, or
// the first view): the e2e test reads it as the time to interactive.
function ready() {
  if (!readyMarked) {
    readyMarked = true;
    performance.mark("ptun-ready");
    document.documentElement.dataset.ready = "1";
  }
}

function unmount() {
  if (current && current.stop) current.stop();
  current = null;
}

// parseHash splits "#/audit/x?user=a" into ["audit", "x"] and the params.
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [p, query] = raw.split("?", 2);
  const path = p.split("/").filter(Boolean).map((x) => {
    try {
      return decodeURIComponent(x);
    } catch {
      return x;
    }
  });
  return { path, params: new URLSearchParams(query || "") };
}

// go changes the route (and so the view).
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (!api.session.admin) {
    showLogin("");
    return;
  }
  const { path, params } = parseHash();
  const name = pages[path[0]] ? path[0] : "overview";
  unmount();
  header.hidden = false;
  document.getElementById("who").textContent = api.session.admin;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = pages[name].title + " · ptun gateway admin";
  replace(view);
  view.dataset.page = name;
  current = pages[name].mount(view, { path: path.slice(1), params, go }) || {};
  ready();
}

// refresh reads the mounted page's figures again, one refresh at a time,
// and not while the tab is hidden.
async function refresh() {
  if (refreshing || !current || !current.refresh || document.hidden) return;
  refreshing = true;
  try {
    await current.refresh();
  } catch (e) {
    if (e.status !== 401) console.warn("refresh:", e.message);
  } finally {
    refreshing = false;
  }
}

function showLogin(why) {
  unmount();
  header.hidden = true;
  view.dataset.page = "login";
  document.title = "Log in · ptun gateway admin";
  const msg = message();
  const name = h("input", { name: "name", autocomplete: "username", required: true, autofocus: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { id: "login", class: "card login" },
    h("h1", null, "ptun gateway admin"),
    h("label", null, "Admin name", name),
    h("label", null, "Password", password),
    h("button", { type: "submit", class: "primary" }, "Log in"),
    msg);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await api.login(name.value.trim(), password.value);
      password.value = "";
      route();
    } catch (err) {
      msg.say(err.status === 401 ? "Wrong name or password." : err.message, true);
    } finally {
      button.disabled = false;
    }
  });
  replace(view, form);
  if (why) msg.say(why, true);
  name.focus();
  ready();
}

async function start() {
  api.whenLoggedOut(() => showLogin("Your session ended: log in again."));
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await api.logout();
    } catch {
      // the session is gone either way
    }
    showLogin("");
  });
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", refresh);
  setInterval(refresh, REFRESH_MS);
  try {
    await api.resume();
  } catch (e) {
    replace(view, h("p", { class: "message error" }, "The gateway did not answer: " + e.message));
    ready();
    return;
  }
  route();
}

start();
