"""Script parameters and the rollout fields of a batch request: every error named."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.core import (
    MASK,
    ParamSpec,
    ValidationError,
    check_parameters,
    mask_parameters,
    param_environment,
    validate_batch_request,
    validate_script_body,
    validate_vps_body,
)

SCRIPT = {"name": "deploy", "content": "echo $FLEET_PARAM_VERSION"}


def fields(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {e["field"]: e["reason"] for e in exc.value.errors}


def test_a_declaration_is_normalised() -> None:
    body = SCRIPT | {
        "parameters": [
            {"name": "VERSION", "required": True, "pattern": r"[0-9]+\.[0-9]+", "default": "1.0"},
            {"name": "token", "secret": True, "description": "API token", "required": None},
            {"name": "_x", "pattern": ""},
        ]
    }
    specs = validate_script_body(body)["parameters"]
    assert specs == (
        ParamSpec("VERSION", required=True, default="1.0", pattern=r"[0-9]+\.[0-9]+"),
        ParamSpec("token", description="API token", secret=True),
        ParamSpec("_x"),
    )
    assert specs[1].view()["default"] is None
    assert ParamSpec("s", secret=True, default="x").view()["default"] == MASK
    assert ParamSpec("s", secret=True, default="x").stored()["default"] == "x"
    assert validate_script_body(SCRIPT)["parameters"] == ()


def test_a_bad_declaration_names_every_problem() -> None:
    body = SCRIPT | {
        "parameters": [
            {"name": "1bad"},
            "nope",
            {"name": "A", "pattern": "(unclosed", "colour": "red"},
            {"name": "A", "required": "yes", "description": 7},
            {"name": "B", "pattern": "[a-z]+", "default": "ABC"},
            {"name": "C", "default": "x\x00y"},
            {"name": "D", "secret": True, "default": "hunter2"},
            {"name": "E", "pattern": 5},
            {"name": "F", "secret": 1},
        ]
    }
    with pytest.raises(ValidationError) as info:
        validate_script_body(body)
    errors = [(e["field"], e["reason"]) for e in info.value.errors]
    text = repr(errors)
    assert ("parameters[0]", "a parameter name must match ^[A-Za-z_][A-Za-z0-9_]{0,63}$") in errors
    assert "parameters[1]" in text
    assert "unknown keys: colour" in text
    assert "not a valid regular expression" in text
    assert "declared twice" in text
    assert "required: must be true or false" in text
    assert "description: a string" in text
    assert "default: does not match the pattern" in text
    assert "default: must not contain NUL" in text
    assert "a secret parameter has no default" in text
    assert "pattern: a regular expression" in text
    assert "secret: must be true or false" in text


@pytest.mark.parametrize(
    ("value", "reason"),
    [("x", "must be a list"), ([{}] * 101, "at most 100")],
)
def test_a_declaration_must_be_a_short_list(value: object, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        validate_script_body(SCRIPT | {"parameters": value})


def test_batch_parameter_values_are_checked() -> None:
    body = {
        "command_content": "env",
        "target_vps_ids": [1],
        "parameters": {
            "ok": "fine",
            "bad name": "x",
            "nul": "a\x00b",
            "big": "é" * 2049,
            "num": 5,
            "lone": "\ud800",
        },
    }
    with pytest.raises(ValidationError) as info:
        validate_batch_request(body)
    got = fields(info)
    assert "parameters['bad name']" in got
    assert got["parameters.nul"] == "must not contain NUL characters"
    assert got["parameters.big"] == "must be at most 4096 bytes (UTF-8)"
    assert got["parameters.num"] == "must be a string"
    assert got["parameters.lone"].startswith("must be valid Unicode")
    assert "parameters.ok" not in got
    ok = validate_batch_request(body | {"parameters": {"ok": "é" * 2048, "E": ""}})
    assert ok.parameters == {"ok": "é" * 2048, "E": ""}


@pytest.mark.parametrize(("value", "reason"), [("x", "must be an object"), (dict.fromkeys(
    (f"p{i}" for i in range(101)), "v"), "at most 100")])  # fmt: skip
def test_parameters_must_be_a_small_object(value: object, reason: str) -> None:
    body = {"command_content": "env", "target_vps_ids": [1], "parameters": value}
    with pytest.raises(ValidationError, match=reason):
        validate_batch_request(body)


def test_values_are_checked_against_the_declaration() -> None:
    declared = (
        ParamSpec("VERSION", required=True, pattern=r"[0-9]+"),
        ParamSpec("MODE", default="safe"),
        ParamSpec("TOKEN", secret=True, required=True),
        ParamSpec("NOTE"),
    )
    with pytest.raises(ValidationError) as info:
        check_parameters({"VERSION": "1a", "EXTRA": "x"}, declared)
    assert fields(info) == {
        "parameters.EXTRA": "unknown parameter",
        "parameters.VERSION": "does not match the pattern [0-9]+",
        "parameters.TOKEN": "is required",
    }
    values, secret = check_parameters({"VERSION": "12", "TOKEN": "s3"}, declared)
    assert values == {"VERSION": "12", "MODE": "safe", "TOKEN": "s3"}
    assert secret == {"TOKEN"}
    with pytest.raises(ValidationError) as info:
        check_parameters({"VERSION": "1"}, declared, missing_secrets=True)
    assert fields(info) == {
        "parameters.TOKEN": "secret parameter: give its value again (secrets are not kept)"
    }
    # An ad-hoc command takes any (well-formed) names.
    assert check_parameters({"ANY": "v"}, None) == ({"ANY": "v"}, frozenset())


def test_masking_and_environment() -> None:
    values = {"A": "$(touch pwned); '\"", "S": "hunter2"}
    assert mask_parameters(values, frozenset({"S"})) == {"A": values["A"], "S": MASK}
    assert param_environment(values) == {
        "FLEET_PARAM_A": "$(touch pwned); '\"",
        "FLEET_PARAM_S": "hunter2",
    }


# --- rollout fields ----------------------------------------------------------------------


def base(**extra: Any) -> dict[str, Any]:
    return {"command_content": "uptime", "target_vps_ids": [1, 2]} | extra


def test_rollout_fields_are_parsed() -> None:
    req = validate_batch_request(
        base(
            max_concurrency="10%",
            max_errors=0,
            wait_for_agent_seconds=600,
            target_tags=["web", " web ", "db", ""],
        )
    )
    assert (req.max_concurrency, req.max_errors, req.wait_for_agent_seconds) == ("10%", 0, 600)
    assert req.target_tags == ("web", "db")
    assert validate_batch_request(base()).max_concurrency is None


def test_tags_alone_are_enough_targets() -> None:
    req = validate_batch_request({"command_content": "uptime", "target_tags": ["web"]})
    assert req.target_vps_ids == ()
    req = validate_batch_request(
        {"command_content": "uptime", "target_tags": ["web"], "target_vps_ids": []}
    )
    assert req.target_vps_ids == ()
    with pytest.raises(ValidationError, match="is required"):
        validate_batch_request({"command_content": "uptime"})


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"max_concurrency": 0}, "max_concurrency", "at least 1"),
        ({"max_concurrency": "0%"}, "max_concurrency", "between 1% and 100%"),
        ({"max_concurrency": "101%"}, "max_concurrency", "between 1% and 100%"),
        ({"max_concurrency": "x"}, "max_concurrency", "percentage"),
        ({"max_errors": -1}, "max_errors", "at least 0"),
        ({"max_errors": "150%"}, "max_errors", "between 0% and 100%"),
        ({"wait_for_agent_seconds": -1}, "wait_for_agent_seconds", "between 0 and 604800"),
        ({"wait_for_agent_seconds": 604801}, "wait_for_agent_seconds", "between"),
        ({"wait_for_agent_seconds": 1.5}, "wait_for_agent_seconds", "whole number"),
        ({"wait_for_agent_seconds": True}, "wait_for_agent_seconds", "whole number"),
        ({"target_tags": "web"}, "target_tags", "list of tags"),
        ({"target_tags": [1]}, "target_tags", "list of tags"),
        ({"target_tags": ["t"] * 33}, "target_tags", "at most 32"),
        ({"target_tags": ["x" * 65]}, "target_tags", "1 to 64 characters"),
        ({"target_tags": ["a b"]}, "target_tags", "no spaces"),
    ],
)
def test_bad_rollout_fields(extra: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_batch_request(base(**extra))
    assert reason in fields(info)[field]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    extra=st.dictionaries(
        st.sampled_from(
            ["max_concurrency", "max_errors", "wait_for_agent_seconds", "target_tags", "parameters"]
        ),
        JSON | st.text(max_size=6).map(lambda t: t + "%"),
    )
)
def test_any_rollout_input_is_accepted_or_refused_by_name(extra: dict[str, Any]) -> None:
    """Whatever JSON a client sends in the new fields: a request, or a ValidationError naming
    the field, never another exception."""
    errors: list[dict[str, Any]] = []
    try:
        req = validate_batch_request(base(**extra))
    except ValidationError as exc:
        errors = exc.errors
    if errors:
        assert {e["field"].split(".")[0].split("[")[0] for e in errors} <= set(extra)
        return
    assert req.wait_for_agent_seconds >= 0
    assert req.max_concurrency is None or req.max_concurrency != 0


def test_names_with_lone_surrogates_are_refused() -> None:
    """A JSON ``\\ud800`` escape decodes to text that UTF-8 cannot carry: a named 422."""
    with pytest.raises(ValidationError, match="Unicode"):
        validate_script_body({"name": "\ud800", "content": "true"})
    with pytest.raises(ValidationError, match="Unicode"):
        validate_vps_body({"name": "\ud800"})
