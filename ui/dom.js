// Tiny DOM helpers. Everything that comes from the server or from a command's output reaches the
// page through text nodes (textContent / createTextNode) — never through innerHTML — so markup in
// a VPS name, a script or a log line is always shown as text and never parsed.

/**
 * Build an element.
 *   h("button", { class: "btn", testid: "run-button", on: { click } }, "Run")
 * props: class, testid, text, hidden, disabled, title, attrs {name: value}, dataset {k: v},
 *        on {event: handler}, style {prop: value} (CSSOM, allowed under a strict CSP), and any
 *        other key is assigned as a DOM property (type, value, checked, href, htmlFor, ...).
 * children: strings (become text nodes), nodes, arrays of those; null/false/undefined skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    switch (key) {
      case "class": el.className = value; break;
      case "testid": el.dataset.testid = value; break;
      case "text": el.textContent = value; break;
      case "attrs": for (const [k, v] of Object.entries(value)) if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : String(v)); break;
      case "dataset": Object.assign(el.dataset, value); break;
      case "on": for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn); break;
      case "style": Object.assign(el.style, value); break;
      default:
        if (key.startsWith("on")) throw new Error(`use props.on for ${key}`);
        el[key] = value;
    }
  }
  append(el, children);
  return el;
}

/** Append children (strings as text nodes, nested arrays flattened). */
export function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace all children of `parent` (text-safe). */
export function replaceChildren(parent, ...children) {
  parent.textContent = "";
  return append(parent, children);
}

/** Set text only when it changed (keeps per-frame updates cheap: no needless layout). */
export function setText(el, text) {
  const s = text === null || text === undefined ? "" : String(text);
  if (el.textContent !== s) el.textContent = s;
}

/** A labelled form field: <label for=id>Label</label> + control + optional hint. */
export function field(label, control, hint) {
  const id = control.id || (control.id = `f-${Math.random().toString(36).slice(2, 9)}`);
  const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { htmlFor: id }, label), control, hintEl);
}
