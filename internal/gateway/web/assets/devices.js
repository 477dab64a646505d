// Devices: every device with its protocol, addresses, endpoint, last
// handshake, bytes, state and a small throughput chart; rename, revoke.

import * as api from "./api.js";
import { sparkline } from "./charts.js";
import { ask, bytes, h, message, rate, replace, timeCell } from "./dom.js";

// MAX_SPARKS bounds the history requests of one refresh.
const MAX_SPARKS = 50;

// deviceState is "online", "offline" or "revoked".
export function deviceState(d) {
  return d.revoked_at ? "revoked" : d.online ? "online" : "offline";
}

// readings keeps, per device, the last 60 readings of its byte counters,
// for a sparkline when the gateway has no history of it (an older
// gateway, or a device seen for the first time).
const readings = new Map();

function localRates(d) {
  const now = Date.now();
  const r = readings.get(d.id) || [];
  r.push({ t: now, rx: d.rx_bytes || 0, tx: d.tx_bytes || 0 });
  while (r.length > 61) r.shift();
  readings.set(d.id, r);
  const rx = [], tx = [];
  for (let i = 1; i < r.length; i++) {
    const dt = (r[i].t - r[i - 1].t) / 1000 || 1;
    rx.push(Math.max(0, (r[i].rx - r[i - 1].rx) / dt));
    tx.push(Math.max(0, (r[i].tx - r[i - 1].tx) / dt));
  }
  return { rx, tx };
}

// spark draws a device's throughput: in (from the device) and out.
function spark(rx, tx) {
  const title = rx.length ? `now: in ${rate(rx[rx.length - 1])}, out ${rate(tx[tx.length - 1])}` : "no figures yet";
  return sparkline([{ cls: "rx", values: rx }, { cls: "tx", values: tx }], title);
}

// protocol is how a device is connected: WireGuard, or OpenConnect (an
// openconnect login's device, or a WireGuard device on its fallback),
// with its session's path.
export function protocol(d) {
  const name = d.protocol === "openconnect" ? "OpenConnect" : "WireGuard";
  if (!d.path) return name;
  return d.protocol === "openconnect" ? `${name} (${d.path})` : `${name}, over TLS (${d.path})`;
}

// deviceRow is a device's row; actions (may be null) = {rename, revoke}.
export function deviceRow(d, actions, sparkCell) {
  const state = deviceState(d);
  const label = `${d.user}/${d.name}`;
  return h("tr", { dataset: { device: String(d.id), name: label, state } },
    h("td", null, h("strong", null, label)),
    h("td", { class: "protocol" }, protocol(d)),
    h("td", { class: "addrs" }, (d.addresses || []).map((a) => h("div", null, a))),
    h("td", null, d.endpoint || ""),
    timeCell(d.last_handshake),
    h("td", { class: "num", dataset: { rx: String(d.rx_bytes || 0) } }, bytes(d.rx_bytes)),
    h("td", { class: "num", dataset: { tx: String(d.tx_bytes || 0) } }, bytes(d.tx_bytes)),
    h("td", null, h("span", { class: "state " + state }, state)),
    sparkCell || h("td"),
    actions && state !== "revoked"
      ? h("td", { class: "actions" },
        h("button", { type: "button", class: "rename", onclick: () => actions.rename(d) }, "Rename"),
        h("button", { type: "button", class: "revoke danger", onclick: () => actions.revoke(d) }, "Revoke"))
      : h("td"));
}

export const deviceHeader = () => h("thead", null, h("tr", null,
  ["Device", "Protocol", "Addresses", "Endpoint", "Last handshake", "Received", "Sent", "State", "Throughput", ""].map((t) => h("th", null, t))));

export default {
  title: "Devices",
  mount(view, ctx) {
    const msg = message();
    const user = h("input", { name: "user", placeholder: "all users", value: ctx.params.get("user") || "", size: 14 });
    const all = h("input", { type: "checkbox", name: "all", checked: ctx.params.get("all") === "1" });
    const filter = h("form", { class: "inline", id: "device-filter" },
      h("label", null, "User ", user), h("label", { class: "check" }, all, " include revoked"),
      h("button", { type: "submit" }, "Show"));
    filter.addEventListener("submit", (e) => {
      e.preventDefault();
      ctx.go("#/devices" + api.q({ user: user.value.trim(), all: all.checked ? "1" : "" }));
    });
    const live = h("p", { class: "muted" });
    const body = h("tbody");
    replace(view, h("h1", null, "Devices"), filter, msg, live, h("table", { id: "devices" }, deviceHeader(), body));
    let historyMissing = false;

    const actions = {
      async revoke(d) {
        const ok = await ask({ title: `Revoke ${d.user}/${d.name}?`, danger: true, ok: "Revoke",
          text: "Its key stops working on every gateway within a second, and it cannot connect again. The user needs a new invite for another device." });
        if (!ok) return;
        try {
          await api.post(`/devices/${api.seg(d.id)}/revoke`);
          msg.say(`${d.user}/${d.name} is revoked.`);
        } catch (e) {
          msg.say(e.message, true);
        }
        await refresh().catch((e) => msg.say(e.message, true));
      },
      async rename(d) {
        const name = await ask({ title: `Rename ${d.user}/${d.name}`, ok: "Rename", input: { label: "New name", value: d.name } });
        if (!name || name === d.name) return;
        try {
          await api.post(`/devices/${api.seg(d.id)}/rename`, { name });
          msg.say(`${d.user}/${d.name} is now ${d.user}/${name}.`);
        } catch (e) {
          msg.say(e.status === 404 && /no such endpoint/.test(e.message) ? "This gateway cannot rename devices." : e.message, true);
        }
        await refresh().catch((e) => msg.say(e.message, true));
      },
    };

    async function refresh() {
      const r = await api.get("/devices" + api.q({ user: ctx.params.get("user"), all: ctx.params.get("all") }));
      live.textContent = r.live ? `${r.devices.length} devices, ${r.devices.filter((d) => d.online).length} online.`
        : "The interface's live figures could not be read: state and bytes are unknown.";
      const cells = new Map();
      replace(body, r.devices.map((d) => {
        const cell = h("td", { class: "spark-cell" });
        if (!d.revoked_at) cells.set(d.id, { cell, d });
        return deviceRow(d, actions, cell);
      }));
      if (!r.devices.length) body.append(h("tr", null, h("td", { colspan: 9, class: "muted" }, "No devices.")));
      // Sparklines after the table, so that the figures show at once.
      const jobs = [...cells.values()].slice(0, MAX_SPARKS).map(async ({ cell, d }) => {
        let hist = null;
        if (!historyMissing) {
          hist = await api.optional("/history" + api.q({ device: d.id }));
          if (hist === null) historyMissing = true;
        }
        const l = localRates(d);
        if (hist && Array.isArray(hist.points) && hist.points.length >= 2) {
          replace(cell, spark(hist.points.map((p) => Number(p.rx_bps) || 0), hist.points.map((p) => Number(p.tx_bps) || 0)));
        } else {
          replace(cell, spark(l.rx, l.tx)); // a gateway without the history, or a device just seen
        }
      });
      await Promise.all(jobs);
    }
    refresh().catch((e) => msg.say(e.message, true));
    return { refresh };
  },
};
