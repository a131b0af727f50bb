"""Validation of request bodies (``POST /api/batch_commands`` and friends), without I/O.

``validate_batch_request`` checks the body's shape and returns the normalised request, or raises
``ValidationError`` listing *every* problem found, each with its field and a reason. Checks that
need the store (do the targets exist? does the script?) take what the store knows as arguments:
``check_references``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ValidationError
from ._params import ParamSpec, validate_declarations, validate_values
from ._rollout import MAX_WAIT_FOR_AGENT_S, Limit, parse_limit

__all__ = [
    "ID_PATTERN",
    "MAX_ALIAS",
    "MAX_COMMAND_BYTES",
    "MAX_DESCRIPTION",
    "MAX_ID_DIGITS",
    "MAX_NAME",
    "MAX_PATH",
    "MAX_TAG",
    "MAX_TAGS",
    "MAX_TARGETS",
    "MAX_TIMEOUT_S",
    "NAME_PATTERN",
    "TAG_NONBLANK_PATTERN",
    "TAG_PATTERN",
    "TEXT_PATTERN",
    "BatchRequest",
    "check_references",
    "parse_id",
    "validate_batch_request",
    "validate_script_body",
    "validate_vps_body",
]

MAX_COMMAND_BYTES = 1024 * 1024
MAX_TARGETS = 10_000
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_ALIAS = 200
MAX_PATH = 4096
MAX_NAME = 100
MAX_TAGS = 32
MAX_TAG = 64
MAX_DESCRIPTION = 2000

# The rules below are regular expressions so that the OpenAPI document states them exactly
# (``pattern``, an ECMA-262 regex that Python's ``re`` reads the same way): the server and its
# schema refuse the same strings. Python's ``\s`` also matches U+001C-U+001F, which every pattern
# excludes explicitly, so the two engines agree.
_CONTROLS = "\\x00-\\x1f\\x7f-\\x9f"
#: A name: no control character, at least one that is not a space (surrounding spaces are
#: trimmed).
NAME_PATTERN = f"^[^{_CONTROLS}]*[^\\s{_CONTROLS}][^{_CONTROLS}]*$"
_SPACE = "[\\s\\x1c-\\x1f]*"
#: A tag as sent: 1 to 64 characters, none a space or a control character, plus surrounding
#: spaces (trimmed); a blank tag is dropped.
TAG_PATTERN = f"^{_SPACE}([^\\s{_CONTROLS}]{{1,{MAX_TAG}}}{_SPACE})?$"
#: A tag that is not blank (``target_tags`` without ids needs one).
TAG_NONBLANK_PATTERN = f"^{_SPACE}[^\\s{_CONTROLS}]{{1,{MAX_TAG}}}{_SPACE}$"
#: Text that must not be blank (a command, a script): no NUL, one character that is no space.
TEXT_PATTERN = "^[^\\x00]*[^\\s\\x00-\\x1f][^\\x00]*$"


def _int32_digits() -> str:
    """A regex for the decimal numbers 1 … 2**31 - 1, without leading zeros: any shorter
    number, or the top's first ``i`` digits then a smaller digit then any digits, or the top."""
    top = str(2**31 - 1)

    def smaller(i: int) -> str:
        low, upper = ("1" if i == 0 else "0"), str(int(top[i]) - 1)
        return upper if upper == low else f"[{low}-{upper}]"

    rest = [f"[0-9]{{{len(top) - i - 1}}}" if i < len(top) - 1 else "" for i in range(len(top))]
    branches = [f"[1-9][0-9]{{0,{len(top) - 2}}}"]
    branches += [
        f"{top[:i]}{smaller(i)}{rest[i]}"
        for i in range(len(top))
        if int(top[i]) > (1 if i == 0 else 0)
    ]
    branches.append(top)
    return "^(" + "|".join(branches) + ")$"


#: An id as a string: a positive 32-bit integer in decimal (leading zeros allowed), at most
#: ``MAX_ID_DIGITS`` characters.
ID_PATTERN = "^0*" + _int32_digits()[1:]
MAX_ID_DIGITS = 10

_FIELDS = frozenset(
    {
        "command_content",
        "script_id",
        "working_directory",
        "target_vps_ids",
        "execution_alias",
        "timeout_seconds",
        "max_concurrency",
        "max_errors",
        "wait_for_agent_seconds",
        "target_tags",
        "parameters",
    }
)


@dataclass(frozen=True)
class BatchRequest:
    """A valid, normalised batch request (targets de-duplicated, order kept)."""

    target_vps_ids: tuple[int, ...]
    command_content: str | None = None
    script_id: int | None = None
    working_directory: str | None = None
    execution_alias: str | None = None
    timeout_seconds: int = 0
    max_concurrency: Limit | None = None
    max_errors: Limit | None = None
    wait_for_agent_seconds: int = 0
    target_tags: tuple[str, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)


def parse_id(value: object) -> int | None:
    """An id given as a positive integer or a string of digits (``ID_PATTERN``), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 2**31 else None
    if isinstance(value, str) and len(value) <= MAX_ID_DIGITS and re.fullmatch(ID_PATTERN, value):
        return int(value)
    return None


def validate_batch_request(body: object) -> BatchRequest:
    """Check a ``POST /api/batch_commands`` body.

    Raises:
        ValidationError: with every problem found (``errors`` is a list of
            ``{"field", "reason"}``).
    """
    if not isinstance(body, Mapping):
        raise ValidationError([{"field": "body", "reason": "must be a JSON object"}])
    errors: list[dict[str, Any]] = []

    def fail(field: str, reason: str, **extra: Any) -> None:
        errors.append({"field": field, "reason": reason, **extra})

    for name in sorted(set(body) - _FIELDS, key=str):
        fail(str(name), "unknown field")

    command = body.get("command_content")
    script = body.get("script_id")
    has_command = command is not None and command != ""
    has_script = script is not None and script != ""
    command_content: str | None = None
    script_id: int | None = None
    if has_command and has_script:
        fail("command_content", "give either command_content or script_id, not both")
    elif not has_command and not has_script:
        fail("command_content", "give command_content or script_id")
    elif has_command:
        if not isinstance(command, str):
            fail("command_content", "must be a string")
        elif not command.strip():
            fail("command_content", "must not be blank")
        elif "\x00" in command:
            fail("command_content", "must not contain NUL characters")
        elif not _is_unicode(command):
            fail("command_content", _NOT_UNICODE)
        elif len(command.encode("utf-8")) > MAX_COMMAND_BYTES:
            fail("command_content", f"must be at most {MAX_COMMAND_BYTES} bytes")
        else:
            command_content = command
    else:
        script_id = parse_id(script)
        if script_id is None:
            fail("script_id", "must be a positive integer")

    target_tags = _tags(body.get("target_tags"), fail)
    targets = _targets(body.get("target_vps_ids"), fail, required=not target_tags)
    working_directory = _optional_text(
        body.get("working_directory"), "working_directory", MAX_PATH, fail
    )
    alias = _optional_text(body.get("execution_alias"), "execution_alias", MAX_ALIAS, fail)

    timeout = body.get("timeout_seconds")
    timeout_seconds = 0
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int):
            fail("timeout_seconds", "must be a whole number of seconds")
        elif not 0 <= timeout <= MAX_TIMEOUT_S:
            fail("timeout_seconds", f"must be between 0 (no limit) and {MAX_TIMEOUT_S}")
        else:
            timeout_seconds = timeout

    limits: dict[str, Limit | None] = {}
    for name, minimum in (("max_concurrency", 1), ("max_errors", 0)):
        limits[name] = None
        if body.get(name) is not None:
            try:
                limits[name] = parse_limit(body[name], minimum=minimum)
            except ValueError as exc:
                fail(name, str(exc))
    wait = body.get("wait_for_agent_seconds")
    wait_for_agent = 0
    if wait is not None:
        if isinstance(wait, bool) or not isinstance(wait, int):
            fail("wait_for_agent_seconds", "must be a whole number of seconds")
        elif not 0 <= wait <= MAX_WAIT_FOR_AGENT_S:
            fail("wait_for_agent_seconds", f"must be between 0 and {MAX_WAIT_FOR_AGENT_S}")
        else:
            wait_for_agent = wait
    parameters = validate_values(body.get("parameters"), errors)

    if errors:
        raise ValidationError(errors)
    return BatchRequest(
        max_concurrency=limits["max_concurrency"],
        max_errors=limits["max_errors"],
        wait_for_agent_seconds=wait_for_agent,
        target_tags=target_tags,
        parameters=parameters,
        target_vps_ids=targets,
        command_content=command_content,
        script_id=script_id,
        working_directory=working_directory,
        execution_alias=alias,
        timeout_seconds=timeout_seconds,
    )


def check_references(
    request: BatchRequest,
    *,
    known_vps_ids: Collection[int],
    script_exists: bool | None = None,
) -> None:
    """Check what needs the store: every target exists, and the script if one is named.

    Raises:
        ValidationError: naming every unknown target (``unknown_ids``) and an unknown script.
    """
    errors: list[dict[str, Any]] = []
    unknown = [vps_id for vps_id in request.target_vps_ids if vps_id not in known_vps_ids]
    if unknown:
        shown = ", ".join(map(str, unknown[:20])) + (" …" if len(unknown) > 20 else "")
        errors.append(
            {
                "field": "target_vps_ids",
                "reason": f"unknown VPS ids: {shown}",
                "unknown_ids": unknown,
            }
        )
    if request.script_id is not None and not script_exists:
        errors.append({"field": "script_id", "reason": f"no script with id {request.script_id}"})
    if errors:
        raise ValidationError(errors)


def _tags(value: object, fail: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        fail("target_tags", "must be a list of tags (strings)")
        return ()
    if len(value) > MAX_TAGS:
        fail("target_tags", f"at most {MAX_TAGS} tags")
        return ()
    if any(not re.fullmatch(TAG_PATTERN, t) or not _is_unicode(t) for t in value):
        fail("target_tags", f"tags are 1 to {MAX_TAG} characters, no spaces or controls")
        return ()
    return tuple(dict.fromkeys(t.strip() for t in value if t.strip()))


def _targets(value: object, fail: Any, *, required: bool = True) -> tuple[int, ...]:
    if value is None or (value == [] and not required):
        if required:
            fail("target_vps_ids", "is required: a non-empty list of VPS ids")
        return ()
    if not isinstance(value, list):
        fail("target_vps_ids", "must be a list of VPS ids")
        return ()
    if not value:
        fail("target_vps_ids", "must not be empty")
        return ()
    if len(value) > MAX_TARGETS:
        fail("target_vps_ids", f"at most {MAX_TARGETS} targets per batch")
        return ()
    seen: dict[int, None] = {}
    bad: list[object] = []
    for item in value:
        parsed = parse_id(item)
        if parsed is None:
            bad.append(item)
        else:
            seen.setdefault(parsed, None)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:10]) + (" …" if len(bad) > 10 else "")
        fail("target_vps_ids", f"not VPS ids (positive integers or digit strings): {shown}")
    return tuple(seen)


_NOT_UNICODE = "must be valid Unicode text (no lone surrogates)"


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (the wire and the store need it to be)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _optional_text(value: object, field: str, limit: int, fail: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        fail(field, "must be a string")
        return None
    if "\x00" in value:
        fail(field, "must not contain NUL characters")
        return None
    if not _is_unicode(value):
        fail(field, _NOT_UNICODE)
        return None
    if len(value) > limit:
        fail(field, f"must be at most {limit} characters")
        return None
    return value


_NAME_RULE = f"at most {MAX_NAME} characters, no control characters"


def validate_vps_body(body: object, *, partial: bool = False) -> dict[str, Any]:
    """Check a ``POST /api/vps`` body (``{name, tags?}``); return ``{"name", "tags"}``.

    Raises:
        ValidationError: with every problem found.
    """
    if not isinstance(body, Mapping):
        raise ValidationError([{"field": "body", "reason": "must be a JSON object"}])
    errors: list[dict[str, Any]] = []
    for name in sorted(set(body) - {"name", "tags"}, key=str):
        errors.append({"field": str(name), "reason": "unknown field"})
    out: dict[str, Any] = {}
    if "name" in body or not partial:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            errors.append({"field": "name", "reason": "is required: a non-empty string"})
        elif len(name) > MAX_NAME or not re.fullmatch(NAME_PATTERN, name):
            errors.append({"field": "name", "reason": _NAME_RULE})
        elif not _is_unicode(name):
            errors.append({"field": "name", "reason": _NOT_UNICODE})
        else:
            out["name"] = name.strip()
    if "tags" in body or not partial:
        tags = body.get("tags", [])
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            errors.append({"field": "tags", "reason": "must be a list of strings"})
        elif len(tags) > MAX_TAGS:
            errors.append({"field": "tags", "reason": f"at most {MAX_TAGS} tags"})
        else:
            if any(not re.fullmatch(TAG_PATTERN, t) or not _is_unicode(t) for t in tags):
                errors.append(
                    {
                        "field": "tags",
                        "reason": f"tags are 1 to {MAX_TAG} characters, no spaces or controls",
                    }
                )
            else:
                out["tags"] = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
    if errors:
        raise ValidationError(errors)
    return out


def validate_script_body(body: object) -> dict[str, Any]:
    """Check a script body (``{name, description?, content, parameters?}``); return the
    normalised fields (``parameters``: a tuple of ``ParamSpec``).

    Raises:
        ValidationError: with every problem found.
    """
    if not isinstance(body, Mapping):
        raise ValidationError([{"field": "body", "reason": "must be a JSON object"}])
    errors: list[dict[str, Any]] = []
    keys = {"name", "description", "content", "id", "parameters"}
    for name in sorted(set(body) - keys, key=str):
        errors.append({"field": str(name), "reason": "unknown field"})
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append({"field": "name", "reason": "is required: a non-empty string"})
    elif len(name) > MAX_NAME or not re.fullmatch(NAME_PATTERN, name):
        errors.append({"field": "name", "reason": _NAME_RULE})
    elif not _is_unicode(name):
        errors.append({"field": "name", "reason": _NOT_UNICODE})
    description = body.get("description")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        errors.append(
            {"field": "description", "reason": f"a string of at most {MAX_DESCRIPTION} characters"}
        )
    elif not _is_unicode(description):
        errors.append({"field": "description", "reason": _NOT_UNICODE})
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        errors.append({"field": "content", "reason": "is required: the script's text"})
    elif "\x00" in content:
        errors.append({"field": "content", "reason": "must not contain NUL characters"})
    elif not _is_unicode(content):
        errors.append({"field": "content", "reason": _NOT_UNICODE})
    elif len(content.encode("utf-8", "surrogatepass")) > MAX_COMMAND_BYTES:
        errors.append({"field": "content", "reason": f"must be at most {MAX_COMMAND_BYTES} bytes"})
    parameters: tuple[ParamSpec, ...] = validate_declarations(body.get("parameters"), errors)
    if errors:
        raise ValidationError(errors)
    assert isinstance(name, str)
    assert isinstance(content, str)
    assert isinstance(description, str)
    return {
        "name": name.strip(),
        "description": description,
        "content": content,
        "parameters": parameters,
    }
