// ANSI escape sequences → text segments with CSS classes, then → DOM text nodes and spans.
//
// SGR (ESC [ ... m) colours and attributes are kept; every other escape (cursor moves, erase,
// OSC titles/hyperlinks, charset selection, ...) and stray control characters are dropped.
// The parser is stateful per stream: colours carry over chunk boundaries, and an escape
// sequence cut in half by a chunk boundary is held back until the rest arrives.
// Rendering only ever uses textContent / createTextNode: output can never become markup.

// One complete escape, a stray control character, or a carriage return (CR LF → LF; a lone CR
// becomes LF too: progress bars print as successive lines instead of overwriting).
// The short form ESC [intermediates] final excludes the finals that open longer sequences
// ([ ] P X ^ _), so a cut-off CSI/OSC is recognised as incomplete rather than mis-parsed.
const TOKEN = /\x1b(?:\[([0-?]*)([ -/]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[PX^_][^\x1b]*\x1b\\|[ -/]*[0-OQ-WYZ\\`a-~])|[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f\x80-\x9f]|\r\n?/g;
// A prefix of an escape that may still complete in the next chunk.
const INCOMPLETE = /^\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -/]*)$/;
const MAX_PENDING = 4096;

// xterm 256-colour palette for indexes 16..255 (0..15 are themed CSS classes).
function xterm256(n) {
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v},${v},${v})`;
  }
  const i = n - 16;
  const steps = [0, 95, 135, 175, 215, 255];
  return `rgb(${steps[Math.floor(i / 36)]},${steps[Math.floor(i / 6) % 6]},${steps[i % 6]})`;
}

function clampByte(s) {
  const n = parseInt(s, 10);
  return Number.isFinite(n) ? Math.max(0, Math.min(255, n)) : 0;
}

export class AnsiParser {
  constructor() {
    this.pending = "";
    this.skipLF = false;
    this.reset();
  }

  reset() {
    this.fg = null; // null | 0..255 | "rgb(...)"
    this.bg = null;
    this.bold = this.dim = this.italic = this.underline = this.inverse = this.strike = this.conceal = false;
    this.current = null; // cached {cls, style} for the state; null = recompute
  }

  /**
   * Parse a chunk of text.
   * @returns {{text: string, cls: string|null, style: object|null}[]} segments
   */
  feed(text) {
    const out = [];
    if (this.pending) {
      text = this.pending + text;
      this.pending = "";
    }
    if (this.skipLF) {
      this.skipLF = false;
      if (text.startsWith("\n")) text = text.slice(1);
    }
    TOKEN.lastIndex = 0;
    let last = 0;
    let m;
    while ((m = TOKEN.exec(text)) !== null) {
      if (m.index > last) this.plain(text.slice(last, m.index), out);
      const tok = m[0];
      if (tok.charCodeAt(0) === 13) {
        this.plain("\n", out);
        if (tok.length === 1 && TOKEN.lastIndex === text.length) this.skipLF = true;
      } else if (m[3] === "m" && !m[2] && (m[1] === "" || /^[0-9;:]*$/.test(m[1]))) {
        this.sgr(m[1]);
      }
      last = TOKEN.lastIndex;
    }
    if (last < text.length) {
      let tail = text.slice(last);
      const esc = tail.lastIndexOf("\x1b");
      if (esc >= 0 && tail.length - esc <= MAX_PENDING && INCOMPLETE.test(tail.slice(esc))) {
        this.pending = tail.slice(esc);
        tail = tail.slice(0, esc);
      }
      this.plain(tail, out);
    }
    return out;
  }

  /** Anything held back (an unfinished escape) is dropped: used at the end of a stream. */
  flush() {
    this.pending = "";
    return [];
  }

  plain(text, out) {
    if (text.indexOf("\x1b") >= 0) text = text.replaceAll("\x1b", "");
    if (!text) return;
    if (this.current === null) this.current = this.computeStyle();
    const { cls, style } = this.current;
    const prev = out[out.length - 1];
    if (prev && prev.cls === cls && prev.style === style) prev.text += text;
    else out.push({ text, cls, style });
  }

  sgr(params) {
    const parts = params === "" ? ["0"] : params.split(";");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (p.includes(":")) {
        // ISO 8613-6 colon form: 38:5:n, 38:2:r:g:b or 38:2::r:g:b, 4:3 (curly underline).
        const sub = p.split(":");
        const code = parseInt(sub[0], 10);
        if (code === 38 || code === 48) {
          let colour = null;
          if (sub[1] === "5") colour = this.index(sub[2]);
          else if (sub[1] === "2") {
            const [r, g, b] = sub.slice(2).slice(-3); // the optional colour-space id comes first
            colour = `rgb(${clampByte(r)},${clampByte(g)},${clampByte(b)})`;
          }
          if (code === 38) this.fg = colour; else this.bg = colour;
        } else if (code === 4) {
          this.underline = sub[1] !== "0";
        }
        continue;
      }
      const n = p === "" ? 0 : parseInt(p, 10);
      if (n === 0) this.reset();
      else if (n === 1) this.bold = true;
      else if (n === 2) this.dim = true;
      else if (n === 3) this.italic = true;
      else if (n === 4 || n === 21) this.underline = true;
      else if (n === 7) this.inverse = true;
      else if (n === 8) this.conceal = true;
      else if (n === 9) this.strike = true;
      else if (n === 22) this.bold = this.dim = false;
      else if (n === 23) this.italic = false;
      else if (n === 24) this.underline = false;
      else if (n === 27) this.inverse = false;
      else if (n === 28) this.conceal = false;
      else if (n === 29) this.strike = false;
      else if (n >= 30 && n <= 37) this.fg = n - 30;
      else if (n === 39) this.fg = null;
      else if (n >= 40 && n <= 47) this.bg = n - 40;
      else if (n === 49) this.bg = null;
      else if (n >= 90 && n <= 97) this.fg = n - 90 + 8;
      else if (n >= 100 && n <= 107) this.bg = n - 100 + 8;
      else if (n === 38 || n === 48) {
        let colour = null;
        if (parts[i + 1] === "5") {
          colour = this.index(parts[i + 2]);
          i += 2;
        } else if (parts[i + 1] === "2") {
          colour = `rgb(${clampByte(parts[i + 2])},${clampByte(parts[i + 3])},${clampByte(parts[i + 4])})`;
          i += 4;
        }
        if (n === 38) this.fg = colour; else this.bg = colour;
      }
    }
    this.current = null;
  }

  index(s) {
    const n = parseInt(s, 10);
    if (!Number.isFinite(n) || n < 0 || n > 255) return null;
    return n < 16 ? n : xterm256(n);
  }

  computeStyle() {
    let fg = this.fg;
    let bg = this.bg;
    const classes = [];
    let style = null;
    if (this.inverse) {
      [fg, bg] = [bg, fg];
      if (fg === null) classes.push("ansi-fg-inverse");
      if (bg === null) classes.push("ansi-bg-inverse");
    }
    if (typeof fg === "number") classes.push(`ansi-fg-${fg}`);
    else if (typeof fg === "string") style = { color: fg };
    if (typeof bg === "number") classes.push(`ansi-bg-${bg}`);
    else if (typeof bg === "string") style = { ...(style || {}), backgroundColor: bg };
    if (this.bold) classes.push("ansi-bold");
    if (this.dim) classes.push("ansi-dim");
    if (this.italic) classes.push("ansi-italic");
    if (this.underline) classes.push("ansi-underline");
    if (this.strike) classes.push("ansi-strike");
    if (this.conceal) classes.push("ansi-conceal");
    return { cls: classes.length ? classes.join(" ") : null, style };
  }
}

/** Append segments to `parent` as text nodes and spans (never markup). */
export function renderSegments(segments, parent) {
  for (const seg of segments) {
    if (!seg.cls && !seg.style) {
      parent.appendChild(document.createTextNode(seg.text));
      continue;
    }
    const span = document.createElement("span");
    if (seg.cls) span.className = seg.cls;
    if (seg.style) Object.assign(span.style, seg.style);
    span.textContent = seg.text;
    parent.appendChild(span);
  }
  return parent;
}

/** Text without any escape sequence (for one-line previews). */
export function stripAnsi(text) {
  const parser = new AnsiParser();
  return parser.feed(text).map((s) => s.text).join("");
}
