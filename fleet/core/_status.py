"""Statuses of a batch and of its per-VPS child tasks."""

from __future__ import annotations

import enum

__all__ = ["BatchStatus", "ChildStatus"]


class _StrEnum(str, enum.Enum):
    """``enum.StrEnum`` (3.11+) for the agent on Python 3.10: a member is its value, as text too.

    The same on every version (no version switch): ``str()``, ``format()`` and JSON give the
    value, and a member compares equal to its string.
    """

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(str(self), format_spec)


class ChildStatus(_StrEnum):
    """Status of one VPS's task within a batch."""

    PENDING = "PENDING"
    SENT_TO_AGENT = "SENT_TO_AGENT"
    AGENT_ACCEPTED = "AGENT_ACCEPTED"
    EXECUTING = "EXECUTING"
    TERMINATING = "TERMINATING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    TERMINATED = "TERMINATED"
    AGENT_UNREACHABLE = "AGENT_UNREACHABLE"
    AGENT_REJECTED = "AGENT_REJECTED"
    SKIPPED = "SKIPPED"  # never dispatched (the batch was terminated, or a rollout stopped)

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_CHILD


class BatchStatus(_StrEnum):
    """Overall status of a batch."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    TERMINATING = "TERMINATING"
    COMPLETED_SUCCESSFULLY = "COMPLETED_SUCCESSFULLY"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    TERMINATED = "TERMINATED"
    FAILED_TO_START = "FAILED_TO_START"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_BATCH


_TERMINAL_CHILD = frozenset(
    {
        ChildStatus.SUCCESS,
        ChildStatus.FAILURE,
        ChildStatus.TERMINATED,
        ChildStatus.AGENT_UNREACHABLE,
        ChildStatus.AGENT_REJECTED,
        ChildStatus.SKIPPED,
    }
)
_TERMINAL_BATCH = frozenset(
    {
        BatchStatus.COMPLETED_SUCCESSFULLY,
        BatchStatus.COMPLETED_WITH_ERRORS,
        BatchStatus.TERMINATED,
        BatchStatus.FAILED_TO_START,
    }
)
