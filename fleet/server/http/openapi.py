"""The OpenAPI 3 document of the REST API, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

import fleet
from fleet.core import BatchStatus, ChildStatus

__all__ = ["document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Malformed request (bad JSON, bad query parameter)"),
    "401": _json(_ref("Error"), "Missing or invalid token"),
    "404": _json(_ref("Error"), "Unknown id"),
    "422": _json(_ref("Error"), "Invalid body; detail lists every problem"),
}
_ID = {"type": "string"}
_TS = {"type": ["string", "null"], "format": "date-time"}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_ERRORS}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {"error": {"type": "string"}, "detail": {}},
        },
        "Vps": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "online": {"type": "boolean"},
                "last_seen_at": _TS,
                "hostname": {"type": ["string", "null"]},
                "os": {"type": ["string", "null"]},
                "agent_version": {"type": ["string", "null"]},
            },
        },
        "VpsCreate": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 100},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
        },
        "VpsSecret": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "agent_secret": {"type": "string"},
                "agent_command": {"type": "string"},
                "agent_install": {"type": "string"},
            },
        },
        "Script": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "content": {"type": "string"},
                "created_at": _TS,
                "updated_at": _TS,
            },
        },
        "ScriptBody": {
            "type": "object",
            "required": ["name", "content"],
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "content": {"type": "string"},
            },
        },
        "BatchCreate": {
            "type": "object",
            "required": ["target_vps_ids"],
            "description": "Exactly one of command_content and script_id.",
            "properties": {
                "command_content": {"type": "string"},
                "script_id": {"type": ["integer", "string"]},
                "working_directory": {"type": "string"},
                "target_vps_ids": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": ["integer", "string"]},
                },
                "execution_alias": {"type": "string"},
                "timeout_seconds": {"type": "integer", "minimum": 0},
            },
        },
        "BatchAccepted": {
            "type": "object",
            "properties": {
                "batch_command_id": _ID,
                "status": {"type": "string", "enum": ["PENDING"]},
                "message": {"type": "string"},
            },
        },
        "ChildTask": {
            "type": "object",
            "properties": {
                "child_command_id": _ID,
                "vps_id": {"type": "integer"},
                "vps_name": {"type": "string"},
                "status": {"type": "string", "enum": [s.value for s in ChildStatus]},
                "exit_code": {"type": ["integer", "null"]},
                "output_stream_summary": {"type": "array", "items": {"type": "string"}},
                "error_stream_summary": {"type": "array", "items": {"type": "string"}},
                "error_message": {"type": ["string", "null"]},
                "created_at": _TS,
                "updated_at": _TS,
                "agent_started_at": _TS,
                "agent_completed_at": _TS,
                "stdout_bytes": {"type": "integer"},
                "stderr_bytes": {"type": "integer"},
                "truncated": {"type": "boolean"},
                "agent_reported": {
                    "description": "a result the agent reported after the server ended the "
                    "child (its status stays)",
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string"},
                                "exit_code": {"type": ["integer", "null"]},
                                "at": _TS,
                            },
                        },
                    ],
                },
            },
        },
        "Batch": {
            "type": "object",
            "properties": {
                "batch_command_id": _ID,
                "overall_status": {"type": "string", "enum": [s.value for s in BatchStatus]},
                "execution_alias": {"type": ["string", "null"]},
                "command_content": {"type": "string"},
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "created_at": _TS,
                "updated_at": _TS,
                "completed_at": _TS,
                "tasks": {"type": "array", "items": _ref("ChildTask")},
            },
        },
        "BatchPage": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": _ref("Batch")},
                "total": {"type": "integer"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        },
    }
    vps_id, script_id = _path_param("vps_id"), _path_param("script_id")
    batch_id, child_id = _path_param("batch_id"), _path_param("child_id")
    paths = {
        "/api/vps": {
            "get": _op("List VPSes", {"200": _json({"type": "array", "items": _ref("Vps")}, "")}),
            "post": _op(
                "Register a VPS (its agent secret is shown only here)",
                {"201": _json(_ref("VpsSecret"), "Created")},
                body=_ref("VpsCreate"),
            ),
        },
        "/api/vps/{vps_id}": {
            "get": _op("Get a VPS", {"200": _json(_ref("Vps"), "")}, params=[vps_id]),
            "delete": _op("Delete a VPS", {"204": {"description": "Deleted"}}, params=[vps_id]),
        },
        "/api/vps/{vps_id}/rotate_secret": {
            "post": _op(
                "Issue a new agent secret (the old one stops working)",
                {"200": _json(_ref("VpsSecret"), "")},
                params=[vps_id],
            )
        },
        "/api/scripts": {
            "get": _op(
                "List scripts", {"200": _json({"type": "array", "items": _ref("Script")}, "")}
            ),
            "post": _op(
                "Save a script", {"201": _json(_ref("Script"), "")}, body=_ref("ScriptBody")
            ),
        },
        "/api/scripts/{script_id}": {
            "get": _op("Get a script", {"200": _json(_ref("Script"), "")}, params=[script_id]),
            "put": _op(
                "Replace a script",
                {"200": _json(_ref("Script"), "")},
                body=_ref("ScriptBody"),
                params=[script_id],
            ),
            "delete": _op(
                "Delete a script", {"204": {"description": "Deleted"}}, params=[script_id]
            ),
        },
        "/api/batch_commands": {
            "post": _op(
                "Run a command or saved script on many VPSes",
                {"202": _json(_ref("BatchAccepted"), "Accepted")},
                body=_ref("BatchCreate"),
            ),
            "get": _op(
                "List batches, newest first",
                {"200": _json(_ref("BatchPage"), "")},
                params=[
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                ],
            ),
        },
        "/api/batch_commands/{batch_id}": {
            "get": _op(
                "A batch and its tasks", {"200": _json(_ref("Batch"), "")}, params=[batch_id]
            )
        },
        "/api/batch_commands/{batch_id}/terminate": {
            "post": _op(
                "Terminate a batch", {"202": {"description": "Accepted"}}, params=[batch_id]
            )
        },
        "/api/batch_commands/{batch_id}/tasks/{child_id}/terminate": {
            "post": _op(
                "Terminate one VPS's task",
                {"202": {"description": "Accepted"}},
                params=[batch_id, child_id],
            )
        },
        "/api/batch_commands/{batch_id}/tasks/{child_id}/output": {
            "get": _op(
                "Download a task's full log, byte-exact",
                {
                    "200": {
                        "description": "The log",
                        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                    }
                },
                params=[
                    batch_id,
                    child_id,
                    {
                        "name": "stream",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["stdout", "stderr"]},
                    },
                ],
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fleet",
            "version": fleet.__version__,
            "description": "Run a command on many VPSes. Live feed: WebSocket "
            "/ws/batch_commands/{id} (SNAPSHOT, BATCH_TASK_UPDATE, CHILD_TASK_UPDATE, "
            "NEW_LOG_OUTPUT) and /ws/vps.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
