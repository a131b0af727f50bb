"""The server's side of the wire protocol, driven by a protocol-level fake agent."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from fleet.proto import agent_service as pb
from fleet.server.serve import Endpoints
from tests.fakeagent import FakeAgent

from .conftest import add_vps, wait_batch, wait_online


async def _connected(
    server: Endpoints, client: httpx.AsyncClient, name: str
) -> tuple[dict[str, Any], FakeAgent]:
    vps = await add_vps(client, name)
    agent = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
    ack = await agent.open()
    assert ack.authentication_successful, ack.error_message
    await wait_online(server, vps["id"])
    return vps, agent


async def _run(client: httpx.AsyncClient, command: str, *ids: int, **extra: Any) -> str:
    response = await client.post(
        "/api/batch_commands",
        json={"command_content": command, "target_vps_ids": list(ids), **extra},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["batch_command_id"])


async def test_wrong_secret_is_refused(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        vps = await add_vps(client, "a")
        agent = FakeAgent(server.grpc_address, vps["id"], "not-the-secret")
        ack = await agent.open()
        assert not ack.authentication_successful
        assert "secret" in ack.error_message
        assert await agent.receive() is None  # the server ended the stream
        assert not server.services.registry.is_online(vps["id"])
        await agent.close()


async def test_peer_without_extensions_completes(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    """Only output and a result (no ack, no started): the child still moves forward."""
    with trio.fail_after(10):
        vps, agent = await _connected(server, client, "old-peer")
        batch_id = await _run(client, "echo hi", vps["id"])
        request = await agent.receive_payload("batch_agent_command_request")
        assert request.content == "echo hi"
        assert request.type == pb.CommandType.ADHOC_COMMAND
        await agent.send(FakeAgent.output(request.command_id, b"hi\n", None))
        await wait_batch(server, batch_id, lambda b: b["tasks"][0]["status"] == "EXECUTING")
        await agent.send(FakeAgent.result(request.command_id, 1, 0))
        ack = await agent.receive_payload("batch_result_ack")
        assert ack.command_id == request.command_id
        batch = await wait_batch(server, batch_id)
        assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
        assert batch["tasks"][0]["output_stream_summary"] == ["hi"]
        log = await client.get(
            f"/api/batch_commands/{batch_id}/tasks/{request.command_id}/output?stream=stdout"
        )
        assert log.content == b"hi\n"
        await agent.close()


async def test_duplicates_and_late_results_are_ignored(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        vps, agent = await _connected(server, client, "dup")
        batch_id = await _run(client, "x", vps["id"])
        request = await agent.receive_payload("batch_agent_command_request")
        cid = request.command_id
        await agent.send(FakeAgent.output(cid, b"abc", 0))
        await agent.send(FakeAgent.output(cid, b"abcdef", 0))  # overlaps: only "def" is new
        await agent.send(FakeAgent.output(cid, b"def", 3))  # wholly a duplicate
        await agent.send(FakeAgent.result(cid, 2, 3, "boom"))
        await agent.receive_payload("batch_result_ack")
        await agent.send(FakeAgent.result(cid, 1, 0))  # late: must not overwrite FAILURE
        await agent.receive_payload("batch_result_ack")  # but is acknowledged again
        batch = await wait_batch(server, batch_id)
        task = batch["tasks"][0]
        assert (task["status"], task["exit_code"], task["error_message"]) == ("FAILURE", 3, "boom")
        assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"
        log = await client.get(f"/api/batch_commands/{batch_id}/tasks/{cid}/output")
        assert log.content == b"abcdef"
        await agent.close()


async def test_a_report_on_another_vps_command_ends_that_stream(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        vps_a, agent_a = await _connected(server, client, "a")
        vps_b, agent_b = await _connected(server, client, "b")
        batch_id = await _run(client, "x", vps_a["id"])
        request = await agent_a.receive_payload("batch_agent_command_request")
        # B claims A's command: no honest agent can, so B's stream ends (INVALID_ARGUMENT).
        await agent_b.send(FakeAgent.output(request.command_id, b"spoofed", 0))
        assert await agent_b.receive() is None
        await wait_online(server, vps_b["id"], online=False)
        batch = await wait_batch(server, batch_id, lambda b: True)
        assert batch["tasks"][0]["status"] == "SENT_TO_AGENT"
        assert batch["tasks"][0]["stdout_bytes"] == 0
        await agent_a.send(FakeAgent.result(request.command_id, 1, 0))
        batch = await wait_batch(server, batch_id)
        assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
        await agent_a.close()
        await agent_b.close()


async def test_changing_credentials_mid_stream_closes_it(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        vps_a, agent = await _connected(server, client, "a")
        vps_b = await add_vps(client, "b")
        await agent.send(
            FakeAgent.output("x", b"", None).__class__(
                vps_db_id=vps_b["id"],
                agent_secret=vps_b["agent_secret"],
                batch_command_output_stream=pb.BatchCommandOutputStream(command_id="x"),
            ),
            credentials=False,
        )
        assert await agent.receive() is None
        await wait_online(server, vps_a["id"], online=False)
        await agent.close()


async def test_newest_stream_wins(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(10):
        vps, first = await _connected(server, client, "a")
        second = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
        assert (await second.open()).authentication_successful
        assert await first.receive() is None  # replaced
        assert server.services.registry.is_online(vps["id"])
        batch_id = await _run(client, "x", vps["id"])
        request = await second.receive_payload("batch_agent_command_request")
        await second.send(FakeAgent.result(request.command_id, 1, 0))
        assert (await wait_batch(server, batch_id))["overall_status"] == "COMPLETED_SUCCESSFULLY"
        await first.close()
        await second.close()


async def test_agent_lost_becomes_unreachable_after_grace(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        vps, agent = await _connected(server, client, "a")
        batch_id = await _run(client, "sleep 100", vps["id"])
        await agent.receive_payload("batch_agent_command_request")
        await agent.close()
        batch = await wait_batch(server, batch_id)
        assert batch["tasks"][0]["status"] == "AGENT_UNREACHABLE"
        assert "did not come back" in batch["tasks"][0]["error_message"]
        assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"


async def test_agent_back_within_grace_delivers_result(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        vps, agent = await _connected(server, client, "a")
        batch_id = await _run(client, "x", vps["id"])
        request = await agent.receive_payload("batch_agent_command_request")
        await agent.close()
        await wait_online(server, vps["id"], online=False)
        again = FakeAgent(server.grpc_address, vps["id"], vps["agent_secret"])
        assert (await again.open()).authentication_successful
        await again.send(FakeAgent.result(request.command_id, 1, 0))
        await again.receive_payload("batch_result_ack")
        assert (await wait_batch(server, batch_id))["overall_status"] == "COMPLETED_SUCCESSFULLY"
        await again.close()


async def test_unreachable_at_dispatch_is_failed_to_start(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(10):
        vps = await add_vps(client, "offline")
        batch_id = await _run(client, "x", vps["id"])
        batch = await wait_batch(server, batch_id)
        assert batch["overall_status"] == "FAILED_TO_START"
        assert batch["tasks"][0]["status"] == "AGENT_UNREACHABLE"


class _Garbage:
    """A "message" whose bytes are not a valid MessageToServer."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


async def test_malformed_frame_ends_only_that_stream(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    import grpclib.client
    import grpclib.const
    import trio_asyncio
    from grpclib.exceptions import GRPCError

    async def send_garbage(host: str, port: int) -> str:
        channel = grpclib.client.Channel(host, port)
        try:
            async with channel.request(
                "/agent_service.AgentCommunicationService/EstablishCommunicationStream",
                grpclib.const.Cardinality.STREAM_STREAM,
                _Garbage,
                pb.MessageToAgent,
            ) as stream:
                await stream.send_message(_Garbage(b"\x0a\xff\xff\xff\xff\xff"), end=True)
                try:
                    await stream.recv_message()
                except GRPCError as exc:
                    return exc.status.name
                return "no error"
        finally:
            channel.close()

    with trio.fail_after(10):
        host, port = server.grpc_address.rsplit(":", 1)
        status = await trio_asyncio.aio_as_trio(send_garbage)(host, int(port))
        assert status == "INVALID_ARGUMENT"
        # The server keeps serving: a well-behaved agent still connects and works.
        vps, agent = await _connected(server, client, "after-garbage")
        batch_id = await _run(client, "x", vps["id"])
        request = await agent.receive_payload("batch_agent_command_request")
        await agent.send(FakeAgent.result(request.command_id, 1, 0))
        assert (await wait_batch(server, batch_id))["overall_status"] == "COMPLETED_SUCCESSFULLY"
        await agent.close()


async def test_each_extension_message_moves_the_child(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    """ack → AGENT_ACCEPTED, started → EXECUTING, terminate → TERMINATING, result → TERMINATED."""
    with trio.fail_after(10):
        vps, agent = await _connected(server, client, "modern")
        batch_id = await _run(client, "x", vps["id"])
        request = await agent.receive_payload("batch_agent_command_request")
        cid = request.command_id
        await agent.send(
            pb.MessageToServer(batch_command_ack=pb.BatchCommandAck(command_id=cid, accepted=True))
        )
        await wait_batch(server, batch_id, lambda b: b["tasks"][0]["status"] == "AGENT_ACCEPTED")
        await agent.send(
            pb.MessageToServer(batch_command_started=pb.BatchCommandStarted(command_id=cid, pid=42))
        )
        batch = await wait_batch(server, batch_id, lambda b: b["tasks"][0]["status"] == "EXECUTING")
        assert batch["tasks"][0]["agent_started_at"]
        await client.post(f"/api/batch_commands/{batch_id}/tasks/{cid}/terminate")
        await agent.receive_payload("batch_terminate_command_request")
        batch = await wait_batch(server, batch_id, lambda b: True)
        assert batch["tasks"][0]["status"] == "TERMINATING"
        await agent.send(FakeAgent.result(cid, 3, -15, "terminated by request"))
        batch = await wait_batch(server, batch_id)
        assert (batch["tasks"][0]["status"], batch["tasks"][0]["exit_code"]) == ("TERMINATED", -15)
        assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"
        await agent.close()
