"""An agent given several servers moves to the next one at once when one fails; the backoff
comes only after a whole round failed."""

from __future__ import annotations

import socket

import trio

from fleet.agent.config import AgentConfig

from .conftest import running_agent
from .fakeserver import FakeServer


def _closed_port() -> int:
    """A loopback port nothing listens on (connecting is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_server_is_followed_by_the_next_at_once(server: FakeServer) -> None:
    dead = f"127.0.0.1:{_closed_port()}"
    # A first round's backoff of 30 s would blow the 10 s bound: the next server comes first.
    config = AgentConfig.for_test(
        f"{dead},{server.address}", reconnect_min_s=30.0, reconnect_max_s=60.0
    )
    with trio.fail_after(10):
        async with running_agent(config) as connected:
            assert not connected  # the first attempt (the dead server) failed
            await server.wait_connected()
            await server.run_command("c1", "echo moved")
            result = await server.wait_result("c1")
    assert result.exit_code == 0


async def test_when_the_server_goes_the_agent_moves_to_the_next(server: FakeServer) -> None:
    other = FakeServer()
    await other.start()
    try:
        config = AgentConfig.for_test(
            f"{server.address},{other.address}", reconnect_min_s=30.0, reconnect_max_s=60.0
        )
        with trio.fail_after(10):
            async with running_agent(config) as connected:
                assert connected
                await server.wait_connected()
                await server.stop()
                await other.wait_connected()
    finally:
        await other.stop()
