"""Hostile peers on the gRPC port: size limits, impossible reports, refused handshakes.

Each test speaks raw bytes through ``tests.hostile.RawPeer`` and reads the status the server
ends the stream with. Memory under a 300 MB declared message is measured on a real process in
``tests/e2e/test_hostile_rss.py``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from grpclib.const import Status

from fleet.proto import agent_service as pb
from fleet.server import rpc
from fleet.server.agents import AgentRegistry, Credentials, PeerViolation, hash_secret
from fleet.server.config import ServerConfig
from fleet.server.handshakes import RefusedHandshakes
from fleet.server.rpc import MAX_HANDSHAKE_BYTES, MAX_MESSAGE_BYTES
from fleet.server.serve import Endpoints
from tests.fakeagent import FakeAgent
from tests.hostile import RawPeer, frame, handshake, message

from .conftest import add_vps, batch_view, wait_batch, wait_online

MB = 1_000_000
#: What a peer can push unread before flow control stops it: grpclib's 4 MiB windows, plus a
#: frame of slack.
WINDOW = 4 * 1024 * 1024 + 64 * 1024


async def _run(client: httpx.AsyncClient, vps_id: int) -> str:
    response = await client.post(
        "/api/batch_commands", json={"command_content": "x", "target_vps_ids": [vps_id]}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["batch_command_id"])


async def _agent(server: Endpoints, vps: dict[str, Any]) -> RawPeer:
    """A raw peer past a valid handshake."""
    peer = RawPeer(server.grpc_address)
    await peer.open()
    assert await peer.send(handshake(vps["id"], vps["agent_secret"]))
    reply = await peer.receive()
    assert reply is not None
    assert reply.server_handshake_ack is not None
    assert reply.server_handshake_ack.authentication_successful
    await wait_online(server, vps["id"])
    return peer


async def _honest_batch(server: Endpoints, client: httpx.AsyncClient, vps: dict[str, Any]) -> None:
    """The server still works: a batch on ``vps`` runs to the end and is stored."""
    agent = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
    assert (await agent.open()).authentication_successful
    batch_id = await _run(client, vps["id"])
    request = await agent.receive_payload("batch_agent_command_request")
    await agent.send(FakeAgent.output(request.command_id, b"fine\n", 0))
    await agent.send(FakeAgent.result(request.command_id, 1, 0))
    await agent.receive_payload("batch_result_ack")  # sent once the result is committed
    batch = await wait_batch(server, batch_id)
    assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
    assert batch["tasks"][0]["stdout_bytes"] == 5
    await agent.close()


# --- size limits ------------------------------------------------------------------------------


async def test_oversized_message_before_the_handshake_is_never_read(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        peer = RawPeer(server.grpc_address)
        await peer.open()
        (status, text), sent = await peer.flood_until_status(
            frame(b"", declared=300 * MB), total=300 * MB
        )
        assert status is Status.RESOURCE_EXHAUSTED, text
        assert "300000000 bytes" in text
        assert sent <= WINDOW  # flow control stopped the peer: nothing past the window went
        await peer.close()
        await _honest_batch(server, client, await add_vps(client, "after"))


@pytest.mark.parametrize(
    ("size", "expected"),
    [(MAX_HANDSHAKE_BYTES + 1, Status.RESOURCE_EXHAUSTED), (MAX_HANDSHAKE_BYTES, None)],
)
async def test_handshake_limit_is_64_kib(
    server: Endpoints, client: httpx.AsyncClient, size: int, expected: Status | None
) -> None:
    with trio.fail_after(10):
        vps = await add_vps(client, "a")
        base = len(handshake(vps["id"], vps["agent_secret"])) - 5
        data = next(
            d
            for n in range(size - base - 8, size - base)
            if len(d := handshake(vps["id"], vps["agent_secret"], os_name="x" * n)) - 5 == size
        )
        peer = RawPeer(server.grpc_address)
        await peer.open()
        assert await peer.send(data)
        if expected is None:
            reply = await peer.receive()
            assert reply is not None
            assert reply.server_handshake_ack is not None
            assert reply.server_handshake_ack.authentication_successful
        else:
            assert (await peer.status())[0] is expected
        await peer.close()


async def test_oversized_message_after_the_handshake_ends_the_stream(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        vps = await add_vps(client, "a")
        peer = await _agent(server, vps)
        batch_id = await _run(client, vps["id"])
        request = await peer.receive()
        assert request is not None
        assert request.batch_agent_command_request is not None
        cid = request.batch_agent_command_request.command_id
        # Just under the limit is fine (a big output chunk)...
        big = pb.BatchCommandOutputStream(command_id=cid, stream_type=1, chunk=b"y" * (4 * MB))
        data = message(vps["id"], vps["agent_secret"], batch_command_output_stream=big)
        assert len(data) - 5 <= MAX_MESSAGE_BYTES
        assert await peer.send(data)
        await wait_batch(server, batch_id, lambda b: b["tasks"][0]["stdout_bytes"] == 4 * MB)
        # ...one byte over is not, and is never read.
        (status, text), sent = await peer.flood_until_status(
            frame(b"", declared=MAX_MESSAGE_BYTES + 1), total=300 * MB
        )
        assert status is Status.RESOURCE_EXHAUSTED, text
        assert sent <= WINDOW
        await wait_online(server, vps["id"], online=False)
        await peer.close()
        view = await batch_view(server, batch_id)
        assert view["tasks"][0]["stdout_bytes"] == 4 * MB


async def test_big_frames_only_after_the_handshake_and_batched_messages(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        vps = await add_vps(client, "a")
        peer = RawPeer(server.grpc_address)
        await peer.open()
        settings = peer._data._h2_connection.remote_settings
        assert await peer.send(handshake(vps["id"], vps["agent_secret"]))
        assert settings.max_frame_size == 16 * 1024  # HTTP/2's default, before the handshake
        reply = await peer.receive()
        assert reply is not None
        assert reply.server_handshake_ack is not None
        # The server's SETTINGS went out before its answer: big DATA frames from now on.
        assert settings.max_frame_size == rpc.MAX_FRAME_BYTES
        batch_id = await _run(client, vps["id"])
        request = await peer.receive()
        assert request is not None
        assert request.batch_agent_command_request is not None
        cid = request.batch_agent_command_request.command_id
        # Several messages in one DATA send (as both ends now write them) are read one by one.
        out = pb.BatchCommandOutputStream(command_id=cid, stream_type=1, chunk=b"z" * 300_000)
        done = pb.BatchCommandResult(command_id=cid, status=pb.CommandStatus.SUCCESS)
        assert await peer.send(
            message(vps["id"], vps["agent_secret"], batch_command_output_stream=out)
            + message(vps["id"], vps["agent_secret"], batch_command_result=done)
        )
        batch = await wait_batch(server, batch_id)
        assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
        assert batch["tasks"][0]["stdout_bytes"] == 300_000
        await peer.close()


async def test_four_oversized_streams_at_once(server: Endpoints, client: httpx.AsyncClient) -> None:
    """Four 100 MB messages together once cost the server 1.13 GB: each is now refused unread."""
    with trio.fail_after(20):
        results: list[tuple[Status, int]] = []

        async def one() -> None:
            peer = RawPeer(server.grpc_address)
            await peer.open()
            (status, _), sent = await peer.flood_until_status(
                frame(b"", declared=100 * MB), total=100 * MB
            )
            results.append((status, sent))
            await peer.close()

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert [status for status, _ in results] == [Status.RESOURCE_EXHAUSTED] * 4, results
        assert all(sent <= WINDOW for _, sent in results), results


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00\x00\x00", Status.INVALID_ARGUMENT),  # the stream ends inside the prefix
        (frame(b"abc", declared=10), Status.INVALID_ARGUMENT),  # ...inside the body
        (frame(b"\x0f"), Status.INVALID_ARGUMENT),  # wire type 7: betterproto2 yields None
        (frame(b"\x0a" + b"\xff" * 10 + b"\x01"), Status.INVALID_ARGUMENT),  # does not decode
        (frame(b"\xff\xff"), Status.UNAUTHENTICATED),  # decodes to an empty message: refused
        (frame(b"", flag=1), Status.UNIMPLEMENTED),  # compressed
    ],
)
async def test_malformed_frames_before_the_handshake(
    server: Endpoints, data: bytes, expected: Status
) -> None:
    with trio.fail_after(10):
        peer = RawPeer(server.grpc_address)
        await peer.open()
        await peer.send(data)
        await peer.end()
        assert (await peer.status())[0] is expected
        await peer.close()


# --- impossible reports -------------------------------------------------------------------------


def _impossible(cid: str) -> dict[str, Any]:
    out = pb.BatchCommandOutputStream
    return {
        "offset 2**63+5 (issue 11)": {
            "batch_command_output_stream": out(
                command_id=cid, stream_type=1, chunk=b"x", offset=2**63 + 5
            )
        },
        "offset 2**53": {
            "batch_command_output_stream": out(command_id=cid, stream_type=1, offset=2**53)
        },
        "offset + chunk past 2**53": {
            "batch_command_output_stream": out(
                command_id=cid, stream_type=1, chunk=b"xy", offset=2**53 - 1
            )
        },
        "negative pid": {"batch_command_started": pb.BatchCommandStarted(command_id=cid, pid=-1)},
        "37-character id": {
            "batch_command_result": pb.BatchCommandResult(command_id=cid + "X", status=1)
        },
        "id with a newline": {
            "batch_command_ack": pb.BatchCommandAck(command_id=cid[:8] + "\nforged", accepted=True)
        },
        "empty id": {"batch_command_result": pb.BatchCommandResult(command_id="", status=1)},
        "huge error message": {
            "batch_command_result": pb.BatchCommandResult(
                command_id=cid, status=2, error_message="e" * 100_000
            )
        },
        "huge reason": {
            "batch_command_ack": pb.BatchCommandAck(command_id=cid, reason="r" * 100_000)
        },
        "negative timestamp": {
            "batch_command_started": pb.BatchCommandStarted(command_id=cid, pid=1, timestamp=-1)
        },
    }


@pytest.mark.parametrize("case", list(_impossible("c")))
async def test_impossible_report_ends_the_stream_and_stores_nothing(
    server: Endpoints, client: httpx.AsyncClient, case: str
) -> None:
    with trio.fail_after(20):
        vps = await add_vps(client, "a")
        peer = await _agent(server, vps)
        batch_id = await _run(client, vps["id"])
        request = await peer.receive()
        assert request is not None
        assert request.batch_agent_command_request is not None
        cid = request.batch_agent_command_request.command_id
        payload = _impossible(cid)[case]
        assert await peer.send(message(vps["id"], vps["agent_secret"], **payload))
        status, text = await peer.status()
        assert status is Status.INVALID_ARGUMENT, text
        assert "impossible report" in text
        await peer.close()
        await wait_online(server, vps["id"], online=False)
        view = await batch_view(server, batch_id)
        task = view["tasks"][0]
        assert task["status"] == "SENT_TO_AGENT"
        assert (task["stdout_bytes"], task["stderr_bytes"]) == (0, 0)
        logs = Path(server.services.config.data_dir) / "logs" / batch_id
        assert not any(logs.glob("*")) if logs.exists() else True
        # The honest agent comes back: its result is stored (the store still works).
        agent = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
        assert (await agent.open()).authentication_successful
        await agent.send(FakeAgent.output(cid, b"ok\n", 0))
        await agent.send(FakeAgent.result(cid, 1, 0))
        await agent.receive_payload("batch_result_ack")
        batch = await wait_batch(server, batch_id)
        assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
        assert batch["tasks"][0]["stdout_bytes"] == 3
        stored = await client.get(f"/api/batch_commands/{batch_id}")
        assert stored.json()["tasks"][0]["stdout_bytes"] == 3
        await agent.close()


async def test_a_report_on_another_vps_command_is_invalid_argument(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    """The supervisor decides (PeerViolation); the stream ends with its status, nothing kept."""
    with trio.fail_after(20):
        vps_a, vps_b = await add_vps(client, "a"), await add_vps(client, "b")
        peer_a = await _agent(server, vps_a)
        peer_b = await _agent(server, vps_b)
        batch_id = await _run(client, vps_a["id"])
        request = await peer_a.receive()
        assert request is not None
        assert request.batch_agent_command_request is not None
        cid = request.batch_agent_command_request.command_id
        spoof = pb.BatchCommandOutputStream(command_id=cid, stream_type=1, chunk=b"x", offset=0)
        assert await peer_b.send(
            message(vps_b["id"], vps_b["agent_secret"], batch_command_output_stream=spoof)
        )
        status, text = await peer_b.status()
        assert status is Status.INVALID_ARGUMENT, text
        assert "another VPS" in text
        view = await batch_view(server, batch_id)
        assert view["tasks"][0]["stdout_bytes"] == 0
        assert server.services.registry.is_online(vps_a["id"])
        await peer_a.close()
        await peer_b.close()


async def test_a_mistyped_field_is_invalid_not_a_crash(
    server: Endpoints, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """betterproto2 decodes ``agent_secret`` sent as a varint into an ``int``: refused cleanly
    (before, ``.encode`` on it raised inside the credentials check)."""
    with trio.fail_after(10):
        vps = await add_vps(client, "a")
        peer = await _agent(server, vps)
        # field 10 (agent_secret) with wire type 0, then a result payload
        body = (
            b"\x48"
            + bytes([vps["id"]])
            + b"\x50\x01"
            + bytes(pb.MessageToServer(batch_command_result=pb.BatchCommandResult(command_id="c")))
        )
        assert await peer.send(frame(body))
        status, text = await peer.status()
        assert status is Status.INVALID_ARGUMENT, text
        assert "agent_secret" in text
        await peer.close()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- refused handshakes -----------------------------------------------------------------------


class _CountingCredentials(Credentials):
    def __init__(self, digests: list[tuple[int, str]]) -> None:
        super().__init__(digests)
        self.checked = 0

    def verify(self, vps_id: int, secret: str) -> bool:
        self.checked += 1
        return super().verify(vps_id, secret)


class _Hooks:
    """The supervisor's place: records reports; raises PeerViolation for command ``"other"``."""

    def __init__(self) -> None:
        self.messages: list[pb.MessageToServer] = []

    def connected(self, session: Any, info: Any) -> None:
        pass

    def message(self, session: Any, message: pb.MessageToServer) -> None:
        if message.batch_command_result is not None:
            if message.batch_command_result.command_id == "other":
                raise PeerViolation("vps=1 reported on command other of another VPS")
        self.messages.append(message)

    def disconnected(self, session: Any) -> None:
        pass


@dataclass
class _Island:
    address: str
    credentials: _CountingCredentials
    hooks: _Hooks


@pytest.fixture
async def island(loop: Any, tmp_path: Path) -> AsyncIterator[_Island]:
    """``rpc.serve`` alone, with a refusal limit of 3 that never refills during a test."""
    credentials = _CountingCredentials([(1, hash_secret("right"))])
    hooks = _Hooks()
    serve = functools.partial(
        rpc.serve,
        ServerConfig.for_test(tmp_path),
        credentials,
        AgentRegistry(),
        hooks,
        refusals=RefusedHandshakes(burst=3, per_minute=1e-9),
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve)
        yield _Island(f"127.0.0.1:{port}", credentials, hooks)
        nursery.cancel_scope.cancel()


async def _try(address: str, data: bytes) -> Status | bool:
    """Send ``data`` as a first message: the handshake answer, or the status without one."""
    peer = RawPeer(address)
    await peer.open()
    await peer.send(data)
    reply = await peer.receive()
    try:
        if reply is not None and reply.server_handshake_ack is not None:
            await peer.end()
            return reply.server_handshake_ack.authentication_successful
        return (await peer.status())[0]
    finally:
        await peer.close()


async def test_refused_handshakes_are_rate_limited_and_logged_once(
    island: _Island, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleet.server")
    with trio.fail_after(20):
        answers = [await _try(island.address, handshake(1, "wrong")) for _ in range(6)]
        # The burst (3) is examined and refused; beyond it, answered at once without work.
        assert answers == [False] * 3 + [Status.RESOURCE_EXHAUSTED] * 3
        assert island.credentials.checked == 3
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1, refusals
        # A limited address is limited for everyone behind it, honest or not, until it refills.
        assert await _try(island.address, handshake(1, "right")) is Status.RESOURCE_EXHAUSTED
        assert island.credentials.checked == 3


async def test_a_peer_violation_ends_the_stream(island: _Island) -> None:
    """The supervisor raises PeerViolation for a report on another VPS's command."""
    with trio.fail_after(10):
        peer = RawPeer(island.address)
        await peer.open()
        await peer.send(handshake(1, "right"))
        assert await peer.receive() is not None
        ok = pb.BatchCommandResult(command_id="mine", status=1)
        other = pb.BatchCommandResult(command_id="other", status=1)
        await peer.send(message(1, "right", batch_command_result=ok))
        await peer.send(message(1, "right", batch_command_result=other))
        status, text = await peer.status()
        assert status is Status.INVALID_ARGUMENT
        assert "another VPS" in text
        await peer.close()
        assert [m.batch_command_result.command_id for m in island.hooks.messages] == ["mine"]
