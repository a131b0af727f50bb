"""A real grpclib server speaking the agent protocol, driven from trio tests.

It binds its own socket (port 0 at first, the same port after ``restart()``), records every
message it receives, answers the handshake, and acknowledges results unless told not to. The
grpclib ``__mapping__`` is written by hand: betterproto2 generates messages only, no service
stubs.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import betterproto2
import trio
import trio_asyncio
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import ProtocolError, StreamTerminatedError
from grpclib.server import Server, Stream
from h2.exceptions import H2Error

from fleet.core import StreamCursor
from fleet.proto import agent_service as pb
from fleet.wire import METHOD_PATH

ServerStream = Stream[pb.MessageToServer, pb.MessageToAgent]


@dataclass
class Received:
    """One message as the server saw it."""

    connection: int
    message: pb.MessageToServer
    at: float  # trio time

    @property
    def kind(self) -> str:
        return betterproto2.which_one_of(self.message, "payload")[0]

    @property
    def payload(self) -> Any:
        return betterproto2.which_one_of(self.message, "payload")[1]


@dataclass
class FakeServer:
    """An agent-protocol server for tests. Use inside ``trio_asyncio.open_loop()``."""

    vps_id: int = 1
    secret: str = "test-secret"
    refuse: str | None = None  # refuse every handshake with this reason
    ack_results: bool = True
    ssl_context: ssl.SSLContext | None = None
    port: int = 0
    received: list[Received] = field(default_factory=list)
    handshake_times: list[float] = field(default_factory=list)
    connections: int = 0
    _server: Server | None = None
    _streams: dict[int, ServerStream] = field(default_factory=dict)
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __mapping__(self) -> dict[str, Handler]:
        return {
            METHOD_PATH: Handler(
                self._handle, Cardinality.STREAM_STREAM, pb.MessageToServer, pb.MessageToAgent
            )
        }

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await trio_asyncio.aio_as_trio(self._start)(sock)

    async def _start(self, sock: socket.socket) -> None:
        self._server = Server([self])
        await self._server.start(sock=sock, backlog=128, ssl=self.ssl_context)

    async def stop(self) -> None:
        """End every stream with UNAVAILABLE trailers, then close the server.

        ``Server.close()`` alone cancels the handlers, and a cancelled grpclib handler sends no
        trailers: the agent would wait on a stream that never ends instead of reconnecting.
        """
        if self._server is not None:
            await trio_asyncio.aio_as_trio(self._stop)()
            self._server = None

    async def _stop(self) -> None:
        assert self._server is not None
        for stream in list(self._streams.values()):
            try:
                await stream.send_trailing_metadata(
                    status=Status.UNAVAILABLE, status_message="server stopping"
                )
            except (ProtocolError, StreamTerminatedError, H2Error, OSError):
                pass  # that stream was already gone
        self._streams.clear()
        self._server.close()
        await self._server.wait_closed()

    async def restart(self) -> None:
        """Stop, then listen again on the same port."""
        await self.stop()
        await self.start()

    # -- talking to the agent ------------------------------------------------------------------

    async def send(self, **payload: Any) -> None:
        """Send a MessageToAgent with the given payload field to the newest connection."""
        await self.send_message(pb.MessageToAgent(**payload))

    async def send_message(self, message: pb.MessageToAgent) -> None:
        stream = self._streams[max(self._streams)]
        await trio_asyncio.aio_as_trio(stream.send_message)(message)

    async def wait_connected(self) -> None:
        """Wait until an agent's handshake was accepted."""
        await self.wait_for(lambda: self._streams)

    async def run_command(self, command_id: str, content: str, **fields: Any) -> None:
        await self.send(
            batch_agent_command_request=pb.BatchAgentCommandRequest(
                command_id=command_id,
                type=pb.CommandType.ADHOC_COMMAND,
                content=content,
                **fields,
            )
        )

    async def terminate(self, command_id: str) -> None:
        await self.send(
            batch_terminate_command_request=pb.BatchTerminateCommandRequest(command_id=command_id)
        )

    async def ack_result(self, command_id: str) -> None:
        await self.send(batch_result_ack=pb.BatchResultAck(command_id=command_id))

    # -- looking at what arrived ---------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Any]) -> Any:
        """Return ``predicate()`` once it is truthy, re-checking after every message."""
        while not (value := predicate()):
            await self._changed.wait()
        return value

    def of_kind(self, kind: str, command_id: str | None = None) -> list[Any]:
        return [
            item.payload
            for item in self.received
            if item.kind == kind and (command_id is None or item.payload.command_id == command_id)
        ]

    def result(self, command_id: str) -> pb.BatchCommandResult | None:
        results = self.of_kind("batch_command_result", command_id)
        return results[0] if results else None

    def output(self, command_id: str, kind: pb.OutputType) -> bytes:
        """The stream as the real server would store it: de-duplicated by offset."""
        cursor = StreamCursor(cap=1 << 40)
        data = bytearray()
        for chunk in self.of_kind("batch_command_output_stream", command_id):
            if chunk.stream_type == kind:
                accepted = cursor.accept(chunk.chunk, chunk.offset)
                assert accepted.gap == 0, f"gap of {accepted.gap} bytes at {chunk.offset}"
                data += accepted.data
        return bytes(data)

    async def wait_result(self, command_id: str) -> pb.BatchCommandResult:
        result: pb.BatchCommandResult = await self.wait_for(lambda: self.result(command_id))
        return result

    # -- the handler (asyncio) -----------------------------------------------------------------

    async def _handle(self, stream: ServerStream) -> None:
        self.connections += 1
        connection = self.connections
        first = await stream.recv_message()
        if first is None:
            return
        self._record(connection, first)
        self.handshake_times.append(trio.current_time())
        if self.refuse is not None:
            await stream.send_message(
                pb.MessageToAgent(
                    server_handshake_ack=pb.ServerHandshakeAck(
                        authentication_successful=False, error_message=self.refuse
                    )
                )
            )
            return
        ok = first.vps_db_id == self.vps_id and first.agent_secret == self.secret
        await stream.send_message(
            pb.MessageToAgent(
                server_handshake_ack=pb.ServerHandshakeAck(
                    authentication_successful=ok,
                    error_message="" if ok else "bad credentials",
                )
            )
        )
        if not ok:
            return
        self._streams[connection] = stream
        self._notify()
        try:
            async for message in stream:
                self._record(connection, message)
                assert message.vps_db_id == self.vps_id
                assert message.agent_secret == self.secret
                result = message.batch_command_result
                if self.ack_results and result is not None:
                    await stream.send_message(
                        pb.MessageToAgent(
                            batch_result_ack=pb.BatchResultAck(command_id=result.command_id)
                        )
                    )
        finally:
            self._streams.pop(connection, None)

    def _record(self, connection: int, message: pb.MessageToServer) -> None:
        self.received.append(Received(connection, message, trio.current_time()))
        self._notify()

    def _notify(self) -> None:
        # trio's synchronous APIs are fine from asyncio code.
        changed, self._changed = self._changed, trio.Event()
        changed.set()
