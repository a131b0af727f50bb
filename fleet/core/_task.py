"""The state machine of one VPS's task within a batch.

Theory of operation
-------------------
Rule 1 (h11's): everything that decides a child's status lives in ``CHILD_TRANSITIONS``.
A key is ``(status, event type)``; its value is the next status, or ``None`` when the next
status comes from the event itself (an agent's result carries SUCCESS / FAILURE / TERMINATED)
or from one fact of the task (see ``_next_status``: terminating a ``PENDING`` child that may
already be on its agent, after a server restart). A pair that is not in the table is illegal:
``ChildTask.handle`` raises ``InvalidTransition`` and the task is left exactly as it was. No
terminal status appears as a key, so a terminal status never changes again: a late or
duplicate result is refused, never applied. The one thing a terminal child still records is a
result that arrives after the *server* ended it (``AGENT_UNREACHABLE``, or a deadline's
``FAILURE``): it is kept beside the status as ``agent_reported``, the status stays.

Pairs that map a status to itself are legal no-ops that may still update data (an ``Acked``
that a reconnecting agent repeats, more output while executing, a lost agent while
terminating, a command sent again to an agent that came back without it).

The batch's deadline rules end a live child through ``expire`` (reconnect grace, terminate
confirmation, result deadline): those are the only other way a status changes.

Restoring a child after the owner restarted goes through ``ChildTask.restore`` alone.

Time comes in as ``now`` (seconds on one clock the owner chooses, the same for every call);
nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import InvalidTransition
from ._events import (
    Acked,
    AgentAway,
    AgentBack,
    AgentLost,
    AgentReturned,
    ChildEvent,
    Dispatched,
    Finished,
    OutputSeen,
    Reconciled,
    Rejected,
    Skipped,
    Started,
    TerminateChild,
    Unreachable,
)
from ._status import ChildStatus

__all__ = ["CHILD_TRANSITIONS", "AgentReport", "ChildTask"]

S = ChildStatus
_SENT = (S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING)
_LIVE = (*_SENT, S.TERMINATING)

#: (status, event type) -> next status; ``None`` = decided by the event or the task (above).
CHILD_TRANSITIONS: dict[tuple[ChildStatus, type], ChildStatus | None] = {
    (S.PENDING, Dispatched): S.SENT_TO_AGENT,
    (S.SENT_TO_AGENT, Dispatched): S.SENT_TO_AGENT,  # sent again: the agent came back without it
    (S.PENDING, Unreachable): S.AGENT_UNREACHABLE,
    (S.PENDING, TerminateChild): None,  # SKIPPED, or TERMINATING when it may be on its agent
    (S.SENT_TO_AGENT, Acked): S.AGENT_ACCEPTED,
    (S.AGENT_ACCEPTED, Acked): S.AGENT_ACCEPTED,
    (S.EXECUTING, Acked): S.EXECUTING,
    (S.TERMINATING, Acked): S.TERMINATING,
    (S.SENT_TO_AGENT, Rejected): S.AGENT_REJECTED,
    (S.AGENT_ACCEPTED, Rejected): S.AGENT_REJECTED,
    (S.TERMINATING, Rejected): S.AGENT_REJECTED,
    (S.SENT_TO_AGENT, Started): S.EXECUTING,
    (S.AGENT_ACCEPTED, Started): S.EXECUTING,
    (S.EXECUTING, Started): S.EXECUTING,
    (S.TERMINATING, Started): S.TERMINATING,
    (S.SENT_TO_AGENT, OutputSeen): S.EXECUTING,
    (S.AGENT_ACCEPTED, OutputSeen): S.EXECUTING,
    (S.EXECUTING, OutputSeen): S.EXECUTING,
    (S.TERMINATING, OutputSeen): S.TERMINATING,
    **{(s, Finished): None for s in _LIVE},
    **{(s, TerminateChild): S.TERMINATING for s in _SENT},
    (S.TERMINATING, TerminateChild): S.TERMINATING,
    (S.PENDING, AgentLost): S.PENDING,  # restored after a restart: it may be on its agent
    **{(s, AgentLost): s for s in _LIVE},
    **{(s, AgentReturned): s for s in _LIVE},
    # The agent listed the command: it is there. PENDING after a restart: it did reach it.
    (S.PENDING, Reconciled): None,
    **{(s, Reconciled): s for s in _LIVE},
    # Rollout (``fleet.core._rollout``): waiting for an agent that is away, never dispatched.
    (S.PENDING, AgentAway): S.PENDING,
    (S.PENDING, AgentBack): S.PENDING,
    (S.PENDING, Skipped): S.SKIPPED,
}


@dataclass(frozen=True)
class AgentReport:
    """A result the agent reported after the server had already ended the child."""

    status: ChildStatus
    exit_code: int | None
    at: float


@dataclass
class ChildTask:
    """One VPS's task: its status and the facts the API shows about it.

    Only ``handle`` (and the batch's deadline rules through ``expire``) change a task.

    ``maybe_sent``: a ``PENDING`` child restored after a restart, whose command may have been
    sent just before the restart; nobody knows until its agent says (``Reconciled``).
    ``waiting_since``: since when a ``PENDING`` child waits for its agent
    (``wait_for_agent_seconds``), ``None`` when it does not.
    ``terminate_requested_at``: when the child became ``TERMINATING`` (the confirmation
    deadline counts from it). ``ended_by_server``: the status was decided here, not reported
    by the agent (a late result is then kept as ``agent_reported``).
    """

    child_id: str
    vps_id: int
    vps_name: str = ""
    status: ChildStatus = ChildStatus.PENDING
    exit_code: int | None = None
    error_message: str | None = None
    pid: int | None = None
    sent_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    last_output_at: float | None = None
    lost_since: float | None = None
    maybe_sent: bool = False
    terminate_requested_at: float | None = None
    ended_by_server: bool = False
    agent_reported: AgentReport | None = None
    waiting_since: float | None = None
    updated_at: float | None = None

    @classmethod
    def restore(
        cls,
        child_id: str,
        vps_id: int,
        vps_name: str,
        status: ChildStatus,
        *,
        exit_code: int | None = None,
        error_message: str | None = None,
        agent_reported: AgentReport | None = None,
    ) -> ChildTask:
        """A child as stored by an owner that restarted: terminal ones as they were; live ones
        are resumed by ``Batch.resume`` (their agent is treated as lost at that moment)."""
        task = cls(child_id, vps_id, vps_name, status, exit_code, error_message)
        task.agent_reported = agent_reported
        # Only the server decides AGENT_UNREACHABLE: a late result is still kept beside it.
        task.ended_by_server = status is S.AGENT_UNREACHABLE
        if status is S.TERMINATING:
            task.terminate_requested_at = None  # counted again from the resume
        return task

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def accepts(self, event: ChildEvent) -> bool:
        """Whether ``event`` is legal in the current status (``handle`` would not raise)."""
        if isinstance(event, Finished) and self.is_terminal:
            return self.ended_by_server and self.agent_reported is None
        return (self.status, type(event)) in CHILD_TRANSITIONS

    def handle(self, event: ChildEvent, *, now: float) -> bool:
        """Apply ``event``; return whether anything the API shows changed.

        Raises:
            InvalidTransition: the event is not legal in the current status; nothing changed.
        """
        if not self.accepts(event):
            raise InvalidTransition(self.status, event)
        if isinstance(event, Finished) and self.is_terminal:
            self.agent_reported = AgentReport(event.status, event.exit_code, now)
            self.updated_at = now
            return True
        before = self._visible()
        was = self.status
        self.status = self._next_status(event)
        self._record(event, was, now)
        changed = self._visible() != before
        if changed:
            self.updated_at = now
        return changed

    def expire(self, status: ChildStatus, message: str, *, now: float) -> None:
        """End a live task because a deadline passed (the batch's rules decide which)."""
        if self.is_terminal:
            raise InvalidTransition(self.status, status)
        self.status = status
        self.error_message = message
        self.completed_at = now
        self.lost_since = None
        self.waiting_since = None
        self.terminate_requested_at = None
        self.ended_by_server = True
        self.updated_at = now

    def _next_status(self, event: ChildEvent) -> ChildStatus:
        if isinstance(event, Finished):
            return event.status
        if isinstance(event, TerminateChild) and self.status is S.PENDING:
            return S.TERMINATING if self.maybe_sent else S.SKIPPED
        if isinstance(event, Reconciled) and self.status is S.PENDING:
            return S.SENT_TO_AGENT if event.listed else S.PENDING
        target = CHILD_TRANSITIONS[(self.status, type(event))]
        assert target is not None
        return target

    def _record(self, event: ChildEvent, was: ChildStatus, now: float) -> None:
        if isinstance(event, Dispatched):
            self.sent_at = now
            self.maybe_sent = False
            self.waiting_since = None
        elif isinstance(event, AgentAway):
            self.waiting_since = now
        elif isinstance(event, AgentBack):
            self.waiting_since = None
        elif isinstance(event, Skipped):
            self.error_message = event.reason
            self.completed_at = now
        elif isinstance(event, Unreachable):
            self.error_message = event.reason
            self.completed_at = now
            self.ended_by_server = True
        elif isinstance(event, Rejected):
            self.error_message = event.reason or "the agent rejected the command"
            self.completed_at = now
        elif isinstance(event, Started):
            self.pid = event.pid or self.pid
            if self.started_at is None:
                self.started_at = now
        elif isinstance(event, OutputSeen):
            self.last_output_at = now
            if self.started_at is None:
                self.started_at = now
        elif isinstance(event, Finished):
            self.exit_code = event.exit_code
            self.error_message = event.error_message or None
            self.completed_at = now
        elif isinstance(event, TerminateChild):
            if self.status is S.SKIPPED:
                self.error_message = (
                    "not run: batch terminated"
                    if event.by_batch
                    else "not run: terminated before it was sent to the agent"
                )
                self.completed_at = now
            elif was is not S.TERMINATING:
                self.terminate_requested_at = now
        elif isinstance(event, AgentLost):
            if self.lost_since is None:
                self.lost_since = now
        elif isinstance(event, AgentReturned | Reconciled):
            self.lost_since = None
            if self.status is S.TERMINATING:
                self.terminate_requested_at = now  # told again: the confirmation clock restarts
        if isinstance(event, Reconciled):
            self.maybe_sent = False
            if event.listed and self.sent_at is None:
                self.sent_at = now
        if self.is_terminal:
            self.lost_since = None
            self.waiting_since = None
            self.terminate_requested_at = None

    def _visible(self) -> tuple[object, ...]:
        return (
            self.status,
            self.exit_code,
            self.error_message,
            self.started_at,
            self.completed_at,
            self.waiting_since,
        )
