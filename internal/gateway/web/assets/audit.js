// The audit log: every change, oldest first, a page at a time, filtered by
// user or device (#/audit?user=alice, #/audit?device=alice/laptop).

import * as api from "./api.js";
import { h, message, replace, when } from "./dom.js";

const PAGE = 100;

export default {
  title: "Audit log",
  mount(view, ctx) {
    const p = ctx.params;
    const msg = message();
    const user = h("input", { name: "user", placeholder: "alice", value: p.get("user") || "", size: 14, autocomplete: "off" });
    const device = h("input", { name: "device", placeholder: "alice/laptop", value: p.get("device") || "", size: 18, autocomplete: "off" });
    const form = h("form", { class: "inline", id: "audit-filter" },
      h("label", null, "User ", user), h("label", null, "Device ", device),
      h("button", { type: "submit", class: "primary" }, "Filter"), h("a", { href: "#/audit", class: "button" }, "All"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      ctx.go("#/audit" + api.q({ user: user.value.trim(), device: device.value.trim() }));
    });
    const body = h("tbody");
    const prev = h("button", { type: "button", id: "audit-prev" }, "← Earlier");
    const next = h("button", { type: "button", id: "audit-next" }, "Later →");
    const where = h("span", { class: "muted" });
    replace(view, h("h1", null, "Audit log"),
      h("p", { class: "muted" }, "Every change to the registry, by whom (admin:NAME for this page and the API, cli:… for the command line), oldest first. A user's filter also finds their devices and memberships."),
      form, msg,
      h("table", { id: "audit" }, h("thead", null, h("tr", null, ["#", "When", "Who", "Action", "Target", "Detail"].map((t) => h("th", null, t)))), body),
      h("div", { class: "pager" }, prev, where, next));

    // after is where the shown page starts; back holds the starts of the
    // pages before it.
    let after = 0, nextAfter = 0;
    const back = [];

    async function load() {
      const filter = api.q({ user: p.get("user"), device: p.get("device") });
      const r = await api.get("/audit" + api.q({ user: p.get("user"), device: p.get("device"), after: after || "", limit: PAGE }));
      // What the shown rows answer (the filter, "" for all): a reader can
      // tell a filtered list from the one it replaces.
      body.dataset.filter = filter;
      replace(body, r.entries.map((e) => h("tr", { dataset: { id: String(e.id), action: e.action } },
        h("td", { class: "num" }, String(e.id)), h("td", null, when(e.at)), h("td", null, e.actor),
        h("td", null, e.action), h("td", null, e.target), h("td", { class: "detail" }, e.detail))));
      if (!r.entries.length) body.append(h("tr", null, h("td", { colspan: 6, class: "muted" }, "No entries.")));
      nextAfter = r.next || 0;
      prev.disabled = !back.length;
      next.disabled = !nextAfter;
      where.textContent = r.entries.length ? `entries ${r.entries[0].id} to ${r.entries[r.entries.length - 1].id}` : "";
    }
    const show = () => load().catch((e) => msg.say(e.message, true));
    next.addEventListener("click", () => {
      back.push(after);
      after = nextAfter;
      show();
    });
    prev.addEventListener("click", () => {
      after = back.pop() || 0;
      show();
    });
    show();
    // The last page grows as changes are made: read it again.
    return { refresh: () => (nextAfter ? Promise.resolve() : load()) };
  },
};
