// WebSocket feed with reconnect + exponential backoff (and jitter).
//
// The server sends a snapshot first on every connection (SNAPSHOT / VPS_SNAPSHOT) and then
// events. It may close a slow client (1008 policy / 1013 try again): we reconnect and the new
// snapshot rebuilds the view, so nothing here needs to remember what was already seen.

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

export class Feed {
  /**
   * @param {string} path e.g. "/ws/batch_commands/42"
   * @param {{onMessage: (msg: object) => void,
   *          onState?: (state: {state: string, attempt: number, delayMs?: number, code?: number}) => void}} handlers
   * States: "connecting", "live" (first message received), "reconnecting" (waiting delayMs),
   * "done" (finish() was called and the socket closed), "stopped".
   */
  constructor(path, { onMessage, onState = () => {} }) {
    this.path = path;
    this.onMessage = onMessage;
    this.onState = onState;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.finished = false;
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  connect() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.onState({ state: "connecting", attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(wsUrl(this.path));
    } catch {
      this.scheduleReconnect(0);
      return;
    }
    this.ws = ws;
    let gotMessage = false;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return; // not ours to interpret; the next snapshot will correct any drift
      }
      if (!gotMessage) {
        gotMessage = true;
        this.attempt = 0;
        this.onState({ state: "live", attempt: 0 });
      }
      this.onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (this.finished) {
        this.onState({ state: "done", attempt: this.attempt, code: ev.code });
        return;
      }
      this.scheduleReconnect(ev.code);
    };
    ws.onerror = () => {}; // onclose follows and decides
  }

  scheduleReconnect(code) {
    this.attempt += 1;
    const exp = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (this.attempt - 1));
    // A slow-client close asks us to come back, but not all at once with every other tab.
    const delayMs = Math.round(exp * (0.5 + Math.random() * 0.5));
    this.onState({ state: "reconnecting", attempt: this.attempt, delayMs, code });
    this.timer = setTimeout(() => this.connect(), delayMs);
  }

  /** Reconnect now (e.g. the user clicked "Reconnect"). */
  retryNow() {
    if (this.stopped) return;
    this.attempt = 0;
    if (this.ws) this.ws.close();
    else this.connect();
  }

  /** The stream has reached its end (terminal batch): stay open, but don't reconnect on close. */
  finish() {
    this.finished = true;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000); } catch { /* already closing */ }
    }
    this.onState({ state: "stopped", attempt: this.attempt });
  }
}
