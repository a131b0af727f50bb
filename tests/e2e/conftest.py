"""Start ``fleet-server`` and ``fleet-agent`` as real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

READY = re.compile(rb"Fleet is ready[^:]*: (http\S+)/\?token=(\S+)")
GRPC = re.compile(rb"Agents connect to (\S+)")


@dataclass
class ServerProcess:
    process: trio.Process
    url: str
    token: str
    grpc: str
    data_dir: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )


async def read_until(
    stream: trio.abc.ReceiveStream, pattern: re.Pattern[bytes]
) -> tuple[re.Match[bytes], bytes]:
    buffer = b""
    while (match := pattern.search(buffer)) is None:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"process ended before {pattern.pattern!r}; output: {buffer!r}")
        buffer += chunk
    return match, buffer


async def stop(process: trio.Process, *, timeout: float = 10) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


@pytest.fixture
async def fleet_server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    data = tmp_path / "data"
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "fleet.server",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
            "--reconnect-grace",
            "2",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        with trio.fail_after(60):
            assert process.stdout is not None
            match, buffer = await read_until(process.stdout, READY)
            grpc, _ = (
                await read_until(process.stdout, GRPC)
                if not GRPC.search(buffer)
                else (GRPC.search(buffer), b"")
            )
        assert grpc is not None
        yield ServerProcess(process, match[1].decode(), match[2].decode(), grpc[1].decode(), data)
    finally:
        with trio.CancelScope(shield=True):
            await stop(process)


async def start_agent(
    server: ServerProcess, vps: dict[str, object], tmp_path: Path
) -> trio.Process:
    return await agent_process(server.grpc, vps, tmp_path)


async def agent_process(
    servers: str, vps: dict[str, object], tmp_path: Path, env: dict[str, str] | None = None
) -> trio.Process:
    """``fleet-agent --server servers`` for ``vps``, its secret and state under ``tmp_path``."""
    secret = tmp_path / f"agent-{vps['id']}.secret"
    secret.write_text(str(vps["agent_secret"]))
    os.chmod(secret, 0o600)
    return await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "fleet.agent",
            "--server",
            servers,
            "--vps-id",
            str(vps["id"]),
            "--secret-file",
            str(secret),
            "--terminate-grace",
            "1",
            "--log-level",
            "WARNING",
            "--state-dir",
            str(tmp_path / f"agent-{vps['id']}.state"),
        ],
        env=env,
    )
