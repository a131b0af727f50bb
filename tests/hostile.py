"""A hostile gRPC peer for tests: raw bytes on the agent stream, the status read off the wire.

grpclib's client is used for the HTTP/2 connection only; what goes into the stream's DATA frames
is written by hand (any prefix, any length, any bytes), and the server's answer is read from the
raw response headers or trailers, so a status is seen even when the server resets the stream
right after sending it (grpclib's own client may then report only the reset).
"""

from __future__ import annotations

import struct
from typing import Any

import grpclib.client
import grpclib.const
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.metadata import decode_grpc_message
from grpclib.stream import recv_message
from h2.exceptions import H2Error

from fleet.proto import agent_service as pb
from fleet.wire import METHOD_PATH

_GONE = (StreamTerminatedError, GRPCError, ProtocolError, H2Error, ConnectionError, AssertionError)


def frame(payload: bytes, *, declared: int | None = None, flag: int = 0) -> bytes:
    """A gRPC length-prefixed message; ``declared`` overrides the length in the prefix."""
    return struct.pack(">BI", flag, len(payload) if declared is None else declared) + payload


def message(vps_id: int = 0, secret: str = "", **payload: Any) -> bytes:
    """A framed ``MessageToServer``: ``message(1, secret, batch_command_result=...)``."""
    return frame(bytes(pb.MessageToServer(vps_db_id=vps_id, agent_secret=secret, **payload)))


def handshake(vps_id: int, secret: str, **fields: Any) -> bytes:
    return message(vps_id, secret, agent_handshake=pb.AgentHandshake(hostname="hostile", **fields))


class RawPeer:
    """One stream to the agent service, written byte by byte.

    Use from trio (inside ``trio_asyncio.open_loop()``): ``await peer.open()``, ``send``,
    ``receive``, ``status``, and ``close`` at the end.
    """

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self._host, self._port = host, int(port)
        self._channel: grpclib.client.Channel | None = None
        self._stream: Any = None
        #: Bytes ``flood`` got through (after its prefix).
        self.sent = 0

    async def open(self) -> None:
        await trio_asyncio.aio_as_trio(self._open)()

    async def _open(self) -> None:
        self._channel = grpclib.client.Channel(self._host, self._port)
        self._stream = self._channel.request(
            METHOD_PATH,
            grpclib.const.Cardinality.STREAM_STREAM,
            pb.MessageToServer,
            pb.MessageToAgent,
        )
        await self._stream.__aenter__()
        await self._stream.send_request()

    @property
    def _data(self) -> Any:
        return self._stream._stream  # grpclib's protocol stream: raw DATA frames

    async def send(self, data: bytes) -> bool:
        """Write ``data`` into the stream; False when the stream or connection is gone."""
        try:
            await trio_asyncio.aio_as_trio(self._data.send_data)(data)
        except _GONE:
            return False
        return True

    async def end(self) -> None:
        """End this side of the stream (END_STREAM), as an agent that hangs up."""
        try:
            await trio_asyncio.aio_as_trio(self._data.end)()
        except _GONE:
            pass

    async def flood(self, prefix: bytes, total: int, chunk: int = 64 * 1024) -> None:
        """Send ``prefix`` then zero bytes until ``total`` or the stream ends, counting them in
        ``sent``. Flow control makes this wait while the server reads nothing: run it beside
        ``status()`` and cancel it."""
        self.sent = 0
        if not await self.send(prefix):
            return
        block = bytes(chunk)
        while self.sent < total:
            size = min(chunk, total - self.sent)
            if not await self.send(block[:size]):
                return
            self.sent += size

    async def receive(self) -> pb.MessageToAgent | None:
        """The next message from the server, None when its side ended or the stream broke."""

        async def read() -> Any:
            return await recv_message(self._data, ProtoCodec(), pb.MessageToAgent)

        try:
            return await trio_asyncio.aio_as_trio(read)()  # type: ignore[no-any-return]
        except _GONE:
            return None

    async def status(self) -> tuple[Status, str]:
        """The gRPC status the server ended the stream with (from its headers or trailers)."""

        async def read() -> tuple[Status, str]:
            headers = dict(await self._data.recv_headers())
            if "grpc-status" not in headers:
                headers = dict(await self._data.recv_trailers())
            text = decode_grpc_message(headers.get("grpc-message", ""))
            return Status(int(headers["grpc-status"])), text

        return await trio_asyncio.aio_as_trio(read)()

    async def flood_until_status(self, prefix: bytes, total: int) -> tuple[tuple[Status, str], int]:
        """Send ``prefix`` and up to ``total`` bytes after it while waiting for the status;
        return the status and how many bytes the server let through."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.flood, prefix, total)
            result = await self.status()
            nursery.cancel_scope.cancel()
        return result, self.sent

    async def close(self) -> None:
        await trio_asyncio.aio_as_trio(self._close)()

    async def _close(self) -> None:
        if self._stream is not None:
            try:
                await self._stream.__aexit__(None, None, None)
            except (*_GONE, Exception):
                pass
        if self._channel is not None:
            self._channel.close()
