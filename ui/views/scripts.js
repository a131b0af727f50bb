// Scripts view: saved scripts — list, create, edit, delete, and "run this script".

import { del, get, post, put } from "../api.js";
import { field, h, replaceChildren, setText } from "../dom.js";
import { setDraft } from "../draft.js";
import { fmtFull, fmtTime, naturalCompare } from "../format.js";

export function mount(root, ctx, { id }) {
  const view = new ScriptsView(root, ctx, id);
  view.load();
  return { unmount: () => {} };
}

class ScriptsView {
  constructor(root, ctx, initialId) {
    this.root = root;
    this.ctx = ctx;
    this.scripts = [];
    this.current = null; // the script being edited, or null for a new one
    this.initialId = initialId;
    this.saving = false;
    const e = (this.els = {});
    e.list = h("ul", { class: "script-list", testid: "scripts-list" });
    e.name = h("input", { type: "text", class: "input", testid: "script-name", required: true, maxLength: 100 });
    e.description = h("input", { type: "text", class: "input", testid: "script-description" });
    e.content = h("textarea", {
      class: "input mono", testid: "script-content", rows: 16, spellcheck: false,
      placeholder: "#!/bin/sh\nset -eu\n…", attrs: { autocapitalize: "off", autocomplete: "off" },
    });
    e.params = h("textarea", {
      class: "input mono", testid: "script-parameters", rows: 4, spellcheck: false,
      placeholder: '[{"name": "VERSION", "required": true, "pattern": "[0-9.]+"}, {"name": "TOKEN", "secret": true}]',
    });
    e.heading = h("h2", { id: "editor-h", testid: "script-editor-title" });
    e.meta = h("p", { class: "muted small" });
    e.save = h("button", { type: "submit", class: "btn btn-primary needs-operator", testid: "script-save" }, "Save");
    e.run = h("button", { type: "button", class: "btn needs-operator", testid: "script-run", on: { click: () => this.runIt() } }, "Run this script…");
    e.remove = h("button", { type: "button", class: "btn btn-danger-quiet needs-operator", testid: "script-delete", on: { click: () => this.remove() } }, "Delete");
    e.form = h("form", {
      class: "card script-editor", testid: "script-form", noValidate: true,
      attrs: { "aria-labelledby": "editor-h" },
      on: {
        submit: (ev) => { ev.preventDefault(); this.save(); },
        keydown: (ev) => { if ((ev.ctrlKey || ev.metaKey) && (ev.key === "s" || ev.key === "Enter")) { ev.preventDefault(); this.save(); } },
      },
    },
    e.heading, e.meta,
    field("Name", e.name),
    field("Description", e.description, "Optional: what it does and when to use it."),
    field("Content", e.content, "Run by /bin/sh, or by the interpreter named on its #! line."),
    field("Parameters (JSON)", e.params, "Optional: each reaches the script as $FLEET_PARAM_<name>; keys name, description, required, default, pattern, secret."),
    h("div", { class: "actions" }, e.save, e.run, h("span", { class: "spacer" }), e.remove));
    replaceChildren(root,
      h("div", { class: "page-head" }, h("h1", { tabIndex: -1 }, "Saved scripts"), h("span", { class: "spacer" }),
        h("button", { type: "button", class: "btn needs-operator", testid: "script-new", on: { click: () => this.select(null) } }, "New script")),
      h("div", { class: "scripts-layout" },
        h("nav", { class: "card card-flush", attrs: { "aria-label": "Saved scripts" } }, e.list), e.form));
  }

  async load(selectId) {
    try {
      this.scripts = (await get("/api/scripts")).sort((a, b) => naturalCompare(a.name, b.name));
    } catch (err) {
      this.ctx.showError(err, "Could not load saved scripts");
      this.scripts = [];
    }
    const want = selectId ?? this.current?.id ?? this.initialId;
    this.initialId = null;
    const found = this.scripts.find((s) => String(s.id) === String(want));
    this.fill(found || null);
    this.renderList();
  }

  renderList() {
    const e = this.els;
    if (!this.scripts.length) {
      replaceChildren(e.list, h("li", { class: "empty", testid: "scripts-empty" }, "No saved scripts yet. Write one on the right and save it."));
      return;
    }
    replaceChildren(e.list, this.scripts.map((s) => h("li", {},
      h("button", {
        type: "button", class: "script-item", testid: `script-row-${s.id}`,
        attrs: { "aria-current": this.current && this.current.id === s.id ? "true" : null },
        on: { click: () => this.select(s) },
      }, h("span", { class: "script-item-name" }, s.name), s.description ? h("span", { class: "muted small" }, s.description) : null))));
  }

  isDirty() {
    const e = this.els;
    const base = this.current || { name: "", description: "", content: "" };
    return e.name.value !== (base.name || "") || e.description.value !== (base.description || "") || e.content.value !== (base.content || "");
  }

  async select(script) {
    if (this.isDirty()) {
      const ok = await this.ctx.confirm({
        title: "Discard your changes?",
        message: "This script has unsaved changes. They will be lost.",
        confirmLabel: "Discard changes",
        danger: true,
      });
      if (!ok) return;
    }
    this.ctx.clearError();
    this.fill(script);
    this.renderList();
    this.els.name.focus();
  }

  fill(script) {
    const e = this.els;
    this.current = script;
    e.name.value = script?.name || "";
    e.description.value = script?.description || "";
    e.content.value = script?.content || "";
    e.params.value = script?.parameters?.length ? JSON.stringify(script.parameters, null, 1) : "";
    setText(e.heading, script ? `Edit “${script.name}”` : "New script");
    setText(e.meta, script ? `Created ${fmtTime(script.created_at)} · updated ${fmtTime(script.updated_at)}` : "");
    e.meta.title = script ? `Updated ${fmtFull(script.updated_at)}` : "";
    e.remove.hidden = !script;
    e.run.hidden = !script;
  }

  async save() {
    if (this.saving) return;
    const e = this.els;
    const body = { name: e.name.value.trim(), description: e.description.value, content: e.content.value };
    const problems = [];
    if (!body.name) problems.push("Give the script a name.");
    if (!body.content.trim()) problems.push("The script is empty.");
    if (e.params.value.trim()) {
      try { body.parameters = JSON.parse(e.params.value); } catch { problems.push("Parameters must be JSON: a list of {name, …} objects."); }
    } else {
      body.parameters = [];
    }
    if (problems.length) {
      this.ctx.showError({ title: "Cannot save yet", lines: problems });
      return;
    }
    this.saving = true;
    e.save.disabled = true;
    setText(e.save, "Saving…");
    try {
      const saved = this.current
        ? await put(`/api/scripts/${encodeURIComponent(this.current.id)}`, body)
        : await post("/api/scripts", body);
      this.ctx.clearError();
      this.ctx.toast(`Saved “${saved?.name ?? body.name}”.`);
      this.current = saved || this.current;
      await this.load(saved?.id);
    } catch (err) {
      this.ctx.showError(err, "The script was not saved");
    } finally {
      this.saving = false;
      e.save.disabled = false;
      setText(e.save, "Save");
    }
  }

  async remove() {
    const s = this.current;
    if (!s) return;
    const ok = await this.ctx.confirm({
      title: `Delete “${s.name}”?`,
      message: "The saved script is removed. Batches that already ran it keep their record.",
      confirmLabel: "Delete script",
      danger: true,
    });
    if (!ok) return;
    try {
      await del(`/api/scripts/${encodeURIComponent(s.id)}`);
      this.ctx.toast(`Deleted “${s.name}”.`);
      this.current = null;
      this.fill(null);
      await this.load();
    } catch (err) {
      this.ctx.showError(err, "The script was not deleted");
    }
  }

  runIt() {
    if (!this.current) return;
    setDraft({ source: "script", scriptId: String(this.current.id) });
    this.ctx.navigate("#/run");
  }
}
