// fetch wrapper: JSON in/out, the session cookie, and one error type for every failure.
//
// Every non-2xx answer becomes an ApiError carrying the server's {"error": CODE, "detail": ...}.
// A 401 also notifies the app (onUnauthorized) so it can show the login form, unless the caller
// asked otherwise (the login form handles its own 401).

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(typeof detail === "string" ? detail : code);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

const unauthorizedHandlers = new Set();
let serverOffsetMs = 0;

/** Register fn() to be called whenever an API call answers 401. Returns an unsubscribe function. */
export function onUnauthorized(fn) {
  unauthorizedHandlers.add(fn);
  return () => unauthorizedHandlers.delete(fn);
}

export function notifyUnauthorized() {
  for (const fn of unauthorizedHandlers) fn();
}

/** Date.now() corrected by the server's clock (from the Date header), for elapsed times. */
export function serverNow() {
  return Date.now() + serverOffsetMs;
}

function noteServerClock(resp) {
  const date = Date.parse(resp.headers.get("Date") || "");
  if (Number.isNaN(date)) return;
  const offset = date + 500 - Date.now(); // the header has 1 s resolution
  // Ignore small differences: they are rounding, not skew.
  serverOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
}

/**
 * Call the API.
 * @param {string} method
 * @param {string} path e.g. "/api/vps"
 * @param {object} [body] sent as JSON
 * @param {{auth?: boolean, signal?: AbortSignal}} [options] auth=false: a 401 is only thrown
 * @returns parsed JSON, or null for 204
 */
export async function api(method, path, body, { auth = true, signal } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json" },
    signal,
  };
  // Every write says JSON, body or not: the server refuses a cookie-authenticated write
  // without it (a cross-site form cannot send it; see the README's CSRF note).
  if (method !== "GET" && method !== "HEAD") init.headers["Content-Type"] = "application/json";
  if (body !== undefined) init.body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ApiError(0, "network_error",
      "Cannot reach the Fleet server. Check that it is running and that this machine can reach it.");
  }
  noteServerClock(resp);
  let data = null;
  const text = resp.status === 204 ? "" : await resp.text().catch(() => "");
  if (text) {
    const isJson = (resp.headers.get("Content-Type") || "").includes("json");
    if (isJson) {
      try { data = JSON.parse(text); } catch { data = null; }
    } else {
      data = text;
    }
  }
  if (resp.ok) return data;
  if (resp.status === 401 && auth) notifyUnauthorized();
  const code = (data && typeof data === "object" && data.error) || `http_${resp.status}`;
  let detail = data && typeof data === "object" ? data.detail : null;
  if (detail === null || detail === undefined || detail === "") {
    detail = typeof data === "string" && data.length < 300 ? data : resp.statusText || `HTTP ${resp.status}`;
  }
  throw new ApiError(resp.status, code, detail);
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body, opts);
export const put = (path, body, opts) => api("PUT", path, body, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

const TITLES = {
  0: "Cannot reach the server",
  400: "The request was not understood",
  401: "You are not logged in",
  403: "Not allowed",
  404: "Not found",
  409: "Conflict",
  413: "Too large",
  422: "Please check the form",
  429: "Too many requests",
};

/**
 * Turn any error into {title, lines}: a short heading and one line per reason.
 * A 422's detail is a list of {field, reason}: each becomes "field: reason".
 */
export function describeError(err) {
  if (!(err instanceof ApiError)) {
    return { title: "Something went wrong in the page", lines: [String(err?.message || err)] };
  }
  const title = TITLES[err.status] || (err.status >= 500 ? "The server had a problem" : `Request failed (${err.status})`);
  const lines = [];
  const detail = err.detail;
  if (Array.isArray(detail)) {
    for (const item of detail) {
      if (item && typeof item === "object") {
        const field = item.field ?? item.loc ?? "";
        const reason = item.reason ?? item.msg ?? item.message ?? JSON.stringify(item);
        lines.push(field && field !== "body" ? `${Array.isArray(field) ? field.join(".") : field}: ${reason}` : String(reason));
      } else {
        lines.push(String(item));
      }
    }
  } else if (detail && typeof detail === "object") {
    lines.push(JSON.stringify(detail));
  } else if (detail) {
    lines.push(String(detail));
  }
  if (!lines.length) lines.push(err.code);
  if (err.status >= 500) lines.push(`(${err.code}, HTTP ${err.status})`);
  return { title, lines };
}
