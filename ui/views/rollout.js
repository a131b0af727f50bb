// Safe rollouts: the pieces the run form and the batch view share or add.
//
// - parseLimit: "10" / "10%" as the API takes max_concurrency and max_errors.
// - renderParams / paramValues: the parameters form generated from a saved script's declaration
//   (each value reaches the script as the environment variable FLEET_PARAM_<name>; secret ones
//   are password fields and never go into the form's draft).
// - renderRollout: the batch view's rollout line (options; queued, waiting-for-agent and skipped
//   counts), the stop reason and the link to the batch a re-run came from.
// - rerunNotSucceeded: POST …/rerun; secret parameters are never kept, so when the server names
//   them (422) it asks for them in a small form and the next click sends them.

import { ApiError, post } from "../api.js";
import { field, h, replaceChildren, setText } from "../dom.js";
import { fmtDuration, isTerminalBatch } from "../format.js";

const LIMIT_RE = /^\s*(\d{1,9})\s*(%?)\s*$/;

/** "10" → 10, "10%" → "10%", "" → null; undefined when malformed (the server says why too). */
export function parseLimit(text, minimum) {
  const t = String(text || "").trim();
  if (!t) return null;
  const m = LIMIT_RE.exec(t);
  if (!m) return undefined;
  const n = Number(m[1]);
  if (m[2]) return n >= minimum && n <= 100 ? `${n}%` : undefined;
  return n >= minimum ? n : undefined;
}

/** Build the parameters form for `script` (or clear it); returns name → {input, spec}. */
export function renderParams(box, script) {
  const specs = script ? script.parameters || [] : [];
  const inputs = new Map();
  box.hidden = !specs.length;
  if (!specs.length) {
    replaceChildren(box);
    return inputs;
  }
  const fields = specs.map((p) => {
    const input = h("input", {
      type: p.secret ? "password" : "text", class: "input mono", testid: `param-${p.name}`,
      placeholder: p.default != null && !p.secret ? p.default : (p.required ? "required" : "optional"),
      spellcheck: false, autocomplete: p.secret ? "new-password" : "off",
    });
    inputs.set(p.name, { input, spec: p });
    const hint = [p.description, p.pattern ? `Must match ${p.pattern}.` : "", p.secret ? "Secret: masked everywhere, never stored." : ""]
      .filter(Boolean).join(" ");
    return field(`${p.name}${p.required ? " *" : ""}`, input, hint || `Reaches the script as $FLEET_PARAM_${p.name}.`);
  });
  replaceChildren(box, h("h3", { class: "subhead" }, "Parameters"),
    h("p", { class: "hint" }, "Given to the script as environment variables FLEET_PARAM_<name>, never pasted into its text."),
    h("div", { class: "row-3" }, fields));
  return inputs;
}

/** The filled-in values (empty ones left out: the server applies defaults). */
export function paramValues(inputs) {
  const out = {};
  for (const [name, { input }] of inputs || []) {
    if (input.value !== "") out[name] = input.value;
  }
  return out;
}

/** The rollout line, stop reason and re-run link of batch `b` (els: the batch view's). */
export function renderRollout(e, b, panels, skipped) {
  let queued = 0;
  let waiting = 0;
  for (const panel of panels) {
    if (panel.task.status !== "PENDING") continue;
    if (panel.task.waiting_until) waiting += 1;
    else queued += 1;
  }
  const parts = [];
  if (b.max_concurrency != null) parts.push(`at most ${b.max_concurrency} at once`);
  if (b.max_errors != null) parts.push(`stop after ${b.max_errors} error${b.max_errors === 1 ? "" : "s"}`);
  if (b.wait_for_agent_seconds) parts.push(`wait up to ${fmtDuration(b.wait_for_agent_seconds * 1000)} for offline agents`);
  const live = [];
  if (queued && (b.max_concurrency != null || !isTerminalBatch(b.overall_status))) live.push(`${queued} queued`);
  if (waiting) live.push(`${waiting} waiting for their agent`);
  if (skipped) live.push(`${skipped} skipped`);
  const text = [parts.length ? `Rollout: ${parts.join(", ")}` : "", live.join(" · ")].filter(Boolean).join(" — ");
  e.rollout.hidden = !text;
  setText(e.rollout, text);
  e.rollout.dataset.queued = String(queued);
  e.rollout.dataset.waiting = String(waiting);
  e.rollout.dataset.skipped = String(skipped);
  e.stopReason.hidden = !b.stop_reason;
  setText(e.stopReason, b.stop_reason ? `Dispatching stopped: ${b.stop_reason}` : "");
  if (b.rerun_of && e.rerunOf.hidden) {
    e.rerunOf.hidden = false;
    replaceChildren(e.rerunOf, "Re-run of ",
      h("a", { href: `#/batch/${encodeURIComponent(b.rerun_of)}`, class: "mono", testid: "rerun-of-link" }, b.rerun_of));
  }
}

/**
 * Re-run what did not succeed. Resolves to the 202 body, or null when the server asked for
 * secret parameters (the form in `secretsForm` now asks for them). Other errors are thrown.
 */
export async function rerunNotSucceeded(batchId, secretsForm) {
  const body = { only: "not_succeeded" };
  const secrets = [...secretsForm.querySelectorAll("input[data-param]")];
  if (secrets.length) body.parameters = Object.fromEntries(secrets.map((i) => [i.dataset.param, i.value]));
  try {
    return await post(`/api/batch_commands/${encodeURIComponent(batchId)}/rerun`, body);
  } catch (err) {
    const missing = err instanceof ApiError && err.status === 422 && Array.isArray(err.detail)
      ? err.detail.filter((d) => /secret parameter/.test(d.reason || "")).map((d) => String(d.field).replace(/^parameters\./, ""))
      : [];
    if (!missing.length || secrets.length) throw err;
    askSecrets(secretsForm, missing);
    return null;
  }
}

function askSecrets(form, names) {
  replaceChildren(form,
    h("p", {}, "Secret parameters are not kept after a run: give them again to re-run."),
    names.map((name) => h("label", { class: "field" }, `${name} `,
      h("input", { type: "password", class: "input", testid: `rerun-secret-${name}`, dataset: { param: name }, autocomplete: "new-password" }))),
    h("button", { type: "submit", class: "btn btn-primary", testid: "rerun-secrets-submit" }, "Re-run not succeeded"));
  form.hidden = false;
  form.querySelector("input")?.focus();
}
