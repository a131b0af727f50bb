// Fleet web UI: router, session, error banner, confirm dialog and toasts.
//
// Plain ES modules, no build step, no third-party code. Views live in ./views/ and each exports
// mount(root, ctx, params) -> {unmount()}. Routes (URL hash, so a reload lands on the same page):
//   #/run                 run a command or saved script on selected VPSes
//   #/batch/<id>          one batch, live (reload re-attaches to the feed)
//   #/history[/<page>]    past batches
//   #/scripts[/<id>]      saved scripts
//   #/vps                 register / remove VPSes
//   #/tokens              your personal API tokens (an admin: everyone's)
//   #/users               users and their roles (admin)
//   #/audit               the audit log, filterable (admin)
//
// Roles: <body data-role="viewer|operator|admin"> hides what the role cannot do (.needs-operator,
// .needs-admin); the server refuses it anyway. The header shows who is logged in (whoami).
//
// Stable data-testid attributes (for tests and automation; <name> is a VPS name, <id> an id):
//   shell     nav-run, nav-history, nav-scripts, nav-vps, nav-tokens, nav-users, nav-audit,
//             whoami (+ whoami-name, whoami-role), logout-button, loading,
//             error-banner (+ error-title, error-lines, error-dismiss), toast,
//             confirm-dialog (+ confirm-ok, confirm-cancel)
//   login     login-form, login-username, login-password, login-submit, login-error,
//             login-use-token, login-use-password, login-token
//   users     users-table, user-row-<username>, user-role-<username>, user-delete-<username>,
//             user-edit-<username>, user-form, user-username, user-password, user-role,
//             user-tags, user-submit, user-cancel
//   tokens    tokens-table, token-row-<id>, token-revoke-<id>, token-form, token-name,
//             token-expires, token-submit, token-secret
//   audit     audit-filters, audit-actor, audit-action, audit-since, audit-apply, audit-table,
//             audit-row-<id>, audit-more, audit-empty
//   run       run-form, vps-table, vps-row-<id>, vps-check-<id>, vps-online-<id>, vps-filter,
//             online-only, select-all, select-none, select-shown, tag-chips, tag-<tag>,
//             selection-count, offline-warning, vps-empty, source-command, source-script,
//             command-input, script-select, script-preview, cwd-input, alias-input,
//             timeout-input, run-button, rollout-fields, max-concurrency-input,
//             max-errors-input, wait-for-agent-input, params-form, param-<name>
//   batch     batch-title, batch-status (data-status = raw status), batch-elapsed, batch-command,
//             batch-meta, feed-status, feed-retry, terminate-all, run-again,
//             rerun-not-succeeded, rerun-secrets (+ rerun-secret-<name>, rerun-secrets-submit),
//             rerun-of (+ rerun-of-link), rollout-summary (data-queued, data-waiting,
//             data-skipped), stop-reason,
//             filter-<group> + count-<group> for group in all, pending, running, succeeded,
//             failed, unreachable, terminated, skipped; panel-search, collapse-succeeded, expand-all,
//             collapse-all, panels, panels-empty, batch-missing,
//             panel-<name> (data-status, data-group), toggle-<name>, panel-status-<name>
//             (data-status), panel-exit-<name>, panel-duration-<name>, panel-preview-<name>,
//             panel-output-<name>, panel-error-<name>, panel-note-<name>, terminate-<name>,
//             panel-waiting-<name> (a target waiting for its agent, with the time left),
//             download-stdout-<name>, download-stderr-<name>
//   history   history-table, history-row-<batch_id>, history-rerun-of-<batch_id>, history-range,
//             history-prev, history-next,
//             history-empty
//   scripts   scripts-list, scripts-empty, script-row-<id>, script-new, script-form,
//             script-editor-title, script-name, script-description, script-content,
//             script-parameters, script-save, script-run, script-delete
//   machines  vps-add-form, vps-add-name, vps-add-tags, vps-add-submit, vps-secret,
//             vps-agent-install, vps-agent-command (+ vps-agent-secret-line, vps-agent-run-line),
//             vps-manage-table, vps-manage-row-<id>, vps-delete-<id>

import { describeError, get, notifyUnauthorized, onUnauthorized, post } from "./api.js";
import { h, replaceChildren, setText } from "./dom.js";
import { mountLogin } from "./views/login.js";

const ROUTES = [
  { re: /^#\/run$/, nav: "run", load: () => import("./views/run.js"), params: () => ({}) },
  { re: /^#\/batch\/([^/?]+)$/, nav: "history", load: () => import("./views/batch.js"), params: (m) => ({ id: decodeURIComponent(m[1]) }) },
  { re: /^#\/history(?:\/(\d+))?$/, nav: "history", load: () => import("./views/history.js"), params: (m) => ({ page: Number(m[1] || 1) }) },
  { re: /^#\/scripts(?:\/([^/?]+))?$/, nav: "scripts", load: () => import("./views/scripts.js"), params: (m) => ({ id: m[1] ? decodeURIComponent(m[1]) : null }) },
  { re: /^#\/vps$/, nav: "vps", load: () => import("./views/vps.js"), params: () => ({}) },
  { re: /^#\/tokens$/, nav: "tokens", load: () => import("./views/tokens.js"), params: () => ({}) },
  { re: /^#\/users$/, nav: "users", load: () => import("./views/users.js"), params: () => ({}) },
  { re: /^#\/audit$/, nav: "audit", load: () => import("./views/audit.js"), params: () => ({}) },
];

const main = document.getElementById("main");
const banner = document.getElementById("error-banner");
const toastEl = document.getElementById("toast");
let current = null; // {unmount}
let routeToken = 0;
let authState = "unknown"; // "in" | "out" | "unknown"
let toastTimer = 0;

// ---- shared services for views --------------------------------------------------------------

function showError(err, context) {
  const { title, lines } = err && err.title && Array.isArray(err.lines) ? err : describeError(err);
  if (err && err.status === 401) return; // the login form is the message
  setText(banner.querySelector(".banner-title"), context ? `${context}: ${title}` : title);
  replaceChildren(banner.querySelector(".banner-lines"), lines.map((line) => h("li", {}, line)));
  banner.hidden = false;
}

function clearError() {
  banner.hidden = true;
}

function toast(message) {
  setText(toastEl, message);
  toastEl.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toastEl.hidden = true; }, 3500);
}

const dialog = document.getElementById("confirm-dialog");
function confirmDialog({ title, message, confirmLabel = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    setText(dialog.querySelector("#confirm-title"), title);
    setText(dialog.querySelector("#confirm-message"), message || "");
    const ok = dialog.querySelector("#confirm-ok");
    setText(ok, confirmLabel);
    ok.className = `btn ${danger ? "btn-danger" : "btn-primary"}`;
    dialog.returnValue = "cancel";
    const done = () => {
      dialog.removeEventListener("close", done);
      resolve(dialog.returnValue === "ok");
    };
    dialog.addEventListener("close", done);
    dialog.showModal();
    dialog.querySelector("[data-testid=confirm-cancel]").focus(); // the safe choice is the default
  });
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

const ctx = { showError, clearError, toast, confirm: confirmDialog, navigate, me: null };

/** Who is logged in: the header, <body data-role> (hides what the role cannot do), ctx.me. */
function setMe(me) {
  ctx.me = me;
  document.body.dataset.role = me?.role || "";
  setText(document.getElementById("whoami-name"), me?.username || "");
  setText(document.getElementById("whoami-role"), me?.role || "");
}

/** Where a user lands: viewers cannot run anything, so they start on the history. */
function home() {
  return ctx.me && ctx.me.role === "viewer" ? "#/history" : "#/run";
}

// ---- routing ------------------------------------------------------------------------------

function unmountCurrent() {
  if (current) {
    try { current.unmount(); } catch (err) { console.error(err); }
    current = null;
  }
}

async function route() {
  const token = ++routeToken;
  if (authState === "out") return;
  let hash = location.hash;
  if (!hash || hash === "#" || hash === "#/" || hash.startsWith("#/login")) {
    hash = home();
    history.replaceState(null, "", hash);
  }
  const found = ROUTES.map((r) => [r, r.re.exec(hash)]).find(([, m]) => m);
  unmountCurrent();
  clearError();
  for (const a of document.querySelectorAll(".nav a")) {
    if (found && a.dataset.route === found[0].nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!found) {
    document.title = "Not found — Fleet";
    replaceChildren(main, h("section", { class: "card empty-state" }, h("h1", {}, "Page not found"),
      h("p", {}, "There is nothing at this address. "), h("p", {}, h("a", { href: "#/run" }, "Go to Run"))));
    return;
  }
  const [r, m] = found;
  let mod;
  try {
    mod = await r.load();
  } catch (err) {
    showError({ title: "Could not load this page", lines: [String(err?.message || err)] });
    return;
  }
  if (token !== routeToken || authState === "out") return;
  document.title = `${r.nav[0].toUpperCase()}${r.nav.slice(1)} — Fleet`;
  main.textContent = "";
  current = mod.mount(main, ctx, r.params(m));
  if (focusOnRoute) main.querySelector("h1")?.focus({ preventScroll: true });
  focusOnRoute = true;
}
let focusOnRoute = false; // not on first load: the page should not jump to a heading

// ---- session ------------------------------------------------------------------------------

/** The server redirects a login link with a bad token to #/login?error=invalid-token. */
function loginLinkError() {
  const m = /^#\/login\?(.*)$/.exec(location.hash);
  const error = m ? new URLSearchParams(m[1]).get("error") : null;
  if (error === "invalid-token") return "The token in that login link was not accepted. Log in below.";
  if (error === "too-many-attempts") return "Too many failed logins from this address: wait a few minutes, then try again.";
  return error;
}

function showLogin() {
  if (authState === "out") return;
  authState = "out";
  routeToken++;
  unmountCurrent();
  clearError();
  document.body.dataset.auth = "out";
  document.title = "Log in — Fleet";
  setMe(null);
  current = mountLogin(main, {
    message: loginLinkError(),
    onSuccess: (me) => {
      authState = "in";
      document.body.dataset.auth = "in";
      setMe(me);
      current = null;
      route();
    },
  });
}

onUnauthorized(showLogin);

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await post("/api/logout");
  } catch (err) {
    if (err.status !== 401) { showError(err, "Could not log out"); return; }
  }
  notifyUnauthorized();
});

banner.querySelector(".banner-close").addEventListener("click", clearError);
document.getElementById("skip-link").addEventListener("click", () => main.focus());
window.addEventListener("hashchange", route);

async function start() {
  try {
    setMe(await get("/api/me", { auth: false }));
  } catch (err) {
    if (err.status === 401) { showLogin(); return; }
    // Unreachable server: show why, and still try the page (its own calls report errors).
    showError(err, "Could not check your session");
  }
  authState = "in";
  document.body.dataset.auth = "in";
  const linkError = loginLinkError();
  route();
  // Still logged in from before, but the link just used carried a bad token: say so.
  if (linkError) showError({ title: "Login link not accepted", lines: ["The token in that link is not valid; you are still logged in with your earlier session."] });
}

start();
