"""Plain records the store returns and the partial updates it applies (no Pony here)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from fleet.core import BatchStatus, ChildStatus, Role

__all__ = [
    "UNSET",
    "AuditNote",
    "AuditRecord",
    "BatchRecord",
    "BatchUpdate",
    "ChildRecord",
    "ChildUpdate",
    "ScriptRecord",
    "TokenRecord",
    "UserRecord",
    "VpsRecord",
]


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET: Final = _Unset.UNSET
"""Marks a ``ChildUpdate`` field that may be set to ``None`` as "leave unchanged"."""


@dataclasses.dataclass(frozen=True, slots=True)
class VpsRecord:
    id: int
    name: str
    tags: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime | None
    hostname: str | None
    os_name: str | None
    os_type: str | None
    arch: str | None
    kernel_version: str | None
    agent_version: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class ScriptRecord:
    id: int
    name: str
    description: str
    content: str
    created_at: datetime
    updated_at: datetime
    #: Declared parameters, as stored: ``ParamSpec.stored()`` dicts.
    parameters: tuple[dict[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ChildRecord:
    id: str
    batch_id: str
    vps_id: int
    vps_name: str
    status: ChildStatus
    exit_code: int | None
    error_message: str | None
    stdout_log_path: str | None
    stderr_log_path: str | None
    last_output_at: datetime | None
    created_at: datetime
    updated_at: datetime
    agent_started_at: datetime | None
    agent_completed_at: datetime | None
    stdout_summary: tuple[str, ...]
    stderr_summary: tuple[str, ...]
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    #: ``{status, exit_code, at}``: what the agent reported after the server ended the child.
    agent_reported: dict[str, Any] | None = None
    #: Until when the child waits for its agent (rollout; live only, never stored).
    waiting_until: datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch. ``children`` is empty when not loaded (``list_batches``); ``counts`` maps each
    child status value present in the batch to its number of children, and is always filled."""

    id: str
    status: BatchStatus
    execution_alias: str | None
    user_id: str
    command_type: str
    command_content: str
    script_id: int | None
    working_directory: str | None
    timeout_seconds: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    counts: dict[str, int]
    children: tuple[ChildRecord, ...] = ()
    # Rollout and parameters. ``parameters`` are as shown: secret values masked;
    # ``secret_parameters`` names them (their values are never stored).
    max_concurrency: int | str | None = None
    max_errors: int | str | None = None
    wait_for_agent_seconds: int = 0
    stop_reason: str | None = None
    rerun_of: str | None = None
    target_tags: tuple[str, ...] = ()
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)
    secret_parameters: tuple[str, ...] = ()
    #: Live only: ``{"queued", "waiting_for_agent"}`` of a running batch.
    rollout_counts: dict[str, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ChildUpdate:
    """A partial update of one child: ``None`` (``UNSET`` where ``None`` is a value) = unchanged."""

    child_id: str
    status: ChildStatus | None = None
    exit_code: int | _Unset | None = UNSET
    error_message: str | _Unset | None = UNSET
    last_output_at: datetime | None = None
    agent_started_at: datetime | None = None
    agent_completed_at: datetime | None = None
    stdout_summary: Sequence[str] | None = None
    stderr_summary: Sequence[str] | None = None
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    truncated: bool | None = None
    updated_at: datetime | None = None
    agent_reported: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BatchUpdate:
    """A partial update of one batch: ``None`` = unchanged."""

    batch_id: str
    status: BatchStatus | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    stop_reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class UserRecord:
    """A user. ``has_password`` is false for the built-in ``admin`` until one is set."""

    id: int
    username: str
    role: Role
    allowed_tags: tuple[str, ...]
    has_password: bool
    created_at: datetime
    updated_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRecord:
    """A personal API token (never its secret: only a digest is stored)."""

    id: int
    name: str
    user_id: int
    username: str
    created_at: datetime
    expires_at: datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class AuditNote:
    """An audit entry to write in the same transaction as the change it records.

    ``target_id`` may be left ``None`` for a creation: the store fills in the new row's id.
    ``details`` never holds a password, token, agent secret or secret parameter.
    """

    actor: str
    action: str
    source_ip: str | None
    target_type: str | None = None
    target_id: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    outcome: str = "success"


@dataclasses.dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit log entry as ``GET /api/audit`` shows it."""

    id: int
    at: datetime
    actor: str
    action: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any]
    source_ip: str | None
    outcome: str
