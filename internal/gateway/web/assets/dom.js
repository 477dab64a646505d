// Building the page's elements. Every string shown goes into a text node
// (textContent): nothing here parses markup, and the page's CSP enforces
// Trusted Types with no policy, so that any HTML sink would throw.

const SVG = "http://www.w3.org/2000/svg";

// h makes an HTML element: h("td", {class: "num"}, "12", child). attrs:
// on* are event listeners, dataset sets data-*, value/checked/disabled are
// properties, the rest attributes (true: present, null/false: absent).
// Children: nodes, or strings and numbers shown as text; arrays are
// flattened; null and false are skipped.
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// s is h for SVG elements.
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG, tag), attrs, children);
}

const props = new Set(["value", "checked", "disabled", "selected"]);

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (props.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

// append adds children (as h takes them) to el.
export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c)); // a string is a text node
  }
  return el;
}

// replace makes children el's only children.
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// --- formats ----------------------------------------------------------------

const units = ["B", "kB", "MB", "GB", "TB", "PB"];

// bytes is n bytes in decimal units: "1.5 MB".
export function bytes(n) {
  n = Number(n) || 0;
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + units[i];
}

// rate is a rate in bytes a second, as bits a second: "12.3 Mbit/s".
export function rate(bytesPerSecond) {
  let n = (Number(bytesPerSecond) || 0) * 8;
  const u = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
  let i = 0;
  while (n >= 1000 && i < u.length - 1) {
    n /= 1000;
    i++;
  }
  return (n < 10 && i > 0 ? n.toFixed(2) : n < 100 && i > 0 ? n.toFixed(1) : String(Math.round(n))) + " " + u[i];
}

// count is an integer with thousands separated: "12,345".
export function count(n) {
  return (Number(n) || 0).toLocaleString("en-US");
}

// time parses an RFC 3339 time; null for none (absent, or Go's zero time).
export function time(v) {
  if (!v) return null;
  const t = new Date(v);
  return isNaN(t) || t.getUTCFullYear() <= 1 ? null : t;
}

// when is a time as the page shows it: local, to the second.
export function when(v) {
  const t = time(v);
  if (!t) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${t.getFullYear()}-${p(t.getMonth() + 1)}-${p(t.getDate())} ${p(t.getHours())}:${p(t.getMinutes())}:${p(t.getSeconds())}`;
}

// ago is how long ago a time was: "12 s ago", "3 min ago"; "never".
export function ago(v, now = Date.now()) {
  const t = time(v);
  if (!t) return "never";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min ago`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

// timeCell is a td of a relative time, the exact one as its title.
export function timeCell(v) {
  return h("td", { title: when(v) || null }, ago(v));
}

// --- forms and messages -----------------------------------------------------

// message is a paragraph for a form's outcome: say(text, isError).
export function message() {
  const p = h("p", { class: "message", role: "status", hidden: true });
  p.say = (text, isError = false) => {
    p.textContent = text;
    p.className = isError ? "message error" : "message ok";
    p.hidden = !text;
  };
  return p;
}

// busy runs fn with the form's buttons disabled, showing its error in msg
// (a message()); it returns fn's value, or undefined when fn threw.
export async function busy(form, msg, fn) {
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    const v = await fn();
    return v;
  } catch (e) {
    if (msg) msg.say(e.message || String(e), true);
    else throw e;
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

// ask shows a modal dialog and resolves to true (confirmed), the input's
// text (with input), or null (cancelled). o: {title, text, ok, danger,
// input: {label, value}}. While it is open nothing else on the page can be
// clicked, so a refresh under it changes nothing it refers to.
export function ask(o) {
  return new Promise((resolve) => {
    const input = o.input ? h("input", { name: "answer", value: o.input.value || "", required: true, autocomplete: "off" }) : null;
    const ok = h("button", { type: "submit", class: o.danger ? "danger" : "primary", dataset: { action: "confirm" } }, o.ok || "OK");
    const cancel = h("button", { type: "button", dataset: { action: "cancel" } }, "Cancel");
    const form = h("form", { class: "dialog-form" },
      h("h2", null, o.title || "Are you sure?"),
      o.text ? h("p", null, o.text) : null,
      input ? h("label", null, o.input.label || "", input) : null,
      h("div", { class: "buttons" }, cancel, ok));
    const d = h("dialog", { class: "confirm" }, form);
    let answer = null;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      answer = input ? input.value.trim() : true;
      d.close();
    });
    cancel.addEventListener("click", () => d.close());
    d.addEventListener("close", () => {
      d.remove();
      resolve(answer);
    });
    document.body.append(d);
    d.showModal();
    (input || ok).focus();
  });
}

// splitNames splits "eng, ops  sales" into names.
export function splitNames(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}
