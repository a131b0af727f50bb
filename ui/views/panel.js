// One VPS's task in the batch view: its model (status + retained output) and its panel DOM.
//
// Model updates happen as messages arrive and cost O(size of the message). DOM work happens only
// in render(), which the batch view calls at most once per animation frame, and only touches
// the output of a panel that is expanded and near the viewport. Each retained chunk of output is
// exactly one <span> child of the <pre>, numbered by `seq`, so syncing the DOM with the model is
// "drop children older than firstSeq, append chunks newer than the last rendered one".

import { AnsiParser, renderSegments } from "../ansi.js";
import { h, setText } from "../dom.js";
import { childInfo, fmtDuration, isTerminalChild, parseTime } from "../format.js";

const STREAMS = ["stdout", "stderr"];
const PREVIEW_MAX = 240;
/** render() result: the output is due but was held back this frame (see syncDelay). */
export const DEFERRED = Symbol("deferred");

function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) { n += 4; i++; }
    else n += 3;
  }
  return n;
}

function countNewlines(s) {
  let n = 0;
  for (let i = s.indexOf("\n"); i >= 0; i = s.indexOf("\n", i + 1)) n++;
  return n;
}

function lastLineOf(text) {
  // Scan back from the end: a 64 KB chunk must not be split into thousands of strings.
  let end = text.length;
  while (end > 0) {
    const start = text.lastIndexOf("\n", end - 1) + 1;
    const line = text.slice(start, end).trim();
    if (line) return line.length > PREVIEW_MAX ? `${line.slice(0, PREVIEW_MAX)}…` : line;
    end = start - 1;
  }
  return null;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function outputUrl(batchId, childId, stream) {
  return `/api/batch_commands/${encodeURIComponent(batchId)}/tasks/${encodeURIComponent(childId)}/output?stream=${stream}`;
}

export class TaskPanel {
  /**
   * @param {object} task a task of the batch snapshot
   * @param {{batchId: string, index: number, caps: {chars: number, lines: number},
   *          expanded: boolean, onTerminate: (panel: TaskPanel) => void,
   *          onToggle: (panel: TaskPanel) => void}} opts
   */
  constructor(task, opts) {
    this.opts = opts;
    this.task = { ...task };
    this.id = task.child_command_id;
    this.name = task.vps_name || `VPS ${task.vps_id}`;
    this.group = childInfo(task.status).group;
    this.expanded = opts.expanded;
    this.autoCollapsed = false;
    this.visible = false;
    this.hidden = false;
    this.terminating = false;
    this.resetOutput();
    this.dom = null; // {first, next, epoch} of what the <pre> holds
    this.stick = true; // keep the output scrolled to the bottom until the user scrolls up
    this.lastSync = 0;
    this.build();
  }

  // ---- model -------------------------------------------------------------------------------

  resetOutput() {
    this.parsers = { stdout: new AnsiParser(), stderr: new AnsiParser() };
    this.chunks = [];
    this.firstSeq = this.nextSeq = this.nextSeq || 0;
    this.chars = 0;
    this.lines = 0;
    this.trimmed = false;
    this.note = null;
    this.epoch = (this.epoch || 0) + 1;
    this.preview = null;
    this.previewStream = "stdout";
    // Offsets: chunks that start before `boundary` were already covered by the last snapshot.
    this.boundary = { stdout: 0, stderr: 0 };
    this.last = { stdout: null, stderr: null }; // {offset, data} of the newest chunk per stream
    this.sawOffsets = false;
  }

  /** Bytes of `stream` we hold, if the server gave offsets; null when unknown. */
  receivedEnd(stream) {
    const last = this.last[stream];
    if (!last) return this.boundary[stream];
    return last.offset + utf8Length(last.data);
  }

  /**
   * Apply a snapshot of this task.
   * @param {object} task
   * @param {boolean} first true for the first snapshot this page has seen of the batch
   */
  applySnapshot(task, first) {
    this.applyStatus(task);
    const bytes = (s) => (Number.isFinite(task[`${s}_bytes`]) ? task[`${s}_bytes`] : null);
    const hadOutput = this.chunks.length > 0 || this.trimmed;
    // After a reconnect, keep what is on screen if nothing was missed (we can tell only when the
    // server gives offsets and byte counts); otherwise rebuild from the snapshot's summaries.
    const nothingMissed = !first && this.sawOffsets && STREAMS.every((s) => bytes(s) !== null && this.receivedEnd(s) >= bytes(s));
    if (nothingMissed) {
      for (const s of STREAMS) this.boundary[s] = bytes(s);
      this.last = { stdout: null, stderr: null };
      return;
    }
    this.resetOutput();
    const out = task.output_stream_summary || [];
    const err = task.error_stream_summary || [];
    let summaryBytes = { stdout: 0, stderr: 0 };
    if (out.length) summaryBytes.stdout = this.appendText("stdout", `${out.join("\n")}\n`);
    if (err.length) summaryBytes.stderr = this.appendText("stderr", `${err.join("\n")}\n`);
    const missing = STREAMS.some((s) => bytes(s) !== null && bytes(s) > summaryBytes[s]);
    if (!first && (hadOutput || missing)) {
      this.note = "Reconnected: showing the last lines of output. Earlier output is in the full log (download above).";
    } else if (missing || (bytes("stdout") === null && out.length >= 10)) {
      this.note = "Showing the last lines of output. The full log has everything (download above).";
    }
    if (task.truncated) this.note = `${this.note ? `${this.note} ` : ""}The server's stored log reached its size limit.`;
    for (const s of STREAMS) this.boundary[s] = bytes(s) ?? 0;
    this.dirtyBody = true;
  }

  /** Append text to the model (no offsets); returns its UTF-8 length. */
  appendText(stream, text) {
    this.pushChunk(stream, text);
    return utf8Length(text);
  }

  /** A NEW_LOG_OUTPUT message. Returns false when it was a duplicate and changed nothing. */
  appendOutput(stream, offset, data) {
    if (stream !== "stderr") stream = "stdout";
    if (typeof data !== "string" || data === "") return false;
    let text = data;
    if (Number.isFinite(offset)) {
      this.sawOffsets = true;
      const boundary = this.boundary[stream];
      if (offset < boundary) {
        // Part (or all) of this chunk was already in the snapshot.
        const bytes = encoder.encode(data);
        const skip = boundary - offset;
        if (skip >= bytes.length) return false;
        text = decoder.decode(bytes.subarray(skip));
      }
      this.last[stream] = { offset, data };
    }
    this.pushChunk(stream, text);
    return true;
  }

  pushChunk(stream, text) {
    const segs = this.parsers[stream].feed(text);
    if (!segs.length) return;
    let plain = "";
    for (const s of segs) plain += s.text;
    const chunk = { seq: this.nextSeq++, stream, segs, chars: plain.length, lines: countNewlines(plain) };
    this.chunks.push(chunk);
    this.chars += chunk.chars;
    this.lines += chunk.lines;
    const line = lastLineOf(plain);
    if (line) {
      this.preview = line;
      this.previewStream = stream;
    }
    this.trim();
    this.dirtyBody = true;
  }

  /** Keep the retained output within the caps: drop the oldest chunks, cut a single huge one. */
  trim() {
    const { chars, lines } = this.opts.caps;
    while (this.chunks.length > 1 && (this.chars > chars || this.lines > lines)) {
      const c = this.chunks.shift();
      this.chars -= c.chars;
      this.lines -= c.lines;
      this.firstSeq = this.chunks[0].seq;
      this.trimmed = true;
    }
    if (this.chunks.length === 1 && (this.chars > chars || this.lines > lines)) {
      const c = this.chunks[0];
      let plain = "";
      for (const s of c.segs) plain += s.text;
      let cut = Math.max(0, plain.length - chars);
      if (c.lines > lines) {
        let i = -1;
        for (let k = 0; k < c.lines - lines; k++) i = plain.indexOf("\n", i + 1);
        cut = Math.max(cut, i + 1);
      }
      const segs = [];
      let pos = 0;
      for (const s of c.segs) {
        const end = pos + s.text.length;
        if (end > cut) segs.push(pos >= cut ? s : { ...s, text: s.text.slice(cut - pos) });
        pos = end;
      }
      const rest = plain.slice(cut);
      const replacement = { seq: this.nextSeq++, stream: c.stream, segs, chars: rest.length, lines: countNewlines(rest) };
      this.chunks[0] = replacement;
      this.firstSeq = replacement.seq;
      this.chars = replacement.chars;
      this.lines = replacement.lines;
      this.trimmed = true;
    }
  }

  /** A CHILD_TASK_UPDATE message or a snapshot task: returns the previous group. */
  applyStatus(fields) {
    const before = this.group;
    const wasTerminal = isTerminalChild(this.task.status);
    for (const key of ["status", "exit_code", "error_message", "updated_at", "agent_started_at", "agent_completed_at", "stdout_bytes", "stderr_bytes", "truncated", "agent_reported", "waiting_until"]) {
      if (!(key in fields)) continue;
      // A terminal status never changes again: a late non-terminal update is stale.
      if (key === "status" && wasTerminal && !isTerminalChild(fields.status)) continue;
      this.task[key] = fields[key];
    }
    if (isTerminalChild(this.task.status)) this.terminating = false;
    this.group = childInfo(this.task.status).group;
    this.dirtyHead = true;
    return before;
  }

  // ---- DOM ---------------------------------------------------------------------------------

  build() {
    const n = this.name;
    const base = `p${this.opts.index}`;
    this.els = {};
    const e = this.els;
    e.chev = h("span", { class: "chev", attrs: { "aria-hidden": "true" } });
    e.toggle = h("button", {
      type: "button", class: "panel-toggle", testid: `toggle-${n}`,
      attrs: { "aria-expanded": String(this.expanded), "aria-controls": `${base}-body` },
      on: { click: () => this.opts.onToggle(this) },
    }, e.chev, h("span", { class: "panel-name", id: `${base}-name`, text: n }));
    e.status = h("span", { class: "badge", testid: `panel-status-${n}` });
    e.exit = h("span", { class: "panel-exit", testid: `panel-exit-${n}` });
    e.duration = h("span", { class: "panel-duration", testid: `panel-duration-${n}` });
    e.waiting = h("span", { class: "waiting", testid: `panel-waiting-${n}`, hidden: true });
    e.preview = h("span", { class: "panel-preview", testid: `panel-preview-${n}` });
    const dl = (stream) => h("a", {
      class: "btn btn-small btn-quiet", testid: `download-${stream}-${n}`,
      href: outputUrl(this.opts.batchId, this.id, stream),
      download: `${n}-batch-${this.opts.batchId}.${stream}.log`,
      title: `Download the full ${stream} log of ${n}`,
      attrs: { "aria-label": `Download ${stream} of ${n}` },
    }, `↓ ${stream}`);
    e.terminate = h("button", {
      type: "button", class: "btn btn-small btn-danger-quiet needs-operator", testid: `terminate-${n}`,
      attrs: { "aria-label": `Terminate the command on ${n}` },
      on: { click: () => this.opts.onTerminate(this) },
    }, "Terminate");
    e.head = h("div", { class: "panel-head" },
      e.toggle, e.status, e.waiting, e.exit, e.duration, e.preview,
      h("span", { class: "panel-actions" }, dl("stdout"), dl("stderr"), e.terminate));
    e.body = null;
    this.el = h("section", {
      class: "panel", testid: `panel-${n}`,
      attrs: { "aria-labelledby": `${base}-name` },
    }, e.head);
    this.el.panel = this;
    this.applyExpandedClass();
  }

  buildBody() {
    const n = this.name;
    const e = this.els;
    e.error = h("p", { class: "panel-error", testid: `panel-error-${n}`, hidden: true });
    e.note = h("p", { class: "panel-note", testid: `panel-note-${n}`, hidden: true });
    e.output = h("pre", {
      class: "output", testid: `panel-output-${n}`, tabIndex: 0,
      attrs: { "aria-label": `Output of ${n}` },
    });
    e.output.addEventListener("scroll", () => {
      const o = e.output;
      this.stick = o.scrollTop + o.clientHeight >= o.scrollHeight - 8;
    }, { passive: true });
    e.body = h("div", { class: "panel-body", id: `p${this.opts.index}-body` }, e.error, e.note, e.output);
    this.el.append(e.body);
    this.dom = null;
  }

  setExpanded(expanded) {
    if (this.expanded === expanded) return;
    this.expanded = expanded;
    this.applyExpandedClass();
    this.dirtyBody = true;
    this.dirtyHead = true;
  }

  applyExpandedClass() {
    this.el.classList.toggle("is-expanded", this.expanded);
    this.els.toggle.setAttribute("aria-expanded", String(this.expanded));
    if (this.els.body) this.els.body.hidden = !this.expanded;
  }

  /**
   * Bring the DOM up to date with the model.
   * @param {number} now server-corrected clock for running durations
   * @param {boolean} batchTerminal
   * @returns {boolean} whether the output grew while the panel sticks to the bottom
   */
  render(now, batchTerminal) {
    const e = this.els;
    const t = this.task;
    const info = childInfo(t.status);
    // A PENDING child of a rollout waits for a slot, or for its agent.
    const pending = t.status === "PENDING" ? (t.waiting_until ? "Waiting" : this.opts.queued ? "Queued" : null) : null;
    setText(e.status, pending || info.label);
    if (e.status.dataset.status !== t.status) {
      e.status.dataset.status = t.status || "";
      e.status.className = `badge g-${info.group}`;
      e.status.title = t.status || "";
      this.el.dataset.status = t.status || "";
      this.el.dataset.group = info.group;
      this.el.classList.toggle("is-terminal", Boolean(info.terminal));
    }
    setText(e.exit, t.exit_code === null || t.exit_code === undefined ? "" : `exit ${t.exit_code}`);
    e.exit.classList.toggle("is-nonzero", Boolean(t.exit_code));
    const started = parseTime(t.agent_started_at);
    let end = parseTime(t.agent_completed_at);
    if (end === null && info.terminal) end = parseTime(t.updated_at);
    setText(e.duration, started === null ? "" : fmtDuration((end ?? now) - started));
    // Rollout: a target whose agent is offline waits for it (SPEC §8), with the time left.
    const until = t.status === "PENDING" ? parseTime(t.waiting_until) : null;
    e.waiting.hidden = until === null;
    setText(e.waiting, until === null ? "" : `waiting for its agent · ${fmtDuration(Math.max(0, until - now))} left`);
    const terminal = Boolean(info.terminal) || batchTerminal;
    e.terminate.disabled = terminal || this.terminating;
    e.terminate.hidden = Boolean(info.terminal);
    setText(e.terminate, this.terminating && !terminal ? "Terminating…" : "Terminate");
    const problem = errorText(t);
    const preview = this.expanded ? "" : (problem && info.terminal && info.group !== "succeeded" ? problem : this.preview || "");
    setText(e.preview, preview);
    e.preview.classList.toggle("is-stderr", !this.expanded && this.previewStream === "stderr");
    this.dirtyHead = false;

    if (!this.expanded) return false;
    if (!e.body) {
      this.buildBody();
      this.applyExpandedClass();
    }
    if (!this.visible) return false; // keep dirtyBody: synced when it scrolls into view
    // Appending to a <pre> re-lays out all its retained lines, so a panel holding a lot of
    // output (a fast stream) is refreshed a few times a second instead of every frame.
    const wait = this.lastSync + this.syncDelay() - performance.now();
    if (this.dirtyBody && this.dom && this.dom.epoch === this.epoch && wait > 0) return DEFERRED;
    e.error.hidden = !errorText(t);
    setText(e.error, errorText(t));
    const note = [this.trimmed ? "Earlier output was trimmed to keep the page fast: download the full log above." : null, this.note]
      .filter(Boolean).join(" ");
    e.note.hidden = !note;
    setText(e.note, note);
    const grew = this.syncOutput();
    this.dirtyBody = false;
    return grew && this.stick;
  }

  syncDelay() {
    return this.lines > 1000 || this.chars > 64 * 1024 ? 250 : this.lines > 200 ? 100 : 0;
  }

  syncOutput() {
    this.lastSync = performance.now();
    const pre = this.els.output;
    if (!this.dom || this.dom.epoch !== this.epoch) {
      pre.textContent = "";
      this.dom = { first: this.firstSeq, next: this.firstSeq, epoch: this.epoch };
    }
    const dom = this.dom;
    // Drop chunks the model no longer keeps.
    while (dom.first < this.firstSeq && dom.first < dom.next) {
      pre.firstChild.remove();
      dom.first++;
    }
    if (dom.next < this.firstSeq) dom.first = dom.next = this.firstSeq;
    if (dom.next >= this.nextSeq) return false;
    const frag = document.createDocumentFragment();
    for (let seq = dom.next; seq < this.nextSeq; seq++) {
      const chunk = this.chunks[seq - this.firstSeq];
      const span = document.createElement("span");
      span.className = chunk.stream === "stderr" ? "o-err" : "o-out";
      if (chunk.stream === "stderr") span.title = "stderr";
      renderSegments(chunk.segs, span);
      frag.appendChild(span);
    }
    dom.next = this.nextSeq;
    pre.appendChild(frag);
    return true;
  }

  scrollToEnd() {
    if (this.els.output) this.els.output.scrollTop = this.els.output.scrollHeight;
  }
}

/** The task's error, and what its agent reported after the server had ended it. */
function errorText(t) {
  const late = t.agent_reported;
  if (!late) return t.error_message || "";
  const exit = late.exit_code === null || late.exit_code === undefined ? "" : ` (exit ${late.exit_code})`;
  const note = `The agent reported ${late.status}${exit} later; the status stays.`;
  return t.error_message ? `${t.error_message} — ${note}` : note;
}
