"""``fleet vps …`` and ``fleet scripts …``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet import __version__ as fleet_version
from fleet.cli.console import secret_file

from .conftest import FleetRunner, Server


@pytest.mark.parametrize(
    ("command", "path"),
    [
        ("fleet-agent --server h:1 --vps-id 3 --secret-file /srv/a b/s --tls", "/srv/a"),
        ("fleet-agent --server h:1 --vps-id 3 --secret-file '/srv/a b/s' --tls", "/srv/a b/s"),
        ("fleet-agent --server h:1 --secret-file=/x/secret", "/x/secret"),
        ("fleet-agent --server h:1 --secret s3cret", "/etc/fleet-agent/secret"),
        ("fleet-agent --secret-file", "/etc/fleet-agent/secret"),
        ("fleet-agent 'unbalanced", "/etc/fleet-agent/secret"),
    ],
)
def test_the_install_line_writes_where_the_agent_reads(command: str, path: str) -> None:
    assert secret_file(command) == path


def test_vps_add_list_rotate_rm(fleet: FleetRunner, server: Server) -> None:
    added = fleet("vps", "add", "cli-web-1", "--tag", "web", "--tag", "eu,prod")
    assert added.code == 0, added.err
    vps = next(v for v in server.api("GET", "/api/vps") if v["name"] == "cli-web-1")
    assert vps["tags"] == ["web", "eu", "prod"]
    lines = added.out.splitlines()
    assert lines[0] == f"Added VPS {vps['id']} 'cli-web-1' (tags: web, eu, prod)."
    secret = lines[1].rsplit(" ", 1)[1]
    assert len(secret) > 20
    assert lines[3] == f"  python3 -m pip install 'fleet-run=={fleet_version}'"
    assert secret in lines[4]  # stored in a root-only file…
    written = lines[4].rsplit(" ", 1)[1]
    assert written == "/etc/fleet-agent/secret"  # the README's path
    assert "sudo install -d -m 0700 /etc/fleet-agent " in lines[4]
    assert "fleet-agent --server " in lines[5]
    assert f"--vps-id {vps['id']}" in lines[5]
    assert f"--secret-file {written}" in lines[5]  # …which the agent reads

    listed = fleet("vps", "list")
    assert listed.code == 0
    header, *rows = listed.out.splitlines()
    assert header.split() == ["ID", "NAME", "TAGS", "ONLINE", "HOSTNAME", "AGENT", "LAST", "SEEN"]
    row = next(r for r in rows if "cli-web-1" in r).split()
    assert row[:4] == [str(vps["id"]), "cli-web-1", "web,eu,prod", "no"]
    assert any(r.split()[1:4] == ["demo-1", "demo", "yes"] for r in rows)
    as_json = json.loads(fleet("vps", "list", "--json").out)
    assert {v["name"] for v in as_json} >= {"demo-1", "demo-2", "demo-3", "cli-web-1"}

    rotated = fleet("vps", "rotate-secret", "cli-web-1")
    assert rotated.code == 0
    new_secret = rotated.out.splitlines()[1].rsplit(" ", 1)[1]
    assert new_secret != secret
    assert new_secret in rotated.out

    removed = fleet("vps", "rm", str(vps["id"]))
    assert (removed.code, removed.out) == (0, f"Removed VPS {vps['id']} 'cli-web-1'.\n")
    assert "cli-web-1" not in fleet("vps", "list").out
    again = fleet("vps", "rm", "cli-web-1")
    assert again.code == 2
    assert again.err == "fleet: no VPS with id or name 'cli-web-1'\n"


def test_vps_add_reports_the_server_s_reason(fleet: FleetRunner) -> None:
    result = fleet("vps", "add", "demo-1")
    assert result.code == 2
    assert result.err_lines == ["fleet: invalid request: name: a VPS named demo-1 already exists"]


def test_scripts_add_list_show_edit_rm(fleet: FleetRunner, tmp_path: Path) -> None:
    source = tmp_path / "deploy.sh"
    source.write_text('#!/bin/sh\necho deploying "$1"\n')
    added = fleet("scripts", "add", "cli-deploy", "--file", str(source), "--description", "ship")
    assert added.code == 0, added.err
    assert added.out.startswith("Saved script ")

    listed = fleet("scripts", "list")
    row = next(r for r in listed.out.splitlines() if "cli-deploy" in r).split()
    assert row[1] == "cli-deploy"
    assert row[-1] == "ship"

    shown = fleet("scripts", "show", "cli-deploy")
    assert shown.out == source.read_text()  # the content alone, exactly

    edited = fleet("scripts", "edit", "cli-deploy", "--content", "echo v2", "--name", "cli-ship")
    assert edited.code == 0, edited.err
    details = json.loads(fleet("scripts", "show", "cli-ship", "--json").out)
    assert (details["name"], details["description"], details["content"]) == (
        "cli-ship",
        "ship",
        "echo v2",
    )

    assert fleet("scripts", "rm", "cli-ship").code == 0
    assert "cli-ship" not in fleet("scripts", "list").out
    assert fleet("scripts", "show", "cli-ship").code == 2


def test_scripts_add_needs_content(fleet: FleetRunner) -> None:
    assert fleet("scripts", "add", "x").code == 2  # argparse: --file or --content
    missing = fleet("scripts", "add", "x", "--file", "/no/such/file")
    assert missing.code == 2
    assert missing.err.startswith("fleet: cannot read /no/such/file")
