"""Teams: roles, and validation of user, token, login and audit-query input.

Like ``_request``, every check returns normalised values or raises ``ValidationError`` listing
every problem with its field. Time comes in as ``now`` (no clock here).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ._errors import ValidationError
from ._request import MAX_TAG, MAX_TAGS, TAG_PATTERN, _is_unicode

__all__ = [
    "AUDIT_ACTIONS",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "Role",
    "parse_timestamp",
    "validate_login_body",
    "validate_token_body",
    "validate_user_body",
]

MIN_PASSWORD = 12
#: argon2 hashes any length, but hashing a megabyte per attempt is a denial of service.
MAX_PASSWORD = 1024
MAX_TOKEN_NAME = 100
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

#: Every action the audit log records, in the order the UI lists them.
AUDIT_ACTIONS = (
    "login",
    "login_failed",
    "logout",
    "batch.create",
    "batch.terminate",
    "child.terminate",
    "batch.rerun",
    "script.create",
    "script.update",
    "script.delete",
    "vps.create",
    "vps.delete",
    "vps.rotate_secret",
    "user.create",
    "user.update",
    "user.delete",
    "token.create",
    "token.delete",
)


class Role(enum.Enum):
    """What a user may do; each role can do everything the ones before it can."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def _object(body: object, allowed: set[str]) -> tuple[Mapping[str, Any], list[dict[str, Any]]]:
    if not isinstance(body, Mapping):
        raise ValidationError([{"field": "body", "reason": "must be a JSON object"}])
    unknown = sorted(set(body) - allowed, key=str)
    return body, [{"field": str(name), "reason": "unknown field"} for name in unknown]


def _tags(value: object, errors: list[dict[str, Any]]) -> list[str] | None:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        errors.append({"field": "allowed_tags", "reason": "must be a list of strings"})
        return None
    if len(value) > MAX_TAGS:
        errors.append({"field": "allowed_tags", "reason": f"at most {MAX_TAGS} tags"})
        return None
    # The same rule as a VPS's tags (``validate_vps_body``): what one can match the other.
    if any(not re.fullmatch(TAG_PATTERN, t) or not _is_unicode(t) for t in value):
        reason = f"tags are 1 to {MAX_TAG} characters, no spaces or controls"
        errors.append({"field": "allowed_tags", "reason": reason})
        return None
    return list(dict.fromkeys(t.strip() for t in value if t.strip()))


def _password(value: object, errors: list[dict[str, Any]]) -> str | None:
    if not isinstance(value, str):
        errors.append({"field": "password", "reason": "is required: a string"})
    elif len(value) < MIN_PASSWORD:
        errors.append({"field": "password", "reason": f"at least {MIN_PASSWORD} characters"})
    elif len(value) > MAX_PASSWORD:
        errors.append({"field": "password", "reason": f"at most {MAX_PASSWORD} characters"})
    elif "\x00" in value or not _is_unicode(value):
        errors.append({"field": "password", "reason": "must be text without NUL"})
    else:
        return value
    return None


def validate_user_body(body: object, *, partial: bool = False) -> dict[str, Any]:
    """Check ``POST /api/users`` (``{username, password, role, allowed_tags?}``) or, with
    ``partial``, ``PUT /api/users/{id}`` (any of them). Returns the given fields normalised
    (``role`` as a ``Role``). An admin sees every VPS, so an admin's ``allowed_tags`` must be
    empty.

    Raises:
        ValidationError: with every problem found.
    """
    body, errors = _object(body, {"username", "password", "role", "allowed_tags"})
    out: dict[str, Any] = {}
    if "username" in body or not partial:
        name = body.get("username")
        if not isinstance(name, str) or not _USERNAME.fullmatch(name):
            reason = "1-64 letters, digits or . _ @ -, starting with a letter or digit"
            errors.append({"field": "username", "reason": reason})
        else:
            out["username"] = name
    if "password" in body or not partial:
        password = _password(body.get("password"), errors)
        if password is not None:
            out["password"] = password
    if "role" in body or not partial:
        role = body.get("role")
        try:
            out["role"] = Role(role)
        except ValueError:
            errors.append({"field": "role", "reason": "must be one of viewer, operator, admin"})
    if "allowed_tags" in body:
        tags = _tags(body["allowed_tags"], errors)
        if tags is not None:
            out["allowed_tags"] = tags
    elif not partial:
        out["allowed_tags"] = []
    if out.get("role") is Role.ADMIN and out.get("allowed_tags"):
        reason = "an admin sees every VPS: leave allowed_tags empty"
        errors.append({"field": "allowed_tags", "reason": reason})
    if errors:
        raise ValidationError(errors)
    return out


def _text(value: str, limit: int) -> bool:
    """1 to ``limit`` characters of text a database can hold (no NUL, no lone surrogate)."""
    return 0 < len(value) <= limit and "\x00" not in value and _is_unicode(value)


def validate_login_body(body: object) -> dict[str, str]:
    """``POST /api/login``: ``{username, password}``, or ``{token}`` (the UI's token login).

    Only the shape is checked here: a short password is simply a wrong one.
    """
    body, errors = _object(body, {"username", "password", "token"})
    out: dict[str, str] = {}
    if "token" in body and not ({"username", "password"} & set(body)):
        token = body["token"]
        if not isinstance(token, str) or not _text(token, 256):
            errors.append({"field": "token", "reason": "must be a non-empty string"})
        else:
            out["token"] = token
    else:
        for name, limit in (("username", 64), ("password", MAX_PASSWORD)):
            value = body.get(name)
            if not isinstance(value, str) or not _text(value, limit):
                errors.append({"field": name, "reason": f"is required: 1-{limit} characters"})
            else:
                out[name] = value
    if errors:
        raise ValidationError(errors)
    return out


def parse_timestamp(value: object, field: str) -> datetime:
    """An ISO-8601 timestamp (a naive one is taken as UTC), as an aware UTC datetime."""
    if isinstance(value, str) and 0 < len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return parsed.astimezone(timezone.utc)
    raise ValidationError([{"field": field, "reason": "must be an ISO-8601 timestamp"}])


def validate_token_body(body: object, *, now: datetime) -> dict[str, Any]:
    """``POST /api/tokens``: ``{name, expires_at?}``; ``expires_at`` must lie in the future."""
    body, errors = _object(body, {"name", "expires_at"})
    out: dict[str, Any] = {"expires_at": None}
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append({"field": "name", "reason": "is required: a non-empty string"})
    elif len(name) > MAX_TOKEN_NAME or not name.isprintable():
        errors.append({"field": "name", "reason": f"at most {MAX_TOKEN_NAME} printable characters"})
    else:
        out["name"] = name.strip()
    expires = body.get("expires_at")
    if expires is not None:
        try:
            at = parse_timestamp(expires, "expires_at")
        except ValidationError as exc:
            errors.extend(exc.errors)
        else:
            if at <= now:
                errors.append({"field": "expires_at", "reason": "must lie in the future"})
            elif at.year > 9000:
                errors.append({"field": "expires_at", "reason": "is too far in the future"})
            else:
                out["expires_at"] = at
    if errors:
        raise ValidationError(errors)
    return out
