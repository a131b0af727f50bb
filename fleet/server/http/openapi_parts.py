"""Building blocks of the OpenAPI document (``openapi``): operations, errors, ids, names.

The request schemas use ``fleet.core``'s patterns and limits, the very ones the server checks,
so the document is exactly as strict as the server.
"""

from __future__ import annotations

from typing import Any

from fleet import core
from fleet.server.reports import COMMAND_ID_PATTERN

__all__ = [
    "BODY_ID",
    "COMMAND_ID",
    "CONFLICT",
    "NAME",
    "NO_BODY",
    "NUMERIC_ID",
    "PARAMETERS",
    "TS",
    "Schema",
    "Section",
    "json_content",
    "op",
    "optional_text",
    "path_param",
    "query_int",
    "ref",
]

Schema = dict[str, Any]
Section = tuple[dict[str, Schema], dict[str, Schema]]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema, description: str = "") -> Schema:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return json_content(ref("Error"), description)


#: Answers any operation may give (a body or a path the server refuses, a slow body…).
_ERRORS = {
    "400": _error("Malformed request (bad JSON, NaN, not UTF-8)"),
    "401": _error("Missing or invalid token"),
    "404": _error("Unknown id, or an id of a shape no server generates"),
    "408": _error("The request body took longer than 30 s"),
    "413": _error("The request body is over 4 MiB"),
    "422": _error("Invalid body or query; detail lists every problem"),
    "503": _error("The store cannot be written (a lost or unwritable database file)"),
}
#: What a create or an update may also get: the name is taken.
CONFLICT = {"409": _error("That name is taken")}
#: What a write authenticated by the session cookie may also get (CSRF).
_WRITE_ERRORS = {
    "403": _error("Cookie-authenticated write without this server's own Origin"),
    "415": _error("Cookie-authenticated write without Content-Type: application/json"),
}
_PUBLIC: list[dict[str, list[str]]] = []  # ``security`` of an operation that needs no token
TS = {"type": ["string", "null"], "format": "date-time"}


def op(
    summary: str,
    responses: dict[str, Any],
    *,
    body: Schema | None = None,
    params: list[Schema] | None = None,
    write: bool = False,
    public: bool = False,
) -> Schema:
    """One operation: its answers plus every error it may give."""
    answers = {**responses, **_ERRORS, **(_WRITE_ERRORS if write else {})}
    if public and "401" not in responses:
        answers.pop("401")
    operation: Schema = {"summary": summary, "responses": answers}
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    if params:
        operation["parameters"] = params
    if public:
        operation["security"] = _PUBLIC
    return operation


def path_param(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query_int(name: str, low: int, high: int) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": low, "maximum": high},
    }


#: A numeric id (VPS, script): what ``core.parse_id`` accepts in a path.
NUMERIC_ID = {"type": "string", "maxLength": core.MAX_ID_DIGITS, "pattern": core.ID_PATTERN}
#: A batch or task id: what ``reports.valid_command_id`` accepts (a UUID in practice).
COMMAND_ID = {"type": "string", "pattern": COMMAND_ID_PATTERN}
#: An id in a body: a positive 32-bit integer, or the same as a string of digits.
BODY_ID = {
    "type": ["integer", "string"],
    "minimum": 1,
    "maximum": 2**31 - 1,
    "maxLength": core.MAX_ID_DIGITS,
    "pattern": core.ID_PATTERN,
}
NAME = {"type": "string", "maxLength": core.MAX_NAME, "pattern": core.NAME_PATTERN}
#: Script parameters given to a batch: name → value, reaching the command only as the
#: environment variable ``FLEET_PARAM_<name>`` (a value is at most 4,096 bytes of UTF-8).
PARAMETERS = {
    "type": ["object", "null"],
    "maxProperties": core.MAX_PARAMETERS,
    "propertyNames": {"pattern": core.PARAM_NAME_PATTERN},
    "additionalProperties": {
        "type": "string",
        "maxLength": core.MAX_VALUE_BYTES,
        "pattern": "^[^\\x00]*$",
    },
    "description": "name → value; the command gets FLEET_PARAM_<name>; secret values are shown "
    'as "***" and never stored',
}
NO_BODY = {"204": {"description": "Done"}}


def optional_text(limit: int) -> Schema:
    """A string that may be empty or null (then absent), without NUL."""
    return {"type": ["string", "null"], "maxLength": limit, "pattern": "^[^\\x00]*$"}
