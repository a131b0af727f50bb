"""What the agent accepts from a server, a peer like any other: at most 4 MiB per message, read
off the prefix before the body; anything undecodable or mistyped ends the link with a LinkError.

Memory under a 200 MB message from a server is measured on a real agent process in
``tests/e2e/test_hostile_rss.py``.
"""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.agent.config import AgentConfig
from fleet.agent.link import MAX_MESSAGE_BYTES, LinkError, open_link
from fleet.agent.run import run_agent
from fleet.proto import agent_service as pb
from tests.protofuzz import to_agent

from .hostileserver import HostileServer, Script, frame

WINDOW = 4 * 1024 * 1024 + 64 * 1024  # grpclib's stream window, plus a frame of slack


async def _exchange(server: HostileServer) -> tuple[list[pb.MessageToAgent], LinkError | None]:
    """Connect, handshake, read until the link ends; the messages and why it ended."""
    config = AgentConfig.for_test(server.address)
    received: list[pb.MessageToAgent] = []
    try:
        async with open_link(config, pb.AgentHandshake(), itertools.count(1)) as link:
            async for message in link:
                received.append(message)
    except LinkError as error:
        return received, error
    return received, None


@pytest.fixture
async def aio() -> AsyncIterator[Any]:
    async with trio_asyncio.open_loop() as loop:
        yield loop


async def _hostile(aio: Any, *scripts: Script) -> HostileServer:
    server = HostileServer(list(scripts))
    await server.start()
    return server


async def test_an_oversized_message_is_refused_unread(aio: Any) -> None:
    with trio.fail_after(20):
        server = await _hostile(aio, Script(frame(b"", declared=200_000_000), flood=200_000_000))
        received, error = await _exchange(server)
        assert received == []
        assert error is not None
        assert "200000000 bytes" in str(error)
        assert "RESOURCE_EXHAUSTED" in str(error)
        assert server.flooded[0] <= WINDOW  # flow control stopped the server
        await server.stop()


def _request(content_size: int) -> bytes:
    request = pb.BatchAgentCommandRequest(command_id="c", content="x" * content_size)
    return bytes(pb.MessageToAgent(batch_agent_command_request=request))


async def test_a_message_at_the_limit_is_accepted(aio: Any) -> None:
    with trio.fail_after(20):
        body = next(
            encoded
            for size in range(MAX_MESSAGE_BYTES - 20, MAX_MESSAGE_BYTES)
            if len(encoded := _request(size)) == MAX_MESSAGE_BYTES
        )
        server = await _hostile(aio, Script(frame(body)), Script(frame(body + b"\x08\x01")))
        received, error = await _exchange(server)
        assert len(received) == 1
        assert received[0].batch_agent_command_request is not None
        assert error is not None
        assert "the server ended the stream" in str(error)
        received, error = await _exchange(server)  # one byte more
        assert received == []
        assert "RESOURCE_EXHAUSTED" in str(error)
        await server.stop()


@pytest.mark.parametrize(
    ("data", "says"),
    [
        # command_id (1) of a BatchAgentCommandRequest (8) sent as a varint
        (frame(b"\x42\x02\x08\x05"), "malformed message (batch_agent_command_request.command_id"),
        (frame(b"\x0a" + b"\xff" * 10 + b"\x01"), "does not decode"),
        (frame(b"abc", declared=10), "ended inside a message"),
        (b"\x01\x00\x00\x00\x00", "compressed"),
    ],
)
async def test_malformed_messages_end_the_link(aio: Any, data: bytes, says: str) -> None:
    with trio.fail_after(10):
        server = await _hostile(aio, Script(data))
        received, error = await _exchange(server)
        assert received == []
        assert error is not None
        assert says in str(error)
        await server.stop()


# --- Hypothesis: whatever a server sends, the agent's link ends with a LinkError ------------------


def _fuzz_once(data: bytes, flood: int = 0) -> None:
    async def main() -> None:
        async with trio_asyncio.open_loop():
            server = HostileServer([Script(data, flood=flood)])
            await server.start()
            try:
                with trio.fail_after(10):
                    received, error = await _exchange(server)
            finally:
                await server.stop()
        assert error is not None  # the link always ends (the server ends or breaks the stream)
        assert all(isinstance(m, pb.MessageToAgent) for m in received)

    trio.run(main)


messages = st.builds(
    pb.MessageToAgent,
    server_message_id=st.integers(0, 2**64 - 1),
    batch_agent_command_request=st.builds(
        pb.BatchAgentCommandRequest,
        command_id=st.text(max_size=40),
        type=st.integers(0, 2**31 - 1),
        content=st.text(max_size=200),
        working_directory=st.text(max_size=40),
        timeout_seconds=st.integers(0, 2**32 - 1),
    ),
)


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.binary(max_size=300),  # raw bytes: prefixes, lengths and bodies of any shape
        st.lists(st.binary(max_size=60).map(frame), max_size=4).map(b"".join),
        st.lists(messages.map(lambda m: frame(bytes(m))), max_size=3).map(b"".join),
        st.lists(to_agent.map(frame), min_size=1, max_size=3).map(b"".join),
    )
)
def test_fuzzed_server_bytes_end_the_link_cleanly(data: bytes) -> None:
    _fuzz_once(data)


# --- Hypothesis: whatever a server sends, a running agent survives and reconnects --------------


def _agent_survives(data: bytes) -> None:
    """A real agent (``--no-exec``: it must never run what a fuzzer wrote) gets ``data`` after
    its handshake; it must come back on a second connection, whatever the first did to it."""

    async def main(state: Path) -> None:
        async with trio_asyncio.open_loop():
            server = HostileServer([Script(data), Script(end=False)])
            await server.start()
            config = AgentConfig.for_test(server.address, no_exec=True, state_dir=state)
            try:
                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(functools.partial(run_agent, config))
                        await server.wait_connections(2)
                        nursery.cancel_scope.cancel()
            finally:
                await server.stop()

    with tempfile.TemporaryDirectory() as state:
        trio.run(main, Path(state) / "state")


ids = st.one_of(st.text(max_size=60), st.sampled_from(["", "../x", "a\nb", "x" * 5000]))
commands = st.one_of(
    st.builds(
        pb.BatchAgentCommandRequest,
        command_id=ids,
        type=st.integers(0, 2**31 - 1),
        content=st.text(max_size=100),
        working_directory=st.text(max_size=30),
        timeout_seconds=st.integers(0, 2**32 - 1),
    ).map(lambda p: pb.MessageToAgent(batch_agent_command_request=p)),
    st.builds(pb.BatchTerminateCommandRequest, command_id=ids).map(
        lambda p: pb.MessageToAgent(batch_terminate_command_request=p)
    ),
    st.builds(pb.BatchResultAck, command_id=ids).map(
        lambda p: pb.MessageToAgent(batch_result_ack=p)
    ),
    st.builds(pb.ServerHandshakeAck, authentication_successful=st.booleans()).map(
        lambda p: pb.MessageToAgent(server_handshake_ack=p)
    ),
)


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.one_of(commands.map(lambda m: frame(bytes(m))), to_agent.map(frame)),
        min_size=1,
        max_size=6,
    ).map(b"".join)
)
def test_fuzzed_server_messages_leave_the_agent_running(data: bytes) -> None:
    _agent_survives(data)
