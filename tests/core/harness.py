"""A ``BatchHarness`` that feeds a batch events and checks its effects (h11's ConnectionPair).

The harness owns the clock: every call takes an optional ``at`` (absolute time) and otherwise
reuses the current one, so a test reads as a timeline::

    h = BatchHarness(3)
    h.start()
    h.send(Dispatched("c1"), at=1, expect=[ChildChanged("c1"), BatchChanged()])
    h.illegal(Dispatched("c1"))          # raises InvalidTransition, changes nothing
    h.lose(1, at=5)                        # VPS 1's agent disconnected
    h.connect(1, ["c1"], at=6, expect=[ChildChanged("c1")])   # ...and came back listing c1
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import pytest

from fleet.core import (
    Acked,
    Batch,
    BatchTimers,
    ChildStatus,
    ChildTask,
    Dispatched,
    Effect,
    Event,
    InvalidTransition,
    SendCommand,
    Started,
    Tick,
)

__all__ = ["BatchHarness", "snapshot", "tasks"]


def tasks(n: int) -> list[ChildTask]:
    """``n`` fresh children ``c1``..``cN`` on VPSes 1..N."""
    return [ChildTask(f"c{i}", i, vps_name=f"vps-{i}") for i in range(1, n + 1)]


def snapshot(batch: Batch) -> dict[str, Any]:
    """Everything a batch holds, deep-copied (children included) for before/after checks."""
    return copy.deepcopy(vars(batch))


class BatchHarness:
    """A batch of ``n`` children plus a clock; feeds events and asserts effects."""

    def __init__(
        self,
        n: int = 2,
        *,
        timeout_s: float = 0,
        timers: BatchTimers | None = None,
        now: float = 0.0,
    ) -> None:
        self.batch = Batch("b1", tasks(n), timeout_s=timeout_s, timers=timers)
        self.now = now

    # --- looking --------------------------------------------------------------------------

    def child(self, child_id: str) -> ChildTask:
        return self.batch.children[child_id]

    def status(self, child_id: str) -> ChildStatus:
        return self.child(child_id).status

    def statuses(self) -> dict[str, ChildStatus]:
        return {cid: t.status for cid, t in self.batch.children.items()}

    # --- driving --------------------------------------------------------------------------

    def _at(self, at: float | None) -> float:
        if at is not None:
            assert at >= self.now, "the harness clock never goes back"
            self.now = at
        return self.now

    def start(self, *, at: float | None = None) -> list[Effect]:
        effects = self.batch.start(now=self._at(at))
        assert all(isinstance(e, SendCommand) for e in effects)
        return effects

    def send(
        self,
        event: Event,
        *,
        at: float | None = None,
        expect: Sequence[Effect] | None = None,
    ) -> list[Effect]:
        """Feed ``event``; when ``expect`` is given, the effects must be exactly that list."""
        effects = self.batch.handle(event, now=self._at(at))
        if expect is not None:
            assert effects == list(expect)
        return effects

    def connect(
        self,
        vps_id: int,
        open_ids: Collection[str] | None,
        *,
        at: float | None = None,
        expect: Sequence[Effect] | None = None,
    ) -> list[Effect]:
        """``vps_id``'s agent (re)connected, listing ``open_ids`` (``None``: a legacy peer)."""
        effects = self.batch.agent_connected(vps_id, open_ids, now=self._at(at))
        if expect is not None:
            assert effects == list(expect)
        return effects

    def lose(
        self,
        vps_id: int,
        *,
        at: float | None = None,
        expect: Sequence[Effect] | None = None,
    ) -> list[Effect]:
        """``vps_id``'s agent disconnected."""
        effects = self.batch.agent_lost(vps_id, now=self._at(at))
        if expect is not None:
            assert effects == list(expect)
        return effects

    def tick(
        self, *, at: float | None = None, expect: Sequence[Effect] | None = None
    ) -> list[Effect]:
        return self.send(Tick(), at=at, expect=expect)

    def send_all(self, events: Iterable[Event], *, at: float | None = None) -> list[Effect]:
        out: list[Effect] = []
        for event in events:
            out += self.send(event, at=at)
        return out

    def illegal(self, event: Event, *, at: float | None = None) -> InvalidTransition:
        """``event`` must raise ``InvalidTransition`` and leave the batch exactly as it was."""
        before = snapshot(self.batch)
        with pytest.raises(InvalidTransition) as info:
            self.batch.handle(event, now=self._at(at))
        assert vars(self.batch) == before
        return info.value

    # --- shortcuts to common states ---------------------------------------------------------

    def dispatch(self, *child_ids: str, at: float | None = None) -> None:
        for cid in child_ids:
            self.send(Dispatched(cid), at=at)

    def run(self, *child_ids: str, at: float | None = None) -> None:
        """Bring children from ``PENDING`` to ``EXECUTING`` (sent, accepted, started)."""
        for cid in child_ids:
            self.send_all([Dispatched(cid), Acked(cid), Started(cid, pid=7)], at=at)
            assert self.status(cid) is ChildStatus.EXECUTING
