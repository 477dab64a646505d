// Users and groups: list, add (with groups), remove, put in and take out
// of groups; a user's devices (#/users/NAME).

import * as api from "./api.js";
import { deviceHeader, deviceRow } from "./devices.js";
import { ask, busy, count, h, message, replace, splitNames, when } from "./dom.js";

export default {
  title: "Users and groups",
  mount(view, ctx) {
    const selected = ctx.path[0] || "";
    const msg = message();
    const name = h("input", { name: "name", required: true, placeholder: "alice", size: 16, autocomplete: "off" });
    const groups = h("input", { name: "groups", placeholder: "eng, ops", size: 20, autocomplete: "off" });
    const add = h("form", { class: "inline", id: "add-user" },
      h("label", null, "Name ", name), h("label", null, "Groups ", groups), h("button", { type: "submit", class: "primary" }, "Add user"));
    const usersBody = h("tbody");
    const groupsBody = h("tbody");
    const detail = h("section", { id: "user-detail", hidden: !selected });
    replace(view, h("h1", null, "Users and groups"), add, msg, detail,
      h("section", null, h("h2", null, "Users"),
        h("table", { id: "users" }, h("thead", null, h("tr", null, ["Name", "Groups", "Put in a group", "Added", ""].map((t) => h("th", null, t)))), usersBody)),
      h("section", null, h("h2", null, "Groups"),
        h("p", { class: "muted" }, "A group is made when a user is first put in it or it gets a rule."),
        h("table", { id: "groups" }, h("thead", null, h("tr", null, ["Group", "Members", "Rules"].map((t) => h("th", null, t)))), groupsBody)));

    // act runs a change, says how it went, and reads the lists again.
    async function act(form, fn, done) {
      const ok = await busy(form, msg, async () => {
        await fn();
        return true;
      });
      if (ok) msg.say(done);
      await load().catch((e) => msg.say(e.message, true));
      return ok;
    }

    add.addEventListener("submit", (e) => {
      e.preventDefault();
      const n = name.value.trim();
      act(add, () => api.post("/users", { name: n, groups: splitNames(groups.value) }), `${n} is added.`).then((ok) => {
        if (ok) {
          name.value = "";
          groups.value = "";
        }
      });
    });

    function userRow(u) {
      const put = h("input", { name: "group", placeholder: "group", size: 10, required: true, autocomplete: "off" });
      const putForm = h("form", { class: "inline put-in" }, put, h("button", { type: "submit" }, "Put in"));
      putForm.addEventListener("submit", (e) => {
        e.preventDefault();
        const g = put.value.trim();
        act(putForm, () => api.post(`/users/${api.seg(u.name)}/groups`, { group: g }), `${u.name} is in ${g}.`);
      });
      const chips = (u.groups || []).map((g) => {
        const chip = h("span", { class: "chip", dataset: { group: g } }, g);
        const out = h("button", { type: "button", class: "take-out", title: `Take ${u.name} out of ${g}`, "aria-label": `Take ${u.name} out of ${g}` }, "×");
        out.addEventListener("click", () =>
          act(chip, () => api.del(`/users/${api.seg(u.name)}/groups/${api.seg(g)}`), `${u.name} is no longer in ${g}.`));
        chip.append(out);
        return chip;
      });
      const remove = h("button", { type: "button", class: "remove danger" }, "Remove");
      remove.addEventListener("click", async () => {
        const ok = await ask({ title: `Remove ${u.name}?`, danger: true, ok: "Remove",
          text: `Their devices are revoked at once, their invites withdrawn, and they leave every group.` });
        if (ok) act(remove.closest("tr"), () => api.del(`/users/${api.seg(u.name)}`), `${u.name} is removed.`);
      });
      return h("tr", { dataset: { user: u.name }, class: u.name === selected ? "selected" : null },
        h("td", null, h("a", { href: "#/users/" + encodeURIComponent(u.name) }, u.name)),
        h("td", { class: "chips" }, chips.length ? chips : h("span", { class: "muted" }, "none")),
        h("td", null, putForm),
        h("td", { title: when(u.created_at) }, when(u.created_at).slice(0, 10)),
        h("td", { class: "actions" }, remove));
    }

    async function loadDetail() {
      if (!selected) return;
      const r = await api.get("/devices" + api.q({ user: selected, all: "1" }));
      replace(detail,
        h("h2", null, `Devices of ${selected}`),
        h("p", null, h("a", { href: "#/audit" + api.q({ user: selected }) }, `${selected}'s audit entries`), " · ",
          h("a", { href: "#/invites" }, "invite a device"), " · ", h("a", { href: "#/users" }, "close")),
        r.devices.length
          ? h("table", { id: "user-devices" }, deviceHeader(), h("tbody", null, r.devices.map((d) => deviceRow(d, null, null))))
          : h("p", { class: "muted" }, `${selected} has no devices yet.`));
    }

    async function load() {
      const [us, gs] = await Promise.all([api.get("/users"), api.get("/groups")]);
      replace(usersBody, us.map(userRow));
      if (!us.length) usersBody.append(h("tr", null, h("td", { colspan: 5, class: "muted" }, "No users yet.")));
      replace(groupsBody, gs.map((g) => h("tr", { dataset: { group: g.name } },
        h("td", null, g.name), h("td", null, (g.members || []).join(", ")),
        h("td", null, h("a", { href: "#/rules" }, (g.rules || []).length ? count(g.rules.length) : "none")))));
      await loadDetail();
    }
    load().catch((e) => msg.say(e.message, true));
    // Only the selected user's devices have figures that move.
    return { refresh: loadDetail };
  },
};
