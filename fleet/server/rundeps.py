"""What a running batch depends on, and nothing more: the agents (to send to), a recorder
(write-behind persistence), a publisher (the live feed), the clock, its timers and limits.

``BatchRun`` receives one frozen ``RunDeps``; tests hand it fakes (an in-memory recorder, fake
agent sessions) and run the engine on trio's virtual clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from fleet import core

from .agents import AgentInfo, AgentRegistry
from .clock import WallClock
from .metrics import ServerMetrics
from .store import BatchUpdate, ChildUpdate

__all__ = ["NullFeed", "Publisher", "Recorder", "RunDeps"]


class Publisher(Protocol):
    """Where live events go (the feed hub). Must never block."""

    def publish(self, batch_id: str, event: dict[str, Any]) -> None: ...

    def has_subscribers(self, batch_id: str) -> bool: ...


class NullFeed:
    """A publisher with no subscribers (when the server runs without a feed)."""

    def publish(self, batch_id: str, event: dict[str, Any]) -> None:
        pass

    def has_subscribers(self, batch_id: str) -> bool:
        return False


class Recorder(Protocol):
    """Where changes are persisted (``WriteBack``): recorded now, committed soon, in order."""

    def child(self, update: ChildUpdate) -> None: ...

    def batch(self, update: BatchUpdate) -> None: ...

    def agent_info(self, vps_id: int, info: AgentInfo, at: datetime) -> None: ...

    def vps_seen(self, vps_id: int, at: datetime) -> None: ...

    def after_flush(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once everything recorded so far is committed."""


@dataclasses.dataclass(frozen=True)
class RunDeps:
    """Everything a ``BatchRun`` uses, and nothing more."""

    agents: AgentRegistry
    recorder: Recorder
    feed: Publisher
    clock: WallClock
    timers: core.BatchTimers
    output_cap: int
    summary_lines: int = 20
    metrics: ServerMetrics = dataclasses.field(default_factory=ServerMetrics)
    #: Also given every output byte stored, ``(child_id, stream, offset, data)`` (a cluster
    #: keeps output in its database).
    chunks: Callable[[str, str, int, bytes], None] | None = None
