// Users (admin): create (username, password of 12+ characters, role, allowed tags), change role,
// tags or password, delete. The server refuses to remove or demote the last admin and says so.

import { del, get, post, put } from "../api.js";
import { field, h, replaceChildren, setText } from "../dom.js";
import { fmtFull } from "../format.js";

const ROLES = ["viewer", "operator", "admin"];

export function mount(root, ctx) {
  const view = new UsersView(root, ctx);
  view.load();
  return { unmount() {} };
}

function roleSelect(testid, value = "viewer") {
  const select = h("select", { class: "input", testid }, ROLES.map((r) => h("option", { value: r }, r)));
  select.value = value;
  return select;
}

class UsersView {
  constructor(root, ctx) {
    this.ctx = ctx;
    this.editing = null; // the user being changed, or null for a new one
    const e = (this.els = {});
    e.username = h("input", { type: "text", class: "input", testid: "user-username", spellcheck: false, autocapitalize: "none", autocomplete: "off" });
    e.password = h("input", { type: "password", class: "input", testid: "user-password", autocomplete: "new-password" });
    e.role = roleSelect("user-role");
    e.tags = h("input", { type: "text", class: "input", testid: "user-tags", placeholder: "web, eu" });
    e.title = h("h2", {}, "New user");
    e.submit = h("button", { type: "submit", class: "btn btn-primary", testid: "user-submit" }, "Create user");
    e.cancel = h("button", { type: "button", class: "btn", testid: "user-cancel", hidden: true, on: { click: () => this.edit(null) } }, "Cancel");
    e.tbody = h("tbody");
    replaceChildren(root,
      h("div", { class: "page-head" }, h("h1", { tabIndex: -1 }, "Users")),
      h("form", {
        class: "card", testid: "user-form", noValidate: true,
        on: { submit: (ev) => { ev.preventDefault(); this.save(); } },
      },
      e.title,
      h("div", { class: "row-3" },
        field("Username", e.username),
        field("Password", e.password, "At least 12 characters. When changing a user, leave empty to keep it."),
        field("Role", e.role, "viewer reads; operator also runs and terminates; admin also manages VPSes, users and the audit log.")),
      h("div", { class: "row-3" },
        field("Allowed tags", e.tags, "Comma-separated. Empty: every VPS. Otherwise only VPSes with one of these tags."),
        h("div", { class: "field field-end" }, h("div", { class: "actions" }, e.submit, e.cancel)))),
      h("section", { class: "card" },
        h("div", { class: "table-wrap" }, h("table", { class: "table", testid: "users-table" },
          h("thead", {}, h("tr", {}, ...["ID", "Username", "Role", "Allowed tags", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
          e.tbody))));
  }

  async load() {
    try {
      this.render(await get("/api/users"));
    } catch (err) {
      this.ctx.showError(err, "Could not list the users");
    }
  }

  render(users) {
    replaceChildren(this.els.tbody, users.map((u) => h("tr", { testid: `user-row-${u.username}` },
      h("td", { class: "num" }, String(u.id)),
      h("td", {}, u.username, u.username === this.ctx.me?.username ? h("span", { class: "muted small" }, " (you)") : null),
      h("td", {}, h("span", { class: "role-badge", testid: `user-role-${u.username}` }, u.role)),
      h("td", { class: "tag-list" }, u.allowed_tags.length ? u.allowed_tags.map((t) => h("span", { class: "tag" }, t)) : h("span", { class: "muted" }, "every VPS")),
      h("td", {}, fmtFull(u.created_at)),
      h("td", {},
        h("button", { type: "button", class: "btn btn-small", testid: `user-edit-${u.username}`, on: { click: () => this.edit(u) } }, "Change"),
        " ",
        h("button", {
          type: "button", class: "btn btn-small btn-danger-quiet", testid: `user-delete-${u.username}`,
          attrs: { "aria-label": `Delete ${u.username}` }, on: { click: () => this.remove(u) },
        }, "Delete")))));
  }

  edit(user) {
    const e = this.els;
    this.editing = user;
    e.username.value = user ? user.username : "";
    e.password.value = "";
    e.role.value = user ? user.role : "viewer";
    e.tags.value = user ? user.allowed_tags.join(", ") : "";
    setText(e.title, user ? `Change ${user.username}` : "New user");
    setText(e.submit, user ? "Save changes" : "Create user");
    e.cancel.hidden = !user;
    e.username.focus();
  }

  async save() {
    const e = this.els;
    const body = {
      username: e.username.value.trim(),
      role: e.role.value,
      allowed_tags: e.tags.value.split(",").map((t) => t.trim()).filter(Boolean),
    };
    if (e.password.value || !this.editing) body.password = e.password.value;
    e.submit.disabled = true;
    try {
      if (this.editing) {
        await put(`/api/users/${this.editing.id}`, body);
        this.ctx.toast(`${body.username} changed`);
      } else {
        await post("/api/users", body);
        this.ctx.toast(`${body.username} created`);
      }
      this.ctx.clearError();
      this.edit(null);
      await this.load();
    } catch (err) {
      this.ctx.showError(err, this.editing ? "The user was not changed" : "The user was not created");
    } finally {
      e.submit.disabled = false;
    }
  }

  async remove(user) {
    const ok = await this.ctx.confirm({
      title: `Delete ${user.username}?`,
      message: "Their sessions and API tokens end at once. The audit log keeps what they did.",
      confirmLabel: "Delete",
      danger: true,
    });
    if (!ok) return;
    try {
      await del(`/api/users/${user.id}`);
      this.ctx.toast(`${user.username} deleted`);
      await this.load();
    } catch (err) {
      this.ctx.showError(err, "The user was not deleted");
    }
  }
}
