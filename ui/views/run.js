// Run view: pick VPSes (all / by tag / online only), type a command or pick a saved script, run.
//
// The VPS list stays live through the fleet-wide feed (../vpsfeed.js). With 500 machines the
// table is built once and each online/offline change touches one row. The form is kept as a draft
// (../draft.js) so leaving the page, or "Run again" from a batch, never loses typing.

import { get, post } from "../api.js";
import { field, h, replaceChildren, setText } from "../dom.js";
import { getDraft, setDraft } from "../draft.js";
import { fmtAgo, fmtFull, naturalCompare, plural } from "../format.js";
import { VpsFeed } from "../vpsfeed.js";
import { paramValues, parseLimit, renderParams } from "./rollout.js";

export function mount(root, ctx) {
  const view = new RunView(root, ctx);
  view.start();
  return { unmount: () => view.stop() };
}

class RunView {
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.vps = new Map(); // id -> item
    this.rows = new Map(); // id -> {tr, check, status, seen, item}
    this.selected = new Set(getDraft().selected.map(Number));
    this.scripts = [];
    this.posting = false;
    this.lastClicked = null;
    this.filterText = "";
    this.build();
  }

  start() {
    this.loadScripts();
    this.vpsFeed = new VpsFeed({
      onList: (list) => this.setVps(list),
      onChange: (item) => this.upsert(item),
      onError: (err, quiet) => {
        if (!quiet || err.status) this.ctx.showError(err, "Could not load the VPS list");
      },
    }).start();
    this.ageTimer = setInterval(() => this.refreshAges(), 30_000);
  }

  stop() {
    this.vpsFeed?.stop();
    clearInterval(this.ageTimer);
    this.saveDraft();
  }

  async loadScripts() {
    try {
      this.scripts = (await get("/api/scripts")).slice().sort((a, b) => naturalCompare(a.name, b.name));
    } catch (err) {
      this.ctx.showError(err, "Could not load saved scripts");
      this.scripts = [];
    }
    this.renderScripts();
  }

  // ---- building ----------------------------------------------------------------------------

  build() {
    const draft = getDraft();
    const e = (this.els = {});
    e.count = h("p", { class: "selection-count", testid: "selection-count", attrs: { "aria-live": "polite" } });
    e.filter = h("input", {
      type: "search", class: "input", testid: "vps-filter", placeholder: "Filter by name, tag or hostname",
      attrs: { "aria-label": "Filter VPSes by name, tag or hostname" },
      on: { input: () => { this.filterText = e.filter.value.trim().toLowerCase(); this.applyFilter(); } },
    });
    e.onlineOnly = h("input", {
      type: "checkbox", testid: "online-only", checked: draft.onlineOnly,
      on: { change: () => this.setOnlineOnly(e.onlineOnly.checked) },
    });
    e.tags = h("div", { class: "tags", testid: "tag-chips", attrs: { role: "group", "aria-label": "Select by tag" } });
    e.selectShown = h("input", {
      type: "checkbox", testid: "select-shown", attrs: { "aria-label": "Select all shown VPSes" },
      on: { change: () => this.selectShown(e.selectShown.checked) },
    });
    e.tbody = h("tbody", { on: { click: (ev) => this.onRowClick(ev) } });
    e.tableEmpty = h("p", { class: "empty", testid: "vps-empty", hidden: true });
    e.offline = h("p", { class: "warning", testid: "offline-warning", hidden: true, attrs: { role: "status" } });

    e.sourceCommand = h("input", { type: "radio", name: "source", value: "command", testid: "source-command", on: { change: () => this.setSource("command") } });
    e.sourceScript = h("input", { type: "radio", name: "source", value: "script", testid: "source-script", on: { change: () => this.setSource("script") } });
    e.command = h("textarea", {
      class: "input mono", testid: "command-input", rows: 6, spellcheck: false, value: draft.command,
      placeholder: "uptime && df -h /",
      attrs: { autocapitalize: "off", autocomplete: "off", autocorrect: "off" },
      on: { input: () => this.saveDraft() },
    });
    e.commandField = field("Command (run by /bin/sh on each VPS)", e.command);
    e.script = h("select", { class: "input", testid: "script-select", on: { change: () => { this.renderScriptPreview(); this.saveDraft(); } } });
    e.scriptPreview = h("pre", { class: "script-preview", testid: "script-preview" });
    e.scriptField = h("div", { class: "script-field" }, field("Saved script", e.script), e.scriptPreview);
    e.cwd = h("input", { type: "text", class: "input mono", testid: "cwd-input", value: draft.cwd, placeholder: "/srv/app", spellcheck: false, on: { input: () => this.saveDraft() } });
    e.alias = h("input", { type: "text", class: "input", testid: "alias-input", value: draft.alias, maxLength: 200, placeholder: "e.g. restart nginx", on: { input: () => this.saveDraft() } });
    e.timeout = h("input", { type: "number", class: "input", testid: "timeout-input", value: draft.timeout, min: 1, step: 1, placeholder: "no limit", on: { input: () => this.saveDraft() } });
    e.maxConcurrency = h("input", { type: "text", class: "input", testid: "max-concurrency-input", value: draft.maxConcurrency, placeholder: "all at once", inputMode: "numeric", on: { input: () => this.saveDraft() } });
    e.maxErrors = h("input", { type: "text", class: "input", testid: "max-errors-input", value: draft.maxErrors, placeholder: "no limit", inputMode: "numeric", on: { input: () => this.saveDraft() } });
    e.waitForAgent = h("input", { type: "number", class: "input", testid: "wait-for-agent-input", value: draft.waitForAgent, min: 0, max: 604800, step: 1, placeholder: "0", on: { input: () => this.saveDraft() } });
    e.params = h("div", { class: "params", testid: "params-form", hidden: true });
    e.run = h("button", { type: "submit", class: "btn btn-primary needs-operator", testid: "run-button" }, "Run");

    const form = h("form", {
      class: "run-form", testid: "run-form", noValidate: true,
      on: {
        submit: (ev) => { ev.preventDefault(); this.submit(); },
        keydown: (ev) => {
          if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); this.submit(); }
        },
      },
    },
    h("h1", { tabIndex: -1 }, "Run a command"),
    h("section", { class: "card", attrs: { "aria-labelledby": "targets-h" } },
      h("div", { class: "card-head" }, h("h2", { id: "targets-h" }, "Targets"), e.count),
      h("div", { class: "picker-tools" }, e.filter,
        h("label", { class: "check" }, e.onlineOnly, " Online only"),
        h("span", { class: "spacer" }),
        h("button", { type: "button", class: "btn btn-small", testid: "select-all", on: { click: () => this.selectShown(true) } }, "Select all"),
        h("button", { type: "button", class: "btn btn-small btn-quiet", testid: "select-none", on: { click: () => this.clearSelection() } }, "Clear")),
      e.tags,
      h("div", { class: "table-wrap vps-table" },
        h("table", { class: "table", testid: "vps-table" },
          h("thead", {}, h("tr", {},
            h("th", { class: "col-check", scope: "col" }, e.selectShown),
            h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Tags"),
            h("th", { scope: "col" }, "Host"), h("th", { scope: "col" }, "OS"), h("th", { scope: "col" }, "Agent"),
            h("th", { scope: "col" }, "Last seen"))),
          e.tbody),
        e.tableEmpty),
      e.offline),
    h("section", { class: "card", attrs: { "aria-labelledby": "command-h" } },
      h("div", { class: "card-head" }, h("h2", { id: "command-h" }, "What to run"),
        h("div", { class: "segmented", attrs: { role: "radiogroup", "aria-label": "Command source" } },
          h("label", {}, e.sourceCommand, " Command"), h("label", {}, e.sourceScript, " Saved script"))),
      e.commandField, e.scriptField,
      h("div", { class: "row-3" },
        field("Working directory", e.cwd, "Optional. Must exist on each VPS."),
        field("Name this run", e.alias, "Optional, shown in history."),
        field("Timeout (seconds)", e.timeout, "Optional. The command is killed after this.")),
      e.params,
      h("h3", { class: "subhead" }, "Rollout"),
      h("div", { class: "row-3", testid: "rollout-fields" },
        field("Max concurrency", e.maxConcurrency, "At most this many VPSes run at once: a number or a percentage like 10%."),
        field("Max errors", e.maxErrors, "Once more VPSes than this fail, the rest are skipped: 0 stops at the first error."),
        field("Wait for agent (seconds)", e.waitForAgent, "A VPS whose agent is offline waits this long for it instead of failing at once.")),
      h("div", { class: "actions" }, e.run, h("span", { class: "hint" }, h("kbd", {}, "Ctrl"), " + ", h("kbd", {}, "Enter"), " runs"))));
    replaceChildren(this.root, form);
    this.setSource(draft.source, false);
    this.renderCounts();
  }

  // ---- VPS list ----------------------------------------------------------------------------

  setVps(list) {
    const seen = new Set();
    for (const item of list) {
      seen.add(item.id);
      this.upsert(item, false);
    }
    for (const id of [...this.vps.keys()]) {
      if (!seen.has(id)) {
        this.vps.delete(id);
        this.rows.get(id)?.tr.remove();
        this.rows.delete(id);
        this.selected.delete(id);
      }
    }
    // Drop remembered selections of machines that no longer exist.
    for (const id of [...this.selected]) if (!this.vps.has(id)) this.selected.delete(id);
    this.sortRows();
    this.renderTags();
    this.applyFilter();
  }

  upsert(item, single = true) {
    const isNew = !this.vps.has(item.id);
    this.vps.set(item.id, item);
    let row = this.rows.get(item.id);
    if (!row) {
      row = this.buildRow(item);
      this.rows.set(item.id, row);
      this.els.tbody.appendChild(row.tr);
    }
    this.renderRow(row, item);
    if (single) {
      if (isNew) { this.sortRows(); this.renderTags(); }
      this.applyFilter(); // online-only may hide or show it; counts change
    }
  }

  buildRow(item) {
    const check = h("input", { type: "checkbox", testid: `vps-check-${item.id}`, id: `vps-${item.id}` });
    const name = h("label", { htmlFor: `vps-${item.id}`, class: "vps-name" });
    const status = h("span", { class: "online", testid: `vps-online-${item.id}` });
    const tags = h("td", { class: "tag-list" });
    const host = h("td", { class: "muted" });
    const os = h("td", { class: "muted" });
    const agent = h("td", { class: "muted" });
    const seen = h("td", { class: "muted" });
    const tr = h("tr", { testid: `vps-row-${item.id}`, class: "vps-row" },
      h("td", { class: "col-check" }, check), h("td", {}, name), h("td", {}, status), tags, host, os, agent, seen);
    tr.vpsId = item.id;
    return { tr, check, name, status, tags, host, os, agent, seen };
  }

  renderRow(row, item) {
    setText(row.name, item.name);
    row.check.setAttribute("aria-label", `Select ${item.name}`);
    row.check.checked = this.selected.has(item.id);
    row.tr.classList.toggle("is-selected", row.check.checked);
    row.tr.classList.toggle("is-offline", !item.online);
    setText(row.status, item.online ? "Online" : "Offline");
    row.status.className = `online ${item.online ? "is-online" : "is-offline"}`;
    const tagText = (item.tags || []).join(", ");
    if (row.tags.dataset.tags !== tagText) {
      row.tags.dataset.tags = tagText;
      replaceChildren(row.tags, (item.tags || []).map((t) => h("span", { class: "tag" }, t)));
    }
    setText(row.host, item.hostname || "—");
    setText(row.os, item.os || "—");
    setText(row.agent, item.agent_version || "—");
    setText(row.seen, item.online ? "now" : fmtAgo(item.last_seen_at));
    row.seen.title = fmtFull(item.last_seen_at);
  }

  refreshAges() {
    for (const [id, row] of this.rows) {
      const item = this.vps.get(id);
      if (item && !item.online) setText(row.seen, fmtAgo(item.last_seen_at));
    }
  }

  sortRows() {
    const ordered = [...this.rows.entries()]
      .sort(([a], [b]) => naturalCompare(this.vps.get(a)?.name || "", this.vps.get(b)?.name || ""));
    const frag = document.createDocumentFragment();
    for (const [, row] of ordered) frag.appendChild(row.tr);
    this.els.tbody.appendChild(frag);
    this.orderedIds = ordered.map(([id]) => id);
  }

  isShown(item) {
    if (this.els.onlineOnly.checked && !item.online) return false;
    const q = this.filterText;
    if (!q) return true;
    return item.name.toLowerCase().includes(q)
      || (item.hostname || "").toLowerCase().includes(q)
      || (item.tags || []).some((t) => t.toLowerCase().includes(q));
  }

  applyFilter() {
    let shown = 0;
    for (const [id, row] of this.rows) {
      const visible = this.isShown(this.vps.get(id));
      row.tr.hidden = !visible;
      if (visible) shown++;
    }
    const e = this.els;
    e.tableEmpty.hidden = shown > 0;
    setText(e.tableEmpty, this.vps.size === 0
      ? "No VPS is registered yet. Add one under Machines, then start its agent."
      : "No VPS matches this filter.");
    this.renderCounts();
  }

  shownIds() {
    return (this.orderedIds || []).filter((id) => this.isShown(this.vps.get(id)));
  }

  renderTags() {
    const counts = new Map();
    for (const item of this.vps.values()) for (const t of item.tags || []) counts.set(t, (counts.get(t) || 0) + 1);
    const tags = [...counts.keys()].sort(naturalCompare);
    replaceChildren(this.els.tags,
      tags.length ? h("span", { class: "tags-label" }, "Select by tag:") : null,
      tags.map((t) => h("button", {
        type: "button", class: "chip", testid: `tag-${t}`, dataset: { tag: t },
        attrs: { "aria-pressed": "false" },
        on: { click: () => this.toggleTag(t) },
      }, t, h("span", { class: "chip-n" }, String(counts.get(t))))));
    this.renderTagState();
  }

  renderTagState() {
    for (const chip of this.els.tags.querySelectorAll(".chip")) {
      const ids = this.shownIds().filter((id) => (this.vps.get(id).tags || []).includes(chip.dataset.tag));
      const all = ids.length > 0 && ids.every((id) => this.selected.has(id));
      chip.setAttribute("aria-pressed", String(all));
    }
  }

  // ---- selection ---------------------------------------------------------------------------

  setSelected(id, on) {
    if (on) this.selected.add(id); else this.selected.delete(id);
    const row = this.rows.get(id);
    if (row) {
      row.check.checked = on;
      row.tr.classList.toggle("is-selected", on);
    }
  }

  onRowClick(ev) {
    const tr = ev.target.closest("tr");
    if (!tr || tr.vpsId === undefined) return;
    const id = tr.vpsId;
    const isCheck = ev.target instanceof HTMLInputElement;
    if (ev.target.closest("label") && !isCheck) return; // the label forwards a click to the box
    const on = isCheck ? ev.target.checked : !this.selected.has(id);
    if (ev.shiftKey && this.lastClicked !== null) {
      // Shift-click selects (or clears) the range of shown rows since the last click.
      const ids = this.shownIds();
      const a = ids.indexOf(this.lastClicked);
      const b = ids.indexOf(id);
      if (a >= 0 && b >= 0) {
        for (const rid of ids.slice(Math.min(a, b), Math.max(a, b) + 1)) this.setSelected(rid, on);
      }
    }
    this.setSelected(id, on);
    this.lastClicked = id;
    this.selectionChanged();
  }

  selectShown(on) {
    for (const id of this.shownIds()) this.setSelected(id, on);
    this.selectionChanged();
  }

  clearSelection() {
    for (const id of [...this.selected]) this.setSelected(id, false);
    this.selectionChanged();
  }

  toggleTag(tag) {
    const ids = this.shownIds().filter((id) => (this.vps.get(id).tags || []).includes(tag));
    const all = ids.every((id) => this.selected.has(id));
    for (const id of ids) this.setSelected(id, !all);
    this.selectionChanged();
  }

  setOnlineOnly(on) {
    if (on) {
      // "Online only" means the run goes to online machines: drop offline ones from the selection.
      for (const id of [...this.selected]) if (!this.vps.get(id)?.online) this.setSelected(id, false);
    }
    this.applyFilter();
    this.saveDraft();
  }

  selectionChanged() {
    this.renderCounts();
    this.saveDraft();
  }

  renderCounts() {
    const total = this.vps.size;
    let online = 0;
    let selOnline = 0;
    for (const item of this.vps.values()) if (item.online) online++;
    for (const id of this.selected) if (this.vps.get(id)?.online) selOnline++;
    const sel = this.selected.size;
    const e = this.els;
    setText(e.count, `${sel} selected (${selOnline} online) · ${online} of ${plural(total, "VPS", "VPSes")} online`);
    const offline = sel - selOnline;
    e.offline.hidden = offline === 0 || total === 0;
    setText(e.offline, offline === 1
      ? "1 selected VPS is offline: it will be reported as unreachable."
      : `${offline} selected VPSes are offline: they will be reported as unreachable.`);
    const shown = this.shownIds();
    const shownSel = shown.filter((id) => this.selected.has(id)).length;
    e.selectShown.checked = shown.length > 0 && shownSel === shown.length;
    e.selectShown.indeterminate = shownSel > 0 && shownSel < shown.length;
    if (!this.posting) setText(e.run, sel ? `Run on ${plural(sel, "VPS", "VPSes")}` : "Run");
    this.renderTagState();
  }

  // ---- command source ----------------------------------------------------------------------

  setSource(source, save = true) {
    const e = this.els;
    const script = source === "script";
    e.sourceCommand.checked = !script;
    e.sourceScript.checked = script;
    e.commandField.hidden = script;
    e.scriptField.hidden = !script;
    this.source = script ? "script" : "command";
    if (this.scripts) this.params = renderParams(this.els.params, this.source === "script" && this.scripts.find((x) => String(x.id) === e.script.value));
    if (save) this.saveDraft();
  }

  renderScripts() {
    const e = this.els;
    const current = e.script.value || getDraft().scriptId;
    replaceChildren(e.script,
      h("option", { value: "" }, this.scripts.length ? "Choose a script…" : "No saved scripts yet"),
      this.scripts.map((s) => h("option", { value: String(s.id) }, s.name)));
    e.script.value = this.scripts.some((s) => String(s.id) === String(current)) ? String(current) : "";
    this.renderScriptPreview();
  }

  renderScriptPreview() {
    const s = this.scripts.find((x) => String(x.id) === this.els.script.value);
    const pre = this.els.scriptPreview;
    pre.hidden = !s;
    setText(pre, s ? s.content : "");
    if (s?.description) pre.title = s.description;
    this.params = renderParams(this.els.params, this.source === "script" ? s : null);
  }

  saveDraft() {
    const e = this.els;
    setDraft({
      source: this.source,
      command: e.command.value,
      scriptId: e.script.value || getDraft().scriptId,
      cwd: e.cwd.value,
      alias: e.alias.value,
      timeout: e.timeout.value,
      selected: [...this.selected],
      onlineOnly: e.onlineOnly.checked,
      maxConcurrency: e.maxConcurrency.value,
      maxErrors: e.maxErrors.value,
      waitForAgent: e.waitForAgent.value,
    });
  }

  // ---- submit ------------------------------------------------------------------------------

  validate() {
    const e = this.els;
    const problems = [];
    if (!this.selected.size) problems.push("Select at least one VPS.");
    if (this.source === "command" && !e.command.value.trim()) problems.push("Type a command to run.");
    if (this.source === "script" && !e.script.value) problems.push("Choose a saved script.");
    const t = e.timeout.value.trim();
    if (t && !(Number.isInteger(Number(t)) && Number(t) > 0)) problems.push("Timeout must be a whole number of seconds, at least 1.");
    if (parseLimit(e.maxConcurrency.value, 1) === undefined) problems.push("Max concurrency must be a number of at least 1, or a percentage from 1% to 100%.");
    if (parseLimit(e.maxErrors.value, 0) === undefined) problems.push("Max errors must be a number (0 or more), or a percentage from 0% to 100%.");
    const w = e.waitForAgent.value.trim();
    if (w && !(Number.isInteger(Number(w)) && Number(w) >= 0 && Number(w) <= 604800)) problems.push("Wait for agent must be a whole number of seconds from 0 to 604800.");
    for (const [name, { input, spec }] of this.params || []) {
      if (spec.required && spec.default == null && input.value === "") problems.push(`Parameter ${name} is required.`);
    }
    return problems;
  }

  async submit() {
    if (this.posting) return;
    const problems = this.validate();
    if (problems.length) {
      this.ctx.showError({ title: "Cannot run yet", lines: problems });
      return;
    }
    const e = this.els;
    const body = { target_vps_ids: [...this.selected].sort((a, b) => a - b) };
    if (this.source === "script") body.script_id = Number(e.script.value);
    else body.command_content = e.command.value;
    if (e.cwd.value.trim()) body.working_directory = e.cwd.value.trim();
    if (e.alias.value.trim()) body.execution_alias = e.alias.value.trim();
    if (e.timeout.value.trim()) body.timeout_seconds = Number(e.timeout.value.trim());
    const mc = parseLimit(e.maxConcurrency.value, 1);
    if (mc !== null) body.max_concurrency = mc;
    const me = parseLimit(e.maxErrors.value, 0);
    if (me !== null) body.max_errors = me;
    if (e.waitForAgent.value.trim()) body.wait_for_agent_seconds = Number(e.waitForAgent.value.trim());
    if (this.source === "script") {
      const params = paramValues(this.params);
      if (Object.keys(params).length) body.parameters = params;
    }
    this.posting = true;
    e.run.disabled = true;
    e.run.setAttribute("aria-busy", "true");
    setText(e.run, "Starting…");
    this.ctx.clearError();
    try {
      const res = await post("/api/batch_commands", body);
      this.saveDraft();
      this.ctx.navigate(`#/batch/${encodeURIComponent(res.batch_command_id)}`);
    } catch (err) {
      this.ctx.showError(err, "The batch was not started");
    } finally {
      this.posting = false;
      e.run.disabled = false;
      e.run.removeAttribute("aria-busy");
      this.renderCounts();
    }
  }
}
