"""What both ends of the agent protocol share beyond the generated messages of ``fleet.proto``.

``METHOD_PATH`` is the one gRPC method (a bidirectional stream) an agent opens on the server;
``open_loop`` is the asyncio loop that hosts grpclib inside trio. Together with
``fleet.server.rpc`` and ``fleet.agent.link`` (its two users) this is the only code that touches
asyncio: everything else is plain trio.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any, Final, Protocol

import trio_asyncio

__all__ = ["METHOD_PATH", "WRITE_BYTES", "framed", "open_loop"]

#: About how many bytes of framed messages go into one write (one HTTP/2 DATA send).
WRITE_BYTES: Final = 1024 * 1024
_PREFIX = struct.Struct(">BI")


class _Serializable(Protocol):
    def SerializeToString(self) -> bytes: ...


METHOD_PATH: Final = "/agent_service.AgentCommunicationService/EstablishCommunicationStream"
"""``/{package}.{service}/{method}`` of the protocol's one RPC, a bidirectional stream."""


def open_loop() -> Any:
    """The asyncio loop that hosts grpclib inside trio: ``async with open_loop():`` once, at the
    top of the trio run, around the gRPC server or any number of agents."""
    return trio_asyncio.open_loop()


def framed(messages: Iterable[_Serializable], limit: int = WRITE_BYTES) -> Iterator[bytes]:
    """The messages in gRPC's length-prefixed framing, several per buffer of about ``limit``
    bytes (a message bigger than ``limit`` is a buffer of its own).

    A gRPC stream is a byte stream of such frames: how they are cut into HTTP/2 DATA frames is
    free, so every peer reads a batch sent as one buffer exactly as the same messages sent one
    by one. One buffer costs h2 and grpclib one pass instead of one per message.
    """
    parts: list[bytes] = []
    size = 0
    for message in messages:
        body = message.SerializeToString()
        if parts and size + len(body) + 5 > limit:
            yield b"".join(parts)
            parts, size = [], 0
        parts += (_PREFIX.pack(0, len(body)), body)
        size += len(body) + 5
    if parts:
        yield b"".join(parts)
