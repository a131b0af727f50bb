"""A protocol-level agent for tests: speaks the wire protocol, runs nothing.

It lets a test play a misbehaving or old peer (wrong secret, another VPS's command id, no
extension messages, duplicate results) that the real agent would never be.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpclib.client
import grpclib.const
import trio_asyncio
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from fleet.proto import agent_service as pb

METHOD = "/agent_service.AgentCommunicationService/EstablishCommunicationStream"


class FakeAgent:
    """One stream to the server. Use ``async with FakeAgent.connect(...)``-style helpers below."""

    def __init__(self, address: str, vps_id: int, secret: str) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.vps_id = vps_id
        self.secret = secret
        self._channel: grpclib.client.Channel | None = None
        self._stream: Any = None
        self._next = 1
        self.ended: Exception | None = None

    async def open(self) -> pb.ServerHandshakeAck:
        """Connect and handshake; return the server's answer."""
        await trio_asyncio.aio_as_trio(self._open)()
        await self.send(pb.MessageToServer(agent_handshake=pb.AgentHandshake(hostname="fake")))
        reply = await self.receive()
        assert reply is not None, repr(self.ended)
        assert reply.server_handshake_ack is not None, reply
        return reply.server_handshake_ack

    async def _open(self) -> None:
        self._channel = grpclib.client.Channel(self.host, self.port)
        self._stream = self._channel.request(
            METHOD, grpclib.const.Cardinality.STREAM_STREAM, pb.MessageToServer, pb.MessageToAgent
        )
        await self._stream.__aenter__()
        await self._stream.send_request()

    async def send(self, message: pb.MessageToServer, *, credentials: bool = True) -> None:
        if credentials:
            message.vps_db_id = message.vps_db_id or self.vps_id
            message.agent_secret = message.agent_secret or self.secret
        message.client_message_id = self._next
        self._next += 1
        await trio_asyncio.aio_as_trio(self._stream.send_message)(message)

    async def receive(self) -> pb.MessageToAgent | None:
        """The next message, or None when the server ended the stream."""
        try:
            return await trio_asyncio.aio_as_trio(self._stream.recv_message)()  # type: ignore[no-any-return]
        except (StreamTerminatedError, GRPCError, ProtocolError) as exc:
            self.ended = exc
            return None

    async def receive_payload(self, field: str) -> Any:
        """Skip messages until one whose payload is ``field``; return that payload."""
        while True:
            message = await self.receive()
            assert message is not None, f"stream ended while waiting for {field}"
            name, value = _which(message)
            if name == field:
                return value

    async def close(self) -> None:
        await trio_asyncio.aio_as_trio(self._close)()

    async def _close(self) -> None:
        try:
            if self._stream is not None:
                await self._stream.__aexit__(None, None, None)
        except (
            StreamTerminatedError,
            GRPCError,
            ProtocolError,
            asyncio.CancelledError,
            ConnectionError,
        ):
            pass
        finally:
            if self._channel is not None:
                self._channel.close()  # always: a leaked channel complains at its collection

    # --- message builders --------------------------------------------------------------------

    @staticmethod
    def output(
        command_id: str, data: bytes, offset: int | None, stream: int = 1
    ) -> pb.MessageToServer:
        return pb.MessageToServer(
            batch_command_output_stream=pb.BatchCommandOutputStream(
                command_id=command_id, stream_type=pb.OutputType(stream), chunk=data, offset=offset
            )
        )

    @staticmethod
    def result(
        command_id: str, status: int = 1, exit_code: int = 0, error: str = ""
    ) -> pb.MessageToServer:
        return pb.MessageToServer(
            batch_command_result=pb.BatchCommandResult(
                command_id=command_id,
                status=pb.CommandStatus(status),
                exit_code=exit_code,
                error_message=error,
            )
        )


def _which(message: pb.MessageToAgent) -> tuple[str, Any]:
    import betterproto2

    name, value = betterproto2.which_one_of(message, "payload")
    return name, value
