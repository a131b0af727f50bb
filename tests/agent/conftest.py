from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_asyncio

from fleet.agent.config import AgentConfig
from fleet.agent.run import run_agent
from tests.aioloop import tolerate_collected_channels

from .fakeserver import FakeServer


@pytest.fixture
async def aio_loop() -> AsyncIterator[Any]:
    """The trio-asyncio loop every grpclib-using fixture depends on."""
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(tolerate_collected_channels)
        yield loop


@pytest.fixture
async def server(aio_loop: Any) -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def config(server: FakeServer) -> AgentConfig:
    return AgentConfig.for_test(server.address)


@asynccontextmanager
async def running_agent(config: AgentConfig, **options: Any) -> AsyncIterator[bool]:
    """Run an agent for the duration of the block; yields what ``started()`` reported."""
    async with trio.open_nursery() as nursery:
        connected: bool = await nursery.start(functools.partial(run_agent, config, **options))
        yield connected
        nursery.cancel_scope.cancel()
