// The run form's draft, kept in sessionStorage so leaving the page never loses typing.
//
// The run view reads it when it builds its form and writes it on every change; other views
// prefill it before navigating there ("Run again" from a batch, "Run this script").

const DRAFT_KEY = "fleet.run.draft";
const EMPTY_DRAFT = { source: "command", command: "", scriptId: "", cwd: "", alias: "", timeout: "", selected: [], onlineOnly: false, maxConcurrency: "", maxErrors: "", waitForAgent: "" };

function loadDraft() {
  try {
    return { ...EMPTY_DRAFT, ...JSON.parse(sessionStorage.getItem(DRAFT_KEY) || "{}") };
  } catch {
    return { ...EMPTY_DRAFT };
  }
}

let draft = loadDraft();

/** The current draft (read-only: change it with setDraft). */
export function getDraft() {
  return draft;
}

/** Merge `values` into the draft and keep it for this tab. */
export function setDraft(values) {
  draft = { ...draft, ...values };
  try { sessionStorage.setItem(DRAFT_KEY, JSON.stringify(draft)); } catch { /* private mode: keep it in memory */ }
}
