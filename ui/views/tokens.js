// Personal API tokens: create one (name, optional expiry; the token is shown once), list, revoke.
// A token acts as its owner, with the owner's role and tags. An admin sees and revokes everyone's.

import { del, get, post } from "../api.js";
import { field, h, replaceChildren, setText } from "../dom.js";
import { fmtFull } from "../format.js";

export function mount(root, ctx) {
  const view = new TokensView(root, ctx);
  view.load();
  return { unmount() {} };
}

class TokensView {
  constructor(root, ctx) {
    this.ctx = ctx;
    const e = (this.els = {});
    e.name = h("input", { type: "text", class: "input", testid: "token-name", placeholder: "ci-deploy", maxLength: 100 });
    e.expires = h("input", { type: "datetime-local", class: "input", testid: "token-expires" });
    e.submit = h("button", { type: "submit", class: "btn btn-primary", testid: "token-submit" }, "Create token");
    e.secret = h("div", { class: "secret-box", hidden: true, attrs: { role: "status" } });
    e.tbody = h("tbody");
    e.empty = h("p", { class: "empty", hidden: true }, "No API token yet.");
    replaceChildren(root,
      h("div", { class: "page-head" }, h("h1", { tabIndex: -1 }, "API tokens")),
      h("form", {
        class: "card", testid: "token-form", noValidate: true,
        on: { submit: (ev) => { ev.preventDefault(); this.create(); } },
      },
      h("h2", {}, "New token"),
      h("p", { class: "hint" }, "A token acts as you (your role and tags) for scripts and the fleet CLI. It is shown once."),
      h("div", { class: "row-3" }, field("Name", e.name), field("Expires", e.expires, "Optional; your local time."),
        h("div", { class: "field field-end" }, e.submit)),
      e.secret),
      h("section", { class: "card" },
        h("div", { class: "table-wrap" }, h("table", { class: "table", testid: "tokens-table" },
          h("thead", {}, h("tr", {}, ...["ID", "Name", "Owner", "Created", "Expires", ""].map((t) => h("th", { scope: "col" }, t)))),
          e.tbody)),
        e.empty));
  }

  async load() {
    try {
      this.render(await get("/api/tokens"));
    } catch (err) {
      this.ctx.showError(err, "Could not list the tokens");
    }
  }

  render(tokens) {
    this.els.empty.hidden = tokens.length > 0;
    replaceChildren(this.els.tbody, tokens.map((t) => h("tr", { testid: `token-row-${t.id}` },
      h("td", { class: "num" }, String(t.id)),
      h("td", {}, t.name),
      h("td", {}, t.owner),
      h("td", { title: fmtFull(t.created_at) }, fmtFull(t.created_at)),
      h("td", {}, t.expires_at ? fmtFull(t.expires_at) : "never"),
      h("td", {}, h("button", {
        type: "button", class: "btn btn-small btn-danger-quiet", testid: `token-revoke-${t.id}`,
        attrs: { "aria-label": `Revoke ${t.name}` }, on: { click: () => this.revoke(t) },
      }, "Revoke")))));
  }

  async create() {
    const e = this.els;
    const name = e.name.value.trim();
    if (!name) {
      this.ctx.showError({ title: "Cannot create yet", lines: ["Give the token a name."] });
      return;
    }
    const body = { name };
    if (e.expires.value) body.expires_at = new Date(e.expires.value).toISOString();
    e.submit.disabled = true;
    try {
      const made = await post("/api/tokens", body);
      this.ctx.clearError();
      e.name.value = "";
      e.expires.value = "";
      replaceChildren(e.secret,
        h("p", {}, h("strong", {}, `Token "${made.name}"`), ": copy it now, it is not shown again."),
        h("code", { class: "once mono", testid: "token-secret" }, made.token));
      e.secret.hidden = false;
      await this.load();
    } catch (err) {
      this.ctx.showError(err, "The token was not created");
    } finally {
      e.submit.disabled = false;
    }
  }

  async revoke(t) {
    const ok = await this.ctx.confirm({
      title: `Revoke the token "${t.name}"?`,
      message: "Anything using it stops working at once.",
      confirmLabel: "Revoke",
      danger: true,
    });
    if (!ok) return;
    try {
      await del(`/api/tokens/${t.id}`);
      this.ctx.toast(`Token "${t.name}" revoked`);
      setText(this.els.secret, "");
      this.els.secret.hidden = true;
      await this.load();
    } catch (err) {
      this.ctx.showError(err, "The token was not revoked");
    }
  }
}
