// Invites: make one for a user (its URL and QR code are shown once),
// the pending ones, withdraw.

import * as api from "./api.js";
import { ask, busy, h, message, replace, s, timeCell, when } from "./dom.js";

const QUIET = 4; // modules of light border, as the standard asks

// qrSVG draws a QR code from its modules (rows of "0" and "1", as POST
// /qr answers): one path of unit squares, black on white.
export function qrSVG(modules, label) {
  const n = modules.length;
  let d = "";
  modules.forEach((row, y) => {
    for (let x = 0; x < row.length; x++) if (row[x] === "1") d += `M${x + QUIET} ${y + QUIET}h1v1h-1z`;
  });
  const size = n + 2 * QUIET;
  const px = size * Math.max(3, Math.floor(240 / size)); // whole pixels a module: sharp for a camera
  return s("svg", { viewBox: `0 0 ${size} ${size}`, width: px, height: px, class: "qr", role: "img", "aria-label": label, "shape-rendering": "crispEdges" },
    s("rect", { width: size, height: size, fill: "#fff" }),
    s("path", { d, fill: "#000" }));
}

const ttls = [["1h", "1 hour"], ["24h", "1 day"], ["168h", "7 days"], ["720h", "30 days"]];

export default {
  title: "Invites",
  mount(view) {
    const msg = message();
    const user = h("select", { name: "user", required: true });
    const ttl = h("select", { name: "ttl" }, ttls.map(([v, t]) => h("option", { value: v, selected: v === "24h" }, t)));
    const uses = h("input", { name: "uses", type: "number", min: 1, max: 10000, value: "1", size: 4 });
    const form = h("form", { class: "inline", id: "create-invite" },
      h("label", null, "User ", user), h("label", null, "Valid for ", ttl), h("label", null, "Uses ", uses),
      h("button", { type: "submit", class: "primary" }, "Create invite"));
    const made = h("section", { id: "new-invite", class: "card", hidden: true });
    const body = h("tbody");
    replace(view, h("h1", null, "Invites"),
      h("p", { class: "muted" }, "An invite is a URL that enrolls devices of one user (the device makes its own key). It carries the pin of the gateway's certificate. The gateway keeps only its hash, so it is shown once."),
      form, msg, made,
      h("section", null, h("h2", null, "Pending"),
        h("table", { id: "invites" }, h("thead", null, h("tr", null, ["ID", "User", "Prefix", "Created", "Expires", "Uses left", ""].map((t) => h("th", null, t)))), body)));

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const inv = await busy(form, msg, () => api.post("/invites", { user: user.value, ttl: ttl.value, uses: Number(uses.value) || 1 }));
      if (!inv) return;
      msg.say("");
      const url = h("code", { id: "invite-url" }, inv.url);
      const copy = h("button", { type: "button" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(inv.url);
          copy.textContent = "Copied";
        } catch {
          copy.textContent = "Select and copy it";
        }
      });
      const qr = h("figure", { id: "invite-qr" }, h("figcaption", { class: "muted" }, "Drawing the QR code…"));
      replace(made, h("h2", null, `Invite for ${inv.user}`),
        h("p", null, `Shown once. Valid until ${when(inv.expires_at)} for ${inv.uses_left} device${inv.uses_left === 1 ? "" : "s"}. On the device: `, h("code", null, "sudo ptun join 'URL' --name NAME")),
        h("div", { class: "url-line" }, url, copy), qr);
      made.hidden = false;
      api.post("/qr", { text: inv.url })
        .then((r) => replace(qr, qrSVG(r.modules, "QR code of the invite URL"), h("figcaption", { class: "muted" }, "The same URL, to scan.")))
        .catch((err) => replace(qr, h("figcaption", { class: "error" }, "No QR code: " + err.message)));
      await load().catch((err) => msg.say(err.message, true));
    });

    async function withdraw(inv) {
      const ok = await ask({ title: `Withdraw invite ${inv.prefix || inv.id}?`, danger: true, ok: "Withdraw",
        text: `Nobody can enroll a device of ${inv.user} with it any more. Devices it enrolled stay.` });
      if (!ok) return;
      try {
        await api.del(`/invites/${api.seg(inv.id)}`);
        msg.say(`Invite ${inv.prefix || inv.id} is withdrawn.`);
      } catch (e) {
        msg.say(e.message, true);
      }
      await load().catch((err) => msg.say(err.message, true));
    }

    async function load() {
      const [us, invs] = await Promise.all([api.get("/users"), api.get("/invites")]);
      const chosen = user.value;
      replace(user, us.map((u) => h("option", { value: u.name, selected: u.name === chosen }, u.name)));
      if (!us.length) user.append(h("option", { value: "", disabled: true, selected: true }, "add a user first"));
      replace(body, invs.map((inv) => h("tr", { dataset: { invite: String(inv.id) } },
        h("td", null, String(inv.id)), h("td", null, inv.user), h("td", null, h("code", null, inv.prefix || "")),
        timeCell(inv.created_at), h("td", null, when(inv.expires_at)), h("td", { class: "num" }, String(inv.uses_left)),
        h("td", { class: "actions" }, h("button", { type: "button", class: "withdraw danger", onclick: () => withdraw(inv) }, "Withdraw")))));
      if (!invs.length) body.append(h("tr", null, h("td", { colspan: 7, class: "muted" }, "No pending invites.")));
    }
    load().catch((e) => msg.say(e.message, true));
    return {};
  },
};
