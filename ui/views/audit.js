// The audit log (admin): who did what, when, from where; newest first, filtered by actor, action
// and start time, a page at a time ("Older" follows the server's `next`).

import { get } from "../api.js";
import { field, h, replaceChildren } from "../dom.js";
import { fmtFull } from "../format.js";

const ACTIONS = [
  "login", "login_failed", "logout", "batch.create", "batch.terminate", "child.terminate",
  "batch.rerun", "script.create", "script.update", "script.delete", "vps.create", "vps.delete",
  "vps.rotate_secret", "user.create", "user.update", "user.delete", "token.create", "token.delete",
];
const PAGE = 50;

export function mount(root, ctx) {
  const view = new AuditView(root, ctx);
  view.load(false);
  return { unmount() {} };
}

function describe(details) {
  const parts = [];
  for (const [k, v] of Object.entries(details || {})) {
    if (v === null || v === undefined || v === "") continue;
    parts.push(`${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`);
  }
  return parts.join("; ");
}

class AuditView {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.next = null;
    const e = (this.els = {});
    e.actor = h("input", { type: "text", class: "input", testid: "audit-actor", placeholder: "alice", spellcheck: false });
    e.action = h("select", { class: "input", testid: "audit-action" },
      h("option", { value: "" }, "any action"), ACTIONS.map((a) => h("option", { value: a }, a)));
    e.since = h("input", { type: "datetime-local", class: "input", testid: "audit-since" });
    e.apply = h("button", { type: "submit", class: "btn btn-primary", testid: "audit-apply" }, "Filter");
    e.tbody = h("tbody");
    e.more = h("button", { type: "button", class: "btn", testid: "audit-more", hidden: true, on: { click: () => this.load(true) } }, "Older entries");
    e.empty = h("p", { class: "empty", testid: "audit-empty", hidden: true }, "No entry matches.");
    replaceChildren(root,
      h("div", { class: "page-head" }, h("h1", { tabIndex: -1 }, "Audit log")),
      h("form", {
        class: "card filters", testid: "audit-filters", noValidate: true,
        on: { submit: (ev) => { ev.preventDefault(); this.load(false); } },
      }, field("Actor", e.actor), field("Action", e.action), field("Since", e.since), h("div", { class: "field field-end" }, e.apply)),
      h("section", { class: "card" },
        h("div", { class: "table-wrap" }, h("table", { class: "table", testid: "audit-table" },
          h("thead", {}, h("tr", {}, ...["When", "Actor", "Action", "Target", "Details", "From", "Outcome"].map((t) => h("th", { scope: "col" }, t)))),
          e.tbody)),
        e.empty, h("div", { class: "actions" }, e.more)));
  }

  query(more) {
    const e = this.els;
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (e.actor.value.trim()) q.set("actor", e.actor.value.trim());
    if (e.action.value) q.set("action", e.action.value);
    if (e.since.value) q.set("since", new Date(e.since.value).toISOString());
    if (more && this.next !== null) q.set("before", String(this.next));
    return q;
  }

  async load(more) {
    try {
      const page = await get(`/api/audit?${this.query(more)}`);
      this.ctx.clearError();
      const rows = page.items.map((a) => h("tr", { testid: `audit-row-${a.id}`, dataset: { action: a.action } },
        h("td", { title: fmtFull(a.at) }, fmtFull(a.at)),
        h("td", {}, a.actor),
        h("td", { class: "mono" }, a.action),
        h("td", { class: "mono" }, a.target_type ? `${a.target_type} ${a.target_id ?? ""}` : ""),
        h("td", { class: "details" }, describe(a.details)),
        h("td", { class: "mono" }, a.source_ip || ""),
        h("td", {}, h("span", { class: `badge ${a.outcome === "success" ? "g-succeeded" : "g-failed"}` }, a.outcome))));
      if (more) this.els.tbody.append(...rows);
      else replaceChildren(this.els.tbody, rows);
      this.next = page.next;
      this.els.more.hidden = page.next === null;
      this.els.empty.hidden = this.els.tbody.children.length > 0;
    } catch (err) {
      this.ctx.showError(err, "Could not read the audit log");
    }
  }
}
