"""The web UI in real headless Chromium against ``fleet-server --demo 3`` (VPSes demo-1..demo-3).

Each test drives the page the way a person would and waits only on what the page shows
(selectors, text, attributes), every wait bounded. Commands that must stay running until the
test has seen something wait on a *gate file* the test creates: the demo agents run on this
machine, so "output is live" is shown by the first half of the output arriving while the second
half cannot have been produced yet.
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from .support import FleetServer, Session

pytestmark = pytest.mark.browser

VPS_NAMES = ["demo-1", "demo-2", "demo-3"]
BATCH_URL = re.compile(r"#/batch/([^/?#]+)$")
RUNNING = re.compile(r"^(PENDING|IN_PROGRESS)$")


# ---- helpers ---------------------------------------------------------------------------------


def log_in(s: Session) -> Page:
    """Open the printed login URL: the server sets the cookie and redirects to the UI."""
    page = s.page
    page.goto(s.server.login_url)
    for name in VPS_NAMES:
        row = page.locator("tr.vps-row", has_text=name)
        expect(row).to_be_visible()
        expect(row.get_by_text("Online", exact=True)).to_be_visible()
    return page


def start_batch(page: Page, command: str, *, keyboard: bool = False) -> str:
    """Select every VPS, type the command, run it; returns the batch id from the URL."""
    page.get_by_test_id("nav-run").click()
    page.get_by_test_id("select-all").click()
    expect(page.get_by_test_id("selection-count")).to_contain_text("3 selected")
    page.get_by_test_id("command-input").fill(command)
    if keyboard:
        page.get_by_test_id("command-input").press("Control+Enter")
    else:
        page.get_by_test_id("run-button").click()
    expect(page).to_have_url(BATCH_URL)
    match = BATCH_URL.search(page.url)
    assert match is not None
    expect(page.get_by_test_id("batch-status")).to_have_attribute("data-status", re.compile(r".+"))
    return match.group(1)


def gated(before: str, after: str, gate: pathlib.Path) -> str:
    """Print `before`, wait (≤ 30 s) until `gate` exists, print `after`."""
    g = shlex.quote(str(gate))
    return (
        f"echo {before}; i=0; "
        f"while [ ! -e {g} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; "
        f"echo {after}"
    )


def output(page: Page, name: str):
    return page.get_by_test_id(f"panel-output-{name}")


def expect_batch_done(page: Page, status: str = "COMPLETED_SUCCESSFULLY") -> None:
    expect(page.get_by_test_id("batch-status")).to_have_attribute("data-status", status)


def api(server: FleetServer, method: str, path: str, body: object | None = None) -> object:
    """Call the REST API directly with the admin token (test setup only)."""
    request = urllib.request.Request(
        f"{server.origin}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


# ---- tests -----------------------------------------------------------------------------------


def test_login_via_printed_url_lands_on_run_view(session: Session) -> None:
    page = log_in(session)
    assert "token=" not in page.url, "the token must not stay in the address bar"
    expect(page.get_by_test_id("selection-count")).to_contain_text("3 of 3 VPSes online")
    expect(page.get_by_test_id("nav-run")).to_have_attribute("aria-current", "page")


def test_login_form_rejects_a_bad_token_and_accepts_the_admin_token(session: Session) -> None:
    page = session.page
    # A login link with a wrong token lands on the form, which says why.
    page.goto(session.server.origin + "/?token=not-the-token")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("login-error")).to_contain_text("not accepted")
    page.goto(session.server.origin + "/")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("login-error")).to_be_hidden()
    page.get_by_test_id("login-use-token").click()
    page.get_by_test_id("login-token").fill("not-the-token")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_be_visible()
    expect(page.get_by_test_id("login-error")).to_contain_text("not accepted")

    page.get_by_test_id("login-token").fill(session.server.token)
    page.get_by_test_id("login-submit").click()
    expect(page.locator("tr.vps-row")).to_have_count(3)

    page.get_by_test_id("logout-button").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.reload()
    expect(page.get_by_test_id("login-form")).to_be_visible()


def test_run_on_all_demo_agents_streams_each_output_live(
    session: Session, tmp_path: pathlib.Path, artifacts: pathlib.Path
) -> None:
    page = log_in(session)
    gate = tmp_path / "gate"
    command = (
        "printf '\\033[1;32mready\\033[0m on %s\\n' \"$(hostname)\"; echo 'a warning' >&2; "
        + gated("start", "end", gate)
    )
    start_batch(page, command)
    for name in VPS_NAMES:
        expect(output(page, name)).to_contain_text("start")
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "EXECUTING"
        )
    # Output arrived while every command is still blocked on the gate: that is live streaming.
    expect(page.get_by_test_id("batch-status")).to_have_attribute("data-status", RUNNING)
    expect(page.get_by_test_id("count-running")).to_have_text("3")
    for name in VPS_NAMES:
        expect(output(page, name)).not_to_contain_text("end")

    gate.touch()
    for name in VPS_NAMES:
        expect(output(page, name)).to_contain_text("end")
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "SUCCESS"
        )
        expect(page.get_by_test_id(f"panel-exit-{name}")).to_have_text("exit 0")
        # stderr is told apart from stdout.
        expect(output(page, name).locator(".o-err")).to_contain_text("a warning")
    expect_batch_done(page)
    expect(page.get_by_test_id("count-succeeded")).to_have_text("3")
    expect(page.get_by_test_id("terminate-all")).to_be_disabled()
    page.screenshot(path=str(artifacts / "batch-view.png"), full_page=True, animations="disabled")


def test_terminate_one_vps_then_the_rest(session: Session) -> None:
    page = log_in(session)
    start_batch(page, "echo running; sleep 30; echo never")
    for name in VPS_NAMES:
        expect(output(page, name)).to_contain_text("running")
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "EXECUTING"
        )

    page.get_by_test_id("terminate-demo-2").click()
    expect(page.get_by_test_id("panel-status-demo-2")).to_have_attribute(
        "data-status", "TERMINATED"
    )
    expect(page.get_by_test_id("panel-status-demo-2")).to_have_text("Terminated")
    expect(page.get_by_test_id("terminate-demo-2")).to_be_hidden()
    for name in ("demo-1", "demo-3"):
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "EXECUTING"
        )

    # Terminate all asks first; cancelling changes nothing.
    page.get_by_test_id("terminate-all").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    page.get_by_test_id("confirm-cancel").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
    expect(page.get_by_test_id("panel-status-demo-1")).to_have_attribute("data-status", "EXECUTING")

    page.get_by_test_id("terminate-all").click()
    page.get_by_test_id("confirm-ok").click()
    expect_batch_done(page, "TERMINATED")
    for name in VPS_NAMES:
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "TERMINATED"
        )
        expect(output(page, name)).not_to_contain_text("never")
    expect(page.get_by_test_id("count-terminated")).to_have_text("3")


def test_download_full_logs_byte_exact(session: Session) -> None:
    page = log_in(session)
    start_batch(page, "printf 'line-%s\\n' 1 2 3; printf 'oops\\n' >&2; printf 'caf\\303\\251\\n'")
    expect_batch_done(page)
    expect(output(page, "demo-1")).to_contain_text("café")

    with page.expect_download() as info:
        page.get_by_test_id("download-stdout-demo-1").click()
    assert pathlib.Path(info.value.path()).read_bytes() == b"line-1\nline-2\nline-3\ncaf\xc3\xa9\n"

    with page.expect_download() as info:
        page.get_by_test_id("download-stderr-demo-3").click()
    assert pathlib.Path(info.value.path()).read_bytes() == b"oops\n"


def test_reload_mid_batch_resumes_status_and_output(
    session: Session, tmp_path: pathlib.Path
) -> None:
    page = log_in(session)
    gate = tmp_path / "gate"
    batch_id = start_batch(page, gated("before-reload", "after-reload", gate))
    for name in VPS_NAMES:
        expect(output(page, name)).to_contain_text("before-reload")

    page.reload()
    resumed = BATCH_URL.search(page.url)
    assert resumed is not None
    assert resumed.group(1) == batch_id
    # Back on the same running batch: the snapshot restores status and output...
    expect(page.get_by_test_id("batch-status")).to_have_attribute("data-status", RUNNING)
    for name in VPS_NAMES:
        expect(output(page, name)).to_contain_text("before-reload")
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "EXECUTING"
        )

    # ...and the feed is attached again: new output and the final status arrive live.
    gate.touch()
    for name in VPS_NAMES:
        expect(output(page, name)).to_contain_text("after-reload")
    expect_batch_done(page)


def test_html_in_output_is_text_and_ansi_colours_render(session: Session) -> None:
    page = log_in(session)
    command = (
        "echo '<img src=x onerror=alert(1)>'; echo '<script>alert(2)</script>'; "
        "printf '\\033[31mred\\033[0m plain \\033[1;34mbold-blue\\033[0m\\n'; "
        "printf '\\033]0;window title\\007\\033[2Kcleared\\n'; "
        "echo '<b onmouseover=alert(3)>err</b>' >&2"
    )
    start_batch(page, command)
    expect_batch_done(page)
    out = output(page, "demo-1")
    expect(out).to_contain_text("<img src=x onerror=alert(1)>")
    expect(out).to_contain_text("<script>alert(2)</script>")
    expect(out.locator(".o-err")).to_contain_text("<b onmouseover=alert(3)>err</b>")
    # Shown as text: no element was created from the output anywhere in the page.
    expect(out.locator("img, script, b")).to_have_count(0)
    made = "img[src='x'], .output img, .output script, .output b"
    assert page.evaluate("(sel) => document.querySelectorAll(sel).length", made) == 0

    # SGR colours become spans with classes; other escapes are stripped.
    expect(out.locator("span.ansi-fg-1")).to_have_text("red")
    blue = out.locator("span.ansi-fg-4")
    expect(blue).to_have_text("bold-blue")
    expect(blue).to_have_class(re.compile(r"\bansi-bold\b"))
    expect(out).to_contain_text("cleared")
    text = out.text_content() or ""
    assert "\x1b" not in text
    assert "[31m" not in text
    assert "window title" not in text
    out.hover()  # a mouseover handler from the output would fire here


def test_saved_script_create_edit_run_delete(session: Session) -> None:
    page = log_in(session)
    page.get_by_test_id("nav-scripts").click()
    page.get_by_test_id("script-new").click()
    page.get_by_test_id("script-name").fill("browser-test-hello")
    page.get_by_test_id("script-description").fill("says hello")
    page.get_by_test_id("script-content").fill("#!/bin/sh\necho hello-from-script\n")
    page.get_by_test_id("script-save").click()
    item = page.locator("[data-testid^=script-row-]", has_text="browser-test-hello")
    expect(item).to_be_visible()

    page.get_by_test_id("script-description").fill("says hello, edited")
    page.get_by_test_id("script-save").click()
    expect(item).to_contain_text("says hello, edited")

    page.get_by_test_id("script-run").click()
    expect(page.get_by_test_id("source-script")).to_be_checked()
    expect(page.get_by_test_id("script-preview")).to_contain_text("echo hello-from-script")
    page.get_by_test_id("select-all").click()
    page.get_by_test_id("run-button").click()
    expect(page).to_have_url(BATCH_URL)
    expect(output(page, "demo-2")).to_contain_text("hello-from-script")
    expect_batch_done(page)

    page.get_by_test_id("nav-scripts").click()
    page.locator("[data-testid^=script-row-]", has_text="browser-test-hello").click()
    page.get_by_test_id("script-delete").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.locator("[data-testid^=script-row-]", has_text="browser-test-hello")).to_have_count(
        0
    )


def test_history_lists_batches_and_opens_one(session: Session) -> None:
    page = log_in(session)
    batch_id = start_batch(page, "echo for-history", keyboard=True)
    expect_batch_done(page)
    page.get_by_test_id("nav-history").click()
    row = page.get_by_test_id(f"history-row-{batch_id}")
    expect(row).to_be_visible()
    expect(row).to_contain_text("echo for-history")
    expect(row).to_contain_text("3 succeeded")
    row.click()
    expect(page).to_have_url(re.compile(rf"#/batch/{re.escape(batch_id)}$"))
    expect(output(page, "demo-1")).to_contain_text("for-history")


def test_errors_are_shown_clearly(session: Session) -> None:
    page = log_in(session)
    # Client-side: nothing selected.
    page.get_by_test_id("command-input").fill("true")
    page.get_by_test_id("run-button").click()
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Select at least one VPS")
    page.get_by_test_id("error-dismiss").click()
    expect(banner).to_be_hidden()

    # Server-side 422: the saved script vanished after the page loaded it.
    script = api(
        session.server,
        "POST",
        "/api/scripts",
        {"name": "browser-test-gone", "description": "", "content": "true"},
    )
    assert isinstance(script, dict)
    page.reload()
    page.get_by_test_id("source-script").check()
    page.get_by_test_id("script-select").select_option(str(script["id"]))
    api(session.server, "DELETE", f"/api/scripts/{script['id']}")
    page.get_by_test_id("select-all").click()
    page.get_by_test_id("run-button").click()
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("The batch was not started")
    expect(banner.get_by_test_id("error-lines").locator("li")).not_to_have_count(0)
    expect(page).not_to_have_url(BATCH_URL)

    # Unknown batch.
    page.goto(f"{session.server.origin}/#/batch/999999999")
    expect(page.get_by_test_id("batch-missing")).to_be_visible()


def test_every_screen_only_talks_to_the_server(session: Session) -> None:
    page = log_in(session)
    start_batch(page, "echo offline-check")
    expect_batch_done(page)
    for nav, ready in [
        ("nav-history", "history-table"),
        ("nav-scripts", "script-form"),
        ("nav-vps", "vps-manage-table"),
        ("nav-run", "run-form"),
    ]:
        page.get_by_test_id(nav).click()
        expect(page.get_by_test_id(ready)).to_be_visible()
    assert session.requests, "requests were recorded"
    assert any("/ws/" in url for url in session.websockets), (
        "the live feed is a WebSocket to the server"
    )
    assert session.foreign_requests() == []


MODEL_CHECK = """
async () => {
  const { AnsiParser } = await import("/ui/ansi.js");
  const { TaskPanel } = await import("/ui/views/panel.js");
  const r = {};
  // An escape split across chunks, CR LF split across chunks, an OSC title: all handled.
  const p = new AnsiParser();
  const segs = [
    ...p.feed("a\\x1b[3"), ...p.feed("1mred\\x1b[0m\\r"), ...p.feed("\\nb\\x1b]0;t\\x07c"),
  ];
  r.ansi = segs.map((s) => [s.text, s.cls]);

  const task = {
    child_command_id: "c1", vps_id: 1, vps_name: "x", status: "EXECUTING",
    output_stream_summary: ["l1", "l2"], error_stream_summary: [], stdout_bytes: 6, stderr_bytes: 0,
  };
  const panel = new TaskPanel(task, {
    batchId: "b", index: 0, caps: { chars: 1000, lines: 5 }, expanded: true,
    onTerminate() {}, onToggle() {},
  });
  const text = () => panel.chunks.map((c) => c.segs.map((s) => s.text).join("")).join("");
  panel.applySnapshot(task, true);
  r.snapshot = text();
  r.duplicate = panel.appendOutput("stdout", 3, "l2\\n");
  r.overlap = panel.appendOutput("stdout", 3, "l2\\nl3\\n");
  r.appended = text();
  // Reconnect when nothing was missed: keep what is shown.
  panel.applySnapshot({ ...task, output_stream_summary: ["l2", "l3"], stdout_bytes: 9 }, false);
  r.kept = text();
  r.keptNote = panel.note;
  // Reconnect after missing output: rebuild from the summary, with a note.
  panel.applySnapshot({ ...task, output_stream_summary: ["l9", "l10"], stdout_bytes: 20 }, false);
  r.resynced = text();
  r.resyncNote = panel.note;
  // Retained output is capped (5 lines here).
  for (let i = 0; i < 10; i++) panel.appendOutput("stdout", 20 + 3 * i, `n${i}\\n`);
  r.trimmed = panel.trimmed;
  panel.visible = true;
  panel.render(Date.now(), false);
  r.dom = panel.els.output.textContent;
  r.domNote = panel.els.note.textContent;
  return r;
}
"""


def test_output_model_dedups_resyncs_and_trims(session: Session) -> None:
    page = session.page
    page.goto(session.server.origin + "/")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    r = page.evaluate(MODEL_CHECK)
    assert r["ansi"] == [["a", None], ["red", "ansi-fg-1"], ["\n", None], ["bc", None]]
    assert r["snapshot"] == "l1\nl2\n"
    assert r["duplicate"] is False
    assert r["overlap"] is True
    assert r["appended"] == "l1\nl2\nl3\n"
    assert r["kept"] == "l1\nl2\nl3\n"
    assert r["keptNote"] is None
    assert r["resynced"] == "l9\nl10\n"
    assert "Reconnected" in r["resyncNote"]
    assert r["trimmed"] is True
    assert r["dom"] == "n5\nn6\nn7\nn8\nn9\n"
    assert "trimmed" in r["domNote"]
