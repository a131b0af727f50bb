"""The state machine of one VPS's task within a batch.

Theory of operation
-------------------
Rule 1 (h11's): everything that decides a child's status lives in ``CHILD_TRANSITIONS``.
A key is ``(status, event type)``; its value is the next status, or ``None`` when the next
status comes from the event itself (an agent's result carries SUCCESS / FAILURE / TERMINATED).
A pair that is not in the table is illegal: ``ChildTask.handle`` raises ``InvalidTransition``
and the task is left exactly as it was. No terminal status appears as a key, so a terminal
status never changes again: a late or duplicate result is refused, never applied.

Pairs that map a status to itself are legal no-ops that may still update data (an ``Acked`` that
a reconnecting agent repeats, more output while executing, a lost agent while terminating).

Time comes in as ``now`` (seconds on any monotonic-or-wall clock the owner chooses, as long as it
is the same clock for every call); nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import InvalidTransition
from ._events import (
    Acked,
    AgentLost,
    AgentReturned,
    ChildEvent,
    Dispatched,
    Finished,
    OutputSeen,
    Started,
    TerminateChild,
    TerminateUnconfirmed,
    Unreachable,
)
from ._status import ChildStatus

__all__ = ["CHILD_TRANSITIONS", "ChildTask"]

S = ChildStatus
_SENT = (S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.EXECUTING)
_LIVE = (*_SENT, S.TERMINATING)

#: (status, event type) -> next status; ``None`` = the status the event carries.
CHILD_TRANSITIONS: dict[tuple[ChildStatus, type], ChildStatus | None] = {
    (S.PENDING, Dispatched): S.SENT_TO_AGENT,
    (S.PENDING, Unreachable): S.AGENT_UNREACHABLE,
    (S.PENDING, TerminateChild): S.TERMINATED,
    (S.SENT_TO_AGENT, Acked): S.AGENT_ACCEPTED,  # or AGENT_REJECTED, see _next_status
    (S.AGENT_ACCEPTED, Acked): S.AGENT_ACCEPTED,
    (S.EXECUTING, Acked): S.EXECUTING,
    (S.TERMINATING, Acked): S.TERMINATING,
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
    (S.TERMINATING, TerminateUnconfirmed): S.FAILURE,
    **{(s, AgentLost): s for s in _LIVE},
    **{(s, AgentReturned): s for s in _LIVE},
}


@dataclass
class ChildTask:
    """One VPS's task: its status and the facts the API shows about it.

    Only ``handle`` (and the batch's deadline rules through ``expire``) change a task.
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
    updated_at: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def accepts(self, event: ChildEvent) -> bool:
        """Whether ``event`` is legal in the current status (``handle`` would not raise)."""
        if isinstance(event, Acked) and not event.accepted:
            return self.status in (S.SENT_TO_AGENT, S.AGENT_ACCEPTED, S.TERMINATING)
        return (self.status, type(event)) in CHILD_TRANSITIONS

    def handle(self, event: ChildEvent, *, now: float) -> bool:
        """Apply ``event``; return whether anything the API shows changed.

        Raises:
            InvalidTransition: the event is not legal in the current status; nothing changed.
        """
        if not self.accepts(event):
            raise InvalidTransition(self.status, event)
        before = self._visible()
        self.status = self._next_status(event)
        self._record(event, now)
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
        self.updated_at = now

    def _next_status(self, event: ChildEvent) -> ChildStatus:
        if isinstance(event, Finished):
            return event.status
        if isinstance(event, Acked) and not event.accepted:
            return S.AGENT_REJECTED
        target = CHILD_TRANSITIONS[(self.status, type(event))]
        assert target is not None
        return target

    def _record(self, event: ChildEvent, now: float) -> None:
        if isinstance(event, Dispatched):
            self.sent_at = now
        elif isinstance(event, Unreachable):
            self.error_message = event.reason
            self.completed_at = now
        elif isinstance(event, Acked) and not event.accepted:
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
        elif isinstance(event, TerminateChild) and self.status is S.TERMINATED:
            self.error_message = "terminated before it was sent to the agent"
            self.completed_at = now
        elif isinstance(event, TerminateUnconfirmed):
            self.error_message = (
                f"termination was not confirmed by the agent within {event.waited_s:g} s; "
                "the command may still be running"
            )
            self.completed_at = now
        elif isinstance(event, AgentLost):
            if self.lost_since is None:
                self.lost_since = now
        elif isinstance(event, AgentReturned):
            self.lost_since = None
        if self.is_terminal:
            self.lost_since = None

    def _visible(self) -> tuple[object, ...]:
        return (self.status, self.exit_code, self.error_message, self.started_at, self.completed_at)
