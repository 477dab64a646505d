// Overview: the gateways and their state, devices online, throughput over
// the last hour, drops by reason, engine restarts.

import * as api from "./api.js";
import { barChart, legend, lineChart } from "./charts.js";
import { bytes, count, h, rate, replace, when } from "./dom.js";

const HOUR = 3600 * 1000;

// ms is a history point's time in milliseconds (RFC 3339, or Unix seconds).
export function ms(t) {
  if (typeof t === "number") return t > 1e12 ? t : t * 1000;
  const v = Date.parse(t);
  return isNaN(v) ? null : v;
}

// dropLabel is a drop reason as shown: "drop_acl" → "acl".
const dropLabel = (k) => k.replace(/^drop_/, "").replace(/_/g, " ");

function card(key, label, value, note) {
  return h("div", { class: "stat", dataset: { stat: key } },
    h("span", { class: "label" }, label),
    h("span", { class: "value" }, value),
    note ? h("span", { class: "note" }, note) : null);
}

// notCounted are drop counters that others count again (drop_tun_write
// is stage tun's reasons summed: docs/metrics.md), left out of the total.
const notCounted = new Set(["drop_tun_write"]);

// gatewayRows are this gateway (its state as the overview says) and the
// registry's others (which it keeps no liveness of).
function gatewayRows(o) {
  const rows = [];
  if (o.gateway || o.name) {
    const state = o.live === false ? "its interface's figures could not be read" + (o.sampled_at ? ` (last at ${when(o.sampled_at)})` : "")
      : `up: this page's gateway, figures of ${when(o.sampled_at) || "now"}`;
    rows.push({ name: o.gateway || o.name, endpoint: o.endpoint || "", api: o.api_url || o.api || "", tls: o.tls_url || "", state, self: true });
  }
  for (const g of o.other_gateways || o.gateways || []) {
    const added = when(g.created_at);
    rows.push({ name: g.name || "", endpoint: g.endpoint || "", api: g.api_url || g.api || "", tls: g.tls_url || "",
      state: "shares the registry" + (added ? `, added ${added}` : "") + "; the registry keeps no liveness of gateways" });
  }
  return rows;
}

export default {
  title: "Overview",
  mount(view) {
    const heading = h("h1", null, "Overview");
    const stats = h("div", { class: "stats", id: "stats" });
    const note = h("p", { class: "muted", id: "overview-note" });
    const gateways = h("tbody");
    const through = h("div", { class: "chart-box", id: "throughput" });
    const throughNow = h("span", { class: "muted" });
    const drops = h("div", { class: "chart-box", id: "drops" });
    const dropRates = h("div", { id: "drop-rates" });
    const inOut = [{ label: "in (from devices)", cls: "rx" }, { label: "out (to devices)", cls: "tx" }];
    replace(view, heading, stats, note,
      h("section", null, h("h2", null, "Gateways"),
        h("table", { id: "gateways" }, h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "WireGuard endpoint"), h("th", null, "Enrollment API"), h("th", null, "OpenConnect"), h("th", null, "State"))), gateways)),
      h("section", null, h("h2", null, "Throughput, last hour ", throughNow), legend(inOut), through),
      h("section", null, h("h2", null, "Drops by reason"), h("p", { class: "muted" }, "Packets the gateway refused or could not deliver since its interface started, counted by reason (acl: refused by the access rules)."), drops, dropRates));

    // drawDropRates charts the drops a second of the (at most 3) reasons
    // that dropped the most in the hour.
    function drawDropRates(points, now, gap) {
      const sums = new Map();
      for (const p of points) for (const [k, v] of Object.entries(p.drops || {})) if (!notCounted.has(k)) sums.set(k, (sums.get(k) || 0) + v);
      const top = [...sums.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k]) => k);
      if (!top.length) {
        replace(dropRates);
        return;
      }
      const series = top.map((k, i) => ({ label: dropLabel(k), cls: "d" + i,
        points: points.map((p) => [ms(p.t), Number((p.drops || {})[k]) || 0]).filter(([t]) => t !== null) }));
      replace(dropRates, h("h3", null, "Drops a second, last hour"), legend(series),
        h("div", { class: "chart-box" }, lineChart({ title: "Drops a second over the last hour", from: now - HOUR, to: now, gap, series, box: drops,
          format: (v) => (v >= 10 ? Math.round(v) : v.toFixed(1)) + "/s" })));
    }

    async function refresh() {
      const [ov, hist] = await Promise.all([api.optional("/overview"), api.optional("/history")]);
      let o = ov;
      if (!o) {
        // A gateway without the overview endpoint: what the devices say.
        const d = await api.get("/devices");
        o = { live: d.live, devices_total: d.devices.length, devices_online: d.devices.filter((x) => x.online).length,
          rx_bytes: d.devices.reduce((a, x) => a + (x.rx_bytes || 0), 0), tx_bytes: d.devices.reduce((a, x) => a + (x.tx_bytes || 0), 0) };
      }
      const gws = gatewayRows(o);
      heading.textContent = o.gateway || o.name ? `Overview of ${o.gateway || o.name}` : "Overview";
      const dropEntries = Object.entries(o.drops || {}).map(([k, v]) => ({ key: k, label: dropLabel(k), value: Number(v) || 0 }))
        .sort((a, b) => b.value - a.value || a.label.localeCompare(b.label));
      const dropTotal = dropEntries.reduce((a, e) => a + (notCounted.has(e.key) ? 0 : e.value), 0);
      replace(stats,
        card("gateways", "Gateways", gws.length ? count(gws.length) : "–"),
        card("devices_online", "Devices online", count(o.devices_online), `of ${count(o.devices_total)}`),
        card("rx_bytes", "In (from devices)", bytes(o.rx_bytes)),
        card("tx_bytes", "Out (to devices)", bytes(o.tx_bytes)),
        card("drops", "Drops", o.drops ? count(dropTotal) : "–"),
        card("engine_restarts", "Engine restarts", o.engine_restarts === undefined ? "–" : count(o.engine_restarts)));
      const notes = [];
      if (!ov) notes.push("This gateway has no overview endpoint: the figures are its devices' totals.");
      if (o.live === false) notes.push("The interface's live figures could not be read (is the gateway's interface up?).");
      if (o.sampled_at) notes.push("Sampled at " + when(o.sampled_at) + ".");
      note.textContent = notes.join(" ");

      replace(gateways, gws.map((g) => h("tr", { dataset: { gateway: g.name }, class: g.self ? "selected" : null },
        h("td", null, g.name || "–"), h("td", null, g.endpoint || "–"), h("td", null, g.api || "–"), h("td", null, g.tls || "–"), h("td", null, g.state))));
      if (!gws.length) gateways.append(h("tr", null, h("td", { colspan: 5, class: "muted" }, "Not known to this gateway.")));

      const now = Date.now();
      if (hist && Array.isArray(hist.points)) {
        const pts = hist.points.map((p) => ({ t: ms(p.t), rx: Number(p.rx_bps) || 0, tx: Number(p.tx_bps) || 0 })).filter((p) => p.t !== null);
        const gap = 3 * 1000 * (hist.interval_s || 5);
        replace(through, lineChart({ title: "Throughput over the last hour", from: now - HOUR, to: now, gap, format: rate, box: through,
          series: [{ ...inOut[0], points: pts.map((p) => [p.t, p.rx]) }, { ...inOut[1], points: pts.map((p) => [p.t, p.tx]) }] }));
        const last = pts[pts.length - 1];
        throughNow.textContent = last ? `(now: in ${rate(last.rx)}, out ${rate(last.tx)})` : "";
        drawDropRates(hist.points, now, gap);
      } else {
        replace(through, h("p", { class: "muted" }, "This gateway keeps no history of its throughput."));
      }
      if (!o.drops) replace(drops, h("p", { class: "muted" }, "This gateway does not report its drops here (ptun show IFNAME has them)."));
      else if (dropTotal === 0) replace(drops, h("p", { class: "muted", dataset: { drops: "none" } }, "No drops."));
      else replace(drops, barChart(dropEntries.filter((e) => e.value > 0), { format: count, title: "Drops by reason", box: drops }));
    }
    refresh().catch((e) => replace(note, h("span", { class: "error" }, e.message)));
    return { refresh };
  },
};
