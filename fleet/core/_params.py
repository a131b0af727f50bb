"""Script parameters: declarations on saved scripts and the values a batch gives.

A saved script declares its parameters (``validate_declarations``); a batch's ``parameters``
are checked against them (``check_parameters``: unknown, missing required, not matching the
pattern, each named). An ad-hoc command may carry any valid names. Values reach the command only
as environment variables ``FLEET_PARAM_<name>`` (``param_environment``), never in its text. Secret
values are shown as ``MASK`` everywhere (``mask_parameters``) and are never stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import ValidationError

__all__ = [
    "ENV_PREFIX",
    "MASK",
    "MAX_PARAMETERS",
    "MAX_PARAM_PATTERN",
    "MAX_VALUE_BYTES",
    "PARAM_NAME_PATTERN",
    "ParamSpec",
    "check_parameters",
    "mask_parameters",
    "param_environment",
    "validate_declarations",
    "validate_values",
]

#: A parameter's name (the OpenAPI document states it; ``FLEET_PARAM_<name>`` is its variable).
PARAM_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]{0,63}$"
NAME = re.compile(PARAM_NAME_PATTERN[1:-1])
ENV_PREFIX = "FLEET_PARAM_"
MASK = "***"
MAX_VALUE_BYTES = 4096
MAX_PARAMETERS = 100
MAX_PATTERN = 1000
MAX_PARAM_PATTERN = MAX_PATTERN
MAX_DESCRIPTION = 2000
_KEYS = frozenset({"name", "description", "required", "default", "pattern", "secret"})


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter of a saved script."""

    name: str
    description: str = ""
    required: bool = False
    default: str | None = None
    pattern: str | None = None
    secret: bool = False

    def view(self) -> dict[str, Any]:
        """As the API shows it (a secret's default is masked)."""
        default = MASK if self.secret and self.default is not None else self.default
        return {
            "name": self.name,
            "description": self.description,
            "required": self.required,
            "default": default,
            "pattern": self.pattern,
            "secret": self.secret,
        }

    def stored(self) -> dict[str, Any]:
        return {**self.view(), "default": self.default}


def _value_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    if size > MAX_VALUE_BYTES:
        return f"must be at most {MAX_VALUE_BYTES} bytes (UTF-8)"
    return None


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        return "a parameter name must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$"
    return None


def validate_declarations(value: object, errors: list[dict[str, Any]]) -> tuple[ParamSpec, ...]:
    """Check a script's ``parameters`` declaration; problems are appended to ``errors``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        errors.append({"field": "parameters", "reason": "must be a list of parameter objects"})
        return ()
    if len(value) > MAX_PARAMETERS:
        errors.append({"field": "parameters", "reason": f"at most {MAX_PARAMETERS} parameters"})
        return ()
    specs: list[ParamSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"parameters[{i}]"

        def fail(reason: str, where: str = where) -> None:
            errors.append({"field": where, "reason": reason})

        if not isinstance(item, Mapping):
            fail("must be an object {name, description, required, default, pattern, secret}")
            continue
        unknown = sorted(str(k) for k in set(item) - _KEYS)
        if unknown:
            fail(f"unknown keys: {', '.join(unknown)}")
        name = item.get("name")
        problem = _name_problem(name)
        if problem is not None:
            fail(problem)
            continue
        assert isinstance(name, str)
        where = f"parameters.{name}"
        if name in seen:
            fail("declared twice")
        seen.add(name)
        description = item.get("description")
        if description is None:
            description = ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            fail(f"description: a string of at most {MAX_DESCRIPTION} characters")
            description = ""
        flags = {}
        for flag in ("required", "secret"):
            flag_value = item.get(flag, False)
            if flag_value is None:
                flag_value = False
            if not isinstance(flag_value, bool):
                fail(f"{flag}: must be true or false")
            flags[flag] = bool(flag_value)
        default = item.get("default")
        if default is not None and (problem := _value_problem(default)) is not None:
            fail(f"default: {problem}")
            default = None
        if default is not None and flags["secret"]:
            fail("default: a secret parameter has no default (secret values are never stored)")
            default = None
        pattern = item.get("pattern")
        if pattern == "":
            pattern = None
        if pattern is not None:
            if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
                fail(f"pattern: a regular expression of at most {MAX_PATTERN} characters")
                pattern = None
            else:
                try:
                    re.compile(pattern)
                except (re.error, RecursionError, OverflowError) as exc:
                    fail(f"pattern: not a valid regular expression ({exc})")
                    pattern = None
        if (
            pattern is not None
            and isinstance(default, str)
            and re.fullmatch(pattern, default) is None
        ):
            fail("default: does not match the pattern")
        specs.append(
            ParamSpec(
                name=name,
                description=description,
                required=flags["required"],
                default=default if isinstance(default, str) else None,
                pattern=pattern,
                secret=flags["secret"],
            )
        )
    return tuple(specs)


def validate_values(value: object, errors: list[dict[str, Any]]) -> dict[str, str]:
    """Check a batch's ``parameters`` object (names and values, not a declaration)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append({"field": "parameters", "reason": "must be an object: name → string"})
        return {}
    if len(value) > MAX_PARAMETERS:
        errors.append({"field": "parameters", "reason": f"at most {MAX_PARAMETERS} parameters"})
        return {}
    out: dict[str, str] = {}
    for name, item in value.items():
        problem = _name_problem(name)
        if problem is not None:
            shown = repr(name)[:80]
            errors.append({"field": f"parameters[{shown}]", "reason": problem})
            continue
        problem = _value_problem(item)
        if problem is not None:
            errors.append({"field": f"parameters.{name}", "reason": problem})
            continue
        out[name] = item
    return out


def check_parameters(
    values: Mapping[str, str],
    declared: tuple[ParamSpec, ...] | None,
    *,
    missing_secrets: bool = False,
) -> tuple[dict[str, str], frozenset[str]]:
    """Check a batch's (already well-formed) values against a script's declaration.

    Args:
        values: the batch's parameters.
        declared: the script's declaration, or ``None`` for an ad-hoc command (any names).
        missing_secrets: say so when a secret parameter is missing (a re-run must be given
            secrets again, since they are not kept).

    Returns:
        The values to run with (defaults filled in) and the names of the secret ones.

    Raises:
        ValidationError: naming every unknown, missing or non-matching parameter.
    """
    if declared is None:
        return dict(values), frozenset()
    errors: list[dict[str, Any]] = []
    by_name = {spec.name: spec for spec in declared}
    for name in values:
        if name not in by_name:
            errors.append({"field": f"parameters.{name}", "reason": "unknown parameter"})
    out: dict[str, str] = {}
    for spec in declared:
        value = values.get(spec.name)
        if value is None:
            if spec.default is not None:
                out[spec.name] = spec.default
            elif spec.secret and missing_secrets:
                errors.append(
                    {
                        "field": f"parameters.{spec.name}",
                        "reason": "secret parameter: give its value again (secrets are not kept)",
                    }
                )
            elif spec.required:
                errors.append({"field": f"parameters.{spec.name}", "reason": "is required"})
            continue
        if spec.pattern is not None and re.fullmatch(spec.pattern, value) is None:
            errors.append(
                {
                    "field": f"parameters.{spec.name}",
                    "reason": f"does not match the pattern {spec.pattern}",
                }
            )
            continue
        out[spec.name] = value
    if errors:
        raise ValidationError(errors)
    return out, frozenset(spec.name for spec in declared if spec.secret and spec.name in out)


def mask_parameters(
    values: Mapping[str, str], secret: frozenset[str] | tuple[str, ...]
) -> dict[str, str]:
    """The values as shown anywhere (API, feed, store, logs): secret ones are ``MASK``."""
    return {name: MASK if name in secret else value for name, value in values.items()}


def param_environment(values: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that carry ``values`` to the command."""
    return {f"{ENV_PREFIX}{name}": value for name, value in values.items()}
