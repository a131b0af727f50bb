"""Safe rollouts in the web UI, in real headless Chromium against ``--demo 3``: the
rollout fields, a script's parameters form, queued / waiting / skipped counts and the stop
reason, "Re-run not succeeded" (secrets asked again), the re-run link in history.

The screenshots of the run form and of a batch with a rollout in progress go to
``test-artifacts/``; with ``UPDATE_DOCS_SCREENSHOTS=1`` they replace the ones in ``docs/``.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from .support import Session
from .test_ui import BATCH_URL, VPS_NAMES, api, log_in, output

pytestmark = pytest.mark.browser

REPO = pathlib.Path(__file__).resolve().parents[2]
SHOTS = REPO / ("docs" if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1" else "test-artifacts")
#: Waits (at most 30 s) for a file named ``gate`` in its working directory.
GATED = (
    'echo "upgrading $(hostname)"; '
    "for i in $(seq 300); do [ -e gate ] && break; sleep 0.1; done; echo done"
)


def fill_and_run(page: Page, command: str, **fields: str) -> str:
    page.get_by_test_id("nav-run").click()
    page.get_by_test_id("select-all").click()
    expect(page.get_by_test_id("selection-count")).to_contain_text("3 selected")
    page.get_by_test_id("source-command").check()
    page.get_by_test_id("command-input").fill(command)
    for testid, value in fields.items():
        page.get_by_test_id(testid).fill(value)
    page.get_by_test_id("run-button").click()
    expect(page).to_have_url(BATCH_URL)
    match = BATCH_URL.search(page.url)
    assert match is not None
    return match.group(1)


def test_rollout_fields_queue_and_screenshots(session: Session, tmp_path: pathlib.Path) -> None:
    page = log_in(session)
    gate = tmp_path / "gate"
    page.get_by_test_id("select-all").click()
    page.get_by_test_id("command-input").fill(GATED)
    page.get_by_test_id("cwd-input").fill(str(tmp_path))
    page.get_by_test_id("alias-input").fill("kernel upgrade, one machine at a time")
    page.get_by_test_id("max-concurrency-input").fill("1")
    page.get_by_test_id("max-errors-input").fill("0")
    page.get_by_test_id("wait-for-agent-input").fill("60")
    rollout = page.get_by_test_id("rollout-fields")
    expect(rollout).to_contain_text("At most this many VPSes run at once")
    expect(rollout).to_contain_text("0 stops at the first error")
    expect(rollout).to_contain_text("offline waits this long")
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "run-form.png"), full_page=True, animations="disabled")
    page.get_by_test_id("run-button").click()
    expect(page).to_have_url(BATCH_URL)
    summary = page.get_by_test_id("rollout-summary")
    expect(summary).to_contain_text("at most 1 at once")
    expect(summary).to_contain_text("stop after 0 errors")
    expect(summary).to_contain_text("2 queued")
    expect(summary).to_have_attribute("data-queued", "2")
    expect(output(page, "demo-1")).to_contain_text("upgrading")
    expect(page.get_by_test_id("panel-status-demo-2")).to_have_attribute("data-status", "PENDING")
    expect(page.get_by_test_id("panel-status-demo-2")).to_have_text("Queued")
    page.screenshot(path=str(SHOTS / "batch-rollout.png"), full_page=True, animations="disabled")
    gate.touch()
    for name in VPS_NAMES:
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "SUCCESS"
        )
    expect(page.get_by_test_id("batch-status")).to_have_attribute(
        "data-status", "COMPLETED_SUCCESSFULLY"
    )
    expect(page.get_by_test_id("rerun-not-succeeded")).to_be_hidden()
    expect(page.get_by_test_id("stop-reason")).to_be_hidden()
    # "Run again" brings the rollout options back to the form.
    page.get_by_test_id("run-again").click()
    expect(page.get_by_test_id("max-concurrency-input")).to_have_value("1")
    expect(page.get_by_test_id("max-errors-input")).to_have_value("0")
    expect(page.get_by_test_id("wait-for-agent-input")).to_have_value("60")


def test_bad_rollout_values_are_explained_before_sending(session: Session) -> None:
    page = log_in(session)
    page.get_by_test_id("select-all").click()
    page.get_by_test_id("command-input").fill("true")
    page.get_by_test_id("max-concurrency-input").fill("0")
    page.get_by_test_id("max-errors-input").fill("150%")
    page.get_by_test_id("run-button").click()
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_contain_text("Max concurrency must be")
    expect(banner).to_contain_text("Max errors must be")
    assert "#/run" in page.url
    page.get_by_test_id("max-concurrency-input").fill("")
    page.get_by_test_id("max-errors-input").fill("")


def test_threshold_skips_then_rerun_not_succeeded(session: Session) -> None:
    page = log_in(session)
    first = fill_and_run(page, "exit 3", **{"max-concurrency-input": "1", "max-errors-input": "0"})
    expect(page.get_by_test_id("batch-status")).to_have_attribute(
        "data-status", "COMPLETED_WITH_ERRORS"
    )
    expect(page.get_by_test_id("stop-reason")).to_contain_text(
        "Dispatching stopped: error threshold reached"
    )
    expect(page.get_by_test_id("count-skipped")).to_have_text("2")
    expect(page.get_by_test_id("rollout-summary")).to_contain_text("2 skipped")
    skipped = [n for n in VPS_NAMES if n != "demo-1"]
    for name in skipped:
        expect(page.get_by_test_id(f"panel-status-{name}")).to_have_attribute(
            "data-status", "SKIPPED"
        )
    page.get_by_test_id("rerun-not-succeeded").click()
    expect(page).not_to_have_url(re.compile(re.escape(first) + "$"))
    expect(page.get_by_test_id("rerun-of-link")).to_have_text(first)
    expect(page.get_by_test_id("batch-status")).to_have_attribute(
        "data-status", "COMPLETED_WITH_ERRORS"
    )
    match = BATCH_URL.search(page.url)
    assert match is not None
    second = match.group(1)
    page.get_by_test_id("nav-history").click()
    link = page.get_by_test_id(f"history-rerun-of-{second}")
    expect(link).to_contain_text("re-run of")
    link.click()
    expect(page).to_have_url(re.compile(re.escape(first) + "$"))


def test_parameters_form_and_secrets_asked_again(session: Session) -> None:
    script: Any = api(
        session.server,
        "POST",
        "/api/scripts",
        {
            "name": "greet-with-params",
            "content": 'echo "hello $FLEET_PARAM_WHO"; test -n "$FLEET_PARAM_TOKEN"; exit 1',
            "parameters": [
                {"name": "WHO", "required": True, "description": "whom to greet"},
                {"name": "TOKEN", "secret": True, "required": True},
            ],
        },
    )
    page = log_in(session)
    page.get_by_test_id("select-all").click()
    page.get_by_test_id("source-script").check()
    page.get_by_test_id("script-select").select_option(str(script["id"]))
    form = page.get_by_test_id("params-form")
    expect(form).to_be_visible()
    expect(form).to_contain_text("whom to greet")
    expect(page.get_by_test_id("param-TOKEN")).to_have_attribute("type", "password")
    page.get_by_test_id("run-button").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("Parameter WHO is required")
    page.get_by_test_id("param-WHO").fill("<b>world</b>")
    page.get_by_test_id("param-TOKEN").fill("hunter2")
    page.get_by_test_id("run-button").click()
    expect(page).to_have_url(BATCH_URL)
    expect(output(page, "demo-1")).to_contain_text("hello <b>world</b>")
    expect(page.get_by_test_id("batch-status")).to_have_attribute(
        "data-status", "COMPLETED_WITH_ERRORS"
    )
    assert "hunter2" not in page.content()
    page.get_by_test_id("rerun-not-succeeded").click()
    secrets = page.get_by_test_id("rerun-secrets")
    expect(secrets).to_contain_text("give them again")
    page.get_by_test_id("rerun-secret-TOKEN").fill("again")
    page.get_by_test_id("rerun-secrets-submit").click()
    expect(page.get_by_test_id("rerun-of-link")).to_be_visible()
    expect(output(page, "demo-2")).to_contain_text("hello <b>world</b>")
    api(session.server, "DELETE", f"/api/scripts/{script['id']}")


def test_a_target_waiting_for_its_agent_shows_the_time_left(session: Session) -> None:
    ghost: Any = api(session.server, "POST", "/api/vps", {"name": "ghost-rollout"})
    try:
        page = log_in(session)
        page.locator("tr.vps-row", has_text="ghost-rollout").click()
        page.locator("tr.vps-row", has_text="demo-1").click()
        expect(page.get_by_test_id("selection-count")).to_contain_text("2 selected")
        page.get_by_test_id("command-input").fill("echo here")
        page.get_by_test_id("wait-for-agent-input").fill("600")
        page.get_by_test_id("run-button").click()
        expect(page).to_have_url(BATCH_URL)
        waiting = page.get_by_test_id("panel-waiting-ghost-rollout")
        expect(waiting).to_contain_text("waiting for its agent")
        expect(page.get_by_test_id("panel-status-ghost-rollout")).to_have_text("Waiting")
        expect(waiting).to_contain_text(re.compile(r"\d+ min \d+ s left"))
        expect(page.get_by_test_id("rollout-summary")).to_contain_text("1 waiting for their agent")
        page.get_by_test_id("terminate-all").click()
        page.get_by_test_id("confirm-ok").click()
        expect(page.get_by_test_id("panel-status-ghost-rollout")).to_have_attribute(
            "data-status", "SKIPPED"
        )
        expect(waiting).to_be_hidden()
    finally:
        api(session.server, "DELETE", f"/api/vps/{ghost['id']}")


def test_declare_parameters_in_the_script_editor(session: Session) -> None:
    page = log_in(session)
    page.get_by_test_id("nav-scripts").click()
    page.get_by_test_id("script-new").click()
    page.get_by_test_id("script-name").fill("declared-in-ui")
    page.get_by_test_id("script-content").fill('echo "v=$FLEET_PARAM_VERSION"\n')
    page.get_by_test_id("script-parameters").fill('[{"name": "VERSION", "pattern": "("}]')
    page.get_by_test_id("script-save").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("not a valid regular expression")
    page.get_by_test_id("script-parameters").fill(
        '[{"name": "VERSION", "required": true, "pattern": "[0-9.]+", "description": "semver"}]'
    )
    page.get_by_test_id("script-save").click()
    item = page.locator("[data-testid^=script-row-]", has_text="declared-in-ui")
    expect(item).to_be_visible()
    page.get_by_test_id("script-run").click()
    expect(page.get_by_test_id("params-form")).to_contain_text("semver")
    page.get_by_test_id("select-all").click()
    page.get_by_test_id("param-VERSION").fill("not a version")
    page.get_by_test_id("run-button").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("does not match the pattern")
    page.get_by_test_id("param-VERSION").fill("1.2.3")
    page.get_by_test_id("run-button").click()
    expect(page).to_have_url(BATCH_URL)
    expect(output(page, "demo-3")).to_contain_text("v=1.2.3")
