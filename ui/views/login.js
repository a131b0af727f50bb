// Login: paste the admin token; POST /api/login sets the HttpOnly session cookie.

import { describeError, post } from "../api.js";
import { h, replaceChildren, setText } from "../dom.js";

export function mountLogin(root, { onSuccess, message = null }) {
  const token = h("input", {
    type: "password", class: "input mono", testid: "login-token", id: "login-token", required: true,
    autocomplete: "current-password", spellcheck: false,
    attrs: { "aria-describedby": "login-help" },
  });
  const error = h("p", { class: "form-error", testid: "login-error", hidden: !message, attrs: { role: "alert" } }, message || "");
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "login-submit" }, "Log in");
  const form = h("form", {
    class: "card login-card", testid: "login-form",
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        const value = token.value.trim();
        if (!value) {
          error.hidden = false;
          setText(error, "Paste the admin token first.");
          token.focus();
          return;
        }
        submit.disabled = true;
        setText(submit, "Logging in…");
        try {
          await post("/api/login", { token: value }, { auth: false });
          token.value = "";
          onSuccess();
        } catch (err) {
          const { title, lines } = describeError(err);
          error.hidden = false;
          setText(error, err.status === 401 ? `That token was not accepted. ${lines.join(" ")}` : `${title}: ${lines.join(" ")}`);
          token.select();
        } finally {
          submit.disabled = false;
          setText(submit, "Log in");
        }
      },
    },
  },
  h("h1", {}, "Log in to Fleet"),
  h("p", { id: "login-help", class: "muted" },
    "Paste the admin token. The server printed a login link when it first started, and keeps the token in ",
    h("code", {}, "<data-dir>/admin.token"), "."),
  h("div", { class: "field" }, h("label", { htmlFor: "login-token" }, "Admin token"), token),
  error,
  h("div", { class: "actions" }, submit));
  replaceChildren(root, h("div", { class: "login-wrap" }, form));
  token.focus();
  return { unmount() {} };
}
