"""The four per-child timers of a batch, kept in one heap and decided in one place.

* reconnect grace: a child whose agent was lost is ``AGENT_UNREACHABLE`` once
  ``reconnect_grace_s`` passed without the agent coming back;
* terminate confirmation: a ``TERMINATING`` child whose connected agent did not confirm within
  ``terminate_confirm_s`` is a ``FAILURE`` ("the command may still be running"); the clock runs
  only while the agent is connected (a terminate cannot reach a lost agent; it is sent again,
  and the clock restarted, when the agent comes back);
* result deadline: a child with a command timeout and no result long after it
  (``timeout + result_slack_s``) is a ``FAILURE`` and its agent is told to terminate;
* agent wait (rollout R3): a child waiting for its agent is ``AGENT_UNREACHABLE`` once
  ``wait_for_agent_s`` passed without the agent connecting.

A child has at most one running deadline: the agent wait, else the lost agent's grace (no other
clock runs while its agent is away), else the earlier of confirmation and result deadline.
The heap holds ``(deadline, child id)`` entries; one whose child's deadline moved or ended is
stale and skipped (cheaper than removing it).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from ._status import ChildStatus
from ._task import ChildTask

__all__ = ["BatchTimers"]  # Deadlines and Expiry are the batch's own parts

S = ChildStatus


@dataclass(frozen=True)
class BatchTimers:
    """Durations (seconds) the batch's deadline rules use."""

    reconnect_grace_s: float = 30.0
    result_slack_s: float = 60.0
    terminate_confirm_s: float = 15.0

    def __post_init__(self) -> None:
        if min(self.reconnect_grace_s, self.result_slack_s, self.terminate_confirm_s) < 0:
            raise ValueError("durations must not be negative")


@dataclass(frozen=True)
class Expiry:
    """What a deadline that passed does to its child."""

    status: ChildStatus
    message: str
    terminate: bool = False  # the agent may still run it: tell it to stop


@dataclass
class Deadlines:
    """The children's deadlines of one batch (compared by value, like the rest of a batch)."""

    timers: BatchTimers
    timeout_s: float
    wait_for_agent_s: float
    _heap: list[tuple[float, str]] = field(default_factory=list)

    def of(self, task: ChildTask) -> float | None:
        """The child's running deadline, or ``None``."""
        if task.is_terminal:
            return None
        if task.waiting_since is not None:
            return task.waiting_since + self.wait_for_agent_s
        if task.lost_since is not None:
            return task.lost_since + self.timers.reconnect_grace_s
        candidates = []
        if task.status is S.TERMINATING and (confirm := self._confirm(task)) is not None:
            candidates.append(confirm)
        if self.timeout_s and task.sent_at is not None:
            candidates.append(task.sent_at + self.timeout_s + self.timers.result_slack_s)
        return min(candidates, default=None)

    def push(self, task: ChildTask) -> None:
        """Record the child's (new) deadline."""
        deadline = self.of(task)
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, task.child_id))

    def reset(self, tasks: Iterable[ChildTask]) -> None:
        self._heap = []
        for task in tasks:
            self.push(task)

    def next(self, children: Mapping[str, ChildTask]) -> float | None:
        """The earliest running deadline (stale entries are dropped on the way)."""
        while self._heap:
            deadline, child_id = self._heap[0]
            if self.of(children[child_id]) == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None

    def due(self, children: Mapping[str, ChildTask], now: float) -> Iterator[ChildTask]:
        """The children whose deadline passed at ``now``, earliest first."""
        while self._heap and self._heap[0][0] <= now:
            deadline, child_id = heapq.heappop(self._heap)
            task = children[child_id]
            if self.of(task) == deadline:
                yield task

    def expiry(self, task: ChildTask) -> Expiry:
        """What the child's passed deadline means (call for a child ``due`` returned)."""
        if task.waiting_since is not None:
            wait = self.wait_for_agent_s
            return Expiry(S.AGENT_UNREACHABLE, f"agent did not connect within {wait:g} s")
        if task.lost_since is not None:
            grace = self.timers.reconnect_grace_s
            if task.maybe_sent:
                return Expiry(
                    S.AGENT_UNREACHABLE,
                    "unknown whether the command reached the agent: the server restarted "
                    f"as it was being sent, and the agent did not come back within {grace:g} s",
                )
            return Expiry(
                S.AGENT_UNREACHABLE,
                f"the agent disconnected and did not come back within {grace:g} s",
            )
        if task.status is S.TERMINATING and self._confirm(task) == self.of(task):
            confirm = self.timers.terminate_confirm_s
            return Expiry(
                S.FAILURE,
                f"termination was not confirmed by the agent within {confirm:g} s; "
                "the command may still be running",
            )
        return Expiry(
            S.FAILURE,
            f"no result from the agent within {self.timeout_s:g} s timeout "
            f"(+{self.timers.result_slack_s:g} s)",
            terminate=True,
        )

    def _confirm(self, task: ChildTask) -> float | None:
        if task.terminate_requested_at is None:
            return None
        return task.terminate_requested_at + self.timers.terminate_confirm_s
