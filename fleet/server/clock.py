"""The server's one clock: trio's, converted to wall-clock time only at the edge.

Every deadline in the server runs on ``trio.current_time()`` (so tests can drive it with trio's
virtual clock); ``fleet.core`` is given that time as ``now``. A timestamp that is stored or shown
is converted here, and a stored one converted back when a batch is restored after a restart.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import trio

__all__ = ["WallClock"]


class WallClock:
    """Maps trio time to wall-clock time. Build it inside ``trio.run``."""

    def __init__(self) -> None:
        self._offset = time.time() - trio.current_time()

    def now(self) -> float:
        """Trio time: what deadlines and ``fleet.core`` use."""
        return trio.current_time()

    def to_datetime(self, t: float | None) -> datetime | None:
        """A trio time as a UTC wall-clock timestamp (``None`` stays ``None``)."""
        return None if t is None else datetime.fromtimestamp(t + self._offset, UTC)

    def from_datetime(self, value: datetime | None) -> float | None:
        """A stored wall-clock timestamp as trio time."""
        return None if value is None else value.timestamp() - self._offset
