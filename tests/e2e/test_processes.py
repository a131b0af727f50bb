"""End to end: ``fleet-server`` and ``fleet-agent`` as separate processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from .conftest import ServerProcess, start_agent, stop

pytestmark = pytest.mark.slow


async def _wait_online(client: httpx.AsyncClient, vps_id: int) -> None:
    """The fleet-wide feed tells when the agent is online (no polling)."""
    url = str(client.base_url).replace("http://", "ws://") + "/ws/vps"
    headers = [("Authorization", client.headers["Authorization"])]

    async with open_websocket_url(url, extra_headers=headers) as ws:
        message = json.loads(await ws.get_message())
        online = {v["id"]: v["online"] for v in message["vps"]}
        while not online.get(vps_id):
            event = json.loads(await ws.get_message())
            online[event["vps"]["id"]] = event["vps"]["online"]


FINAL = {"COMPLETED_SUCCESSFULLY", "COMPLETED_WITH_ERRORS", "TERMINATED", "FAILED_TO_START"}


async def _wait_final(
    client: httpx.AsyncClient, batch_id: str, until: Any = lambda b: b["overall_status"] in FINAL
) -> dict[str, Any]:
    """Follow the batch's live feed until ``until(GET body)`` holds; return the GET body."""
    url = str(client.base_url).replace("http://", "ws://") + f"/ws/batch_commands/{batch_id}"
    headers = [("Authorization", client.headers["Authorization"])]
    async with open_websocket_url(url, extra_headers=headers) as ws:
        json.loads(await ws.get_message())  # the snapshot: from here on, nothing is missed
        while not until(body := (await client.get(f"/api/batch_commands/{batch_id}")).json()):
            await ws.get_message()
    return dict(body)


async def test_server_and_agents_as_processes(fleet_server: ServerProcess, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with fleet_server.client() as client:
            agents = []
            ids = []
            for name in ("p1", "p2"):
                vps = (await client.post("/api/vps", json={"name": name})).json()
                agents.append(await start_agent(fleet_server, vps, tmp_path))
                await _wait_online(client, vps["id"])
                ids.append(vps["id"])
            r = await client.post(
                "/api/batch_commands",
                json={"command_content": "printf 'a\\0b'; uname -s", "target_vps_ids": ids},
            )
            batch = await _wait_final(client, r.json()["batch_command_id"])
            assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
            child = batch["tasks"][0]["child_command_id"]
            log = await client.get(
                f"/api/batch_commands/{batch['batch_command_id']}/tasks/{child}/output"
            )
            assert log.content.startswith(b"a\0b")
            # SIGTERM: agents and server exit 0 within their grace.
            for agent in agents:
                assert await stop(agent, timeout=8) == 0
        assert await stop(fleet_server.process, timeout=8) == 0


async def test_agent_killed_mid_command_becomes_unreachable(
    fleet_server: ServerProcess, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    with trio.fail_after(60):
        async with fleet_server.client() as client:
            vps = (await client.post("/api/vps", json={"name": "doomed"})).json()
            agent = await start_agent(fleet_server, vps, tmp_path)
            await _wait_online(client, vps["id"])
            r = await client.post(
                "/api/batch_commands",
                json={
                    "command_content": f"echo $$ > {pid_file}; echo running; sleep 60",
                    "target_vps_ids": [vps["id"]],
                },
            )
            batch_id = r.json()["batch_command_id"]
            await _wait_final(client, batch_id, lambda b: b["tasks"][0]["stdout_bytes"] > 0)
            agent.kill()  # SIGKILL: no goodbye
            await agent.wait()
            try:
                batch = await _wait_final(client, batch_id)
            finally:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # the orphaned command
            task = batch["tasks"][0]
            assert task["status"] == "AGENT_UNREACHABLE"
            assert "did not come back" in task["error_message"]
            assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"


def test_bad_flags_exit_2_without_traceback() -> None:
    for argv in (
        [sys.executable, "-m", "fleet.server", "--http", "nope"],
        [sys.executable, "-m", "fleet.server", "--reconnect-grace", "-1"],
        [sys.executable, "-m", "fleet.server", "--no-such-flag"],
        [sys.executable, "-m", "fleet.agent", "--vps-id", "x"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2, (argv, done.stderr)
        assert "Traceback" not in done.stderr
        assert done.stderr.strip()
