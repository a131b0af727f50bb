"""``fleet login`` / ``logout``, ``fleet users …``, ``fleet tokens …`` and ``fleet audit``."""

from __future__ import annotations

import io
import json
import stat
import sys
from pathlib import Path

import pytest

from .conftest import FleetRunner, Server

PASSWORD = "a long enough password"


def test_login_stores_a_token_the_next_commands_use(
    fleet: FleetRunner, server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    made = fleet("users", "add", "cli-op", "--role", "operator", "--tag", "web", "--password-stdin")
    assert made.code == 0, made.err
    assert made.out.strip() == "Created cli-op (operator)."
    # Weak passwords and unknown roles: a clear message, exit 2.
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    weak = fleet("users", "add", "cli-weak", "--password-stdin")
    assert weak.code == 2
    assert "12 characters" in weak.err
    assert fleet("users", "add", "cli-x", "--role", "root").code == 2

    monkeypatch.delenv("FLEET_TOKEN")
    monkeypatch.setattr(sys, "stdin", io.StringIO("not the password\n"))
    wrong = fleet("login", "--username", "cli-op", "--password-stdin")
    assert wrong.code == 3
    assert "wrong username or password" in wrong.err
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    login = fleet("login", "--username", "cli-op", "--password-stdin")
    assert login.code == 0, login.err
    assert f"Logged in to {server.url} as cli-op (operator, tags web)." in login.out
    path = tmp_path / "config" / "fleet" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())[server.url]
    assert stored["username"] == "cli-op"
    assert PASSWORD not in path.read_text()

    # The stored token acts as cli-op: its tokens, not an admin's pages.
    mine = fleet("tokens", "list")
    assert mine.code == 0, mine.err
    assert "fleet login on" in mine.out
    assert "admin" not in mine.out
    refused = fleet("users", "list")
    assert refused.code == 3
    assert "needs the admin role" in refused.err
    assert fleet("vps", "list").code == 0  # the demo VPSes have no tag: none is listed

    out = fleet("logout")
    assert out.code == 0, out.err
    assert server.url not in json.loads(path.read_text())
    assert fleet("tokens", "list").code == 2  # no token any more: run `fleet login`

    monkeypatch.setenv("FLEET_TOKEN", server.token)
    audit = fleet("audit", "--actor", "cli-op", "--json")
    assert audit.code == 0, audit.err
    actions = [e["action"] for e in json.loads(audit.out)["items"]]
    assert actions[:4] == ["token.delete", "logout", "token.create", "login"]
    assert "login_failed" in actions
    assert PASSWORD not in audit.out
    assert stored["token"] not in audit.out
    table = fleet("audit", "--action", "user.create")
    assert table.code == 0
    assert "cli-op" in table.out

    assert fleet("users", "set", "cli-op", "--role", "viewer", "--all-vpses").code == 0
    assert "cli-op" in fleet("users", "list").out
    assert fleet("users", "rm", "cli-op").code == 0
    assert fleet("users", "rm", "cli-op").code == 2  # no such user


def test_tokens_create_and_revoke(fleet: FleetRunner, server: Server) -> None:
    made = fleet("tokens", "create", "ci", "--expires", "2099-01-01T00:00:00Z", "--json")
    assert made.code == 0, made.err
    token = json.loads(made.out)
    assert token["expires_at"] == "2099-01-01T00:00:00Z"
    listed = fleet("tokens", "list")
    assert "2099-01-01" in listed.out
    assert token["token"] not in listed.out
    assert fleet("tokens", "revoke", str(token["id"])).code == 0
    assert fleet("tokens", "revoke", str(token["id"])).code == 2  # 404: already gone
    past = fleet("tokens", "create", "old", "--expires", "2000-01-01")
    assert past.code == 2
    assert "future" in past.err
