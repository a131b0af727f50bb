// Formatting of statuses, times and durations, shared by every view.

/** Child task statuses → a human label and the counter group they belong to. */
export const CHILD_STATUS = {
  PENDING: { label: "Pending", group: "pending" },
  SENT_TO_AGENT: { label: "Sent", group: "pending" },
  AGENT_ACCEPTED: { label: "Accepted", group: "pending" },
  EXECUTING: { label: "Running", group: "running" },
  TERMINATING: { label: "Terminating", group: "running" },
  SUCCESS: { label: "Succeeded", group: "succeeded", terminal: true },
  FAILURE: { label: "Failed", group: "failed", terminal: true },
  TERMINATED: { label: "Terminated", group: "terminated", terminal: true },
  AGENT_UNREACHABLE: { label: "Unreachable", group: "unreachable", terminal: true },
  AGENT_REJECTED: { label: "Rejected", group: "unreachable", terminal: true },
  SKIPPED: { label: "Skipped", group: "skipped", terminal: true },
};

export const BATCH_STATUS = {
  PENDING: { label: "Pending", group: "pending" },
  IN_PROGRESS: { label: "In progress", group: "running" },
  TERMINATING: { label: "Terminating", group: "running" },
  COMPLETED_SUCCESSFULLY: { label: "Completed successfully", group: "succeeded", terminal: true },
  COMPLETED_WITH_ERRORS: { label: "Completed with errors", group: "failed", terminal: true },
  TERMINATED: { label: "Terminated", group: "terminated", terminal: true },
  FAILED_TO_START: { label: "Failed to start", group: "unreachable", terminal: true },
};

/** Counter groups, in display order. */
export const GROUPS = [
  { key: "pending", label: "Pending" },
  { key: "running", label: "Running" },
  { key: "succeeded", label: "Succeeded" },
  { key: "failed", label: "Failed" },
  { key: "unreachable", label: "Unreachable / rejected" },
  { key: "terminated", label: "Terminated" },
  { key: "skipped", label: "Skipped" },
];

export function childInfo(status) {
  return CHILD_STATUS[status] || { label: status || "Unknown", group: "pending" };
}

export function batchInfo(status) {
  return BATCH_STATUS[status] || { label: status || "Unknown", group: "pending" };
}

export const isTerminalChild = (s) => Boolean(CHILD_STATUS[s]?.terminal);
export const isTerminalBatch = (s) => Boolean(BATCH_STATUS[s]?.terminal);

/** Milliseconds since the epoch, or null. */
export function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** "0.4 s", "12 s", "3 min 05 s", "2 h 03 min". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "";
  ms = Math.max(0, ms);
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const hh = Math.floor(m / 60);
  return `${hh} h ${String(m % 60).padStart(2, "0")} min`;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});

/** Local time for today ("14:03:22"), else a short date and time. */
export function fmtTime(iso) {
  const t = parseTime(iso);
  if (t === null) return "—";
  const d = new Date(t);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeFmt.format(d) : dateTimeFmt.format(d);
}

/** Full local timestamp for a title attribute. */
export function fmtFull(iso) {
  const t = parseTime(iso);
  return t === null ? "" : new Date(t).toString();
}

/** "just now", "5 min ago", "3 h ago", "2 days ago". */
export function fmtAgo(iso, now = Date.now()) {
  const t = parseTime(iso);
  if (t === null) return "never";
  const s = Math.round((now - t) / 1000);
  if (s < 10) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} days ago`;
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

/** Natural order: demo-2 before demo-10. */
export const naturalCompare = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" }).compare;

/** First line of a command, shortened, for titles and tables. */
export function commandTitle(text, max = 80) {
  const line = String(text || "").split("\n").find((l) => l.trim()) || "";
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}
