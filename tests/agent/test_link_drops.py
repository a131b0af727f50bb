"""A connection dropped the moment it opens (a server or proxy that accepts and closes at once,
as while a server restarts behind a load balancer) is a failed attempt, never a crash."""

from __future__ import annotations

import functools
import itertools
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio_asyncio

from fleet.agent.config import AgentConfig
from fleet.agent.link import LinkError, open_link
from fleet.proto import agent_service as pb


@pytest.fixture
async def aio() -> AsyncIterator[Any]:
    async with trio_asyncio.open_loop() as loop:
        yield loop


async def _reset_at_once(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def test_a_connection_reset_as_it_opens_is_a_link_error(aio: Any) -> None:
    """grpclib 0.4.9 raised AttributeError ('Connection' object has no attribute
    '_transport') when the reset came between its connect and the stream's creation, which
    crashed fleet-agent; 200 attempts make that window likely."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, _reset_at_once, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            config = AgentConfig.for_test(f"127.0.0.1:{port}")
            for _ in range(200):
                with pytest.raises(LinkError):
                    async with open_link(config, pb.AgentHandshake(), itertools.count(1)):
                        raise AssertionError("no link can open")
            nursery.cancel_scope.cancel()
