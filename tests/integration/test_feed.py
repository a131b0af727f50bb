"""The live feed: snapshot first, then events; slow subscribers are bounded; reconnect resumes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from fleet.server.http.feed import FeedHub, Overrun
from fleet.server.serve import Endpoints
from tests.fakeagent import FakeAgent

from .conftest import add_vps, wait_batch, wait_online


def _ws_url(server: Endpoints, path: str) -> str:
    return server.http_url.replace("http://", "ws://") + path


async def _start(server: Endpoints, client: httpx.AsyncClient) -> tuple[FakeAgent, str, str]:
    vps = await add_vps(client, "feed-1")
    agent = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
    assert (await agent.open()).authentication_successful
    await wait_online(server, vps["id"])
    response = await client.post(
        "/api/batch_commands", json={"command_content": "x", "target_vps_ids": [vps["id"]]}
    )
    batch_id = response.json()["batch_command_id"]
    request = await agent.receive_payload("batch_agent_command_request")
    return agent, batch_id, request.command_id


async def test_snapshot_then_events(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(15):
        agent, batch_id, cid = await _start(server, client)
        headers = [("Authorization", f"Bearer {server.token}")]
        async with open_websocket_url(
            _ws_url(server, f"/ws/batch_commands/{batch_id}"), extra_headers=headers
        ) as ws:
            first = json.loads(await ws.get_message())
            assert first["type"] == "SNAPSHOT"
            assert first["batch"]["batch_command_id"] == batch_id
            assert first["batch"]["tasks"][0]["child_command_id"] == cid
            await agent.send(FakeAgent.output(cid, b"hello <b>\n", 0))
            await agent.send(FakeAgent.output(cid, b"oops\n", 0, stream=2))
            await agent.send(FakeAgent.result(cid, 1, 0))
            seen: list[dict[str, Any]] = []
            while not any(
                e["type"] == "BATCH_TASK_UPDATE" and e["overall_status"] == "COMPLETED_SUCCESSFULLY"
                for e in seen
            ):
                seen.append(json.loads(await ws.get_message()))
        outputs = [e for e in seen if e["type"] == "NEW_LOG_OUTPUT"]
        assert [(e["stream"], e["offset"], e["data"]) for e in outputs] == [
            ("stdout", 0, "hello <b>\n"),
            ("stderr", 0, "oops\n"),
        ]
        updates = [e["status"] for e in seen if e["type"] == "CHILD_TASK_UPDATE"]
        assert updates[0] == "EXECUTING"
        assert updates[-1] == "SUCCESS"
        await agent.close()


async def test_feed_needs_a_token(server: Endpoints) -> None:
    with trio.fail_after(10):
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(_ws_url(server, "/ws/batch_commands/x")):
                pass  # pragma: no cover
        assert info.value.status_code == 401


async def test_unknown_batch_closes_with_policy(server: Endpoints) -> None:
    with trio.fail_after(10):
        headers = [("Authorization", f"Bearer {server.token}")]
        async with open_websocket_url(
            _ws_url(server, "/ws/batch_commands/nope"), extra_headers=headers
        ) as ws:
            from trio_websocket import ConnectionClosed

            with pytest.raises(ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1008


async def test_reconnect_gets_a_fresh_snapshot(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(15):
        agent, batch_id, cid = await _start(server, client)
        headers = [("Authorization", f"Bearer {server.token}")]
        url = _ws_url(server, f"/ws/batch_commands/{batch_id}")
        async with open_websocket_url(url, extra_headers=headers) as ws:
            assert json.loads(await ws.get_message())["type"] == "SNAPSHOT"
        await agent.send(FakeAgent.output(cid, b"while away\n", 0))
        await wait_batch(server, batch_id, lambda b: b["tasks"][0]["stdout_bytes"] == 11)
        async with open_websocket_url(url, extra_headers=headers) as ws:
            snapshot = json.loads(await ws.get_message())
            assert snapshot["batch"]["tasks"][0]["output_stream_summary"] == ["while away"]
            await agent.send(FakeAgent.output(cid, b"after\n", 11))
            event = json.loads(await ws.get_message())
            while event["type"] != "NEW_LOG_OUTPUT":
                event = json.loads(await ws.get_message())
            assert (event["offset"], event["data"]) == (11, "after\n")
        await agent.close()


async def test_stuck_subscriber_is_bounded_and_never_blocks() -> None:
    """A subscriber that never reads: publishing stays synchronous, memory stays bounded."""
    hub = FeedHub(limit_bytes=64 * 1024)
    with hub.subscribe("b") as stuck, hub.subscribe("b") as live:
        chunk = {"type": "NEW_LOG_OUTPUT", "data": "x" * 1000}
        for _ in range(10_000):  # ~10 MB published
            hub.publish("b", chunk)
            assert stuck.queued_bytes <= 64 * 1024
            if live.queued_bytes > 32 * 1024:
                await live.get()  # the live subscriber keeps up and is never dropped
        assert stuck.overrun
        assert not live.overrun
        with pytest.raises(Overrun):
            await stuck.get()
    assert not hub.has_subscribers("b")


async def test_cross_origin_websocket_is_refused(server: Endpoints) -> None:
    with trio.fail_after(10):
        headers = [("Authorization", f"Bearer {server.token}"), ("Origin", "http://evil.example")]
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(_ws_url(server, "/ws/vps"), extra_headers=headers):
                pass  # pragma: no cover
        assert info.value.status_code == 403
        same = server.http_url  # the UI's own origin is fine
        headers[1] = ("Origin", same)
        async with open_websocket_url(_ws_url(server, "/ws/vps"), extra_headers=headers) as ws:
            assert json.loads(await ws.get_message())["type"] == "VPS_SNAPSHOT"
