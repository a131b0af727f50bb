from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from .harness import Engine


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """A running supervisor with fake agents; use with the ``autojump_clock`` fixture."""
    async with trio.open_nursery() as nursery:
        engine = Engine(nursery, tmp_path / "logs")
        await engine.start()
        yield engine
        nursery.cancel_scope.cancel(reason="test over")
