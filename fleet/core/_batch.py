"""A batch: one command sent to many VPSes, and the rules that aggregate its children.

Theory of operation
-------------------
Event-triggered transitions are per child (``fleet.core._task.CHILD_TRANSITIONS``); the batch
routes each child event to its child. State-triggered transitions are batch-level rules in
``_settle``, applied after every event until nothing changes (h11's split):

1. ``PENDING`` becomes ``IN_PROGRESS`` once no child is ``PENDING`` any more (every target was
   either sent its command or found unreachable), or as soon as one child was sent.
2. When every child is terminal the batch becomes final:
   a user terminated the batch → ``TERMINATED``; no child ever reached its agent →
   ``FAILED_TO_START``; every child ``SUCCESS`` → ``COMPLETED_SUCCESSFULLY``; otherwise
   ``COMPLETED_WITH_ERRORS``.
3. A final batch never changes again; terminating it is a harmless no-op.

Deadlines (``next_deadline``) are fed back as ``Tick``: a child whose agent was lost is
``AGENT_UNREACHABLE`` once ``reconnect_grace_s`` passed without the agent coming back; a child
with a command timeout that has no result long after it (``timeout + result_slack_s``) is a
``FAILURE`` and is told to terminate.

Effects tell the owner what to do: ``SendCommand`` (once per child, from ``start``),
``SendTerminate`` (cancel that child's scope; its cleanup tells the agent), ``ChildChanged`` and
``BatchChanged`` (persist and publish).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import InvalidTransition
from ._events import (
    AgentLost,
    BatchChanged,
    ChildChanged,
    ChildEvent,
    Effect,
    Event,
    SendCommand,
    SendTerminate,
    TerminateBatch,
    TerminateChild,
    Tick,
    Unreachable,
)
from ._status import BatchStatus, ChildStatus
from ._task import ChildTask

__all__ = ["BATCH_TRANSITIONS", "Batch", "BatchTimers", "final_status"]

B = BatchStatus

#: Batch-level transitions that users drive (the rest are rules in ``_settle``).
BATCH_TRANSITIONS: dict[tuple[BatchStatus, type], BatchStatus] = {
    (B.PENDING, TerminateBatch): B.TERMINATING,
    (B.IN_PROGRESS, TerminateBatch): B.TERMINATING,
    (B.TERMINATING, TerminateBatch): B.TERMINATING,
    **{(s, TerminateBatch): s for s in B if s.is_terminal},
}


@dataclass(frozen=True)
class BatchTimers:
    """Durations (seconds) the batch's deadline rules use."""

    reconnect_grace_s: float = 30.0
    result_slack_s: float = 60.0

    def __post_init__(self) -> None:
        if self.reconnect_grace_s < 0 or self.result_slack_s < 0:
            raise ValueError("durations must not be negative")


#: Statuses only a child whose command reached its agent can have (even when a restored child
#: has no ``sent_at``).
_REACHED = frozenset(
    {
        ChildStatus.SENT_TO_AGENT,
        ChildStatus.AGENT_ACCEPTED,
        ChildStatus.EXECUTING,
        ChildStatus.TERMINATING,
        ChildStatus.SUCCESS,
        ChildStatus.FAILURE,
        ChildStatus.AGENT_REJECTED,
    }
)


def final_status(children: Iterable[ChildTask], *, user_terminated: bool) -> BatchStatus:
    """The final status of a batch whose children are all terminal (SPEC §3)."""
    tasks = list(children)
    if user_terminated:
        return B.TERMINATED
    if not any(t.sent_at is not None or t.status in _REACHED for t in tasks):
        return B.FAILED_TO_START
    if all(t.status is ChildStatus.SUCCESS for t in tasks):
        return B.COMPLETED_SUCCESSFULLY
    return B.COMPLETED_WITH_ERRORS


class Batch:
    """The state of one batch and its children; events in, effects out.

    Args:
        batch_id: the batch's id.
        children: its tasks (at least one), each ``PENDING``.
        timeout_s: the command's timeout (0 = none), for the server-side result deadline.
        timers: reconnect grace and result slack.
    """

    def __init__(
        self,
        batch_id: str,
        children: Iterable[ChildTask],
        *,
        timeout_s: float = 0,
        timers: BatchTimers | None = None,
    ) -> None:
        self.batch_id = batch_id
        tasks = list(children)
        self.children: dict[str, ChildTask] = {c.child_id: c for c in tasks}
        if not self.children:
            raise ValueError("a batch needs at least one child")
        if len(self.children) != len(tasks):
            raise ValueError("child ids must be unique")
        if timeout_s < 0:
            raise ValueError("timeout_s must not be negative")
        self.status = B.PENDING
        self.user_terminated = False
        self.timeout_s = timeout_s
        self.timers = timers or BatchTimers()
        self.completed_at: float | None = None
        self.updated_at: float | None = None
        self._started = False
        # Kept up to date on every change so that an event costs O(1) (O(log n) with a
        # deadline), not a scan of every child: a batch may have 10,000 of them.
        self._counts: Counter[ChildStatus] = Counter()
        self._sent_any = False
        self._deadlines: list[tuple[float, str]] = []  # a heap; stale entries are skipped
        self._recount()

    @property
    def is_final(self) -> bool:
        return self.status.is_terminal

    def counts(self) -> dict[str, int]:
        """How many children are in each status (statuses with none are left out)."""
        return {status.value: n for status, n in self._counts.items() if n}

    def start(self, *, now: float) -> list[Effect]:
        """Ask for every ``PENDING`` child's command to be sent. Call once.

        A child that already ended (terminated before the batch was started) is not sent.
        """
        if self._started:
            raise InvalidTransition(self.status, "start")
        self._started = True
        self.updated_at = now
        return [
            SendCommand(t.child_id, t.vps_id)
            for t in self.children.values()
            if t.status is ChildStatus.PENDING
        ]

    def resume(self, *, now: float, user_terminated: bool = False) -> list[Effect]:
        """Carry on after the owner restarted, with children restored to their stored status.

        A child that was never sent is unreachable; a live one is treated as having lost its
        agent at ``now`` (unless already lost), so the agent gets the reconnect grace to come
        back and report. ``user_terminated`` restores a batch that was being terminated.
        Call instead of ``start``.
        """
        if self._started:
            raise InvalidTransition(self.status, "resume")
        self._started = True
        self._recount()  # the children were restored after this batch was built
        if user_terminated:
            self.user_terminated = True
            self.status = B.TERMINATING
        effects: list[Effect] = []
        for task in self.children.values():
            if task.is_terminal:
                continue
            if task.status is ChildStatus.PENDING:
                self._child_event(
                    Unreachable(task.child_id, "the server restarted before sending the command"),
                    now,
                    effects,
                )
            else:
                task.sent_at = task.sent_at if task.sent_at is not None else now
                self._child_event(AgentLost(task.child_id), now, effects)
        self._settle(now, effects)
        return effects

    def handle(self, event: Event, *, now: float) -> list[Effect]:
        """Apply one event and return the effects for the owner to carry out.

        Raises:
            InvalidTransition: the event is illegal for its child (or the batch); nothing
                changed.
            KeyError: the event names a child this batch does not have.
        """
        effects: list[Effect] = []
        if isinstance(event, TerminateBatch):
            self._terminate_batch(now, effects)
        elif isinstance(event, Tick):
            self._tick(now, effects)
        else:
            self._child_event(event, now, effects)
        self._settle(now, effects)
        return effects

    def next_deadline(self) -> float | None:
        """The earliest time at which a ``Tick`` would change something, or ``None``."""
        while self._deadlines:
            deadline, child_id = self._deadlines[0]
            if self._deadline(self.children[child_id]) == deadline:
                return deadline
            heapq.heappop(self._deadlines)  # stale: that child's deadline moved or ended
        return None

    # --- internals ---------------------------------------------------------------------------

    def _child_event(self, event: ChildEvent, now: float, effects: list[Effect]) -> None:
        task = self.children[event.child_id]
        was, was_lost, was_deadline = task.status, task.lost_since, self._deadline(task)
        changed = task.handle(event, now=now)
        self._account(task, was, was_deadline)
        if isinstance(event, TerminateChild) and was is not task.status and not task.is_terminal:
            effects.append(SendTerminate(task.child_id, task.vps_id))
        # ``lost_since`` is not shown by the API but must be persisted (both ways) so that the
        # reconnect grace survives a restart.
        if changed or task.lost_since != was_lost:
            effects.append(ChildChanged(task.child_id))

    def _terminate_batch(self, now: float, effects: list[Effect]) -> None:
        self.status = BATCH_TRANSITIONS[(self.status, TerminateBatch)]
        if self.is_final:
            return
        if not self.user_terminated:
            self.user_terminated = True
            self.updated_at = now
            effects.append(BatchChanged())
        for task in self.children.values():
            if task.is_terminal or task.status is ChildStatus.TERMINATING:
                continue
            self._child_event(TerminateChild(task.child_id), now, effects)

    def _tick(self, now: float, effects: list[Effect]) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, child_id = heapq.heappop(self._deadlines)
            task = self.children[child_id]
            if self._deadline(task) != deadline:
                continue  # stale entry
            was = task.status
            if task.lost_since is not None:
                grace = self.timers.reconnect_grace_s
                task.expire(
                    ChildStatus.AGENT_UNREACHABLE,
                    f"the agent disconnected and did not come back within {grace:g} s",
                    now=now,
                )
            else:
                task.expire(
                    ChildStatus.FAILURE,
                    f"no result from the agent within {self.timeout_s:g} s timeout "
                    f"(+{self.timers.result_slack_s:g} s)",
                    now=now,
                )
                effects.append(SendTerminate(task.child_id, task.vps_id))
            self._account(task, was, deadline)
            effects.append(ChildChanged(task.child_id))

    def _account(self, task: ChildTask, was: ChildStatus, was_deadline: float | None) -> None:
        """Update the counters and the deadline heap after ``task`` changed."""
        if task.status is not was:
            self._counts[was] -= 1
            self._counts[task.status] += 1
        if task.sent_at is not None:
            self._sent_any = True
        if self._deadline(task) != was_deadline:
            self._push_deadline(task)

    def _recount(self) -> None:
        tasks = self.children.values()
        self._counts = Counter(t.status for t in tasks)
        self._sent_any = any(t.sent_at is not None for t in tasks)
        self._deadlines = []
        for task in tasks:
            self._push_deadline(task)

    def _push_deadline(self, task: ChildTask) -> None:
        deadline = self._deadline(task)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, task.child_id))

    def _deadline(self, task: ChildTask) -> float | None:
        if task.is_terminal:
            return None
        if task.lost_since is not None:
            return task.lost_since + self.timers.reconnect_grace_s
        if self.timeout_s and task.sent_at is not None:
            return task.sent_at + self.timeout_s + self.timers.result_slack_s
        return None

    def _settle(self, now: float, effects: list[Effect]) -> None:
        before = self.status
        if self.status is B.PENDING and (not self._counts[ChildStatus.PENDING] or self._sent_any):
            self.status = B.IN_PROGRESS
        live = sum(n for status, n in self._counts.items() if not status.is_terminal)
        if not self.is_final and not live:
            self.status = final_status(self.children.values(), user_terminated=self.user_terminated)
            self.completed_at = now
        if self.status is not before:
            self.updated_at = now
            if not any(isinstance(e, BatchChanged) for e in effects):
                effects.append(BatchChanged())
