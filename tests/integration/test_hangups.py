"""Peers that hang up at the worst moment: an expected disconnect is an info line, never an
ERROR with a traceback, and the server forgets the stream.

grpclib cancels a stream's handler when its peer resets the stream or the connection is lost,
and logs ``Failed to handle cancellation`` (ERROR, with a traceback) when the handler then
ends any way but ``CancelledError``. The race that hit it under load: the peer resets its
stream right after its handshake, while the server is about to answer it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import trio
import trio_asyncio
from grpclib.exceptions import StreamTerminatedError
from grpclib.utils import Wrapper
from h2.exceptions import StreamClosedError

from fleet.server.agents import AgentInfo, AgentRegistry, Credentials, hash_secret
from fleet.server.config import ServerConfig
from fleet.server.rpc import RpcServer
from fleet.server.serve import Endpoints
from tests.hostile import RawPeer, handshake

from .conftest import add_vps, wait_online


class _ResetAfterHandshake:
    """A grpclib server stream whose peer sends a valid handshake and resets the stream as the
    server finishes reading it: grpclib's ``Wrapper`` cancels the handler (as
    ``protocol.Stream.__terminated__`` does) and h2 refuses every later write."""

    def __init__(self, data: bytes, wrapper: Wrapper) -> None:
        self._stream = self  # rpc._receive reads the protocol stream
        self.peer = self
        self._data = data
        self._wrapper = wrapper

    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    async def recv_data(self, size: int) -> bytes:
        chunk, self._data = self._data[:size], self._data[size:]
        if not self._data:
            self._wrapper.cancel(StreamTerminatedError("Stream reset by remote party"))
        return chunk

    async def send_message(self, message: Any) -> None:
        raise StreamClosedError(1)

    async def send_trailing_metadata(self, **_: Any) -> None:
        raise StreamClosedError(1)


class _Hooks:
    def __init__(self) -> None:
        self.connected = 0

    def connected(self, session: Any, info: AgentInfo) -> None:  # type: ignore[no-redef]
        self.connected += 1

    def message(self, session: Any, message: Any) -> None:
        raise AssertionError("no message expected")

    def disconnected(self, session: Any) -> None:
        pass


async def test_a_reset_right_after_the_handshake_ends_the_handler_as_cancelled(
    loop: Any, tmp_path: Any
) -> None:
    """The handler ends with CancelledError (what grpclib's Wrapper needs to log the end as
    one info line), not with the write's StreamClosedError, and never attaches the session."""
    registry = AgentRegistry()
    hooks = _Hooks()
    service = RpcServer(
        ServerConfig.for_test(tmp_path / "data"),
        Credentials([(7, hash_secret("s3cret"))]),
        registry,
        hooks,  # type: ignore[arg-type]
    )

    async def handle() -> str:
        wrapper = Wrapper()
        stream = _ResetAfterHandshake(handshake(7, "s3cret"), wrapper)
        try:
            with wrapper:  # as grpclib's request_handler runs every handler
                await service._handle(stream)  # type: ignore[arg-type]
        except StreamTerminatedError:
            return "cancel failed" if wrapper.cancel_failed else "cancelled"
        return "returned"

    with trio.fail_after(10):
        outcome = await trio_asyncio.aio_as_trio(lambda: asyncio.ensure_future(handle()))()
    assert outcome == "cancelled"
    assert not registry.is_online(7)
    assert hooks.connected == 0


@pytest.mark.parametrize("how", ["reset", "close", "end"])
async def test_peers_hanging_up_right_after_their_handshake_log_no_error(
    server: Endpoints, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """150 peers send a valid handshake and at once reset the stream, drop the connection, or
    end their side: no ERROR record (grpclib's "Failed to handle cancellation" traceback), and
    every VPS is offline afterwards; a real agent still gets in."""
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        vpses = [await add_vps(client, f"v{i}") for i in range(30)]

        async def hang_up(vps: dict[str, Any]) -> None:
            peer = RawPeer(server.grpc_address)
            await peer.open()
            await peer.send(handshake(vps["id"], vps["agent_secret"]))
            if how == "reset":
                await trio_asyncio.aio_as_trio(peer._data.reset)()
            elif how == "end":
                await peer.end()
            peer._channel.close()  # type: ignore[union-attr]

        for _ in range(5):
            async with trio.open_nursery() as nursery:
                for vps in vpses:
                    nursery.start_soon(hang_up, vps)
        for vps in vpses:
            await wait_online(server, vps["id"], online=False)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [(r.name, r.getMessage()) for r in errors]
        assert not any(r.exc_info for r in caplog.records if r.name.startswith("grpclib"))
        peer = RawPeer(server.grpc_address)
        await peer.open()
        assert await peer.send(handshake(vpses[0]["id"], vpses[0]["agent_secret"]))
        reply = await peer.receive()
        assert reply is not None
        assert reply.server_handshake_ack is not None
        assert reply.server_handshake_ack.authentication_successful
        await peer.close()


@pytest.mark.parametrize("server_config", [{"keepalive_s": 0.3, "keepalive_timeout_s": 0.5}],
                         indirect=True)  # fmt: skip
async def test_a_peer_gone_silent_is_dropped_within_the_keepalive(
    server: Endpoints, client: httpx.AsyncClient, server_config: ServerConfig
) -> None:
    """A peer that answered the server's pings for a while, then goes silent (its network
    black-holed: it reads nothing more), is dropped within keepalive + its timeout. grpclib's
    default let a ping follow the previous one only after 300 s, so only the first ping of a
    connection ever counted (found by the fault suite's network stall)."""
    with trio.fail_after(20):
        vps = await add_vps(client, "silent")
        peer = RawPeer(server.grpc_address)
        await peer.open()
        assert await peer.send(handshake(vps["id"], vps["agent_secret"]))
        reply = await peer.receive()
        assert reply is not None
        await wait_online(server, vps["id"])
        # Time passing is the subject here: several pings are sent and answered first.
        await trio.sleep(4 * server_config.keepalive_s)
        assert server.services.registry.is_online(vps["id"])
        channel: Any = peer._channel
        channel._protocol.connection._transport.pause_reading()  # the network goes silent
        bound = server_config.keepalive_s + server_config.keepalive_timeout_s + 1.0
        with trio.fail_after(bound):
            await wait_online(server, vps["id"], online=False)
        await peer.close()
