"""The VPS list in a real browser while a real agent comes and goes, and registering a VPS.

``/ws/vps`` sends whole records in its snapshot but partial ``VPS_UPDATE`` events (an agent
connecting or dropping changes only its presence fields): the rows must keep name, tags, host and
OS through them, in the run view and in the machines view alike.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Locator, Page, expect

import fleet
from fleet.agent.host import describe_host

from .support import FleetServer, Session
from .test_ui import api, log_in

pytestmark = pytest.mark.browser

REPO = pathlib.Path(__file__).resolve().parents[2]
AGENTS_AT = re.compile(r"Agents connect to (\S+)")


def grpc_address(server: FleetServer) -> str:
    match = AGENTS_AT.search("".join(server.output))
    assert match is not None, "the server printed where agents connect"
    return match[1]


@contextmanager
def registered_vps(server: FleetServer, name: str, tags: list[str]) -> Iterator[dict[str, object]]:
    """A VPS registered through the API for this test, removed afterwards."""
    vps = api(server, "POST", "/api/vps", {"name": name, "tags": tags})
    assert isinstance(vps, dict)
    try:
        yield vps
    finally:
        api(server, "DELETE", f"/api/vps/{vps['id']}")


class Agent:
    """A real ``fleet-agent`` process for one VPS; ``kill`` is SIGKILL (no goodbye)."""

    def __init__(self, server: FleetServer, vps: dict[str, object], tmp: pathlib.Path) -> None:
        self.tmp = tmp
        secret = tmp / "secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{vps['agent_secret']}\n")
        self.argv = [
            sys.executable, "-m", "fleet.agent", "--server", grpc_address(server),
            "--vps-id", str(vps["id"]), "--secret-file", str(secret),
            "--state-dir", str(tmp / "agent-state"),
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.tmp / f"agent-{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)
        self.process = None


def expect_row(row: Locator, cells: dict[int, str], *, name: str, tags: list[str]) -> None:
    """The row shows the VPS's name and tags, and each cell index its text."""
    expect(row).to_contain_text(name)
    expect(row.locator(".tag")).to_have_text(tags)
    for index, text in cells.items():
        expect(row.locator("td").nth(index)).to_have_text(text)


def test_rows_keep_name_tags_host_and_os_while_an_agent_comes_and_goes(
    session: Session, tmp_path: pathlib.Path
) -> None:
    page = log_in(session)
    name, tags = f"kill-{time.monotonic_ns()}", ["kill-test", "eu"]
    with registered_vps(session.server, name, tags) as vps:
        agent = Agent(session.server, vps, tmp_path)
        try:
            # Run view (already open): the VPS is new to the page; its agent connects.
            ident = vps["id"]
            row = page.get_by_test_id(f"vps-row-{ident}")
            agent.start()
            expect(page.get_by_test_id(f"vps-online-{ident}")).to_have_text("Online")
            # What the agent (this machine, this code) reports. Not read back from the API: the
            # page has it from the feed at once, the store only after its next write-behind
            # flush (reading the API here raced that flush and failed under load).
            reported = describe_host()
            host, osname = reported.hostname, reported.os_name
            assert host, "the agent reports its host"
            # Run view cells: check, name, status, tags, host, OS, agent, last seen.
            expect_row(row, {4: host, 5: osname}, name=name, tags=tags)

            agent.kill()  # a VPS_UPDATE with only id, online and last_seen_at
            expect(page.get_by_test_id(f"vps-online-{ident}")).to_have_text("Offline")
            expect_row(row, {1: name, 4: host, 5: osname}, name=name, tags=tags)

            # Machines view: the agent connects, then drops, while the page is open.
            page.get_by_test_id("nav-vps").click()
            managed = page.get_by_test_id(f"vps-manage-row-{ident}")
            # Machines view cells: id, name, status, tags, host, OS, agent, last seen, remove.
            expect_row(managed, {1: name, 2: "Offline", 4: host, 5: osname}, name=name, tags=tags)
            agent.start()
            expect(managed.locator("td").nth(2)).to_have_text("Online")
            expect_row(managed, {1: name, 4: host, 5: osname}, name=name, tags=tags)
            agent.kill()
            expect(managed.locator("td").nth(2)).to_have_text("Offline")
            expect_row(managed, {1: name, 4: host, 5: osname}, name=name, tags=tags)
        finally:
            agent.kill()


def test_adding_a_vps_shows_the_servers_agent_command(session: Session) -> None:
    page: Page = log_in(session)
    page.get_by_test_id("nav-vps").click()
    name = f"added-{time.monotonic_ns()}"
    page.get_by_test_id("vps-add-name").fill(name)
    page.get_by_test_id("vps-add-tags").fill("web, eu")
    page.get_by_test_id("vps-add-submit").click()
    secret_box = page.get_by_test_id("vps-secret")
    expect(secret_box).to_be_visible()
    listed = api(session.server, "GET", "/api/vps")
    assert isinstance(listed, list)
    vps = next(v for v in listed if v["name"] == name)
    try:
        run_line = page.get_by_test_id("vps-agent-run-line")
        # The server's own line: where agents really connect, the secret read from a file.
        expect(run_line).to_have_text(
            f"fleet-agent --server {grpc_address(session.server)} --vps-id {vps['id']} "
            "--secret-file /etc/fleet-agent/secret"
        )
        # The package to install is "fleet-run" at the server's version (never "fleet").
        expect(page.get_by_test_id("vps-agent-install")).to_have_text(
            f"python3 -m pip install 'fleet-run=={fleet.__version__}'"
        )
        store_line = page.get_by_test_id("vps-agent-secret-line")
        expect(store_line).to_contain_text("sudo install -d -m 0700 /etc/fleet-agent && printf")
        expect(store_line).to_have_text(re.compile(r"/dev/stdin /etc/fleet-agent/secret$"))
        secret = store_line.inner_text().split("printf '%s\\n' ", 1)[1].split(" | ", 1)[0]
        assert secret.startswith("fleet_"), "the one-time secret is in the line that stores it"
        assert secret not in run_line.inner_text(), "the secret never goes on the agent's argv"
        expect(page.get_by_test_id(f"vps-manage-row-{vps['id']}")).to_contain_text(name)
    finally:
        api(session.server, "DELETE", f"/api/vps/{vps['id']}")
