// The fleet-wide VPS list, kept live through /ws/vps: shared by the run view and the machines view.
//
// The server sends VPS_SNAPSHOT (every VPS as GET /api/vps shows it) and then VPS_UPDATE events,
// which are partial: an agent connecting sends {id, online, last_seen_at, hostname, os,
// agent_version}, an agent dropping {id, online, last_seen_at}. Each update is merged into the
// record known for that id, so a view only ever sees whole records (name, tags, host and OS stay).
// An update for an id not known yet (a VPS added since the snapshot) is kept aside and the list is
// read again (GET /api/vps): the record that comes back gets the updates merged into it, since
// they can be newer than what the server had stored when it answered. After repeated reconnect
// attempts the list is read the same way, so the view stays current even without a socket.

import { get } from "./api.js";
import { Feed } from "./feed.js";

export class VpsFeed {
  /**
   * @param {{onList: (list: object[]) => void,
   *          onChange: (record: object) => void,
   *          onError?: (err: Error, quiet: boolean) => void}} handlers
   * onList gets the whole list (snapshot or reload), onChange one merged record; onError a failed
   * reload (quiet when it was a background refresh rather than the view's first load).
   */
  constructor({ onList, onChange, onError = () => {} }) {
    this.onList = onList;
    this.onChange = onChange;
    this.onError = onError;
    this.records = new Map(); // id -> the whole record, updates merged in
    this.unknown = new Map(); // id -> updates for a VPS not in the list yet (merged, in order)
    this.loading = null;
    this.reloadAgain = false;
    this.stopped = false;
  }

  start() {
    this.reload(false);
    this.feed = new Feed("/ws/vps", {
      onMessage: (msg) => this.receive(msg),
      onState: (s) => { if (s.state === "reconnecting" && s.attempt >= 2) this.reload(); },
    }).start();
    return this;
  }

  stop() {
    this.stopped = true;
    this.feed?.stop();
  }

  /** Read the list with GET /api/vps (one request at a time; a call meanwhile reads it again after). */
  async reload(quiet = true) {
    if (this.loading) {
      this.reloadAgain = true;
      return this.loading;
    }
    this.loading = (async () => {
      try {
        const list = await get("/api/vps");
        if (!this.stopped) this.setList(list.map((v) => ({ ...v, ...this.unknown.get(v.id) })));
      } catch (err) {
        if (!this.stopped) this.onError(err, quiet);
      }
    })();
    try {
      await this.loading;
    } finally {
      this.loading = null;
    }
    if (this.reloadAgain && !this.stopped) {
      this.reloadAgain = false;
      await this.reload(quiet);
    }
  }

  /** Stop tracking a VPS (it was removed): a late update for it reloads the list instead. */
  forget(id) {
    this.records.delete(id);
  }

  setList(list) {
    this.records = new Map(list.map((v) => [v.id, v]));
    this.unknown.clear();
    this.onList(list);
  }

  receive(msg) {
    if (msg.type === "VPS_SNAPSHOT" && Array.isArray(msg.vps)) {
      this.setList(msg.vps);
    } else if (msg.type === "VPS_UPDATE" && msg.vps && msg.vps.id !== undefined) {
      const known = this.records.get(msg.vps.id);
      if (!known) {
        this.unknown.set(msg.vps.id, { ...this.unknown.get(msg.vps.id), ...msg.vps });
        this.reload();
        return;
      }
      const merged = { ...known, ...msg.vps };
      this.records.set(merged.id, merged);
      this.onChange(merged);
    }
  }
}
