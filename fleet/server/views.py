"""The JSON shapes of the API and the feed, built from plain records (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .records import BatchRecord, ChildRecord, ScriptRecord, VpsRecord

__all__ = [
    "batch_summary_view",
    "batch_view",
    "child_update_event",
    "child_view",
    "iso",
    "rollout_view",
    "script_view",
    "vps_view",
]


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, or ``None``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def child_view(c: ChildRecord) -> dict[str, Any]:
    return {
        "child_command_id": c.id,
        "vps_id": c.vps_id,
        "vps_name": c.vps_name,
        "status": c.status.value,
        "exit_code": c.exit_code,
        "output_stream_summary": list(c.stdout_summary),
        "error_stream_summary": list(c.stderr_summary),
        "error_message": c.error_message,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
        "agent_started_at": iso(c.agent_started_at),
        "agent_completed_at": iso(c.agent_completed_at),
        "last_output_at": iso(c.last_output_at),
        "stdout_bytes": c.stdout_bytes,
        "stderr_bytes": c.stderr_bytes,
        "truncated": c.truncated,
        "agent_reported": c.agent_reported,
        "waiting_until": iso(c.waiting_until),
    }


def rollout_view(b: BatchRecord) -> dict[str, Any]:
    """The rollout fields that ``GET`` and the feed show of a batch."""
    pending = b.counts.get("PENDING", 0)
    live = b.rollout_counts or {"queued": pending, "waiting_for_agent": 0}
    return {
        "max_concurrency": b.max_concurrency,
        "max_errors": b.max_errors,
        "wait_for_agent_seconds": b.wait_for_agent_seconds,
        "stop_reason": b.stop_reason,
        "queued": live["queued"],
        "waiting_for_agent": live["waiting_for_agent"],
        "skipped": b.counts.get("SKIPPED", 0),
    }


def batch_view(b: BatchRecord) -> dict[str, Any]:
    """``GET /api/batch_commands/{id}``: the batch, its counts and every child task."""
    return {
        "batch_command_id": b.id,
        "overall_status": b.status.value,
        "execution_alias": b.execution_alias,
        "command_type": b.command_type,
        "command_content": b.command_content,
        "script_id": b.script_id,
        "working_directory": b.working_directory,
        "timeout_seconds": b.timeout_seconds,
        "user_id": b.user_id,
        "created_at": iso(b.created_at),
        "updated_at": iso(b.updated_at),
        "completed_at": iso(b.completed_at),
        "counts": dict(b.counts),
        **rollout_view(b),
        "rerun_of": b.rerun_of,
        "target_tags": list(b.target_tags),
        "parameters": dict(b.parameters),
        "created_by": b.user_id,
        "tasks": [child_view(c) for c in b.children],
    }


def batch_summary_view(b: BatchRecord) -> dict[str, Any]:
    """One row of ``GET /api/batch_commands``."""
    return {
        "batch_command_id": b.id,
        "overall_status": b.status.value,
        "execution_alias": b.execution_alias,
        "command_type": b.command_type,
        "command_content": b.command_content[:500],
        "created_by": b.user_id,
        "created_at": iso(b.created_at),
        "updated_at": iso(b.updated_at),
        "completed_at": iso(b.completed_at),
        "target_count": sum(b.counts.values()),
        "counts": dict(b.counts),
        **rollout_view(b),
        "rerun_of": b.rerun_of,
    }


def child_update_event(c: ChildRecord) -> dict[str, Any]:
    return {
        "type": "CHILD_TASK_UPDATE",
        "child_command_id": c.id,
        "vps_id": c.vps_id,
        "vps_name": c.vps_name,
        "status": c.status.value,
        "exit_code": c.exit_code,
        "error_message": c.error_message,
        "updated_at": iso(c.updated_at),
        "agent_started_at": iso(c.agent_started_at),
        "agent_completed_at": iso(c.agent_completed_at),
        "stdout_bytes": c.stdout_bytes,
        "stderr_bytes": c.stderr_bytes,
        "truncated": c.truncated,
        "agent_reported": c.agent_reported,
        "waiting_until": iso(c.waiting_until),
    }


def vps_view(v: VpsRecord, *, online: bool) -> dict[str, Any]:
    return {
        "id": v.id,
        "name": v.name,
        "tags": list(v.tags),
        "online": online,
        # A connected agent answers keepalive pings: it is seen now.
        "last_seen_at": iso(datetime.now(UTC)) if online else iso(v.last_seen_at),
        "hostname": v.hostname,
        "os": v.os_name or v.os_type,
        "os_type": v.os_type,
        "arch": v.arch,
        "kernel_version": v.kernel_version,
        "agent_version": v.agent_version,
        "created_at": iso(v.created_at),
    }


def script_view(s: ScriptRecord) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "content": s.content,
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
        "parameters": [
            p | {"default": "***"} if p.get("secret") and p.get("default") is not None else p
            for p in s.parameters
        ],
    }
