"""Events that drive a batch (in) and effects it asks its owner to carry out (out).

Events and effects are frozen dataclasses that validate themselves when built (h11's
``_events.py``): a malformed event never reaches a state machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._status import ChildStatus

__all__ = [
    "Acked",
    "AgentAway",
    "AgentBack",
    "AgentLost",
    "AgentReturned",
    "BatchChanged",
    "ChildChanged",
    "ChildEvent",
    "Dispatched",
    "Effect",
    "Event",
    "Finished",
    "OutputSeen",
    "Reconciled",
    "Rejected",
    "SendCommand",
    "SendTerminate",
    "Skipped",
    "Started",
    "TerminateBatch",
    "TerminateChild",
    "Tick",
    "Unreachable",
]

_RESULT_STATUSES = frozenset({ChildStatus.SUCCESS, ChildStatus.FAILURE, ChildStatus.TERMINATED})


def _need_id(child_id: str) -> None:
    if not isinstance(child_id, str) or not child_id:
        raise ValueError("child_id must be a non-empty string")


# --- events about one child ------------------------------------------------------------------


@dataclass(frozen=True)
class Dispatched:
    """The command was handed to a connected agent's stream."""

    child_id: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class Unreachable:
    """The target's agent was not connected when the command was to be sent."""

    child_id: str
    reason: str = "agent is not connected"

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class Acked:
    """The agent accepted the command (``BatchCommandAck`` with ``accepted=true``)."""

    child_id: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class Rejected:
    """The agent refused the command (``BatchCommandAck`` with ``accepted=false``)."""

    child_id: str
    reason: str = ""

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class Started:
    """The agent's process is running (``BatchCommandStarted``)."""

    child_id: str
    pid: int = 0

    def __post_init__(self) -> None:
        _need_id(self.child_id)
        if self.pid < 0:
            raise ValueError("pid must not be negative")


@dataclass(frozen=True)
class OutputSeen:
    """Output arrived for the child (a peer without the extensions starts with this)."""

    child_id: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class Finished:
    """The agent reported the final result (``BatchCommandResult``)."""

    child_id: str
    status: ChildStatus
    exit_code: int | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        _need_id(self.child_id)
        try:
            status = ChildStatus(self.status)  # a plain "SUCCESS" string becomes the enum
        except ValueError:
            raise ValueError(f"an agent result cannot be {self.status!r}") from None
        if status not in _RESULT_STATUSES:
            raise ValueError(f"an agent result cannot be {status}")
        object.__setattr__(self, "status", status)


@dataclass(frozen=True)
class TerminateChild:
    """A user asked to terminate one child (``by_batch``: as part of terminating its batch)."""

    child_id: str
    by_batch: bool = False

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class AgentLost:
    """The child's agent disconnected while the child was running."""

    child_id: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class AgentReturned:
    """The child's agent reconnected within the grace period, without saying which commands it
    holds (a peer that predates ``open_command_ids_complete``)."""

    child_id: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class Reconciled:
    """The child's agent (re)connected and listed every command it holds.

    ``listed``: this child's command id was in the agent's ``open_command_ids``: the agent has
    it (running, or finished with a result it will re-send). Not listed: the command never
    reached that agent (or the agent no longer knows it).
    """

    child_id: str
    listed: bool

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class AgentAway:
    """The child's agent was not connected at its turn and the batch waits for it
    (``wait_for_agent_seconds``): the child stays ``PENDING``, holding no slot."""

    child_id: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class AgentBack:
    """The agent a waiting child waits for connected: the child is queued again."""

    child_id: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)


@dataclass(frozen=True)
class Skipped:
    """The child will never be dispatched (a rollout stopped); ``reason`` says why."""

    child_id: str
    reason: str

    def __post_init__(self) -> None:
        _need_id(self.child_id)
        if not self.reason:
            raise ValueError("a skipped child needs a reason")


ChildEvent = (
    Dispatched
    | Unreachable
    | Acked
    | Rejected
    | Started
    | OutputSeen
    | Finished
    | TerminateChild
    | AgentLost
    | AgentReturned
    | Reconciled
    | AgentAway
    | AgentBack
    | Skipped
)

# --- events about the whole batch ------------------------------------------------------------


@dataclass(frozen=True)
class TerminateBatch:
    """A user asked to terminate the whole batch."""


@dataclass(frozen=True)
class Tick:
    """Time passed; deadlines up to ``now`` fire."""


Event = ChildEvent | TerminateBatch | Tick

# --- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendCommand:
    """Send the batch's command to this child's agent (or report it unreachable). Also asked
    again for a child whose agent came back without it (``Reconciled(listed=False)``)."""

    child_id: str
    vps_id: int


@dataclass(frozen=True)
class SendTerminate:
    """Stop this child: its owner cancels the child's scope, whose cleanup tells the agent (or,
    when the scope is gone, tells the agent directly: a deadline ended the child, or its agent
    came back while the child was terminating)."""

    child_id: str
    vps_id: int


@dataclass(frozen=True)
class ChildChanged:
    """Persist and publish this child's new state."""

    child_id: str


@dataclass(frozen=True)
class BatchChanged:
    """Persist and publish the batch's new overall state."""


Effect = SendCommand | SendTerminate | ChildChanged | BatchChanged
