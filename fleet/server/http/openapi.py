"""The OpenAPI 3.1 document of the REST API, served at ``/api/openapi.json``.

It lists every route under ``/api/`` with exactly the methods the server answers (a test
compares it with the app's URL map), and request schemas exactly as strict as the server's
validation: ``openapi_parts`` builds them from ``fleet.core``'s patterns and limits, and
schemathesis checks that both refuse the same requests. ``additionalProperties: false`` wherever
the server refuses extra fields.

The document is made of sections, one per noun, each ``(schemas, paths)``: a new noun (users,
tokens, audit…) adds a section function (here or in a module of its own, like
``openapi_batches``) and one entry in ``SECTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fleet
from fleet import core

from . import openapi_batches, openapi_teams
from .openapi_parts import (
    CONFLICT,
    NAME,
    NO_BODY,
    NUMERIC_ID,
    TS,
    Schema,
    Section,
    json_content,
    op,
    path_param,
    ref,
)

__all__ = ["SECTIONS", "document"]


def _error_section() -> Section:
    error = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {}},
    }
    return {"Error": error}, {}


def _document_section() -> Section:
    paths: dict[str, Schema] = {
        "/api/openapi.json": {
            "get": op(
                "This document",
                {"200": json_content({"type": "object"}, "OpenAPI 3.1")},
                public=True,
            )
        },
    }
    return {}, paths


def _vps_section() -> Section:
    tags = {
        "type": ["array", "null"],
        "maxItems": core.MAX_TAGS,
        "items": {"type": "string", "pattern": core.TAG_PATTERN},
    }
    secret_props = {
        "id": {"type": "integer"},
        "agent_secret": {"type": "string"},
        "agent_command": {"type": "string"},
        "agent_install": {"type": "string"},
    }
    vps_props = {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "online": {"type": "boolean"},
        "last_seen_at": TS,
        "hostname": {"type": ["string", "null"]},
        "os": {"type": ["string", "null"]},
        "agent_version": {"type": ["string", "null"]},
    }
    schemas: dict[str, Schema] = {
        "Vps": {"type": "object", "required": ["id", "name", "tags"], "properties": vps_props},
        "VpsCreate": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": NAME, "tags": tags},
            "additionalProperties": False,
        },
        "VpsUpdate": {
            "type": "object",
            "properties": {"name": NAME, "tags": tags},
            "additionalProperties": False,
        },
        "VpsCreated": {
            "type": "object",
            "required": ["id", "name", "agent_secret"],
            "properties": vps_props | secret_props,
        },
        "VpsSecret": {
            "type": "object",
            "required": ["id", "agent_secret"],
            "properties": secret_props,
        },
    }
    vps_id = path_param("vps_id", NUMERIC_ID)
    update = {"200": json_content(ref("Vps"))} | CONFLICT
    paths: dict[str, Schema] = {
        "/api/vps": {
            "get": op("List VPSes", {"200": json_content({"type": "array", "items": ref("Vps")})}),
            "post": op(
                "Register a VPS (its agent secret is shown only here)",
                {"201": json_content(ref("VpsCreated"), "Created")} | CONFLICT,
                body=ref("VpsCreate"),
                write=True,
            ),
        },
        "/api/vps/{vps_id}": {
            "get": op("Get a VPS", {"200": json_content(ref("Vps"))}, params=[vps_id]),
            "patch": op(
                "Rename or retag a VPS (only the fields given change)",
                update,
                body=ref("VpsUpdate"),
                params=[vps_id],
                write=True,
            ),
            "put": op(
                "Rename or retag a VPS (as PATCH)",
                update,
                body=ref("VpsUpdate"),
                params=[vps_id],
                write=True,
            ),
            "delete": op("Delete a VPS", NO_BODY, params=[vps_id], write=True),
        },
        "/api/vps/{vps_id}/rotate_secret": {
            "post": op(
                "Issue a new agent secret (the old one stops working)",
                {"200": json_content(ref("VpsSecret"))},
                params=[vps_id],
                write=True,
            )
        },
    }
    return schemas, paths


def _script_section() -> Section:
    schemas: dict[str, Schema] = {
        "Script": {
            "type": "object",
            "required": ["id", "name", "content"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "content": {"type": "string"},
                "parameters": {"type": "array", "items": ref("ScriptParameter")},
                "created_at": TS,
                "updated_at": TS,
            },
        },
        "ScriptParameter": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": core.PARAM_NAME_PATTERN},
                "description": {"type": ["string", "null"], "maxLength": core.MAX_DESCRIPTION},
                "required": {"type": ["boolean", "null"]},
                "default": {
                    "type": ["string", "null"],
                    "maxLength": core.MAX_VALUE_BYTES,
                    "pattern": "^[^\\x00]*$",
                    "description": "used when the batch gives no value (never on a secret)",
                },
                "pattern": {
                    "type": ["string", "null"],
                    "maxLength": core.MAX_PARAM_PATTERN,
                    "description": "a regular expression the whole value must match (checked "
                    "when the script is saved)",
                },
                "secret": {
                    "type": ["boolean", "null"],
                    "description": "masked everywhere, never stored; a re-run asks for it again",
                },
            },
            "additionalProperties": False,
            "if": {"required": ["secret"], "properties": {"secret": {"const": True}}},
            "then": {"properties": {"default": {"type": "null"}}},
        },
        "ScriptBody": {
            "type": "object",
            "required": ["name", "content"],
            "properties": {
                "name": NAME,
                "description": {"type": ["string", "null"], "maxLength": core.MAX_DESCRIPTION},
                "content": {
                    "type": "string",
                    "maxLength": core.MAX_COMMAND_BYTES,
                    "pattern": core.TEXT_PATTERN,
                    "description": f"at most {core.MAX_COMMAND_BYTES} bytes of UTF-8",
                },
                "id": {"description": "ignored: a script as GET shows it may be sent back"},
                "parameters": {
                    "type": ["array", "null"],
                    "maxItems": core.MAX_PARAMETERS,
                    "items": ref("ScriptParameter"),
                    "description": "declared parameters; a PUT without them keeps the old ones",
                },
            },
            "additionalProperties": False,
        },
    }
    script_id = path_param("script_id", NUMERIC_ID)
    one = {"200": json_content(ref("Script"))}
    paths: dict[str, Schema] = {
        "/api/scripts": {
            "get": op(
                "List scripts", {"200": json_content({"type": "array", "items": ref("Script")})}
            ),
            "post": op(
                "Save a script",
                {"201": json_content(ref("Script"), "Created")} | CONFLICT,
                body=ref("ScriptBody"),
                write=True,
            ),
        },
        "/api/scripts/{script_id}": {
            "get": op("Get a script", one, params=[script_id]),
            "put": op(
                "Replace a script",
                one | CONFLICT,
                body=ref("ScriptBody"),
                params=[script_id],
                write=True,
            ),
            "delete": op("Delete a script", NO_BODY, params=[script_id], write=True),
        },
    }
    return schemas, paths


#: The document's sections, in order. Add new nouns here.
SECTIONS: list[Callable[[], Section]] = [
    _error_section,
    _document_section,
    openapi_teams.section,
    _vps_section,
    _script_section,
    openapi_batches.section,
]


def document() -> dict[str, Any]:
    schemas: dict[str, Schema] = {}
    paths: dict[str, Schema] = {}
    for section in SECTIONS:
        more_schemas, more_paths = section()
        schemas |= more_schemas
        paths |= more_paths
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Fleet",
            "version": fleet.__version__,
            "description": "Run a command on many VPSes. Authenticate with "
            "`Authorization: Bearer <token>` (or the web UI's session cookie: its writes must "
            "send `Content-Type: application/json` and this server's `Origin`). Not listed "
            "here: the web UI (`/`, `/ui/…`, `/favicon.ico`) and the live feeds, WebSockets "
            "`/ws/batch_commands/{id}` (SNAPSHOT, BATCH_TASK_UPDATE, CHILD_TASK_UPDATE, "
            "NEW_LOG_OUTPUT) and `/ws/vps` (VPS_SNAPSHOT, VPS_UPDATE).",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
