// Access rules: per group, add and remove; what a chosen user can reach
// (the union of their groups' rules).

import * as api from "./api.js";
import { ask, busy, h, message, replace } from "./dom.js";

const everything = "every route the gateway offers (nothing, if it was made with --default-access deny)";

// reach says what a user in groups (GroupJSON) can reach: a device may
// reach what any of its user's groups allows, and a group without rules
// (or no group at all) reaches every route (docs/gateway.md).
export function reach(userGroups) {
  if (!userGroups.length) return { all: true, why: "in no group" };
  const open = userGroups.filter((g) => !(g.rules || []).length);
  if (open.length) return { all: true, why: `in ${open.map((g) => g.name).join(", ")}, which has no rules` };
  const seen = new Map(); // rule text → groups
  for (const g of userGroups) {
    for (const r of g.rules) {
      if (!seen.has(r.rule)) seen.set(r.rule, []);
      seen.get(r.rule).push(g.name);
    }
  }
  return { all: false, rules: [...seen.entries()].map(([rule, groups]) => ({ rule, groups })) };
}

export default {
  title: "Access rules",
  mount(view, ctx) {
    const msg = message();
    const groupList = h("datalist", { id: "group-names" });
    const group = h("input", { name: "group", required: true, list: "group-names", placeholder: "eng", size: 12, autocomplete: "off" });
    const rule = h("input", { name: "rule", required: true, placeholder: "198.18.2.0/24 tcp/443", size: 30, autocomplete: "off" });
    const form = h("form", { class: "inline", id: "add-rule" },
      h("label", null, "Group ", group), h("label", null, "Rule ", rule), h("button", { type: "submit", class: "primary" }, "Add rule"), groupList);
    const groupsBox = h("div", { id: "group-rules" });
    const who = h("select", { name: "user", id: "reach-user" });
    const reachBox = h("div", { id: "reach" });
    replace(view, h("h1", null, "Access rules"),
      h("p", { class: "muted" }, "A rule lets a group's devices reach a destination: an address or prefix, optionally a protocol and port or range (198.18.2.0/24 tcp/22, 198.18.2.53 udp/53, 198.18.3.4 icmp). A device may reach what any of its user's groups allows; a group with no rule reaches every route the gateway offers. A change is in force within a second; what a rule refuses is counted as drop_acl."),
      form, msg,
      h("section", null, h("h2", null, "What a user can reach"), h("label", null, "User ", who), reachBox),
      h("section", null, h("h2", null, "Rules by group"), groupsBox));

    let groups = [], users = [];

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const g = group.value.trim(), r = rule.value.trim();
      const added = await busy(form, msg, () => api.post("/rules", { group: g, rule: r }));
      if (added) {
        msg.say(`${g} may now reach ${added.rule}.`);
        rule.value = "";
      }
      await load().catch((err) => msg.say(err.message, true));
    });
    who.addEventListener("change", () => showReach());

    async function remove(r) {
      const ok = await ask({ title: `Remove the rule ${r.rule} of ${r.group}?`, danger: true, ok: "Remove",
        text: `Devices of ${r.group} lose what only this rule allowed, within a second. A group left with no rule reaches every route.` });
      if (!ok) return;
      try {
        await api.del(`/rules/${api.seg(r.id)}`);
        msg.say(`The rule ${r.rule} of ${r.group} is removed.`);
      } catch (e) {
        msg.say(e.message, true);
      }
      await load().catch((err) => msg.say(err.message, true));
    }

    function showReach() {
      const u = users.find((x) => x.name === who.value);
      if (!u) {
        replace(reachBox, h("p", { class: "muted" }, "No users yet."));
        return;
      }
      const mine = groups.filter((g) => (u.groups || []).includes(g.name));
      const r = reach(mine);
      const groupsLine = h("p", null, `${u.name} is in: `, mine.length ? mine.map((g) => g.name).join(", ") : "no group", ".");
      if (r.all) {
        replace(reachBox, groupsLine, h("p", { class: "reach-all", dataset: { reach: "all" } }, `${u.name}'s devices may reach ${everything}: ${u.name} is ${r.why}.`));
      } else {
        replace(reachBox, groupsLine, h("ul", { class: "reach-list" }, r.rules.map((x) =>
          h("li", { dataset: { rule: x.rule } }, h("code", null, x.rule), h("span", { class: "muted" }, " from " + x.groups.join(", "))))));
      }
    }

    async function load() {
      [groups, users] = await Promise.all([api.get("/groups"), api.get("/users")]);
      replace(groupList, groups.map((g) => h("option", { value: g.name })));
      replace(groupsBox, groups.map((g) => h("section", { class: "group", dataset: { group: g.name } },
        h("h3", null, g.name, h("span", { class: "muted" }, ` · ${(g.members || []).length} member${(g.members || []).length === 1 ? "" : "s"}`)),
        (g.rules || []).length
          ? h("ul", { class: "rules" }, g.rules.map((r) => h("li", { dataset: { ruleId: String(r.id) } },
            h("code", null, r.rule), " ", h("button", { type: "button", class: "remove-rule danger", onclick: () => remove(r) }, "Remove"))))
          : h("p", { class: "muted" }, "No rules: reaches every route the gateway offers."))));
      if (!groups.length) groupsBox.append(h("p", { class: "muted" }, "No groups yet."));
      const chosen = who.value || ctx.params.get("user") || "";
      replace(who, users.map((u) => h("option", { value: u.name, selected: u.name === chosen }, u.name)));
      showReach();
    }
    load().catch((e) => msg.say(e.message, true));
    return {};
  },
};
