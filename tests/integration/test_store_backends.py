"""A whole batch through the server on each store backend (PostgreSQL when configured)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from fleet.server.config import ServerConfig
from fleet.server.serve import Endpoints, serve
from tests.fakeagent import FakeAgent
from tests.server.conftest import db_url  # noqa: F401 - the parametrised backend fixture

from .conftest import add_vps, wait_batch, wait_online


@pytest.fixture
async def backend_server(loop: Any, tmp_path: Path, db_url: str | None) -> AsyncIterator[Endpoints]:  # noqa: F811
    config = ServerConfig.for_test(tmp_path / "data", db_url=db_url)
    async with trio.open_nursery() as nursery:
        yield await nursery.start(serve, config)
        nursery.cancel_scope.cancel()


async def test_batch_on_backend(backend_server: Endpoints) -> None:
    server = backend_server
    with trio.fail_after(20):
        async with httpx.AsyncClient(
            base_url=server.http_url, headers={"Authorization": f"Bearer {server.token}"}
        ) as client:
            vps = await add_vps(client, "pg-1")
            agent = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
            assert (await agent.open()).authentication_successful
            await wait_online(server, vps["id"])
            r = await client.post(
                "/api/batch_commands",
                json={"command_content": "echo x\n", "target_vps_ids": [vps["id"]]},
            )
            batch_id = r.json()["batch_command_id"]
            request = await agent.receive_payload("batch_agent_command_request")
            assert request.content == "echo x\n"
            await agent.send(FakeAgent.output(request.command_id, b"x\n", 0))
            await agent.send(FakeAgent.result(request.command_id, 1, 0))
            await agent.receive_payload("batch_result_ack")  # sent once the result is stored
            await wait_batch(server, batch_id)
            stored = (await client.get(f"/api/batch_commands/{batch_id}")).json()
            assert stored["overall_status"] == "COMPLETED_SUCCESSFULLY"
            assert stored["tasks"][0]["output_stream_summary"] == ["x"]
            listed = (await client.get("/api/batch_commands")).json()
            assert listed["items"][0]["counts"] == {"SUCCESS": 1}
            await agent.close()
