"""Fixtures for the browser tests: a real ``fleet-server --demo 3`` and Debian's Chromium.

The server runs as a subprocess (``python -m fleet.server --demo 3`` on ports chosen by the OS)
and is shared by the whole session; every test gets a fresh browser context, so cookies and
session storage never leak between tests. Chromium is the system package (``/usr/bin/chromium``,
installed by ``.ci/run``): no browser is ever downloaded. Playwright's *sync* API is used: these
are plain (non-trio) tests, which pytest-trio's ``trio_mode`` leaves alone.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from .support import FleetServer, Session

REPO = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
READY = re.compile(r"Fleet is ready[^:]*: (https?://\S+)")
STARTUP_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 15
UI_TIMEOUT_MS = 15_000  # every Playwright wait is bounded by this (≤ 20 s)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"
        )
    pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    return path


@pytest.fixture(scope="session")
def fleet_server(
    chromium_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetServer]:
    """Start ``python -m fleet.server --demo 3`` and wait (bounded) for its ready line."""
    if not (REPO / "fleet" / "server" / "__main__.py").exists():
        pytest.skip("fleet/server/__main__.py does not exist yet: no server to test the UI against")
    data_dir = tmp_path_factory.mktemp("fleet-data")
    # The developer's FLEET_* settings must not reach the server (the autouse env fixture in
    # tests/conftest.py is function-scoped and runs after this session fixture).
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [
        sys.executable,
        "-m",
        "fleet.server",
        "--demo",
        "3",
        "--http",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
    ]
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def pump() -> None:
        # Keep draining the pipe for the whole session so the server never blocks on a full pipe.
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, name="fleet-server-output", daemon=True)
    reader.start()
    try:
        login_url = _wait_ready(proc, lines, output)
        parts = urllib.parse.urlsplit(login_url)
        token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
        yield FleetServer(
            login_url=login_url,
            origin=f"{parts.scheme}://{parts.netloc}",
            token=token,
            data_dir=data_dir,
            output=output,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        reader.join(timeout=SHUTDOWN_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_ready(
    proc: subprocess.Popen[bytes], lines: queue.Queue[str | None], output: list[str]
) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(
                f"fleet-server did not print 'Fleet is ready: URL' within {STARTUP_TIMEOUT_S} s;"
                f" its output:\n{''.join(output[-60:])}"
            )
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
            pytest.fail(
                f"fleet-server exited ({code}) before it was ready; its output:\n"
                + "".join(output[-60:])
            )
        match = READY.search(line)
        if match:
            return match.group(1)


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=chromium_path, args=CHROMIUM_ARGS, timeout=20_000
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def session(browser: Any, fleet_server: FleetServer) -> Iterator[Session]:
    """A fresh browser context and page.

    Fails the test on any JavaScript dialog, uncaught page error or request to another host.
    """
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    s = Session(page=page, server=fleet_server)
    page.on("request", lambda request: s.requests.append(request.url))
    page.on("websocket", lambda ws: s.websockets.append(ws.url))
    page.on("pageerror", lambda error: s.page_errors.append(str(error)))

    def on_dialog(dialog: Any) -> None:
        # Our UI never uses alert/confirm/prompt: any dialog means output ran as code.
        s.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield s
        assert s.dialogs == [], f"a JavaScript dialog fired: {s.dialogs}"
        assert s.page_errors == [], f"uncaught errors in the page: {s.page_errors}"
        assert s.foreign_requests() == [], f"requests to other hosts: {s.foreign_requests()}"
    finally:
        context.close()


@pytest.fixture
def artifacts() -> pathlib.Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
