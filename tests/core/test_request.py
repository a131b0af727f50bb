"""validate_batch_request / check_references / parse_id: every error, all reported at once."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core import (
    MAX_COMMAND_BYTES,
    MAX_TARGETS,
    MAX_TIMEOUT_S,
    BatchRequest,
    FleetError,
    NotFound,
    ValidationError,
    check_references,
    parse_id,
    validate_batch_request,
    validate_script_body,
    validate_vps_body,
)


def errors_of(body: object) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        validate_batch_request(body)
    error = info.value
    assert isinstance(error, FleetError)
    assert (error.http_status, error.code) == (422, "validation_error")
    assert error.errors, "a ValidationError always lists at least one problem"
    for item in error.errors:
        assert isinstance(item["field"], str)
        assert isinstance(item["reason"], str)
    assert str(error) == "; ".join(f"{e['field']}: {e['reason']}" for e in error.errors)
    return error.errors


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    errors = errors_of(body)
    assert len(errors) == 1, errors
    return errors[0]


def body(**fields: Any) -> dict[str, Any]:
    return {"command_content": "uptime", "target_vps_ids": [1]} | fields


# --- valid requests ------------------------------------------------------------------------------


def test_minimal_command_request() -> None:
    assert validate_batch_request(body()) == BatchRequest(
        target_vps_ids=(1,), command_content="uptime"
    )


def test_full_script_request() -> None:
    request = validate_batch_request(
        {
            "script_id": "42",
            "target_vps_ids": [3, "1", 3, "0003", 2, "1"],
            "working_directory": "/srv/app",
            "execution_alias": "deploy ☃",
            "timeout_seconds": 60,
        }
    )
    assert request == BatchRequest(
        target_vps_ids=(3, 1, 2),  # de-duplicated, first-seen order kept
        script_id=42,
        working_directory="/srv/app",
        execution_alias="deploy ☃",
        timeout_seconds=60,
    )


def test_empty_optional_fields_are_absent() -> None:
    request = validate_batch_request(
        body(script_id="", working_directory="", execution_alias=None, timeout_seconds=None)
    )
    assert (request.script_id, request.working_directory, request.execution_alias) == (
        None,
        None,
        None,
    )
    assert request.timeout_seconds == 0


def test_limits_are_inclusive() -> None:
    request = validate_batch_request(
        body(
            command_content="x" * MAX_COMMAND_BYTES,
            target_vps_ids=list(range(1, MAX_TARGETS + 1)),
            timeout_seconds=MAX_TIMEOUT_S,
            working_directory="/" * 4096,
            execution_alias="a" * 200,
        )
    )
    assert len(request.target_vps_ids) == MAX_TARGETS
    assert validate_batch_request(body(timeout_seconds=0)).timeout_seconds == 0


def test_body_may_be_any_mapping() -> None:
    from types import MappingProxyType

    assert validate_batch_request(MappingProxyType(body())).command_content == "uptime"


# --- each error ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, [], "text", 3, [{"command_content": "x"}]])
def test_body_must_be_an_object(value: object) -> None:
    assert errors_of(value) == [{"field": "body", "reason": "must be a JSON object"}]


def test_unknown_fields_are_named() -> None:
    errors = errors_of(body(zeta=1, alpha=2))
    assert errors == [
        {"field": "alpha", "reason": "unknown field"},
        {"field": "zeta", "reason": "unknown field"},
    ]


def test_unknown_non_string_keys_do_not_crash() -> None:
    errors = errors_of(body() | {1: "x", None: "y"})
    assert sorted(e["field"] for e in errors) == ["1", "None"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"script_id": 1}, "give either command_content or script_id, not both"),
        ({"command_content": None}, "give command_content or script_id"),
        ({"command_content": ""}, "give command_content or script_id"),
        ({"command_content": "", "script_id": None}, "give command_content or script_id"),
        ({"command_content": "   \n\t"}, "must not be blank"),
        ({"command_content": 12}, "must be a string"),
        ({"command_content": ["ls"]}, "must be a string"),
        ({"command_content": False}, "must be a string"),
        ({"command_content": "echo \x00"}, "must not contain NUL characters"),
        ({"command_content": "echo \ud800"}, "must be valid Unicode text (no lone surrogates)"),
        ({"command_content": "x" * (MAX_COMMAND_BYTES + 1)}, f"at most {MAX_COMMAND_BYTES} bytes"),
        # Multi-byte characters count in bytes, not characters.
        ({"command_content": "é" * (MAX_COMMAND_BYTES // 2 + 1)}, "bytes"),
    ],
)
def test_command_errors(fields: dict[str, Any], reason: str) -> None:
    error = only_error(body(**fields))
    assert error["field"] == "command_content"
    assert reason in error["reason"]


@pytest.mark.parametrize("script", [0, -1, "abc", "1.5", 1.0, True, [], {}, 2**31, " 7"])
def test_bad_script_id(script: object) -> None:
    error = only_error({"script_id": script, "target_vps_ids": [1]})
    assert error == {"field": "script_id", "reason": "must be a positive integer"}


@pytest.mark.parametrize(
    ("targets", "reason"),
    [
        (None, "is required: a non-empty list of VPS ids"),
        ([], "must not be empty"),
        ("1,2", "must be a list of VPS ids"),
        ({"1": 1}, "must be a list of VPS ids"),
        (7, "must be a list of VPS ids"),
        (list(range(1, MAX_TARGETS + 2)), f"at most {MAX_TARGETS} targets per batch"),
    ],
)
def test_target_shape_errors(targets: object, reason: str) -> None:
    fields = body(target_vps_ids=targets)
    if targets is None:
        del fields["target_vps_ids"]
    assert only_error(fields) == {"field": "target_vps_ids", "reason": reason}


def test_bad_targets_are_listed() -> None:
    bad = [True, False, -1, 0, 1.0, 2.5, "12a", "", " 3", "-4", "٣", None, [1], 2**31]
    error = only_error(body(target_vps_ids=[1, *bad, "2"]))
    assert error["field"] == "target_vps_ids"
    reason = error["reason"]
    assert reason.startswith("not VPS ids (positive integers or digit strings): ")
    for item in bad[:10]:
        assert repr(item) in reason
    assert reason.endswith(" …")  # more than ten bad ones: the rest is elided


def test_few_bad_targets_are_listed_without_ellipsis() -> None:
    error = only_error(body(target_vps_ids=[1, "x"]))
    assert error["reason"] == "not VPS ids (positive integers or digit strings): 'x'"


@pytest.mark.parametrize(
    ("field", "limit"), [("working_directory", 4096), ("execution_alias", 200)]
)
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda limit: 5, "must be a string"),
        (lambda limit: ["/tmp"], "must be a string"),
        (lambda limit: "a\x00b", "must not contain NUL characters"),
        (lambda limit: "a\udfffb", "must be valid Unicode text (no lone surrogates)"),
        (lambda limit: "x" * (limit + 1), "must be at most {limit} characters"),
    ],
)
def test_optional_text_errors(field: str, limit: int, make: Any, reason: str) -> None:
    error = only_error(body(**{field: make(limit)}))
    assert error == {"field": field, "reason": reason.format(limit=limit)}


@pytest.mark.parametrize(
    ("timeout", "reason"),
    [
        (True, "must be a whole number of seconds"),
        (1.5, "must be a whole number of seconds"),
        (10.0, "must be a whole number of seconds"),
        ("10", "must be a whole number of seconds"),
        (-1, f"must be between 0 (no limit) and {MAX_TIMEOUT_S}"),
        (MAX_TIMEOUT_S + 1, f"must be between 0 (no limit) and {MAX_TIMEOUT_S}"),
    ],
)
def test_timeout_errors(timeout: object, reason: str) -> None:
    assert only_error(body(timeout_seconds=timeout)) == {
        "field": "timeout_seconds",
        "reason": reason,
    }


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of(
        {
            "command_content": "ls",
            "script_id": 3,
            "target_vps_ids": ["x"],
            "working_directory": 1,
            "execution_alias": "\x00",
            "timeout_seconds": -5,
            "colour": "red",
        }
    )
    assert [e["field"] for e in errors] == [
        "colour",
        "command_content",
        "target_vps_ids",
        "working_directory",
        "execution_alias",
        "timeout_seconds",
    ]


def test_missing_everything_reports_command_and_targets() -> None:
    assert [e["field"] for e in errors_of({})] == ["command_content", "target_vps_ids"]


# --- check_references ----------------------------------------------------------------------------


def test_known_references_pass() -> None:
    check_references(validate_batch_request(body(target_vps_ids=[1, 2])), known_vps_ids={1, 2, 3})
    script = validate_batch_request({"script_id": 9, "target_vps_ids": [1]})
    check_references(script, known_vps_ids=[1], script_exists=True)


def test_unknown_targets_are_listed() -> None:
    request = validate_batch_request(body(target_vps_ids=[5, 1, 7]))
    with pytest.raises(ValidationError) as info:
        check_references(request, known_vps_ids={1})
    assert info.value.errors == [
        {"field": "target_vps_ids", "reason": "unknown VPS ids: 5, 7", "unknown_ids": [5, 7]}
    ]


def test_many_unknown_targets_are_elided_in_the_reason_but_all_listed() -> None:
    request = validate_batch_request(body(target_vps_ids=list(range(1, 31))))
    with pytest.raises(ValidationError) as info:
        check_references(request, known_vps_ids=())
    (error,) = info.value.errors
    assert error["unknown_ids"] == list(range(1, 31))
    assert error["reason"] == "unknown VPS ids: " + ", ".join(map(str, range(1, 21))) + " …"


@pytest.mark.parametrize("exists", [False, None])
def test_unknown_script_and_targets_together(exists: bool | None) -> None:
    request = validate_batch_request({"script_id": 9, "target_vps_ids": [1, 2]})
    with pytest.raises(ValidationError) as info:
        check_references(request, known_vps_ids={1}, script_exists=exists)
    assert [e["field"] for e in info.value.errors] == ["target_vps_ids", "script_id"]
    assert info.value.errors[1]["reason"] == "no script with id 9"


def test_script_existence_is_ignored_for_commands() -> None:
    check_references(validate_batch_request(body()), known_vps_ids={1}, script_exists=False)


# --- parse_id -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (2**31 - 1, 2**31 - 1),
        ("1", 1),
        ("0042", 42),
        ("2147483647", 2**31 - 1),
        (0, None),
        (-3, None),
        (2**31, None),
        ("0", None),
        ("2147483648", None),
        ("00000000001", None),  # more than ten digits
        ("12a", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("", None),
        ("١٢", None),  # non-ASCII digits
        ("²", None),
        (True, None),
        (False, None),
        (1.0, None),
        (None, None),
        ([1], None),
    ],
)
def test_parse_id(value: object, expected: int | None) -> None:
    assert parse_id(value) == expected


# --- the error classes ----------------------------------------------------------------------------


def test_not_found() -> None:
    error = NotFound("batch", 12)
    assert isinstance(error, FleetError)
    assert (error.kind, error.ident, error.http_status, error.code) == (
        "batch",
        12,
        404,
        "not_found",
    )
    assert str(error) == "no batch with id 12"


def test_fleet_error_defaults() -> None:
    assert (FleetError.http_status, FleetError.code) == (500, "internal_error")


# --- validate_vps_body ----------------------------------------------------------------------------


def vps_errors(body: object, **kwargs: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        validate_vps_body(body, **kwargs)
    return [e["field"] for e in info.value.errors]


def test_vps_body_is_normalised() -> None:
    assert validate_vps_body({"name": " web-1 ", "tags": ["db", " db ", "eu", " ", ""]}) == {
        "name": "web-1",
        "tags": ["db", "eu"],
    }
    assert validate_vps_body({"name": "web-2"}) == {"name": "web-2", "tags": []}
    assert validate_vps_body({"name": "web-3", "tags": None}) == {"name": "web-3", "tags": []}


def test_vps_body_partial_update_checks_only_given_fields() -> None:
    assert validate_vps_body({}, partial=True) == {}
    assert validate_vps_body({"tags": ["x"]}, partial=True) == {"tags": ["x"]}
    assert vps_errors({"name": " "}, partial=True) == ["name"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ([], ["body"]),
        ({}, ["name"]),
        ({"name": None}, ["name"]),
        ({"name": 5}, ["name"]),
        ({"name": "  "}, ["name"]),
        ({"name": "x" * 101}, ["name"]),
        ({"name": "bad\nname"}, ["name"]),
        ({"name": "ok", "tags": "db"}, ["tags"]),
        ({"name": "ok", "tags": ["db", 3]}, ["tags"]),
        ({"name": "ok", "tags": [f"t{i}" for i in range(33)]}, ["tags"]),
        ({"name": "ok", "tags": ["two words"]}, ["tags"]),
        ({"name": "ok", "tags": ["x" * 65]}, ["tags"]),
        ({"name": "ok", "tags": ["tab\there"]}, ["tags"]),
        ({"name": "ok", "secret": "x"}, ["secret"]),
        ({"name": "", "tags": 1, "zz": 0, "aa": 0}, ["aa", "zz", "name", "tags"]),
    ],
)
def test_vps_body_errors(body: object, fields: list[str]) -> None:
    assert vps_errors(body) == fields


def test_vps_body_limits_are_inclusive() -> None:
    tags = [f"{i:02d}" + "x" * 62 for i in range(32)]
    assert validate_vps_body({"name": "n" * 100, "tags": tags})["tags"] == tags


# --- validate_script_body -------------------------------------------------------------------------


def script_errors(body: object) -> list[str]:
    with pytest.raises(ValidationError) as info:
        validate_script_body(body)
    return [e["field"] for e in info.value.errors]


def test_script_body_is_normalised() -> None:
    assert validate_script_body(
        {"id": 4, "name": " deploy ", "description": None, "content": "#!/bin/sh\necho hi\n"}
    ) == {"name": "deploy", "description": "", "content": "#!/bin/sh\necho hi\n", "parameters": ()}
    assert validate_script_body({"name": "n", "description": "why", "content": "x"}) == {
        "name": "n",
        "description": "why",
        "content": "x",
        "parameters": (),
    }


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ("script", ["body"]),
        ({"content": "x"}, ["name"]),
        ({"name": " ", "content": "x"}, ["name"]),
        ({"name": "x" * 101, "content": "x"}, ["name"]),
        ({"name": "n", "content": "x", "description": 5}, ["description"]),
        ({"name": "n", "content": "x", "description": "d" * 2001}, ["description"]),
        ({"name": "n"}, ["content"]),
        ({"name": "n", "content": 7}, ["content"]),
        ({"name": "n", "content": " \n"}, ["content"]),
        ({"name": "n", "content": "a\x00b"}, ["content"]),
        ({"name": "n", "content": "x" * (MAX_COMMAND_BYTES + 1)}, ["content"]),
        ({"name": "n", "content": "x", "owner": "me"}, ["owner"]),
        (
            {"owner": 1, "description": 5, "content": ""},
            ["owner", "name", "description", "content"],
        ),
    ],
)
def test_script_body_errors(body: object, fields: list[str]) -> None:
    assert script_errors(body) == fields


def test_script_body_rejects_lone_surrogates_and_non_text_description() -> None:
    with pytest.raises(ValidationError) as info:
        validate_script_body({"name": "s", "description": "\ud800", "content": "x\udc00"})
    assert {e["field"] for e in info.value.errors} == {"description", "content"}
    with pytest.raises(ValidationError) as info:
        validate_script_body({"name": "s", "description": 0, "content": "x"})
    assert [e["field"] for e in info.value.errors] == ["description"]
    assert (
        validate_script_body({"name": "s", "description": None, "content": "x"})["description"]
        == ""
    )
