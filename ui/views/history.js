// History view: past batches, newest first, paginated (#/history/<page>).

import { get } from "../api.js";
import { h, replaceChildren } from "../dom.js";
import {
  GROUPS, batchInfo, childInfo, commandTitle, fmtAgo, fmtDuration, fmtFull, fmtTime, isTerminalBatch, parseTime,
} from "../format.js";

const PAGE_SIZE = 25;
const REFRESH_MS = 5000;

export function mount(root, ctx, { page }) {
  const view = new HistoryView(root, ctx, Math.max(1, page || 1));
  view.load();
  return { unmount: () => view.stop() };
}

/** "3 succeeded · 1 failed" from a {STATUS: n} map. */
function summarise(counts) {
  const byGroup = {};
  for (const [status, n] of Object.entries(counts || {})) {
    const g = childInfo(status).group;
    byGroup[g] = (byGroup[g] || 0) + n;
  }
  return GROUPS.filter((g) => byGroup[g.key]).map((g) => ({ key: g.key, text: `${byGroup[g.key]} ${g.label.toLowerCase()}` }));
}

class HistoryView {
  constructor(root, ctx, page) {
    this.root = root;
    this.ctx = ctx;
    this.page = page;
    this.timer = null;
    this.stopped = false;
    this.els = {
      tbody: h("tbody"),
      range: h("span", { class: "muted", testid: "history-range" }),
      prev: h("a", { class: "btn btn-small", testid: "history-prev", href: `#/history/${page - 1}` }, "← Newer"),
      next: h("a", { class: "btn btn-small", testid: "history-next", href: `#/history/${page + 1}` }, "Older →"),
      empty: h("div", { class: "empty-state", testid: "history-empty", hidden: true },
        h("p", {}, "No batches yet."), h("p", {}, h("a", { href: "#/run", class: "btn btn-primary" }, "Run your first command"))),
    };
    const e = this.els;
    replaceChildren(root,
      h("div", { class: "page-head" }, h("h1", { tabIndex: -1 }, "History"), h("span", { class: "spacer" }), e.range, e.prev, e.next),
      h("section", { class: "card card-flush" },
        h("div", { class: "table-wrap" },
          h("table", { class: "table table-rows", testid: "history-table" },
            h("thead", {}, h("tr", {},
              h("th", { scope: "col" }, "Batch"), h("th", { scope: "col" }, "Command"), h("th", { scope: "col" }, "Status"),
              h("th", { scope: "col" }, "Results"), h("th", { scope: "col" }, "Targets"), h("th", { scope: "col" }, "Started"),
              h("th", { scope: "col" }, "By"),
              h("th", { scope: "col" }, "Duration"))),
            e.tbody)),
        e.empty));
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  async load() {
    clearTimeout(this.timer);
    let data;
    try {
      data = await get(`/api/batch_commands?limit=${PAGE_SIZE}&offset=${(this.page - 1) * PAGE_SIZE}`);
    } catch (err) {
      if (!this.stopped) this.ctx.showError(err, "Could not load the history");
      return;
    }
    if (this.stopped) return;
    this.render(data);
    // Keep running batches fresh while the page is open.
    if ((data.items || []).some((b) => !isTerminalBatch(b.overall_status))) {
      this.timer = setTimeout(() => this.load(), REFRESH_MS);
    }
  }

  render(data) {
    const e = this.els;
    const items = data.items || [];
    const total = Number(data.total) || 0;
    const offset = Number(data.offset) || 0;
    e.empty.hidden = total > 0 || items.length > 0;
    e.range.textContent = total ? `${offset + 1}–${offset + items.length} of ${total}` : "";
    e.prev.hidden = this.page <= 1;
    e.next.hidden = offset + items.length >= total;
    const now = Date.now();
    replaceChildren(e.tbody, items.map((b) => {
      const id = String(b.batch_command_id);
      const href = `#/batch/${encodeURIComponent(id)}`;
      const info = batchInfo(b.overall_status);
      const start = parseTime(b.created_at);
      const end = parseTime(b.completed_at);
      const tr = h("tr", { testid: `history-row-${id}`, class: "clickable", on: { click: (ev) => { if (!ev.target.closest("a")) this.ctx.navigate(href); } } },
        h("td", {}, h("a", { href, class: "mono" }, id)),
        h("td", { class: "cell-command" },
          b.execution_alias ? h("span", { class: "alias" }, b.execution_alias) : null,
          b.rerun_of ? h("a", { class: "rerun-link small", testid: `history-rerun-of-${id}`, href: `#/batch/${encodeURIComponent(b.rerun_of)}`, title: `Re-run of ${b.rerun_of}` }, `↻ re-run of ${String(b.rerun_of).slice(0, 8)}`) : null,
          h("code", { class: "cmd", title: b.command_content || "" }, commandTitle(b.command_content, 100))),
        h("td", {}, h("span", { class: `badge g-${info.group}`, dataset: { status: b.overall_status || "" }, title: b.overall_status || "" }, info.label)),
        h("td", { class: "results" }, summarise(b.counts).map((p) => h("span", { class: `result g-${p.key}` }, p.text))),
        h("td", { class: "num" }, String(b.target_count ?? "")),
        h("td", { title: fmtFull(b.created_at) }, fmtTime(b.created_at), h("span", { class: "muted small" }, ` · ${fmtAgo(b.created_at, now)}`)),
        h("td", { testid: `history-by-${id}` }, b.created_by || ""),
        h("td", { class: "num" }, start === null ? "" : end === null ? "running" : fmtDuration(end - start)));
      return tr;
    }));
  }
}
