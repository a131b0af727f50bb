"""A batch: one command sent to many VPSes, and the rules that aggregate its children.

Theory of operation
-------------------
Event-triggered transitions are per child (``fleet.core._task.CHILD_TRANSITIONS``); the batch
routes each child event to its child. State-triggered transitions are batch-level rules in
``_settle``, applied after every event:

1. ``PENDING`` becomes ``IN_PROGRESS`` once no child is ``PENDING`` any more (every target was
   either sent its command or found unreachable), or as soon as one child was sent.
2. When every child is terminal the batch becomes final:
   a user terminated the batch → ``TERMINATED``; no child ever reached its agent →
   ``FAILED_TO_START``; every child ``SUCCESS`` → ``COMPLETED_SUCCESSFULLY``; otherwise
   ``COMPLETED_WITH_ERRORS``.
3. A final batch never changes again; terminating it is a harmless no-op.

Before those two, the rollout rules (``fleet.core._rollout``: R1 stop at the error threshold,
R2 dispatch while a concurrency slot is free, R3 wait for an agent that is away) decide which
children are sent now; ``start`` sends only what they allow.

Deadlines (``next_deadline``), fed back as ``Tick``, are the four per-child timers (reconnect
grace, terminate confirmation, result deadline, agent wait), kept in one heap and decided in
``fleet.core._deadlines``; a passed one ends its child through ``ChildTask.expire``.

Agents coming and going are batch-level inputs (``agent_connected``, ``agent_lost``) that the
batch turns into child events for that VPS's children: an agent that lists the commands it holds
(the contract, ``open_command_ids_complete``) reconciles every live child at once; one that does not
gets the reconnect-grace rules.

Effects tell the owner what to do: ``SendCommand`` (dispatch; again for a child whose agent came
back without it), ``SendTerminate`` (cancel that child's scope, whose cleanup tells the agent),
``ChildChanged`` and ``BatchChanged`` (persist and publish).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable

from ._deadlines import BatchTimers, Deadlines
from ._errors import InvalidTransition
from ._events import (
    AgentAway,
    AgentBack,
    AgentLost,
    AgentReturned,
    BatchChanged,
    ChildChanged,
    ChildEvent,
    Effect,
    Event,
    Reconciled,
    SendCommand,
    SendTerminate,
    Skipped,
    TerminateBatch,
    TerminateChild,
    Tick,
    Unreachable,
)
from ._rollout import Dispatcher, Rollout
from ._status import BatchStatus, ChildStatus
from ._task import ChildTask

__all__ = ["BATCH_TRANSITIONS", "Batch", "final_status"]

B = BatchStatus
S = ChildStatus

#: Batch-level transitions that users drive (the rest are rules in ``_settle``).
BATCH_TRANSITIONS: dict[tuple[BatchStatus, type], BatchStatus] = {
    (B.PENDING, TerminateBatch): B.TERMINATING,
    (B.IN_PROGRESS, TerminateBatch): B.TERMINATING,
    (B.TERMINATING, TerminateBatch): B.TERMINATING,
    **{(s, TerminateBatch): s for s in B if s.is_terminal},
}


#: Statuses only a child whose command reached its agent can have (even when a restored child
#: has no ``sent_at``).
_REACHED = frozenset(
    {S.AGENT_ACCEPTED, S.EXECUTING, S.SUCCESS, S.FAILURE, S.TERMINATED, S.AGENT_REJECTED}
)
#: A live child that its agent does not list was accepted there before: the agent lost it.
_FORGOTTEN = (
    "the agent came back without this command (its state was lost); "
    "whether the command ran to the end is unknown"
)


def final_status(children: Iterable[ChildTask], *, user_terminated: bool) -> BatchStatus:
    """The final status of a batch whose children are all terminal."""
    tasks = list(children)
    if user_terminated:
        return B.TERMINATED
    if not any(t.sent_at is not None or t.status in _REACHED for t in tasks):
        return B.FAILED_TO_START
    if all(t.status is S.SUCCESS for t in tasks):
        return B.COMPLETED_SUCCESSFULLY
    return B.COMPLETED_WITH_ERRORS


class Batch:
    """The state of one batch and its children; events in, effects out.

    Args:
        batch_id: the batch's id.
        children: its tasks (at least one): ``PENDING`` ones for a new batch, or restored ones
            (``ChildTask.restore``) for ``resume``.
        timeout_s: the command's timeout (0 = none), for the server-side result deadline.
        timers: reconnect grace, result slack and terminate confirmation.
        rollout: concurrency, error threshold and agent wait (default: all at once, no
            threshold, no wait).
    """

    def __init__(
        self,
        batch_id: str,
        children: Iterable[ChildTask],
        *,
        timeout_s: float = 0,
        timers: BatchTimers | None = None,
        rollout: Rollout | None = None,
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
        # A VPS's children, so an agent coming or going costs O(its children).
        self._by_vps: dict[int, list[ChildTask]] = {}
        for task in tasks:
            self._by_vps.setdefault(task.vps_id, []).append(task)
        # Kept up to date on every change so that an event costs O(1) (O(log n) with a
        # deadline), not a scan of every child: a batch may have 10,000 of them.
        self._counts: Counter[ChildStatus] = Counter()
        self._sent_any = False
        self.rollout = rollout or Rollout()
        self._deadlines = Deadlines(self.timers, timeout_s, self.rollout.wait_for_agent_s)
        self._dispatch = Dispatcher(self.rollout, len(tasks))
        self._recount()

    @property
    def is_final(self) -> bool:
        return self.status.is_terminal

    def counts(self) -> dict[str, int]:
        """How many children are in each status (statuses with none are left out)."""
        return {status.value: n for status, n in self._counts.items() if n}

    @property
    def stop_reason(self) -> str | None:
        """Why dispatching stopped (error threshold, terminate), or ``None``."""
        return self._dispatch.stop_reason

    def rollout_counts(self) -> dict[str, int]:
        """``PENDING`` children split: ``queued`` (for a slot) and ``waiting_for_agent``."""
        waiting = len(self._dispatch.waiting)
        return {
            "queued": self._dispatch.queued(self._counts[S.PENDING]),
            "waiting_for_agent": waiting,
        }

    def wait_deadline(self, task: ChildTask) -> float | None:
        """Until when a child waiting for its agent waits (``None``: it does not wait)."""
        if task.waiting_since is None:
            return None
        return task.waiting_since + self.rollout.wait_for_agent_s

    def children_of(self, vps_id: int) -> list[ChildTask]:
        """The children that run on ``vps_id``."""
        return self._by_vps.get(vps_id, [])

    def start(self, *, now: float) -> list[Effect]:
        """Queue every ``PENDING`` child and ask for the commands the rollout allows now
        (every one without ``max_concurrency``). Call once.

        A child that already ended (terminated before the batch was started) is not sent.
        """
        if self._started:
            raise InvalidTransition(self.status, "start")
        self._started = True
        self.updated_at = now
        self._dispatch.queue.extend(
            t.child_id for t in self.children.values() if t.status is S.PENDING
        )
        effects: list[Effect] = []
        self._pump(effects)
        return effects

    def resume(
        self, *, now: float, user_terminated: bool = False, stop_reason: str | None = None
    ) -> list[Effect]:
        """Carry on after the owner restarted, with children restored as stored.

        Every live child is treated as having lost its agent at ``now``: its agent gets the
        reconnect grace to come back and say what it holds. That includes ``PENDING`` ones: the
        owner may have sent their command just before it stopped, so they are ``maybe_sent``
        (never "not sent": that is known only when the agent says). ``user_terminated``
        restores a batch that was being terminated, ``stop_reason`` one whose dispatching had
        stopped (it stays stopped: a child found never sent is then ``SKIPPED``). A ``PENDING``
        child that its agent says it never got goes back to the rollout queue. Call instead of
        ``start``.
        """
        if self._started:
            raise InvalidTransition(self.status, "resume")
        self._started = True
        self._dispatch.stop_reason = stop_reason
        self._recount()  # the children were restored after this batch was built
        if user_terminated:
            self.user_terminated = True
            self.status = B.TERMINATING
        effects: list[Effect] = []
        for task in self.children.values():
            if task.is_terminal:
                continue
            if task.status is S.PENDING:
                task.maybe_sent = True
            elif task.sent_at is None:
                task.sent_at = now
            self._child_event(AgentLost(task.child_id), now, effects)
            if user_terminated and task.status is not S.TERMINATING:
                # Stored before its children were: they are terminated now, as the user asked.
                self._child_event(TerminateChild(task.child_id, by_batch=True), now, effects)
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
        elif (
            isinstance(event, Unreachable)
            and self.rollout.wait_for_agent_s > 0
            and self.children[event.child_id].status is S.PENDING
        ):
            self._child_event(AgentAway(event.child_id), now, effects)  # rollout R3
        else:
            self._child_event(event, now, effects)
        self._settle(now, effects)
        return effects

    def agent_connected(
        self, vps_id: int, open_ids: Collection[str] | None, *, now: float
    ) -> list[Effect]:
        """``vps_id``'s agent (re)connected.

        ``open_ids``: every command it holds (``open_command_ids`` with
        ``open_command_ids_complete``), or ``None`` for a peer that does not say. With the
        list, every live child of that VPS is settled at once: listed ones wait for their
        result (a terminating one is told again), unlisted ones never reached the agent and are
        sent now (a terminating one, never run, is ``SKIPPED``; an accepted one the agent
        forgot is a ``FAILURE``). Without it, only children whose agent was lost are resumed,
        and a command that may not have arrived is sent again (an agent ignores a command id
        it already holds).
        """
        effects: list[Effect] = []
        for task in self.children_of(vps_id):
            if task.is_terminal:
                continue
            if task.waiting_since is not None:  # rollout R3: dispatched as soon as a slot is free
                self._child_event(AgentBack(task.child_id), now, effects)
                self._dispatch.queue.appendleft(task.child_id)
            elif open_ids is None:
                self._returned(task, now, effects)
            else:
                self._reconcile(task, task.child_id in open_ids, now, effects)
        self._settle(now, effects)
        return effects

    def agent_lost(self, vps_id: int, *, now: float) -> list[Effect]:
        """``vps_id``'s agent disconnected: its children that were sent wait for it."""
        effects: list[Effect] = []
        for task in self.children_of(vps_id):
            if not task.is_terminal and (task.sent_at is not None or task.maybe_sent):
                self._child_event(AgentLost(task.child_id), now, effects)
        self._settle(now, effects)
        return effects

    def next_deadline(self) -> float | None:
        """The earliest time at which a ``Tick`` would change something, or ``None``."""
        return self._deadlines.next(self.children)

    # --- internals ---------------------------------------------------------------------------

    def _child_event(self, event: ChildEvent, now: float, effects: list[Effect]) -> None:
        task = self.children[event.child_id]
        was, was_lost, was_deadline = task.status, task.lost_since, self._deadline(task)
        changed = task.handle(event, now=now)
        self._account(task, was, was_deadline)
        if (
            isinstance(event, TerminateChild)
            and was is not task.status
            and task.status is S.TERMINATING
        ):
            effects.append(SendTerminate(task.child_id, task.vps_id))
        # ``lost_since`` is not shown by the API, but the owner is told so that it can persist
        # and publish consistently.
        if changed or task.lost_since != was_lost:
            effects.append(ChildChanged(task.child_id))

    def _returned(self, task: ChildTask, now: float, effects: list[Effect]) -> None:
        """A peer that does not list its commands came back (the reconnect-grace rules).

        A command that may not have arrived is sent again: an agent ignores a command id it
        already holds (it acknowledges it again).
        """
        if task.status is S.PENDING:
            if task.maybe_sent:
                self._child_event(Reconciled(task.child_id, listed=False), now, effects)
                self._dispatch.queue.append(task.child_id)  # sent when a slot is free
            return
        if task.lost_since is None:
            return
        self._child_event(AgentReturned(task.child_id), now, effects)
        if task.status is S.TERMINATING:
            effects.append(SendTerminate(task.child_id, task.vps_id))
        elif task.status is S.SENT_TO_AGENT:
            effects.append(SendCommand(task.child_id, task.vps_id))

    def _reconcile(self, task: ChildTask, listed: bool, now: float, effects: list[Effect]) -> None:
        if task.status is S.PENDING and not task.maybe_sent:
            return  # not dispatched yet: nothing to reconcile
        was = task.status
        self._child_event(Reconciled(task.child_id, listed), now, effects)
        if listed:
            if task.status is S.TERMINATING:
                effects.append(SendTerminate(task.child_id, task.vps_id))
        elif was is S.PENDING:
            self._dispatch.queue.append(task.child_id)  # never sent: sent when a slot is free
        elif was is S.SENT_TO_AGENT:
            effects.append(SendCommand(task.child_id, task.vps_id))
        elif was is S.TERMINATING and task.started_at is None and task.pid is None:
            self._expire(task, S.SKIPPED, "not run: terminated before it reached the agent", now)
            effects.append(ChildChanged(task.child_id))
        else:
            self._expire(task, S.FAILURE, _FORGOTTEN, now)
            effects.append(ChildChanged(task.child_id))

    def _terminate_batch(self, now: float, effects: list[Effect]) -> None:
        self.status = BATCH_TRANSITIONS[(self.status, TerminateBatch)]
        if self.is_final:
            return
        if not self.user_terminated:
            self.user_terminated = True
            self.updated_at = now
            if self._dispatch.stop_reason is None and self._counts[S.PENDING]:
                self._dispatch.stop_reason = "batch terminated"
            effects.append(BatchChanged())
        for task in self.children.values():
            if task.is_terminal or task.status is S.TERMINATING:
                continue
            self._child_event(TerminateChild(task.child_id, by_batch=True), now, effects)

    def _tick(self, now: float, effects: list[Effect]) -> None:
        for task in self._deadlines.due(self.children, now):
            expiry = self._deadlines.expiry(task)
            self._expire(task, expiry.status, expiry.message, now)
            if expiry.terminate:
                effects.append(SendTerminate(task.child_id, task.vps_id))
            effects.append(ChildChanged(task.child_id))

    def _expire(self, task: ChildTask, status: ChildStatus, message: str, now: float) -> None:
        was, was_deadline = task.status, self._deadline(task)
        task.expire(status, message, now=now)
        self._account(task, was, was_deadline)

    def _account(self, task: ChildTask, was: ChildStatus, was_deadline: float | None) -> None:
        """Update the counters and the deadline heap after ``task`` changed."""
        if task.status is not was:
            self._counts[was] -= 1
            self._counts[task.status] += 1
        if task.status is not S.PENDING or task.waiting_since is not None:
            self._dispatch.sending.discard(task.child_id)  # no slot any more, or its own now
        if task.waiting_since is None:
            self._dispatch.waiting.discard(task.child_id)
        else:
            self._dispatch.waiting.add(task.child_id)
        if task.sent_at is not None:
            self._sent_any = True
        if self._deadline(task) != was_deadline:
            self._deadlines.push(task)

    def _recount(self) -> None:
        tasks = self.children.values()
        self._counts = Counter(t.status for t in tasks)
        self._sent_any = any(t.sent_at is not None for t in tasks)
        self._dispatch.waiting = {t.child_id for t in tasks if t.waiting_since is not None}
        self._deadlines.reset(tasks)

    def _deadline(self, task: ChildTask) -> float | None:
        return self._deadlines.of(task)

    def _settle(self, now: float, effects: list[Effect]) -> None:
        """Apply the batch rules (module docstring). One ordered pass reaches the fixed point:
        rule 1 only reads children, rule 2 reads rule 1's result, and a final status (rule 2)
        enables no earlier rule; so a second pass would change nothing."""
        before = self.status
        if self._dispatch.check_errors(self._counts):  # rollout R1
            effects.append(BatchChanged())
        if self._dispatch.stop_reason is not None:
            self._skip_undispatched(now, effects)
        self._pump(effects)  # rollout R2
        if self.status is B.PENDING and (not self._counts[S.PENDING] or self._sent_any):
            self.status = B.IN_PROGRESS
        live = sum(n for status, n in self._counts.items() if not status.is_terminal)
        if not self.is_final and not live:
            self.status = final_status(self.children.values(), user_terminated=self.user_terminated)
            self.completed_at = now
        if self.status is not before:
            self.updated_at = now
            if not any(isinstance(e, BatchChanged) for e in effects):
                effects.append(BatchChanged())

    def _pump(self, effects: list[Effect]) -> None:
        """Rollout R2: send queued children while a slot is free."""
        dispatch = self._dispatch
        while (child_id := dispatch.next_to_send(self._counts)) is not None:
            task = self.children[child_id]
            if task.status is not S.PENDING or task.waiting_since is not None:
                continue  # moved on since it was queued (terminated, waiting)
            dispatch.sending.add(child_id)
            effects.append(SendCommand(child_id, task.vps_id))

    def _skip_undispatched(self, now: float, effects: list[Effect]) -> None:
        """Rollout R1: every child not dispatched yet ends ``SKIPPED``."""
        reason = (
            "not run: batch terminated"
            if self.user_terminated
            else "not run: error threshold reached"
        )
        for child_id in list(self._dispatch.undispatched()):
            task = self.children[child_id]
            if task.status is S.PENDING and not task.maybe_sent:
                self._child_event(Skipped(child_id, reason), now, effects)
