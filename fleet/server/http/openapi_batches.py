"""The OpenAPI section for batches: ``POST/GET /api/batch_commands`` and what hangs below.

``BatchCreate`` states ``core.validate_batch_request``'s rules: exactly one of
``command_content`` and ``script_id`` (``null`` or ``""`` count as absent), ids as positive
32-bit integers or their digit strings, no extra field. Batch options (rollouts) are added to
``BatchCreate`` here, next to their checks in ``fleet.core``.
"""

from __future__ import annotations

from fleet import core
from fleet.core import BatchStatus, ChildStatus

from .openapi_parts import (
    BODY_ID,
    COMMAND_ID,
    PARAMETERS,
    TS,
    Schema,
    Section,
    json_content,
    op,
    optional_text,
    path_param,
    query_int,
    ref,
)

__all__ = ["section"]

_ABSENT = [None, ""]


def _batch_create() -> Schema:
    command = {
        "type": ["string", "null"],
        "maxLength": core.MAX_COMMAND_BYTES,
        "pattern": f"^$|{core.TEXT_PATTERN}",
        "description": f"a shell command: not blank, no NUL, at most "
        f"{core.MAX_COMMAND_BYTES} bytes of UTF-8",
    }
    script_id = dict(BODY_ID)
    script_id["type"] = ["integer", "string", "null"]
    script_id["pattern"] = f"^$|{core.ID_PATTERN}"
    return {
        "type": "object",
        "description": "Exactly one of command_content and script_id; targets from "
        "target_vps_ids and/or target_tags (their union, resolved when the batch is created).",
        "properties": {
            "command_content": command,
            "script_id": script_id,
            "working_directory": optional_text(core.MAX_PATH),
            "target_vps_ids": {
                "type": ["array", "null"],
                "maxItems": core.MAX_TARGETS,
                "items": BODY_ID,
            },
            **_rollout_options(),
            "execution_alias": optional_text(core.MAX_ALIAS),
            "timeout_seconds": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": core.MAX_TIMEOUT_S,
                "description": "0 or null: no limit",
            },
        },
        "additionalProperties": False,
        "allOf": [
            {
                "oneOf": [
                    {
                        "required": ["command_content"],
                        "properties": {"command_content": {"type": "string", "minLength": 1}},
                    },
                    {
                        "required": ["script_id"],
                        "properties": {"script_id": {"not": {"enum": _ABSENT}}},
                    },
                ]
            },
            {
                "anyOf": [
                    {
                        "required": ["target_vps_ids"],
                        "properties": {"target_vps_ids": {"type": "array", "minItems": 1}},
                    },
                    {
                        "required": ["target_tags"],
                        "properties": {
                            "target_tags": {
                                "type": "array",
                                "contains": {"pattern": core.TAG_NONBLANK_PATTERN},
                            }
                        },
                    },
                ]
            },
        ],
    }


def _limit(minimum: int, percent: str, what: str) -> Schema:
    return {
        "oneOf": [
            {"type": "null"},
            {"type": "integer", "minimum": minimum, "maximum": core.MAX_LIMIT},
            {"type": "string", "pattern": percent},
        ],
        "description": what,
    }


def _rollout_options() -> Schema:
    """The rollout options of ``BatchCreate`` (checked by ``core.parse_limit`` and friends)."""
    return {
        "max_concurrency": _limit(
            1,
            core.CONCURRENCY_PERCENT_PATTERN,
            'at most this many children dispatched and not yet finished at once: N >= 1 or "N%"'
            " of the targets (at least 1); null: all at once",
        ),
        "max_errors": _limit(
            0,
            core.ERRORS_PERCENT_PATTERN,
            "once more children than this ended in error, the rest are SKIPPED: N >= 0 or "
            '"N%"; null: no limit',
        ),
        "wait_for_agent_seconds": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": core.MAX_WAIT_FOR_AGENT_S,
            "description": "how long a target whose agent is offline at its turn waits for it",
        },
        "target_tags": {
            "type": ["array", "null"],
            "maxItems": core.MAX_TAGS,
            "items": {"type": "string", "pattern": core.TAG_PATTERN},
            "description": "every VPS having any of these tags is a target too",
        },
        "parameters": PARAMETERS,
    }


def _rerun() -> Schema:
    return {
        "type": ["object", "null"],
        "properties": {
            "only": {"type": ["string", "null"], "enum": ["not_succeeded", "all", None]},
            "parameters": {
                **PARAMETERS,
                "description": "the values of the batch's secret parameters (never kept)",
            },
        },
        "additionalProperties": False,
    }


def _schemas() -> dict[str, Schema]:
    child_status = {"type": "string", "enum": [s.value for s in ChildStatus]}
    batch_status = {"type": "string", "enum": [s.value for s in BatchStatus]}
    text_or_null = {"type": ["string", "null"]}
    lines = {"type": "array", "items": {"type": "string"}}
    counts = {"type": "object", "additionalProperties": {"type": "integer"}}
    limit = {"type": ["integer", "string", "null"]}
    rollout_facts = {
        "max_concurrency": limit,
        "max_errors": limit,
        "wait_for_agent_seconds": {"type": "integer"},
        "stop_reason": {
            "type": ["string", "null"],
            "description": "why dispatching stopped (error threshold, terminate), or null",
        },
        "queued": {"type": "integer", "description": "PENDING children waiting for a slot"},
        "waiting_for_agent": {"type": "integer"},
        "skipped": {"type": "integer"},
        "rerun_of": {"type": ["string", "null"]},
    }
    return {
        "BatchCreate": _batch_create(),
        "BatchRerun": _rerun(),
        "BatchAccepted": {
            "type": "object",
            "required": ["batch_command_id", "status", "message"],
            "properties": {
                "batch_command_id": {"type": "string"},
                "status": {"type": "string", "enum": ["PENDING"]},
                "message": {"type": "string"},
                "rerun_of": {"type": "string"},
            },
        },
        "ChildTask": {
            "type": "object",
            "required": ["child_command_id", "vps_id", "status"],
            "properties": {
                "child_command_id": {"type": "string"},
                "vps_id": {"type": "integer"},
                "vps_name": {"type": "string"},
                "status": child_status,
                "exit_code": {"type": ["integer", "null"]},
                "output_stream_summary": lines,
                "error_stream_summary": lines,
                "error_message": text_or_null,
                "created_at": TS,
                "updated_at": TS,
                "agent_started_at": TS,
                "agent_completed_at": TS,
                "last_output_at": TS,
                "stdout_bytes": {"type": "integer"},
                "stderr_bytes": {"type": "integer"},
                "truncated": {"type": "boolean"},
                "waiting_until": {
                    **TS,
                    "description": "a PENDING child waiting for its agent: until when",
                },
                "agent_reported": {
                    "description": "a result the agent reported after the server ended the "
                    "child (its status stays)",
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["status", "exit_code", "at"],
                            "properties": {
                                "status": child_status,
                                "exit_code": {"type": ["integer", "null"]},
                                "at": TS,
                            },
                        },
                    ],
                },
            },
        },
        "Batch": {
            "type": "object",
            "required": ["batch_command_id", "overall_status", "tasks"],
            "properties": {
                "batch_command_id": {"type": "string"},
                "overall_status": batch_status,
                "execution_alias": text_or_null,
                "command_type": {"type": "string"},
                "command_content": {"type": "string"},
                "script_id": {"type": ["integer", "null"]},
                "working_directory": text_or_null,
                "timeout_seconds": {"type": ["integer", "null"]},
                "created_at": TS,
                "updated_at": TS,
                "completed_at": TS,
                "counts": counts,
                **rollout_facts,
                "target_tags": {"type": "array", "items": {"type": "string"}},
                "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                "created_by": {"type": "string"},
                "tasks": {"type": "array", "items": ref("ChildTask")},
            },
        },
        "BatchSummary": {
            "type": "object",
            "required": ["batch_command_id", "overall_status"],
            "properties": {
                "batch_command_id": {"type": "string"},
                "overall_status": batch_status,
                "execution_alias": text_or_null,
                "command_type": {"type": "string"},
                "command_content": {"type": "string"},
                "created_at": TS,
                "updated_at": TS,
                "completed_at": TS,
                "target_count": {"type": "integer"},
                "counts": counts,
                **rollout_facts,
            },
        },
        "BatchPage": {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": {"type": "array", "items": ref("BatchSummary")},
                "total": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        },
        "BatchTerminated": {
            "type": "object",
            "required": ["batch_command_id", "overall_status"],
            "properties": {"batch_command_id": {"type": "string"}, "overall_status": batch_status},
        },
        "TaskTerminated": {
            "type": "object",
            "required": ["child_command_id", "status"],
            "properties": {"child_command_id": {"type": "string"}, "status": child_status},
        },
    }


def section() -> Section:
    batch_id = path_param("batch_id", COMMAND_ID)
    child_id = path_param("child_id", COMMAND_ID)
    stream = {
        "name": "stream",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": list(core.STREAMS)},
    }
    log = {
        "description": "The log, byte-exact",
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    }
    paths: dict[str, Schema] = {
        "/api/batch_commands": {
            "post": op(
                "Run a command or saved script on many VPSes",
                {"202": json_content(ref("BatchAccepted"), "Accepted")},
                body=ref("BatchCreate"),
                write=True,
            ),
            "get": op(
                "List batches, newest first",
                {"200": json_content(ref("BatchPage"))},
                params=[query_int("limit", 1, 500), query_int("offset", 0, 10**9)],
            ),
        },
        "/api/batch_commands/{batch_id}": {
            "get": op(
                "A batch and its tasks", {"200": json_content(ref("Batch"))}, params=[batch_id]
            )
        },
        "/api/batch_commands/{batch_id}/rerun": {
            "post": {
                **op(
                    "Run a finished batch again on the VPSes of the children that did not "
                    "succeed (only: all: every one); secret parameters must be given again",
                    {
                        "202": json_content(ref("BatchAccepted"), "Accepted"),
                        "409": json_content(ref("Error"), "The batch is still running"),
                    },
                    params=[batch_id],
                    write=True,
                ),
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("BatchRerun")}},
                },
            }
        },
        "/api/batch_commands/{batch_id}/terminate": {
            "post": op(
                "Terminate a batch (a finished one: a no-op answered with its status)",
                {"202": json_content(ref("BatchTerminated"), "Accepted")},
                params=[batch_id],
                write=True,
            )
        },
        "/api/batch_commands/{batch_id}/tasks/{child_id}/terminate": {
            "post": op(
                "Terminate one VPS's task",
                {"202": json_content(ref("TaskTerminated"), "Accepted")},
                params=[batch_id, child_id],
                write=True,
            )
        },
        "/api/batch_commands/{batch_id}/tasks/{child_id}/output": {
            "get": op(
                "Download a task's full log",
                {"200": log},
                params=[batch_id, child_id, stream],
            )
        },
    }
    return _schemas(), paths
