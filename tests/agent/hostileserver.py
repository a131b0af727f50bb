"""A hostile agent-protocol server: it accepts the handshake, then writes raw bytes.

Each connection gets the next entry of ``scripts`` (the last one repeats): the bytes to write
into the stream's DATA frames after a successful ``ServerHandshakeAck``, optionally followed by
``flood`` zero bytes (sent as the agent lets them through; a declared length in a prefix of the
script makes them one huge message). Use inside ``trio_asyncio.open_loop()``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import trio
import trio_asyncio
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Server

from fleet.proto import agent_service as pb
from fleet.wire import METHOD_PATH


def frame(payload: bytes, *, declared: int | None = None) -> bytes:
    return struct.pack(">BI", 0, len(payload) if declared is None else declared) + payload


@dataclass
class Script:
    data: bytes = b""
    flood: int = 0
    end: bool = True  # send OK trailers after the data
    #: Wait for this event (set it from trio: a synchronous call) before writing anything.
    hold: asyncio.Event | None = None


@dataclass
class HostileServer:
    scripts: list[Script]
    port: int = 0
    connections: int = 0
    #: Bytes of the flood the agent let through, per connection.
    flooded: list[int] = field(default_factory=list)
    _server: Server | None = None
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

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await trio_asyncio.aio_as_trio(self._start)(sock)

    async def _start(self, sock: socket.socket) -> None:
        self._server = Server([self])
        await self._server.start(sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            await trio_asyncio.aio_as_trio(self._stop)()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_connections(self, count: int) -> None:
        while self.connections < count:
            await self._changed.wait()

    async def _handle(self, stream: Any) -> None:
        self.connections += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        script = self.scripts[min(self.connections, len(self.scripts)) - 1]
        self.flooded.append(0)
        if await stream.recv_message() is None:
            return
        ack = pb.ServerHandshakeAck(authentication_successful=True)
        await stream.send_message(pb.MessageToAgent(server_handshake_ack=ack))
        data = stream._stream  # grpclib's protocol stream: raw DATA frames
        if script.hold is not None:
            await script.hold.wait()
        try:
            await data.send_data(script.data)
            block = bytes(64 * 1024)
            while self.flooded[-1] < script.flood:
                await data.send_data(block)
                self.flooded[-1] += len(block)
            if script.end:
                await stream.send_trailing_metadata(status=Status.OK)
            else:
                await asyncio.sleep(3600)  # hold the stream open until the agent drops it
        except Exception:  # the agent reset the stream or hung up: that is the point
            return
