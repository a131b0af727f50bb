// Login: a username and password, or (for the first-start admin) a token. Either way
// POST /api/login answers who you are and sets the HttpOnly session cookie; the token itself is
// never kept by the browser.

import { describeError, post } from "../api.js";
import { h, replaceChildren, setText } from "../dom.js";

export function mountLogin(root, { onSuccess, message = null }) {
  let mode = "password"; // or "token"
  const username = h("input", {
    type: "text", class: "input", testid: "login-username", id: "login-username",
    autocomplete: "username", spellcheck: false, autocapitalize: "none",
  });
  const password = h("input", {
    type: "password", class: "input", testid: "login-password", id: "login-password",
    autocomplete: "current-password",
  });
  const token = h("input", {
    type: "password", class: "input mono", testid: "login-token", id: "login-token",
    autocomplete: "off", spellcheck: false, attrs: { "aria-describedby": "login-token-help" },
  });
  const error = h("p", { class: "form-error", testid: "login-error", hidden: !message, attrs: { role: "alert" } }, message || "");
  const submit = h("button", { type: "submit", class: "btn btn-primary", testid: "login-submit" }, "Log in");
  const passwordFields = h("div", {},
    h("div", { class: "field" }, h("label", { htmlFor: "login-username" }, "Username"), username),
    h("div", { class: "field" }, h("label", { htmlFor: "login-password" }, "Password"), password));
  const tokenFields = h("div", { hidden: true },
    h("div", { class: "field" }, h("label", { htmlFor: "login-token" }, "API token"), token),
    h("p", { id: "login-token-help", class: "muted" },
      "The server printed a login link with the admin token when it first started, and keeps the token in ",
      h("code", {}, "<data-dir>/admin.token"), ". A personal API token works too."));
  const useToken = h("button", { type: "button", class: "btn btn-small btn-quiet", testid: "login-use-token", on: { click: () => setMode("token") } }, "Use a token instead");
  const usePassword = h("button", { type: "button", class: "btn btn-small btn-quiet", testid: "login-use-password", hidden: true, on: { click: () => setMode("password") } }, "Use a username and password");

  function setMode(next) {
    mode = next;
    passwordFields.hidden = mode !== "password";
    tokenFields.hidden = mode !== "token";
    useToken.hidden = mode !== "password";
    usePassword.hidden = mode !== "token";
    error.hidden = true;
    (mode === "token" ? token : username).focus();
  }

  function fail(text, field) {
    error.hidden = false;
    setText(error, text);
    field.focus();
  }

  const form = h("form", {
    class: "card login-card", testid: "login-form",
    on: {
      submit: async (ev) => {
        ev.preventDefault();
        let body;
        if (mode === "token") {
          const value = token.value.trim();
          if (!value) { fail("Paste a token first.", token); return; }
          body = { token: value };
        } else {
          if (!username.value.trim()) { fail("Enter your username.", username); return; }
          if (!password.value) { fail("Enter your password.", password); return; }
          body = { username: username.value.trim(), password: password.value };
        }
        submit.disabled = true;
        setText(submit, "Logging in…");
        try {
          const me = await post("/api/login", body, { auth: false });
          token.value = "";
          password.value = "";
          onSuccess(me);
        } catch (err) {
          const { title, lines } = describeError(err);
          let text = `${title}: ${lines.join(" ")}`;
          if (err.status === 401) text = mode === "token" ? "That token was not accepted." : "Wrong username or password.";
          if (err.status === 429) text = `Too many failed logins. ${lines.join(" ")}`;
          fail(text, mode === "token" ? token : password);
          if (mode === "password") password.select();
        } finally {
          submit.disabled = false;
          setText(submit, "Log in");
        }
      },
    },
  },
  h("h1", {}, "Log in to Fleet"),
  passwordFields, tokenFields,
  error,
  h("div", { class: "actions" }, submit, useToken, usePassword));
  replaceChildren(root, h("div", { class: "login-wrap" }, form));
  username.focus();
  return { unmount() {} };
}
