"""``fleet-server --log-format json --metrics …`` as a process: what an operator ships."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import read_until, stop

pytestmark = pytest.mark.slow

METRICS = re.compile(rb"Metrics at (http://\S+/metrics)")


async def test_json_logs_and_metrics_of_a_server_process(tmp_path: Path) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "fleet.server", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data"), "--metrics", "127.0.0.1:0",
         "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        with trio.fail_after(60):
            assert process.stdout is not None
            match, _ = await read_until(process.stdout, METRICS)
            async with httpx.AsyncClient(timeout=10) as http:
                response = await http.get(match[1].decode())
            assert response.status_code == 200
            assert "fleet_agents_online 0.0" in response.text
            assert 'fleet_build_info{version="' in response.text
    finally:
        with trio.CancelScope(shield=True):
            assert await stop(process) == 0
    assert process.stderr is not None
    with trio.fail_after(10):
        err = b""
        while chunk := await process.stderr.receive_some(65536):
            err += chunk
    lines = err.decode().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(e.keys() >= {"time", "level", "logger", "message"} for e in entries)
    messages = [(e["logger"], e["message"]) for e in entries]
    assert any(
        logger == "fleet.server.metrics" and m.startswith("metrics at ") for logger, m in messages
    )
    assert any(m.startswith("received SIGTERM") for _, m in messages)


@pytest.mark.parametrize("flag", ["--http", "--grpc", "--metrics"])
def test_a_taken_port_is_one_line(flag: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "fleet.server", "--http", "127.0.0.1:0", "--grpc",
             "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--log-level", "WARNING",
             flag, address],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("fleet-server: [Errno 98] ")
    assert done.stderr.endswith("Address already in use\n")
