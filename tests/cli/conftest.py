"""A real ``fleet-server --demo 3`` (server + 3 real agents) for the CLI tests, and helpers."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleet.cli.main import main

READY = re.compile(r"^Fleet is ready with 3 demo agents: (http://[^/\s]+)/\?token=(\S+)$")
START_TIMEOUT_S = 60
MAIN_TIMEOUT_S = 60


def bounded_main(argv: list[str], timeout: float = MAIN_TIMEOUT_S) -> int:
    """``fleet.cli.main(argv)`` in a thread, failing the test if it runs longer than ``timeout``.

    (Off the main thread the CLI does not catch Ctrl-C; the signal tests use a subprocess.)
    """
    codes: list[int] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            codes.append(main(argv))
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name="fleet-cli", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"`fleet {' '.join(argv)}` did not finish within {timeout} s")
    if errors:
        raise errors[0]
    return codes[0]


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    data_dir: Path
    log: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        return env | {"FLEET_URL": self.url, "FLEET_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A REST call made without the CLI (setup and cleanup)."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            data = answer.read()
        return json.loads(data) if data else None


class Lines:
    """A pipe read line by line in a thread, so a test can wait for a line with a bound."""

    def __init__(self, pipe: Any) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        with pipe:
            for line in pipe:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout} s; saw {self.seen!r}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the pipe closed; saw {self.seen!r}")
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self, timeout: float = 10) -> list[str]:
        """Every remaining line (waits for the pipe to close)."""
        self._thread.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self.seen.append(line)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m fleet.server --demo 3`` on free ports, up until the session ends."""
    data_dir = tmp_path_factory.mktemp("fleet-cli-server")
    log = data_dir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    argv = [sys.executable, "-m", "fleet.server", "--demo", "3", "--http", "127.0.0.1:0"]
    argv += ["--grpc", "127.0.0.1:0", "--data-dir", str(data_dir)]
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env, bufsize=1
        )
    try:
        lines = Lines(proc.stdout)
        try:
            ready = lines.wait_for(lambda line: READY.match(line) is not None, START_TIMEOUT_S)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nserver log:\n{log.read_text()[-3000:]}") from None
        match = READY.match(ready)
        assert match is not None
        yield Server(match[1], match[2], data_dir, log)
    finally:
        stop(proc)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


FleetRunner = Callable[..., Result]


@pytest.fixture
def fleet(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> FleetRunner:
    """``fleet(*argv)`` runs the CLI in-process with FLEET_URL/FLEET_TOKEN set."""
    monkeypatch.setenv("FLEET_URL", server.url)
    monkeypatch.setenv("FLEET_TOKEN", server.token)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = bounded_main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def ghost(server: Server) -> Iterator[dict[str, Any]]:
    """A registered VPS with no agent (its tasks are AGENT_UNREACHABLE)."""
    vps = server.api("POST", "/api/vps", {"name": f"ghost-{time.monotonic_ns()}", "tags": []})
    yield vps
    server.api("DELETE", f"/api/vps/{vps['id']}")


def spawn(server: Server, *argv: str) -> subprocess.Popen[str]:
    """``python -m fleet ARGV`` as a child process (for signals and concurrent commands)."""
    return subprocess.Popen(
        [sys.executable, "-m", "fleet", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server.env(),
    )
