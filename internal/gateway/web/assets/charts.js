// Charts, drawn as SVG from the gateway's figures. Labels are text nodes.

import { s } from "./dom.js";

// niceMax rounds a chart's top up to 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

const hhmm = (ms) => {
  const d = new Date(ms);
  return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
};

// width is a chart's width in its box (so that its text keeps its size).
function width(box) {
  const w = box && box.clientWidth ? box.clientWidth - 16 : 640;
  return Math.max(320, Math.min(1600, Math.round(w)));
}

// lineChart draws series of [time in ms, value] over [from, to]:
// o = {series: [{label, cls, points}], from, to, format, gap (ms: a longer
// pause between points breaks the line), title, box (the element it goes
// in, for its width)}.
export function lineChart(o) {
  const W = width(o.box), H = 200, left = 78, right = 10, top = 10, bottom = 24;
  const pw = W - left - right, ph = H - top - bottom;
  let max = 0;
  for (const se of o.series) for (const [, v] of se.points) max = Math.max(max, v);
  max = niceMax(max);
  const x = (t) => left + ((t - o.from) / (o.to - o.from)) * pw;
  const y = (v) => top + ph - (v / max) * ph;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart line", role: "img", "aria-label": o.title || "" });
  if (o.title) svg.append(s("title", null, o.title));
  for (const f of [0, 0.5, 1]) {
    const yy = y(max * f);
    svg.append(s("line", { x1: left, x2: W - right, y1: yy, y2: yy, class: "grid" }),
      s("text", { x: left - 6, y: yy + 4, class: "axis", "text-anchor": "end" }, o.format(max * f)));
  }
  for (const [t, anchor] of [[o.from, "start"], [(o.from + o.to) / 2, "middle"], [o.to, "end"]]) {
    svg.append(s("text", { x: x(t), y: H - 6, class: "axis", "text-anchor": anchor }, hhmm(t)));
  }
  for (const se of o.series) {
    let d = "", prev = null;
    for (const [t, v] of se.points) {
      if (t < o.from || t > o.to) continue;
      d += (prev === null || t - prev > o.gap ? "M" : "L") + x(t).toFixed(1) + " " + y(v).toFixed(1) + " ";
      prev = t;
    }
    if (d) svg.append(s("path", { d, class: "series " + se.cls, dataset: { series: se.label } }));
  }
  return svg;
}

// legend is the key of a chart's series.
export function legend(series) {
  const svg = s("svg", { viewBox: `0 0 ${series.length * 160} 18`, class: "legend", "aria-hidden": "true" });
  series.forEach((se, i) => {
    svg.append(s("rect", { x: i * 160, y: 4, width: 14, height: 10, class: "key " + se.cls }),
      s("text", { x: i * 160 + 20, y: 13 }, se.label));
  });
  return svg;
}

// barChart draws horizontal bars: entries = [{key, label, value}], o =
// {format, title, box}. Each bar has data-key and data-value, for tests
// and for reading.
export function barChart(entries, o) {
  const W = width(o.box), row = 24, left = 170, right = 90;
  const H = Math.max(1, entries.length) * row + 4;
  const max = Math.max(1, ...entries.map((e) => e.value));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart bars", role: "img", "aria-label": o.title || "" });
  if (o.title) svg.append(s("title", null, o.title));
  entries.forEach((e, i) => {
    const yy = 2 + i * row;
    const w = Math.max(e.value > 0 ? 2 : 0, ((W - left - right) * e.value) / max);
    svg.append(s("g", { class: "bar", dataset: { key: e.key, value: String(e.value) } },
      s("text", { x: left - 8, y: yy + 16, "text-anchor": "end" }, e.label),
      s("rect", { x: left, y: yy + 3, width: w.toFixed(1), height: row - 8 }),
      s("text", { x: left + w + 6, y: yy + 16, class: "value" }, o.format(e.value))));
  });
  return svg;
}

// sparkline draws series of values (evenly spaced, oldest first) on one
// scale, in a small box; title is its tooltip.
export function sparkline(series, title) {
  const W = 120, H = 28;
  let max = 0, n = 0;
  for (const se of series) {
    n = Math.max(n, se.values.length);
    for (const v of se.values) max = Math.max(max, v);
  }
  max = max || 1;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "spark", role: "img", "aria-label": title });
  svg.append(s("title", null, title));
  for (const se of series) {
    if (se.values.length < 2) continue;
    const step = W / Math.max(1, n - 1);
    const off = n - se.values.length;
    const pts = se.values.map((v, i) => ((off + i) * step).toFixed(1) + "," + (H - 1 - (v / max) * (H - 3)).toFixed(1));
    svg.append(s("polyline", { points: pts.join(" "), class: "series " + se.cls }));
  }
  return svg;
}
