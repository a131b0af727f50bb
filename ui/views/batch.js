// Batch view: overall status, counters (which double as filters), and one panel per VPS with its
// live output.
//
// Feed messages update the model as they arrive (O(1) work plus the size of the output chunk,
// with every panel's retained output capped), and mark panels dirty. The DOM is updated once per
// animation frame, within a time budget, and only for what changed; output is only rendered for
// panels that are expanded and near the viewport (IntersectionObserver), so 500 VPSes streaming at
// once cost about as much as the handful that are on screen.

import { ApiError, get, post, serverNow } from "../api.js";
import { h, replaceChildren, setText } from "../dom.js";
import { setDraft } from "../draft.js";
import { Feed } from "../feed.js";
import {
  GROUPS, batchInfo, commandTitle, fmtDuration, fmtFull, fmtTime, isTerminalBatch, isTerminalChild,
  naturalCompare, parseTime, plural,
} from "../format.js";
import { DEFERRED, TaskPanel } from "./panel.js";
import { renderRollout, rerunNotSucceeded } from "./rollout.js";

const FRAME_BUDGET_MS = 10;
const EXPAND_ALL_UP_TO = 24; // larger batches start with panels collapsed (one-line previews)
const TOTAL_OUTPUT_BUDGET = 32 * 1024 * 1024; // characters kept across all panels

function capsFor(count) {
  const chars = Math.max(32 * 1024, Math.min(256 * 1024, Math.floor(TOTAL_OUTPUT_BUDGET / Math.max(1, count))));
  return { chars, lines: 2000 };
}

export function mount(root, ctx, { id }) {
  const view = new BatchView(root, ctx, id);
  view.start();
  return { unmount: () => view.stop() };
}

class BatchView {
  constructor(root, ctx, id) {
    this.root = root;
    this.ctx = ctx;
    this.id = id;
    this.batch = null;
    this.panels = new Map(); // child_command_id -> TaskPanel
    this.order = []; // panels in display order
    this.dirty = new Set();
    this.counts = Object.fromEntries(GROUPS.map((g) => [g.key, 0]));
    this.countsDirty = true;
    this.headDirty = true;
    this.filter = { group: "all", search: "", collapseSucceeded: false };
    this.frame = 0;
    this.snapshots = 0;
    this.stopped = false;
    this.feedState = { state: "connecting", attempt: 0 };
    this.build();
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  start() {
    this.observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        const panel = entry.target.panel;
        if (!panel) continue;
        panel.visible = entry.isIntersecting;
        if (panel.visible && (panel.dirtyBody || panel.dirtyHead)) this.markDirty(panel);
      }
    }, { rootMargin: "800px 0px" });
    this.feed = new Feed(`/ws/batch_commands/${encodeURIComponent(this.id)}`, {
      onMessage: (msg) => this.onMessage(msg),
      onState: (state) => this.onFeedState(state),
    }).start();
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  stop() {
    this.stopped = true;
    this.feed?.stop();
    this.observer?.disconnect();
    clearInterval(this.ticker);
    cancelAnimationFrame(this.frame);
    this.pollAbort?.abort();
  }

  // ---- feed --------------------------------------------------------------------------------

  onMessage(msg) {
    if (this.stopped || !msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "SNAPSHOT":
        if (msg.batch) this.applySnapshot(msg.batch);
        break;
      case "BATCH_TASK_UPDATE":
        this.applyBatchUpdate(msg);
        break;
      case "CHILD_TASK_UPDATE": {
        const panel = this.panels.get(msg.child_command_id);
        if (!panel) break;
        const before = panel.applyStatus(msg);
        this.regroup(panel, before);
        this.markDirty(panel);
        this.headDirty = true; // queued / waiting counts
        break;
      }
      case "NEW_LOG_OUTPUT": {
        const panel = this.panels.get(msg.child_command_id);
        if (panel && panel.appendOutput(msg.stream, msg.offset, msg.data)) this.markDirty(panel);
        break;
      }
      default:
        break; // a newer server's message: ignore
    }
  }

  onFeedState(state) {
    this.feedState = state;
    this.headDirty = true;
    this.schedule();
    // If the socket will not come up (auth expired, batch gone, proxy without WebSocket), fall
    // back to the REST body: it is the same snapshot, and it surfaces 401/404 clearly.
    if (state.state === "reconnecting" && (this.snapshots === 0 || state.attempt >= 2)) this.poll();
  }

  async poll() {
    this.pollAbort?.abort();
    const abort = (this.pollAbort = new AbortController());
    try {
      const batch = await get(`/api/batch_commands/${encodeURIComponent(this.id)}`, { signal: abort.signal });
      if (!this.stopped && !abort.signal.aborted && this.feedState.state !== "live") this.applySnapshot(batch);
    } catch (err) {
      if (this.stopped || err?.name === "AbortError") return;
      if (err instanceof ApiError && err.status === 404) {
        this.feed.stop();
        this.showMissing();
      } else if (!(err instanceof ApiError && err.status === 401)) {
        this.ctx.showError(err, "Could not refresh the batch");
      }
    }
  }

  applySnapshot(batch) {
    const first = this.snapshots === 0;
    this.snapshots += 1;
    this.batch = { ...batch };
    delete this.batch.tasks;
    const tasks = Array.isArray(batch.tasks) ? batch.tasks : [];
    const caps = capsFor(tasks.length);
    const expanded = tasks.length <= EXPAND_ALL_UP_TO;
    let added = false;
    for (const task of tasks) {
      let panel = this.panels.get(task.child_command_id);
      if (!panel) {
        panel = new TaskPanel(task, {
          batchId: this.id, index: this.panels.size, caps, expanded, queued: batch.max_concurrency != null,
          onTerminate: (p) => this.terminateOne(p),
          onToggle: (p) => this.toggle(p),
        });
        this.panels.set(task.child_command_id, panel);
        added = true;
      }
      panel.applySnapshot(task, first);
      this.markDirty(panel);
    }
    if (added) this.layoutPanels();
    this.recount();
    this.headDirty = true;
    if (isTerminalBatch(this.batch.overall_status)) this.feed.finish();
    this.schedule();
  }

  applyBatchUpdate(msg) {
    if (!this.batch) return;
    // A terminal status never changes again: a stale non-terminal one (say, the answer to a
    // terminate request that arrives after the feed reported TERMINATED) is ignored.
    const stale = isTerminalBatch(this.batch.overall_status) && !isTerminalBatch(msg.overall_status);
    for (const key of ["overall_status", "updated_at", "completed_at", "counts", "stop_reason"]) {
      if (key in msg && !(stale && key === "overall_status")) this.batch[key] = msg[key];
    }
    if (isTerminalBatch(this.batch.overall_status)) {
      this.feed.finish();
      // A terminal batch's panels can no longer be terminated: refresh their buttons.
      for (const panel of this.order) if (!isTerminalChild(panel.task.status)) this.markDirty(panel);
    }
    this.headDirty = true;
    this.schedule();
  }

  // ---- model helpers -----------------------------------------------------------------------

  recount() {
    for (const g of GROUPS) this.counts[g.key] = 0;
    for (const panel of this.panels.values()) this.counts[panel.group] = (this.counts[panel.group] || 0) + 1;
    this.countsDirty = true;
  }

  regroup(panel, before) {
    if (before === panel.group) return;
    this.counts[before] -= 1;
    this.counts[panel.group] = (this.counts[panel.group] || 0) + 1;
    this.countsDirty = true;
    if (this.filter.collapseSucceeded && panel.group === "succeeded" && panel.expanded) {
      panel.setExpanded(false);
      panel.autoCollapsed = true;
    }
  }

  markDirty(panel) {
    this.dirty.add(panel);
    this.schedule();
  }

  schedule() {
    if (!this.frame && !this.stopped) this.frame = requestAnimationFrame(() => this.flush());
  }

  tick() {
    // Running durations and the elapsed time move every second: refresh what is on screen.
    if (!this.batch) return;
    if (!isTerminalBatch(this.batch.overall_status)) this.headDirty = true;
    for (const panel of this.order) {
      if (panel.visible && (panel.task.agent_started_at || panel.task.waiting_until) && !isTerminalChild(panel.task.status)) this.dirty.add(panel);
    }
    this.schedule();
  }

  // ---- rendering ---------------------------------------------------------------------------

  flush() {
    this.frame = 0;
    if (this.stopped) return;
    const started = performance.now();
    const now = serverNow();
    const terminal = Boolean(this.batch && isTerminalBatch(this.batch.overall_status));
    if (this.headDirty) this.renderHead(now);
    if (this.countsDirty) this.renderCounts();
    const stick = [];
    const deferred = [];
    for (const panel of this.dirty) {
      this.dirty.delete(panel);
      const result = panel.render(now, terminal);
      if (result === DEFERRED) deferred.push(panel);
      else if (result) stick.push(panel);
      this.applyFilter(panel);
      if (performance.now() - started > FRAME_BUDGET_MS) break;
    }
    // Scroll after all DOM writes so layout is computed once for the frame.
    for (const panel of stick) panel.scrollToEnd();
    for (const panel of deferred) this.dirty.add(panel);
    if (this.dirty.size) this.schedule();
  }

  build() {
    this.els = {};
    const e = this.els;
    e.title = h("h1", { class: "batch-title", testid: "batch-title", tabIndex: -1 }, `Batch ${this.id}`);
    e.status = h("span", { class: "badge badge-large", testid: "batch-status", attrs: { "aria-live": "polite" } }, "Loading…");
    e.elapsed = h("span", { class: "batch-elapsed", testid: "batch-elapsed", title: "Elapsed time" });
    e.feed = h("span", { class: "feed-status", testid: "feed-status", attrs: { role: "status" } });
    e.retry = h("button", { type: "button", class: "btn btn-small btn-quiet", testid: "feed-retry", hidden: true, on: { click: () => this.feed.retryNow() } }, "Reconnect now");
    e.terminateAll = h("button", {
      type: "button", class: "btn btn-danger needs-operator", testid: "terminate-all", disabled: true,
      on: { click: () => this.terminateAll() },
    }, "Terminate all");
    e.runAgain = h("button", { type: "button", class: "btn needs-operator", testid: "run-again", disabled: true, on: { click: () => this.runAgain() } }, "Run again…");
    e.rerun = h("button", { type: "button", class: "btn needs-operator", testid: "rerun-not-succeeded", hidden: true, on: { click: () => this.rerun() } }, "Re-run not succeeded");
    e.rollout = h("p", { class: "rollout muted", testid: "rollout-summary", hidden: true });
    e.stopReason = h("p", { class: "stop-reason warning", testid: "stop-reason", hidden: true, attrs: { role: "status" } });
    e.rerunOf = h("p", { class: "muted small", testid: "rerun-of", hidden: true });
    e.secrets = h("form", { class: "rerun-secrets", testid: "rerun-secrets", hidden: true, on: { submit: (ev) => { ev.preventDefault(); this.rerun(); } } });
    e.command = h("pre", { class: "batch-command", testid: "batch-command" });
    e.meta = h("dl", { class: "meta", testid: "batch-meta" });
    e.progress = h("div", { class: "progress", attrs: { role: "img", "aria-label": "Progress" } },
      ...GROUPS.map((g) => h("span", { class: `progress-part g-${g.key}` })));
    e.counters = {};
    e.filters = {};
    const counterButtons = [
      this.counterButton("all", "All"),
      ...GROUPS.map((g) => this.counterButton(g.key, g.label)),
    ];
    e.search = h("input", {
      type: "search", class: "input input-small", testid: "panel-search", placeholder: "Find a VPS by name",
      attrs: { "aria-label": "Find a VPS by name" },
      on: { input: () => { this.filter.search = e.search.value.trim().toLowerCase(); this.applyFilterAll(); } },
    });
    e.collapseSucceeded = h("input", {
      type: "checkbox", testid: "collapse-succeeded",
      on: { change: () => this.setCollapseSucceeded(e.collapseSucceeded.checked) },
    });
    e.panels = h("div", { class: "panels", testid: "panels" });
    e.empty = h("p", { class: "empty", testid: "panels-empty", hidden: true }, "No VPS matches this filter.");
    replaceChildren(this.root,
      h("section", { class: "card batch-head", attrs: { "aria-label": "Batch summary" } },
        h("div", { class: "batch-title-row" }, e.title, e.status, e.elapsed,
          h("span", { class: "spacer" }), e.feed, e.retry, e.rerun, e.runAgain, e.terminateAll),
        e.command, e.meta, e.rerunOf, e.rollout, e.stopReason, e.secrets, e.progress,
        h("div", { class: "counters", attrs: { role: "group", "aria-label": "Show VPSes by status" } }, counterButtons),
        h("div", { class: "panel-tools" }, e.search,
          h("label", { class: "check" }, e.collapseSucceeded, " Collapse succeeded"),
          h("span", { class: "spacer" }),
          h("button", { type: "button", class: "btn btn-small btn-quiet", testid: "expand-all", on: { click: () => this.expandShown(true) } }, "Expand shown"),
          h("button", { type: "button", class: "btn btn-small btn-quiet", testid: "collapse-all", on: { click: () => this.expandShown(false) } }, "Collapse shown"))),
      e.panels, e.empty);
  }

  counterButton(key, label) {
    const count = h("b", { class: "counter-n", testid: `count-${key}` }, "0");
    const button = h("button", {
      type: "button", class: `counter g-${key}`, testid: `filter-${key}`,
      attrs: { "aria-pressed": String(key === "all") },
      on: { click: () => this.setGroupFilter(key) },
    }, h("span", { class: "counter-label" }, label), count);
    this.els.counters[key] = count;
    this.els.filters[key] = button;
    return button;
  }

  renderHead(now) {
    this.headDirty = false;
    const e = this.els;
    this.renderFeedState();
    const b = this.batch;
    if (!b) return;
    const info = batchInfo(b.overall_status);
    setText(e.status, info.label);
    e.status.className = `badge badge-large g-${info.group}`;
    e.status.dataset.status = b.overall_status || "";
    e.status.title = b.overall_status || "";
    const title = b.execution_alias || commandTitle(b.command_content) || `Batch ${this.id}`;
    setText(e.title, title);
    document.title = `${info.label} · ${title} — Fleet`;
    setText(e.command, b.command_content || "");
    const start = parseTime(b.created_at);
    const end = parseTime(b.completed_at) ?? (isTerminalBatch(b.overall_status) ? parseTime(b.updated_at) : null);
    setText(e.elapsed, start === null ? "" : `${end === null ? "Running for" : "Took"} ${fmtDuration((end ?? now) - start)}`);
    const terminal = isTerminalBatch(b.overall_status);
    e.terminateAll.disabled = terminal || b.overall_status === "TERMINATING" || this.terminatingAll;
    setText(e.terminateAll, b.overall_status === "TERMINATING" || (this.terminatingAll && !terminal) ? "Terminating…" : "Terminate all");
    e.runAgain.disabled = false;
    const notSucceeded = this.order.some((p) => p.task.status !== "SUCCESS");
    e.rerun.hidden = !terminal || !notSucceeded;
    e.rerun.disabled = Boolean(this.rerunning);
    this.renderRollout(b);
    if (!this.metaBuilt) {
      this.metaBuilt = true;
      const rows = [
        ["Batch", String(b.batch_command_id ?? this.id)],
        ["Started", fmtTime(b.created_at), fmtFull(b.created_at)],
        b.created_by ? ["By", b.created_by] : null,
        ["Targets", plural(this.panels.size, "VPS", "VPSes")],
        ["Type", b.command_type === "SAVED_SCRIPT" ? `saved script${b.script_id != null ? ` #${b.script_id}` : ""}` : "command"],
        b.working_directory ? ["Working directory", b.working_directory] : null,
        b.timeout_seconds ? ["Timeout", `${b.timeout_seconds} s`] : null,
      ].filter(Boolean);
      replaceChildren(e.meta, rows.map(([k, v, title]) => h("div", { class: "meta-item" }, h("dt", {}, k), h("dd", { title }, v))));
    }
  }

  renderRollout(b) {
    renderRollout(this.els, b, this.order, this.counts.skipped || 0);
  }

  async rerun() {
    if (this.rerunning) return;
    this.rerunning = true;
    this.headDirty = true;
    this.schedule();
    try {
      const res = await rerunNotSucceeded(this.id, this.els.secrets);
      if (res) this.ctx.navigate(`#/batch/${encodeURIComponent(res.batch_command_id)}`);
    } catch (err) {
      this.ctx.showError(err, "Could not re-run the batch");
    } finally {
      this.rerunning = false;
      this.headDirty = true;
      this.schedule();
    }
  }

  renderFeedState() {
    const e = this.els;
    const s = this.feedState;
    const terminal = this.batch && isTerminalBatch(this.batch.overall_status);
    let text;
    let cls = "";
    if (s.state === "live") { text = terminal ? "Finished" : "Live"; cls = terminal ? "" : "is-live"; }
    else if (s.state === "done" || (terminal && s.state !== "reconnecting")) { text = "Finished"; }
    else if (s.state === "reconnecting") { text = `Connection lost, retrying in ${Math.ceil((s.delayMs || 0) / 1000)} s`; cls = "is-warn"; }
    else if (s.state === "connecting") { text = s.attempt ? "Reconnecting…" : "Connecting…"; }
    else { text = ""; }
    setText(e.feed, text);
    e.feed.className = `feed-status ${cls}`;
    e.retry.hidden = s.state !== "reconnecting";
  }

  renderCounts() {
    this.countsDirty = false;
    const total = this.panels.size;
    setText(this.els.counters.all, String(total));
    const parts = this.els.progress.children;
    GROUPS.forEach((g, i) => {
      const n = this.counts[g.key] || 0;
      setText(this.els.counters[g.key], String(n));
      this.els.filters[g.key].classList.toggle("is-zero", n === 0);
      parts[i].style.width = total ? `${(100 * n) / total}%` : "0";
    });
    this.els.progress.setAttribute("aria-label",
      GROUPS.filter((g) => this.counts[g.key]).map((g) => `${this.counts[g.key]} ${g.label.toLowerCase()}`).join(", ") || "No tasks");
  }

  layoutPanels() {
    this.order = [...this.panels.values()].sort((a, b) => naturalCompare(a.name, b.name));
    const frag = document.createDocumentFragment();
    for (const panel of this.order) {
      frag.appendChild(panel.el);
      this.observer.observe(panel.el);
    }
    this.els.panels.appendChild(frag);
    this.applyFilterAll();
  }

  // ---- filters and expansion ---------------------------------------------------------------

  matches(panel) {
    const f = this.filter;
    if (f.group !== "all" && panel.group !== f.group) return false;
    if (f.search && !panel.name.toLowerCase().includes(f.search)) return false;
    return true;
  }

  applyFilter(panel) {
    const hide = !this.matches(panel);
    if (panel.hidden !== hide) {
      panel.hidden = hide;
      panel.el.hidden = hide;
      this.emptyDirty = true;
    }
    if (this.emptyDirty) this.updateEmpty();
  }

  applyFilterAll() {
    for (const panel of this.order) {
      const hide = !this.matches(panel);
      panel.hidden = hide;
      panel.el.hidden = hide;
    }
    this.updateEmpty();
  }

  updateEmpty() {
    this.emptyDirty = false;
    this.els.empty.hidden = !this.order.length || this.order.some((p) => !p.hidden);
  }

  setGroupFilter(key) {
    this.filter.group = this.filter.group === key ? "all" : key;
    for (const [k, button] of Object.entries(this.els.filters)) button.setAttribute("aria-pressed", String(k === this.filter.group));
    this.applyFilterAll();
  }

  setCollapseSucceeded(on) {
    this.filter.collapseSucceeded = on;
    for (const panel of this.order) {
      if (on && panel.group === "succeeded" && panel.expanded) {
        panel.setExpanded(false);
        panel.autoCollapsed = true;
        this.markDirty(panel);
      } else if (!on && panel.autoCollapsed) {
        panel.autoCollapsed = false;
        panel.setExpanded(true);
        this.markDirty(panel);
      }
    }
  }

  toggle(panel) {
    panel.autoCollapsed = false;
    panel.setExpanded(!panel.expanded);
    this.markDirty(panel);
  }

  expandShown(expanded) {
    for (const panel of this.order) {
      if (panel.hidden || panel.expanded === expanded) continue;
      panel.autoCollapsed = false;
      panel.setExpanded(expanded);
      this.dirty.add(panel);
    }
    this.schedule();
  }

  // ---- actions -----------------------------------------------------------------------------

  async terminateOne(panel) {
    if (panel.terminating) return;
    panel.terminating = true;
    this.markDirty(panel);
    try {
      const res = await post(`/api/batch_commands/${encodeURIComponent(this.id)}/tasks/${encodeURIComponent(panel.id)}/terminate`);
      if (res && res.status) {
        const before = panel.applyStatus({ status: res.status });
        this.regroup(panel, before);
      }
    } catch (err) {
      panel.terminating = false;
      this.ctx.showError(err, `Could not terminate ${panel.name}`);
    }
    this.markDirty(panel);
  }

  async terminateAll() {
    const running = this.order.filter((p) => !isTerminalChild(p.task.status)).length;
    const ok = await this.ctx.confirm({
      title: "Terminate this batch?",
      message: `The command is stopped on ${plural(running, "VPS", "VPSes")} that have not finished: SIGTERM, then SIGKILL after a grace period. VPSes that already finished keep their results.`,
      confirmLabel: "Terminate all",
      danger: true,
    });
    if (!ok || this.stopped) return;
    this.terminatingAll = true;
    this.headDirty = true;
    this.schedule();
    try {
      const res = await post(`/api/batch_commands/${encodeURIComponent(this.id)}/terminate`);
      if (res && res.overall_status && this.batch) this.applyBatchUpdate({ overall_status: res.overall_status });
      this.ctx.toast("Termination requested.");
    } catch (err) {
      this.ctx.showError(err, "Could not terminate the batch");
    } finally {
      this.terminatingAll = false;
      this.headDirty = true;
      this.schedule();
    }
  }

  runAgain() {
    const b = this.batch;
    if (!b) return;
    setDraft({
      source: b.command_type === "SAVED_SCRIPT" && b.script_id != null ? "script" : "command",
      command: b.command_content || "",
      scriptId: b.script_id != null ? String(b.script_id) : "",
      cwd: b.working_directory || "",
      alias: b.execution_alias || "",
      timeout: b.timeout_seconds ? String(b.timeout_seconds) : "",
      selected: this.order.map((p) => p.task.vps_id),
      maxConcurrency: b.max_concurrency != null ? String(b.max_concurrency) : "",
      maxErrors: b.max_errors != null ? String(b.max_errors) : "",
      waitForAgent: b.wait_for_agent_seconds ? String(b.wait_for_agent_seconds) : "",
    });
    this.ctx.navigate("#/run");
  }

  showMissing() {
    replaceChildren(this.root,
      h("section", { class: "card empty-state", testid: "batch-missing" },
        h("h1", {}, "Batch not found"),
        h("p", {}, `There is no batch ${this.id} on this server. It may have been deleted, or the link is wrong.`),
        h("p", {}, h("a", { href: "#/history" }, "See all batches"))));
  }
}
