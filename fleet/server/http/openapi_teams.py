"""The OpenAPI document's section for teams: sessions, users, tokens and the audit log.

Plain data, as strict as the server: request bodies allow no other property; user names,
passwords, roles and tags carry the limits ``fleet.core`` checks.
"""

from __future__ import annotations

from typing import Any

from fleet import core
from fleet.core import AUDIT_ACTIONS, MIN_PASSWORD, Role

from .openapi_parts import (
    NO_BODY,
    NUMERIC_ID,
    TS,
    Schema,
    Section,
    json_content,
    op,
    path_param,
    query_int,
    ref,
)

__all__ = ["section"]

_USERNAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"}
_PASSWORD = {
    "type": "string",
    "minLength": MIN_PASSWORD,
    "maxLength": core.MAX_PASSWORD,
    "pattern": "^[^\\u0000]*$",
}
_LOGIN_TEXT = {"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*$"}
_ROLE = {"type": "string", "enum": [r.value for r in Role]}
_TAGS = {
    "type": ["array", "null"],
    "maxItems": core.MAX_TAGS,
    "items": {"type": "string", "pattern": core.TAG_PATTERN},
}
_TAGS_OUT = {"type": "array", "items": {"type": "string"}}
_FORBIDDEN = {"403": json_content(ref("Error"), "The caller's role does not allow it")}
_CONFLICT = {"409": json_content(ref("Error"), "Taken username, or the last admin")}


def _strict(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def _schemas() -> dict[str, Schema]:
    me = _strict(
        ["id", "username", "role", "allowed_tags"],
        {
            "id": {"type": "integer"},
            "username": _USERNAME,
            "role": _ROLE,
            "allowed_tags": _TAGS_OUT,
        },
    )
    out: dict[str, Schema] = {
        "Login": {
            "oneOf": [
                _strict(
                    ["username", "password"],
                    {
                        "username": _LOGIN_TEXT | {"maxLength": 64},
                        "password": _LOGIN_TEXT | {"maxLength": core.MAX_PASSWORD},
                    },
                ),
                _strict(["token"], {"token": _LOGIN_TEXT | {"maxLength": 256}}),
            ]
        },
        "Me": me,
        "MeVersion": me
        | {
            "required": [*me["required"], "version"],
            "properties": me["properties"] | {"version": {"type": "string"}},
        },
        "User": _strict(
            ["id", "username", "role", "allowed_tags", "has_password", "created_at", "updated_at"],
            {
                "id": {"type": "integer"},
                "username": _USERNAME,
                "role": _ROLE,
                "allowed_tags": _TAGS_OUT,
                "has_password": {"type": "boolean"},
                "created_at": TS,
                "updated_at": TS,
            },
        ),
        "UserCreate": _strict(
            ["username", "password", "role"],
            {"username": _USERNAME, "password": _PASSWORD, "role": _ROLE, "allowed_tags": _TAGS},
        ),
        "UserUpdate": _strict(
            [], {"username": _USERNAME, "password": _PASSWORD, "role": _ROLE, "allowed_tags": _TAGS}
        ),
        "Token": _strict(
            ["id", "name", "owner", "created_at", "expires_at"],
            {
                "id": {"type": "integer"},
                "name": {"type": "string"},
                "owner": {"type": "string"},
                "created_at": TS,
                "expires_at": TS,
            },
        ),
        "TokenCreate": _strict(
            ["name"],
            {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "expires_at": {"type": ["string", "null"], "format": "date-time"},
            },
        ),
        "AuditEntry": _strict(
            [
                "id",
                "at",
                "actor",
                "action",
                "target_type",
                "target_id",
                "details",
                "source_ip",
                "outcome",
            ],
            {
                "id": {"type": "integer"},
                "at": TS,
                "actor": {"type": "string"},
                "action": {"type": "string", "enum": list(AUDIT_ACTIONS)},
                "target_type": {"type": ["string", "null"]},
                "target_id": {"type": ["string", "null"]},
                "details": {"type": "object"},
                "source_ip": {"type": ["string", "null"]},
                "outcome": {"type": "string", "enum": ["success", "failure"]},
            },
        ),
    }
    out["TokenCreated"] = {
        **out["Token"],
        "required": [*out["Token"]["required"], "token"],
        "properties": out["Token"]["properties"] | {"token": {"type": "string"}},
    }
    return out


def section() -> Section:
    user_id, token_id = path_param("user_id", NUMERIC_ID), path_param("token_id", NUMERIC_ID)
    audit_params = [
        {"name": "actor", "in": "query", "schema": {"type": "string", "maxLength": 200}},
        {
            "name": "action",
            "in": "query",
            "schema": {"type": "string", "enum": list(AUDIT_ACTIONS)},
        },
        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
        query_int("limit", 1, 1000),
        query_int("before", 1, 2**62),
    ]
    paths: dict[str, Schema] = {
        "/api/login": {
            "post": op(
                "Log in (password, or a token) and get a session cookie",
                {
                    "200": json_content(ref("Me"), "Logged in; the fleet_session cookie is set"),
                    "401": json_content(ref("Error"), "Wrong username, password or token"),
                    "429": json_content(ref("Error"), "Too many failed logins; see Retry-After"),
                },
                body=ref("Login"),
                write=True,
                public=True,
            )
        },
        "/api/logout": {"post": op("End this session", NO_BODY, write=True)},
        "/api/me": {"get": op("Who is calling", {"200": json_content(ref("MeVersion"), "")})},
        "/api/users": {
            "get": op(
                "List users (admin)",
                {"200": json_content({"type": "array", "items": ref("User")}, "")} | _FORBIDDEN,
            ),
            "post": op(
                "Create a user (admin)",
                {"201": json_content(ref("User"), "Created")} | _FORBIDDEN | _CONFLICT,
                body=ref("UserCreate"),
                write=True,
            ),
        },
        "/api/users/{user_id}": {
            "get": op(
                "Get a user (admin)",
                {"200": json_content(ref("User"), "")} | _FORBIDDEN,
                params=[user_id],
            ),
            "put": op(
                "Change a user (admin); a new password ends their sessions",
                {"200": json_content(ref("User"), "")} | _FORBIDDEN | _CONFLICT,
                body=ref("UserUpdate"),
                params=[user_id],
                write=True,
            ),
            "delete": op(
                "Delete a user with their sessions and tokens (admin)",
                NO_BODY | _FORBIDDEN | _CONFLICT,
                params=[user_id],
                write=True,
            ),
        },
        "/api/tokens": {
            "get": op(
                "Your API tokens (an admin: everyone's)",
                {"200": json_content({"type": "array", "items": ref("Token")}, "")},
            ),
            "post": op(
                "Create a personal API token (shown only here; acts as you)",
                {"201": json_content(ref("TokenCreated"), "Created")},
                body=ref("TokenCreate"),
                write=True,
            ),
        },
        "/api/tokens/{token_id}": {
            "delete": op(
                "Revoke a token (yours; an admin: anyone's; never the first-start admin token)",
                NO_BODY | {"409": json_content(ref("Error"), "The first-start admin token")},
                params=[token_id],
                write=True,
            )
        },
        "/api/audit": {
            "get": op(
                "The audit log, newest first (admin)",
                {
                    "200": json_content(
                        _strict(
                            ["items", "next"],
                            {
                                "items": {"type": "array", "items": ref("AuditEntry")},
                                "next": {"type": ["integer", "null"]},
                            },
                        ),
                        "One page; pass next as before for the following one",
                    )
                }
                | _FORBIDDEN,
                params=audit_params,
            )
        },
    }
    return _schemas(), paths
