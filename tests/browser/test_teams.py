"""Teams in the web UI, in real headless Chromium: each role logs in with the form and sees its
name and role in the header, and only the controls it may use; an admin manages users and
tokens and reads the audit log, where a batch run from the UI appears with its operator."""

from __future__ import annotations

import json
import pathlib
import re

import pytest
from playwright.sync_api import Page, expect

from .support import FleetServer, Session
from .test_ui import BATCH_URL, api, expect_batch_done

pytestmark = pytest.mark.browser

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def users(fleet_server: FleetServer) -> dict[str, dict[str, object]]:
    """ui-viewer, ui-operator (tags: none) and ui-admin, made through the REST API."""
    made = {}
    existing = {u["username"]: u for u in api(fleet_server, "GET", "/api/users")}  # type: ignore[union-attr]
    for role in ("viewer", "operator", "admin"):
        name = f"ui-{role}"
        if name in existing:
            made[role] = existing[name]
            continue
        body = {"username": name, "password": PASSWORD, "role": role}
        made[role] = api(fleet_server, "POST", "/api/users", body)  # type: ignore[assignment]
    return made


def log_in_as(s: Session, role: str) -> Page:
    page = s.page
    page.goto(s.server.origin + "/")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.get_by_test_id("login-username").fill(f"ui-{role}")
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("whoami-name")).to_have_text(f"ui-{role}")
    expect(page.get_by_test_id("whoami-role")).to_have_text(role)
    return page


def test_a_wrong_password_is_refused_with_a_message(session: Session, users: object) -> None:
    page = session.page
    page.goto(session.server.origin + "/")
    page.get_by_test_id("login-username").fill("ui-viewer")
    page.get_by_test_id("login-password").fill("not the password at all")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("Wrong username or password")
    expect(page.get_by_test_id("whoami-name")).to_be_hidden()


def test_viewer_reads_but_sees_no_control_to_act(session: Session, users: object) -> None:
    page = log_in_as(session, "viewer")
    expect(page).to_have_url(re.compile(r"#/history$"))
    for hidden in ("nav-run", "nav-users", "nav-audit"):
        expect(page.get_by_test_id(hidden)).to_be_hidden()
    expect(page.get_by_test_id("nav-tokens")).to_be_visible()
    page.get_by_test_id("nav-scripts").click()
    expect(page.get_by_test_id("scripts-list")).to_be_visible()
    expect(page.get_by_test_id("script-new")).to_be_hidden()
    page.get_by_test_id("nav-vps").click()
    expect(page.get_by_test_id("vps-manage-table")).to_be_visible()
    expect(page.get_by_test_id("vps-add-form")).to_be_hidden()
    page.goto(session.server.origin + "/#/run")
    expect(page.get_by_test_id("command-input")).to_be_visible()
    expect(page.get_by_test_id("run-button")).to_be_hidden()
    # The server refuses what the page hides, whatever the page does.
    status = page.evaluate(
        """async () => (await fetch('/api/batch_commands', {method: 'POST',
             headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({command_content: 'true', target_vps_ids: [1]})})).status"""
    )
    assert status == 403


def test_operator_runs_a_batch_that_the_audit_log_records(
    session: Session, users: object, artifacts: pathlib.Path
) -> None:
    page = log_in_as(session, "operator")
    expect(page.get_by_test_id("nav-users")).to_be_hidden()
    expect(page.get_by_test_id("nav-run")).to_be_visible()
    page.get_by_test_id("nav-run").click()
    page.get_by_test_id("select-all").click()
    page.get_by_test_id("command-input").fill("echo audited")
    page.get_by_test_id("run-button").click()
    expect(page).to_have_url(BATCH_URL)
    match = BATCH_URL.search(page.url)
    assert match is not None
    batch_id = match.group(1)
    expect_batch_done(page)
    expect(page.get_by_test_id("terminate-all")).to_be_visible()
    expect(page.get_by_test_id("batch-meta")).to_contain_text("ui-operator")
    page.get_by_test_id("nav-vps").click()
    expect(page.get_by_test_id("vps-add-form")).to_be_hidden()
    query = "/api/audit?action=batch.create&actor=ui-operator"
    entries = api(session.server, "GET", query)["items"]  # type: ignore[index]
    entry = next(e for e in entries if e["target_id"] == batch_id)
    assert entry["details"]["command"] == "echo audited"
    assert entry["source_ip"] == "127.0.0.1"
    (artifacts / "audit-batch-create.json").write_text(json.dumps(entry, indent=2))


def test_admin_manages_users_tokens_and_reads_the_audit_log(
    session: Session, users: object
) -> None:
    page = log_in_as(session, "admin")
    page.get_by_test_id("nav-users").click()
    expect(page.get_by_test_id("user-row-ui-viewer")).to_be_visible()
    page.get_by_test_id("user-username").fill("ui-new")
    page.get_by_test_id("user-password").fill("short")
    page.get_by_test_id("user-submit").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("12 characters")
    page.get_by_test_id("user-password").fill(PASSWORD)
    page.get_by_test_id("user-role").select_option("operator")
    page.get_by_test_id("user-tags").fill("web")
    page.get_by_test_id("user-submit").click()
    expect(page.get_by_test_id("user-role-ui-new")).to_have_text("operator")
    page.get_by_test_id("user-delete-ui-new").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("user-row-ui-new")).to_have_count(0)

    page.get_by_test_id("nav-tokens").click()
    page.get_by_test_id("token-name").fill("ci")
    page.get_by_test_id("token-submit").click()
    secret = page.get_by_test_id("token-secret")
    expect(secret).to_contain_text("fleet_")
    row = page.locator("[data-testid^=token-row-]", has_text="ci")
    expect(row).to_have_count(1)
    row.get_by_role("button", name="Revoke ci").click()
    page.get_by_test_id("confirm-ok").click()
    expect(row).to_have_count(0)

    page.get_by_test_id("nav-audit").click()
    page.get_by_test_id("audit-action").select_option("user.delete")
    page.get_by_test_id("audit-apply").click()
    rows = page.locator("[data-testid^=audit-row-]")
    expect(rows.first).to_contain_text("ui-admin")
    expect(rows.first).to_contain_text("user.delete")
    expect(page.locator("[data-testid^=audit-row-][data-action=login]")).to_have_count(0)
    page.get_by_test_id("audit-action").select_option("")
    page.get_by_test_id("audit-actor").fill("ui-admin")
    page.get_by_test_id("audit-apply").click()
    expect(page.locator("[data-testid^=audit-row-][data-action=login]").first).to_be_visible()
    expect(page.get_by_test_id("audit-table")).not_to_contain_text(PASSWORD)
