// Machines view: register a VPS (its agent secret is shown once), list and remove VPSes.
//
// The list stays live through the fleet-wide feed (../vpsfeed.js). The agent's command line is the
// one the server answers (agent_command: the address agents really reach, --secret-file, --tls),
// preceded by the line that stores the secret in the file that command reads.

import { del, post } from "../api.js";
import { field, h, replaceChildren, setText } from "../dom.js";
import { fmtAgo, fmtFull, naturalCompare } from "../format.js";
import { VpsFeed } from "../vpsfeed.js";

const DEFAULT_SECRET_FILE = "/etc/fleet-agent/secret";

/** Quote a word for a POSIX shell (as Python's shlex.quote). */
export function shellQuote(word) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\"'\"'")}'`;
}

/** The file the agent command reads its secret from (its --secret-file), else the README's path. */
export function secretFile(agentCommand) {
  const m = /(?:^|\s)--secret-file(?:=|\s+)(?:'([^']*)'|(\S+))/.exec(agentCommand || "");
  return m ? (m[1] ?? m[2]) : DEFAULT_SECRET_FILE;
}

/** The shell lines that set up an agent: store the secret (root-only), then start the agent. */
export function agentSetup(secret, agentCommand) {
  const path = secretFile(agentCommand);
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  const store = `sudo install -d -m 0700 ${shellQuote(dir)} && printf '%s\\n' ${shellQuote(secret)}`
    + ` | sudo install -m 0600 /dev/stdin ${shellQuote(path)}`;
  return { store, command: agentCommand };
}

export function mount(root, ctx) {
  const view = new VpsView(root, ctx);
  view.start();
  return { unmount: () => view.stop() };
}

class VpsView {
  constructor(root, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.items = new Map();
    const e = (this.els = {});
    e.name = h("input", { type: "text", class: "input", testid: "vps-add-name", required: true, placeholder: "web-1", spellcheck: false });
    e.tags = h("input", { type: "text", class: "input", testid: "vps-add-tags", placeholder: "web, eu" });
    e.add = h("button", { type: "submit", class: "btn btn-primary", testid: "vps-add-submit" }, "Add VPS");
    e.secret = h("div", { class: "secret-box", testid: "vps-secret", hidden: true, attrs: { role: "status" } });
    e.tbody = h("tbody");
    e.empty = h("p", { class: "empty", hidden: true }, "No VPS is registered yet.");
    replaceChildren(root,
      h("div", { class: "page-head" }, h("h1", { tabIndex: -1 }, "Machines")),
      h("form", {
        class: "card needs-admin", testid: "vps-add-form", noValidate: true,
        on: { submit: (ev) => { ev.preventDefault(); this.add(); } },
      },
      h("h2", {}, "Add a VPS"),
      h("div", { class: "row-3" }, field("Name", e.name), field("Tags", e.tags, "Comma-separated, optional."),
        h("div", { class: "field field-end" }, e.add)),
      e.secret),
      h("section", { class: "card card-flush" },
        h("div", { class: "table-wrap" }, h("table", { class: "table", testid: "vps-manage-table" },
          h("thead", {}, h("tr", {}, ...["ID", "Name", "Status", "Tags", "Host", "OS", "Agent", "Last seen", ""].map((t) => h("th", { scope: "col" }, t)))),
          e.tbody)),
        e.empty));
  }

  start() {
    this.vpsFeed = new VpsFeed({
      onList: (list) => this.setItems(list),
      onChange: (item) => { this.items.set(item.id, item); this.render(); },
      onError: (err, quiet) => {
        if (!quiet || err.status) this.ctx.showError(err, "Could not load the VPS list");
      },
    }).start();
  }

  stop() {
    this.vpsFeed?.stop();
  }

  setItems(list) {
    this.items = new Map(list.map((v) => [v.id, v]));
    this.render();
  }

  render() {
    const items = [...this.items.values()].sort((a, b) => naturalCompare(a.name, b.name));
    this.els.empty.hidden = items.length > 0;
    replaceChildren(this.els.tbody, items.map((v) => h("tr", { testid: `vps-manage-row-${v.id}` },
      h("td", { class: "num" }, String(v.id)),
      h("td", {}, v.name),
      h("td", {}, h("span", { class: `online ${v.online ? "is-online" : "is-offline"}` }, v.online ? "Online" : "Offline")),
      h("td", { class: "tag-list" }, (v.tags || []).map((t) => h("span", { class: "tag" }, t))),
      h("td", { class: "muted" }, v.hostname || "—"),
      h("td", { class: "muted" }, v.os || "—"),
      h("td", { class: "muted" }, v.agent_version || "—"),
      h("td", { class: "muted", title: fmtFull(v.last_seen_at) }, v.online ? "now" : fmtAgo(v.last_seen_at)),
      h("td", {}, h("button", {
        type: "button", class: "btn btn-small btn-danger-quiet needs-admin", testid: `vps-delete-${v.id}`,
        attrs: { "aria-label": `Remove ${v.name}` }, on: { click: () => this.remove(v) },
      }, "Remove")))));
  }

  async add() {
    const e = this.els;
    const name = e.name.value.trim();
    if (!name) {
      this.ctx.showError({ title: "Cannot add yet", lines: ["Give the VPS a name."] });
      return;
    }
    const tags = e.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    e.add.disabled = true;
    try {
      const res = await post("/api/vps", { name, tags });
      this.ctx.clearError();
      e.name.value = "";
      e.tags.value = "";
      this.showSecret(res);
      await this.vpsFeed.reload(false);
    } catch (err) {
      this.ctx.showError(err, "The VPS was not added");
    } finally {
      e.add.disabled = false;
    }
  }

  showSecret(res) {
    const box = this.els.secret;
    const setup = agentSetup(res.agent_secret, res.agent_command);
    const cmd = `${setup.store}\n${setup.command}`;
    const code = h("code", { class: "mono", testid: "vps-agent-command" },
      h("span", { class: "cmd-line", testid: "vps-agent-secret-line" }, setup.store),
      h("span", { class: "cmd-line", testid: "vps-agent-run-line" }, setup.command));
    const copy = h("button", {
      type: "button", class: "btn btn-small",
      on: {
        click: async () => {
          try { await navigator.clipboard.writeText(cmd); setText(copy, "Copied"); } catch { setText(copy, "Select and copy it"); }
        },
      },
    }, "Copy");
    // The distribution is "fleet-run" (pinned to this server's version), not "fleet".
    const install = res.agent_install
      ? h("p", {}, "Install the agent (Python ≥ 3.10): ",
        h("code", { class: "mono", testid: "vps-agent-install" }, res.agent_install))
      : null;
    replaceChildren(box,
      h("p", {}, h("strong", {}, `“${res.name}” is registered (id ${res.id}).`),
        " Its agent secret is shown only this once. On the VPS, store it in a root-only file and start the agent:"),
      install, h("div", { class: "secret-cmd" }, code, copy));
    box.hidden = false;
  }

  async remove(v) {
    const ok = await this.ctx.confirm({
      title: `Remove ${v.name}?`,
      message: "Its agent can no longer connect, and it disappears from the target list. Past batches keep their records.",
      confirmLabel: "Remove VPS",
      danger: true,
    });
    if (!ok) return;
    try {
      await del(`/api/vps/${encodeURIComponent(v.id)}`);
      this.items.delete(v.id);
      this.vpsFeed.forget(v.id);
      this.render();
      this.ctx.toast(`Removed ${v.name}.`);
    } catch (err) {
      this.ctx.showError(err, `Could not remove ${v.name}`);
    }
  }
}
